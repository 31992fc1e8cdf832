"""Profiling tools (installed as vgpo_fast.profiling): reward-overhead profiler, NVML sampler, traces."""
