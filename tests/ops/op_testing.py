"""Helpers of the op tests: every backend that can run here, every input dtype, the tolerances of docs/spec.md
section 8."""

import pytest
import torch

from vgpo_fast.ops import available_backends

BACKENDS = available_backends("cpu")
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# docs/spec.md section 8: tolerance against the float64 reference, by input dtype.
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float64: 1e-12}


def assert_close_to(actual: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """`actual` within the relative tolerance of docs/spec.md section 8 of the float64 `truth` (scaled by truth's
    magnitude)."""
    rtol = RTOL[dtype]
    actual, truth = actual.double(), truth.double()
    atol = rtol * max(truth.abs().max().item(), 1e-12)
    torch.testing.assert_close(actual, truth, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param


def schedule(steps: int = 10, shift: float = 3.0) -> torch.Tensor:
    """SD3's shifted sigmas `[steps + 1]`, 1 -> 0, from diffusers' FlowMatchEulerDiscreteScheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    return sched.sigmas.double()


def step_sigmas(batch: int, generator: torch.Generator, include_ends: bool = True) -> tuple[torch.Tensor, ...]:
    """Per-sample (sigma, sigma_next) `[B]` drawn from a 10-step schedule; the first sample takes step 0
    (sigma = 1) and the last takes the final step (sigma_next = 0) when include_ends."""
    sig = schedule()
    steps = torch.randint(0, len(sig) - 1, (batch,), generator=generator)
    if include_ends:
        steps[0] = 0
        steps[-1] = len(sig) - 2
    return sig[steps], sig[steps + 1]


def stable_seed(*parts: object) -> int:
    """A seed from the test's parameters that is the same in every process (unlike hash())."""
    import zlib

    return zlib.crc32(repr(parts).encode()) % 2**31


def assert_grad_close(
    actual: torch.Tensor, truth: torch.Tensor, baseline: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """Gradients: error vs the float64 truth at most the tolerance of docs/spec.md section 8 or twice the error of
    the plain-torch reference run in the same dtype, whichever is larger. Gradients hold (x_next - mean) / scale^2,
    whose float32 rounding is amplified by |x| / scale at late steps: no float32 code meets 1e-5 there
    elementwise, so the reference's own error is the honest yardstick (flash-attention's rule)."""
    actual, truth, baseline = actual.double(), truth.double(), baseline.double()
    allowed = max(RTOL[dtype] * truth.abs().max().item(), 2 * (baseline - truth).abs().max().item())
    err = (actual - truth).abs().max().item()
    assert err <= allowed, f"{what}: max error {err:.3g} > allowed {allowed:.3g}"
