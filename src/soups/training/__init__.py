"""Fine-tuning: the training loop, its resumable state and the random search of hyperparameters."""
