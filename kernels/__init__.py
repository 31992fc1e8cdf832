"""Triton kernels of the fused ops (installed as vgpo_fast.kernels): device code and launchers only."""
