"""Training: VGPO and Flow-GRPO trainers, config, checkpoints, metrics and reports."""
