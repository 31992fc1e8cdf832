"""Drop-in replacements for other GRPO codebases' functions, computed by vgpo_fast's fused ops."""
