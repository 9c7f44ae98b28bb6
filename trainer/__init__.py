"""Single-device model code, losses and the training loops with their shared
distributed, checkpointing, configuration and logging parts."""
