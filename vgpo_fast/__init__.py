"""vgpo-fast: VGPO / Flow-GRPO training of flow-matching text-to-image models.

Importing the package imports nothing heavy (the CLI builds its parser without torch); it only installs
`_silence_known_harmless_logs`, below.
"""

from __future__ import annotations

import logging
import re
import sys


class _DropKnownHarmless(logging.Filter):
    """Drops the records of one logger that `match(record)` says are a known harmless message."""

    def __init__(self, match) -> None:
        super().__init__()
        self._match = match

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self._match(record)
        except Exception:  # a filter must never break logging: keep the record
            return True


def _torch_has_no_cuda() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and getattr(torch.version, "cuda", None) is None


# torchao's CUDA-only kernel libraries: MX-FP8 casts and CUTLASS sm90a kernels.
_TORCHAO_CUDA_SO = re.compile(r"^Failed to load .*torchao[/\\]_C_(mxfp8|cutlass_90a)\.[^/\\]*\.so: ")


def _torchao_cuda_kernels_on_cpu_torch(record: logging.LogRecord) -> bool:
    # Harmless: importing torchao (which transformers and diffusers do on import whenever torchao is installed, FP8
    # or not) tries to load these CUDA kernels; with a CPU-only torch build they cannot load (no libc10_cuda.so)
    # and are never called: this project's FP8 path (tensorwise Float8Linear) does not use them. With a CUDA torch
    # build they load, and a failure there is still reported.
    return bool(_TORCHAO_CUDA_SO.match(record.getMessage())) and _torch_has_no_cuda()


def _torchao_enum_pytree_registration(record: logging.LogRecord) -> bool:
    # Harmless: torchao registers its config Enums (KernelPreference, ScaleCalculationMode) as pytree constants on
    # import; torch >= 2.13 supports Enums natively and only warns that the call is deprecated. Nothing changes for
    # us, and torchao, not this project, makes the call. Enums of any other package still warn.
    cls = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return (
        isinstance(record.msg, str)
        and record.msg.startswith("%s is an Enum subclass and is now natively")
        and getattr(cls, "__module__", "").startswith("torchao.")
    )


def _diffusers_torchao_safe_globals(record: logging.LogRecord) -> bool:
    # Harmless: on import, diffusers (0.42) tries to allow-list torchao's old tensor classes for `torch.load`
    # (`NF4Tensor` and friends, which torchao 0.18 removed); they matter only for unpickling torchao-quantized
    # diffusers checkpoints, which this project never loads (its checkpoints are bf16 / fp32 safetensors).
    return record.getMessage().startswith("Unable to import `torchao` Tensor objects.")


def _silence_known_harmless_logs() -> None:
    """Drop exactly the known harmless third-party log warnings that `vgpo-fast train` would print on every run.

    They are logging records (not `warnings`), emitted while diffusers / peft / transformers are imported, because
    those import torchao whenever it is installed; each filter matches one message of one logger (see each
    predicate's comment for why the message is harmless). Installed on the package's import, before any of them.
    """
    for logger, match in (
        ("torchao", _torchao_cuda_kernels_on_cpu_torch),
        ("torch.utils._pytree", _torchao_enum_pytree_registration),
        ("diffusers.quantizers.torchao.torchao_quantizer", _diffusers_torchao_safe_globals),
    ):
        log = logging.getLogger(logger)
        if not any(isinstance(f, _DropKnownHarmless) and f._match is match for f in log.filters):
            log.addFilter(_DropKnownHarmless(match))


_silence_known_harmless_logs()
