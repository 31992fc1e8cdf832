"""Multi-process training on torch.distributed (docs/architecture.md: one iteration): process group,
rank-invariant work split, collectives with clear failures, DDP / FSDP2 wrapping, full-state checkpoints, and
`launch` for `--nproc`.

Started by torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`/`MASTER_PORT` in the environment): NCCL on
CUDA, gloo on CPU. Without those variables everything here is the identity and costs nothing.

Rank invariance. The global batch is the same for any number of ranks: the N = P*G trajectories are rolled out in
fixed chunks of `rollout.chunk_size` (default: one prompt group), each with its own SDE-noise generator seeded by
(seed, iteration, chunk); ranks take contiguous runs of whole chunks (`chunk_plan`). The rollouts are then
all-gathered (`all_gather_rows`), so every rank holds the whole batch and computes the same advantages and the same
step plan and minibatch order. In the update, each global minibatch is split evenly over the ranks (`my_rows`); a
rank's loss is weighted by (its rows / minibatch rows) * world so that DDP's *average* of the gradients equals the
one-process gradient of the whole minibatch, with the same optimiser-step boundaries.

Failures. A collective that fails (a rank died: gloo sees the connection close; or hung: `run.dist_timeout_s`)
raises `RankFailure` naming this rank and the operation; torchrun then stops the other ranks (SIGTERM, turned into
the same error). Only rank 0 writes files; its checkpoints are atomic, so a failed job resumes from the last one.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "RankFailure",
    "World",
    "all_gather_rows",
    "all_reduce",
    "any_rank",
    "as_rank_failure",
    "barrier",
    "chunk_plan",
    "copy_full_into",
    "full_state",
    "full_tensor",
    "grad_sync",
    "init",
    "launch",
    "localize_optimizer_state",
    "my_rows",
    "rows_per_rank",
    "shutdown",
    "under_launcher",
    "world",
    "wrap_model",
]


class RankFailure(RuntimeError):
    """A collective failed or the launcher stopped this rank: another rank died or hung."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: `rank` of `size` (global), `local_rank` on its node, `backend`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()
_SHARDING: dict[int, str] = {}  # id(module) -> "ddp" | "fsdp", for grad_sync


def world() -> World:
    return _WORLD


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def _stop_on_sigterm(signum: int, _frame: Any) -> NoReturn:
    raise RankFailure(
        f"rank {_WORLD.rank}: stopped by the launcher (signal {signum}): another rank failed or the job was cancelled"
    )


def init(timeout_s: float = 1800.0, device: str = "auto") -> World:
    """Join the process group torchrun describes (no-op without `WORLD_SIZE` > 1, or when already joined).

    `device`: the model device setting ('auto', 'cpu', 'cuda'); CUDA gets NCCL and `cuda:LOCAL_RANK`, the CPU gloo.
    `timeout_s`: how long a collective waits for the other ranks before failing."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _WORLD
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    backend = backend_for("cuda" if use_cuda else "cpu")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        kwargs = {"device_id": torch.device("cuda", local_rank)} if use_cuda else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    _WORLD = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, backend=backend)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


# --------------------------------------------------------------------------------------------- work split


def chunk_plan(n: int, chunk: int, w: World | None = None) -> list[tuple[int, int, int]]:
    """`(chunk index, lo, hi)` of the rollout chunks of rank `w.rank`: the n items cut into chunks of `chunk`
    (the last may be shorter), each rank a contiguous, balanced run of whole chunks."""
    w = w or _WORLD
    if chunk < 1:
        raise ValueError(f"rollout.chunk_size must be >= 1, got {chunk}")
    count = -(-n // chunk)
    if count < w.size:
        raise ValueError(
            f"rollout: {n} trajectories in chunks of rollout.chunk_size={chunk} make {count} chunk(s), "
            f"fewer than the {w.size} ranks: lower rollout.chunk_size"
        )
    first, last = w.rank * count // w.size, (w.rank + 1) * count // w.size
    return [(c, c * chunk, min(n, (c + 1) * chunk)) for c in range(first, last)]


def rows_per_rank(n: int, chunk: int, w: World | None = None) -> list[int]:
    """How many of the n items each rank rolls out (`chunk_plan`), in rank order."""
    w = w or _WORLD
    return [sum(hi - lo for _, lo, hi in chunk_plan(n, chunk, World(r, w.size))) for r in range(w.size)]


def my_rows(minibatch: torch.Tensor, w: World | None = None) -> tuple[torch.Tensor, float]:
    """(this rank's rows of a global minibatch, its loss weight). The minibatch is split into `size` contiguous
    near-equal parts; weight = rows * size / minibatch rows, so that DDP's average over ranks of the weighted
    per-rank mean losses' gradients is the gradient of the whole minibatch's mean loss. A rank left without rows
    (minibatch smaller than the world) computes one row with weight 0, so every rank runs the same collectives."""
    w = w or _WORLD
    if w.size == 1:
        return minibatch, 1.0
    part = torch.tensor_split(minibatch, w.size)[w.rank]
    if part.numel() == 0:
        return minibatch[:1], 0.0
    return part, part.numel() * w.size / minibatch.numel()


# --------------------------------------------------------------------------------------------- collectives


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _WORLD.backend == "nccl" else torch.device("cpu")


def as_rank_failure(exc: BaseException, what: str = "a collective") -> RankFailure | None:
    """`exc` as a RankFailure when it is one or comes from the communication backend (DistBackendError, gloo's
    'Connection closed/reset by peer', timeouts; also raised inside DDP's gradient all-reduce), else None."""
    if isinstance(exc, RankFailure):
        return exc
    if not _WORLD.enabled or not isinstance(exc, RuntimeError):
        return None
    text = str(exc).strip()
    backend = isinstance(exc, getattr(dist, "DistBackendError", ())) or any(
        key in text for key in ("gloo", "NCCL", "by peer", "Timed out", "timed out", "ProcessGroup")
    )
    if not backend:
        return None
    first = text.splitlines()[0].split(" This is typically")[0][:200] if text else type(exc).__name__
    return RankFailure(
        f"rank {_WORLD.rank}: {what} across {_WORLD.size} ranks failed, another rank died or hung ({first})"
    )


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:
        failure = as_rank_failure(exc, what)
        if failure is None or failure is exc:
            raise
        raise failure from exc


def all_gather_rows(t: torch.Tensor, counts: Sequence[int], dim: int = 0) -> torch.Tensor:
    """Concatenate, in rank order along `dim`, every rank's `t` (rank r's holds `counts[r]` rows there; the other
    dims agree). Unequal counts are padded for the transfer. Returns a tensor on t's device."""
    if not _WORLD.enabled:
        return t
    if t.shape[dim] != counts[_WORLD.rank]:
        raise ValueError(
            f"all_gather_rows: this rank's tensor has {t.shape[dim]} rows along dim {dim}, "
            f"expected counts[{_WORLD.rank}]={counts[_WORLD.rank]}"
        )
    most = max(counts)
    x = t.to(_comm_device()).movedim(dim, 0).contiguous()
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in range(_WORLD.size)]
    with _collective("all_gather"):
        dist.all_gather(parts, x)
    out = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
    return out.movedim(0, dim).to(t.device)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum ('sum') or maximum ('max') of `t` over the ranks (a new tensor on t's device)."""
    if not _WORLD.enabled:
        return t
    x = t.to(_comm_device()).clone()
    with _collective(f"all_reduce({op})"):
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return x.to(t.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not _WORLD.enabled:
        return flag
    return bool(all_reduce(torch.tensor([float(flag)]), "max").item() > 0)


def barrier(what: str = "barrier") -> None:
    if _WORLD.enabled:
        with _collective(what):
            dist.barrier()


# --------------------------------------------------------------------------------------------- gradient sync


def wrap_model(
    model: nn.Module, *, lora: bool, device: torch.device, extra_sharded: Sequence[nn.Module] = ()
) -> nn.Module:
    """The module to train with: itself on one process; DDP (LoRA: small gradients, replicated weights) or FSDP2
    `fully_shard` per transformer block and at the root (full fine-tuning: sharded weights, gradients and
    optimiser state). FSDP2 shards in place (the returned module is `model`); `extra_sharded` (e.g. a frozen
    reference copy) is sharded the same way, since every forward of a sharded module is a collective."""
    if not _WORLD.enabled:
        return model
    if lora:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # No buffer broadcast: rollout forwards (no grad) then run no collective, so ranks may do unequal numbers.
        ids = [device.index] if device.type == "cuda" else None
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else {"broadcast_buffers": False}
        )
        ddp = DDP(model, device_ids=ids, **no_sync)
        _SHARDING[id(ddp)] = "ddp"
        return ddp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (_WORLD.size,))
    for m in (model, *extra_sharded):
        for block in getattr(m, "transformer_blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(m, mesh=mesh)
    _SHARDING[id(model)] = "fsdp"
    return model


def is_sharded(module: nn.Module) -> bool:
    return _SHARDING.get(id(module)) == "fsdp"


@contextlib.contextmanager
def grad_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, backward passes through `module` (as `wrap_model` returned it, not compiled) synchronise
    gradients across ranks only if `enabled` (gradient accumulation: sync on an optimiser step's last micro-step)."""
    kind = _SHARDING.get(id(module))
    if kind == "ddp" and not enabled:
        with module.no_sync():
            yield
    elif kind == "fsdp":
        module.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


# --------------------------------------------------------------------------------------------- full states


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2-sharded DTensor (a collective: every rank must call it); others as they are."""
    if _is_dtensor(t):
        with _collective("gathering a sharded tensor"):
            return t.full_tensor()
    return t


def full_state(obj: Any) -> Any:
    """`obj` (nested dicts / lists, e.g. an optimizer state_dict) with every DTensor replaced by its full tensor:
    the same layout one process would produce, so a checkpoint loads on any number of ranks."""
    if isinstance(obj, dict):
        return {k: full_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [full_state(v) for v in obj]
    return full_tensor(obj) if isinstance(obj, torch.Tensor) else obj


def _distribute_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device_mesh.device_type).to(like.dtype), like.device_mesh, like.placements)


def copy_full_into(dst: torch.Tensor, full: torch.Tensor) -> None:
    """`dst.copy_(full)` for a plain or an FSDP2-sharded `dst` (then each rank keeps its shard of `full`)."""
    with torch.no_grad():
        if _is_dtensor(dst):
            dst.copy_(_distribute_like(full, dst))
        else:
            dst.copy_(full.to(dst.device, dst.dtype))


def localize_optimizer_state(state: dict[str, Any], params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """A one-process optimizer state_dict (`full_state`) made loadable by an optimizer over `params`: per-parameter
    tensors of a sharded parameter's full shape become DTensors sharded like it."""
    if not any(_is_dtensor(p) for p in params):
        return state
    out = dict(state)
    out["state"] = {}
    for key, per_param in state["state"].items():
        p = params[int(key)]
        out["state"][key] = {
            k: _distribute_like(v, p)
            if _is_dtensor(p) and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape)
            else v
            for k, v in per_param.items()
        }
    return out


# --------------------------------------------------------------------------------------------- launching


def under_launcher() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the torch.distributed env)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: Sequence[str]) -> NoReturn:
    """Replace this process with `torchrun --standalone --nproc-per-node nproc -m vgpo_fast.cli train *argv`
    (one node; for several nodes run torchrun yourself, see docs/distributed.md)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "vgpo_fast.cli",
        "train",
        *argv,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
