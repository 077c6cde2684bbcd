"""Files a user keeps: atomic writes, safetensors, digests, and reading the checkpoints other tools write."""
