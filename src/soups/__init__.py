"""soups: fine-tune from one initialization, average the weights, evaluate under distribution shift."""
