"""Benchmark of the fused ops against the eager PyTorch reference, side by side in one run.

For each op and each backend that runs here: median time, speedup over the eager reference (the plain torch
code every Flow-GRPO/DanceGRPO fork runs), and for the memory-bound ops the achieved GB/s next to the copy
bandwidth (`dst.copy_(src)`, read + write) measured on the same sizes in the same run.

    python benchmarks/ops.py            # SD3.5-M 512 px latents (16x64x64), B in {8, 16, 24, 48}; T, G sweeps
    python benchmarks/ops.py --quick    # B in {8, 48}, fewer advantage shapes
    python benchmarks/ops.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from vgpo_fast.ops import (
    available_backends,
    clipped_policy_loss,
    clipped_policy_loss_reference,
    grpo_advantage,
    grpo_advantage_reference,
    sde_log_prob,
    sde_log_prob_reference,
    sde_step,
    sde_step_reference,
    tcrm_adae,
    tcrm_adae_reference,
)

LATENT = (16, 64, 64)  # SD3.5-M at 512 px: 16 channels, 1/8 resolution


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], device: torch.device, min_time: float = 0.25, max_reps: int = 200
) -> float:
    """Median wall time of `fn` over repetitions filling about `min_time` seconds, after a warm-up."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def warm_allocator() -> None:
    """Raise glibc's dynamic mmap threshold once, as any long-running training process has.

    Fresh outputs above the threshold are mmapped and page-faulted on every call (~1.7 us a fault here,
    thousands per call at these sizes), which would time the kernel of the allocator, not the op's; freeing one
    block of 30 MiB (under glibc's 32 MiB cap) lifts the threshold so later allocations reuse the heap. Both
    sides of every row benefit.
    """
    block = torch.empty(30 << 20, dtype=torch.uint8)
    del block


def copy_gbps(nbytes: int, device: torch.device) -> float:
    """Copy bandwidth in GB/s (bytes read + written) for a buffer of `nbytes`."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), device) / 1e9


def latent_rows(device: torch.device, batches: list[int], dtypes: list[torch.dtype], backends: list[str]) -> list:
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for dtype in dtypes:
        for batch in batches:
            shape = (batch, *LATENT)
            x, v, v_ref, noise = (torch.randn(shape, generator=gen, device=device).to(dtype) for _ in range(4))
            sigma = torch.full((batch,), 0.7, device=device)
            sigma_next = torch.full((batch,), 0.6, device=device)
            x_next = sde_step(x, v, sigma, sigma_next, noise=noise).x_next
            elem = x.numel() * x.element_size()
            bandwidth = copy_gbps(elem, device)
            grads = torch.ones(batch, device=device)
            cases = {
                # name: (eager reference, fused call with backend, bytes moved)
                "sde_step": (
                    lambda: sde_step_reference(x, v, noise, sigma, sigma_next),
                    lambda b: sde_step(x, v, sigma, sigma_next, noise=noise, backend=b),
                    5 * elem,
                ),
                "sde_log_prob fwd": (
                    lambda: sde_log_prob_reference(x, v, x_next, sigma, sigma_next, v_ref),
                    lambda b: sde_log_prob(x, v, x_next, sigma, sigma_next, v_ref=v_ref, backend=b),
                    4 * elem,
                ),
                "sde_log_prob fwd+bwd": (
                    lambda: _eager_fwd_bwd(x, v, x_next, sigma, sigma_next, v_ref, grads),
                    lambda b: _fused_fwd_bwd(x, v, x_next, sigma, sigma_next, v_ref, grads, b),
                    9 * elem,
                ),
            }
            for op, (eager, fused, nbytes) in cases.items():
                t_eager = median_seconds(eager, device)
                for backend in backends:
                    t = median_seconds(lambda fused=fused, backend=backend: fused(backend), device)
                    rows.append(
                        dict(
                            op=op,
                            shape=f"{batch}x" + "x".join(map(str, LATENT)),
                            dtype=str(dtype).removeprefix("torch."),
                            backend=backend,
                            ms=t * 1e3,
                            eager_ms=t_eager * 1e3,
                            speedup=t_eager / t,
                            gbps=nbytes / t / 1e9,
                            copy_gbps=bandwidth,
                            frac_of_copy=nbytes / t / 1e9 / bandwidth,
                        )
                    )
    return rows


def _eager_fwd_bwd(x, v, x_next, sigma, sigma_next, v_ref, grads):
    v_leaf = v.detach().requires_grad_(True)
    out = sde_log_prob_reference(x, v_leaf, x_next, sigma, sigma_next, v_ref)
    torch.autograd.backward([out.logp, out.kl], [grads, grads])


def _fused_fwd_bwd(x, v, x_next, sigma, sigma_next, v_ref, grads, backend):
    v_leaf = v.detach().requires_grad_(True)
    out = sde_log_prob(x, v_leaf, x_next, sigma, sigma_next, v_ref=v_ref, backend=backend)
    torch.autograd.backward([out.logp, out.kl], [grads, grads])


def advantage_rows(device: torch.device, shapes: list[tuple[int, int, int]], backends: list[str]) -> list:
    rows = []
    for P, G, T in shapes:
        rewards = torch.rand(P, G, T, device=device)
        logp_old = torch.randn(P * G * T, device=device)
        logp_new, adv, kl = logp_old + 1e-3, torch.randn_like(logp_old), torch.rand_like(logp_old)
        cases = {
            "tcrm_adae": (lambda r=rewards: tcrm_adae_reference(r), lambda b, r=rewards: tcrm_adae(r, backend=b)),
            "grpo_advantage": (
                lambda r=rewards: grpo_advantage_reference(r[..., -1]),
                lambda b, r=rewards: grpo_advantage(r[..., -1], backend=b),
            ),
            "clipped_policy_loss": (
                lambda: clipped_policy_loss_reference(logp_new, logp_old, adv, kl, 1e-4, 0.04),
                lambda b: clipped_policy_loss(logp_new, logp_old, adv, kl, beta=0.04, backend=b),
            ),
        }
        for op, (eager, fused) in cases.items():
            t_eager = median_seconds(eager, device)
            for backend in backends:
                t = median_seconds(lambda fused=fused, backend=backend: fused(backend), device)
                rows.append(
                    dict(
                        op=op,
                        shape=f"P{P} G{G} T{T}",
                        dtype="float32",
                        backend=backend,
                        ms=t * 1e3,
                        eager_ms=t_eager * 1e3,
                        speedup=t_eager / t,
                    )
                )
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'op':<22}{'shape':<16}{'dtype':<10}{'backend':<11}{'ms':>9}{'eager ms':>10}{'speedup':>9}"
        f"{'GB/s':>8}{'copy GB/s':>11}{'% copy':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        line = (
            f"{r['op']:<22}{r['shape']:<16}{r['dtype']:<10}{r['backend']:<11}{r['ms']:>9.3f}"
            f"{r['eager_ms']:>10.3f}{r['speedup']:>8.2f}x"
        )
        if "gbps" in r:
            line += f"{r['gbps']:>8.1f}{r['copy_gbps']:>11.1f}{100 * r['frac_of_copy']:>7.0f}%"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="bench_out/ops.json", help="where to write the results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        warm_allocator()
    # Triton under the interpreter is a correctness tool, not a speed: time only the native backends.
    backends = [
        b for b in available_backends(device) if b != "reference" and not (b == "triton" and device.type == "cpu")
    ] or ["reference"]
    batches = [8, 48] if args.quick else [8, 16, 24, 48]
    shapes = [(48, 24, 10)] if args.quick else [(P, G, T) for P in (8, 48) for G in (8, 16, 24) for T in (10, 16, 40)]
    dtypes = [torch.float32, torch.bfloat16]
    print(f"device={device} threads={torch.get_num_threads()} backends={backends} torch={torch.__version__}")
    rows = latent_rows(device, batches, dtypes, backends) + advantage_rows(device, shapes, backends)
    print_table(rows)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    meta = dict(
        device=str(device),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        machine=platform.machine(),
        processor=platform.processor(),
        cpu_count=os.cpu_count(),
    )
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
