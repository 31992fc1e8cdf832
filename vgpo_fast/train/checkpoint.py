"""Atomic, validated training checkpoints.

Layout: `<run_dir>/checkpoints/step_<NNNNNN>/` with
  trainable.safetensors   the trainable weights
  optimizer.pt            optimizer.state_dict() (torch.save; loaded with weights_only=True)
  extra.safetensors       optional extra tensors (e.g. EMA weights)
  state.json              {"format", "step", "config", "rng", "user", "files": {name: {"bytes", "sha256"}},
                           "state_sha256"}: sizes and hashes of the files above, and a hash of itself
and `<run_dir>/checkpoints/latest`, the name of the newest checkpoint directory.

A save writes everything into `checkpoints/.tmp-step_<N>-<random>/`, fsyncs it, renames it to its final name and
only then moves `latest`: a writer killed at any point leaves the previous checkpoint intact and current. Loading
re-hashes every file, so a truncated or corrupt checkpoint is an error rather than a silently different run.
One writer per run directory is assumed (a save deletes other writers' `.tmp-*` directories).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

__all__ = ["Checkpoint", "CheckpointError", "latest_checkpoint", "load_checkpoint", "restore_rng", "save_checkpoint"]

FORMAT = 1
STATE = "state.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
EXTRA = "extra.safetensors"
LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d+)$")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. `rng` holds the saved random states (restore them with `restore_rng`)."""

    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    config: dict[str, Any]
    user: dict[str, Any] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- RNG states


def _bytes_to_text(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().contiguous().numpy().tobytes()).decode("ascii")


def _text_to_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _jsonable(obj: Any) -> Any:
    """numpy bit-generator states hold arrays and numpy ints; JSON gets tagged lists and Python ints."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _from_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_jsonable(v) for v in obj]
    return obj


def _capture_rng(generators: dict[str, torch.Generator | np.random.Generator] | None) -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    rng: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": _bytes_to_text(torch.get_rng_state()),
        # Only when this process already uses CUDA: querying it would otherwise create contexts on every device.
        "cuda": (
            [_bytes_to_text(s) for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else []
        ),
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            rng["generators"][name] = {
                "kind": "torch",
                "device": str(gen.device),
                "state": _bytes_to_text(gen.get_state()),
            }
        elif isinstance(gen, np.random.Generator):
            rng["generators"][name] = {"kind": "numpy", "state": _jsonable(gen.bit_generator.state)}
        else:
            raise TypeError(
                f"generators[{name!r}] must be a torch.Generator or numpy.random.Generator, got {type(gen).__name__}"
            )
    return rng


def restore_rng(ckpt: Checkpoint, generators: dict[str, torch.Generator | np.random.Generator] | None = None) -> None:
    """Restore Python's, numpy's, torch's (and CUDA's, when saved and present) global RNGs and, in place, each
    named generator: the random streams continue exactly as after the save."""
    rng = ckpt.rng
    saved = rng.get("generators", {})
    for name, gen in (generators or {}).items():  # check everything before changing anything
        if name not in saved:
            raise CheckpointError(
                f"generator {name!r} is not in checkpoint {ckpt.path} (it has: {', '.join(sorted(saved)) or 'none'})"
            )
        if isinstance(gen, torch.Generator):
            want = "torch"
        elif isinstance(gen, np.random.Generator):
            want = "numpy"
        else:
            raise TypeError(
                f"generators[{name!r}] must be a torch.Generator or numpy.random.Generator, got {type(gen).__name__}"
            )
        if saved[name]["kind"] != want:
            raise CheckpointError(
                f"generator {name!r} was saved as a {saved[name]['kind']} generator, "
                f"but a {want} generator was given to restore it"
            )
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    nps = rng["numpy"]
    np.random.set_state(
        (nps["kind"], np.asarray(nps["keys"], dtype=np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    )
    torch.set_rng_state(_text_to_bytes(rng["torch"]))
    if rng.get("cuda") and torch.cuda.is_available():
        for i, state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_text_to_bytes(state), i)
    for name, gen in (generators or {}).items():
        entry = saved[name]
        try:
            if isinstance(gen, torch.Generator):
                gen.set_state(_text_to_bytes(entry["state"]))
            else:
                gen.bit_generator.state = _from_jsonable(entry["state"])
        except (RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"generator {name!r}: the saved state does not fit the given generator ({e})") from e


# ---------------------------------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(path: Path) -> dict[str, Any]:
    """fsync a written file and return its size and sha256 (read back in 1 MiB chunks, so memory stays flat)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _tensors_for_save(tensors: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        out[name] = t.detach().contiguous()
    return out


def _state_checksum(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories under `root` (a state.json is written last), sorted by step."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _remove_leftovers(root: Path) -> None:
    """Delete `.tmp-*` / `.old-*` directories and files left by a killed writer."""
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".old-")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    config: dict[str, Any],
    user: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    generators: dict[str, torch.Generator | np.random.Generator] | None = None,
    keep: int | None = 3,
) -> Path:
    """Write `<run_dir>/checkpoints/step_<step:06d>/` atomically, point `latest` at it and prune to `keep`.

    `config` and `user` must be JSON-serialisable. The global RNG states and the named `generators` are saved.
    `keep`: how many checkpoints to leave (the one just written always stays); None keeps all. Returns the path.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
    trainable = _tensors_for_save(trainable, "trainable")
    extra = _tensors_for_save(extra_tensors, "extra_tensors") if extra_tensors else None
    state: dict[str, Any] = {
        "format": FORMAT,
        "step": step,
        "config": config,
        "rng": _capture_rng(generators),
        "user": user or {},
    }
    try:  # fail before touching the disk
        json.dumps({"config": config, "user": user or {}})
    except (TypeError, ValueError) as e:
        raise ValueError(f"config and user must be JSON-serialisable: {e}") from e

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = f"step_{step:06d}"
    tmp = root / f".tmp-{name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = {}
        safetensors.torch.save_file(trainable, str(tmp / TRAINABLE), metadata={"format": str(FORMAT)})
        files[TRAINABLE] = _seal(tmp / TRAINABLE)
        with open(tmp / OPTIMIZER, "wb") as f:
            torch.save(optimizer_state, f)
        files[OPTIMIZER] = _seal(tmp / OPTIMIZER)
        if extra is not None:
            safetensors.torch.save_file(extra, str(tmp / EXTRA), metadata={"format": str(FORMAT)})
            files[EXTRA] = _seal(tmp / EXTRA)
        state["files"] = files
        state["state_sha256"] = _state_checksum(state)
        with open(tmp / STATE, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)

        final = root / name
        if final.exists():
            # Replacing a checkpoint of the same step: move the old one aside first, so that a crash in between
            # leaves either checkpoint complete (latest_checkpoint falls back to the highest complete step).
            old = root / f".old-{name}-{secrets.token_hex(4)}"
            os.rename(final, old)
            os.rename(tmp, final)
            _fsync_dir(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    pointer = root / f".tmp-latest-{secrets.token_hex(4)}"
    pointer.write_text(name + "\n", encoding="utf-8")
    with open(pointer, "rb") as f:
        os.fsync(f.fileno())
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)

    if keep is not None:
        others = [p for _, p in _step_dirs(root) if p.name != name]
        for p in others[: max(0, len(others) - (keep - 1))]:
            # Rename first: a crash during rmtree must not leave a half-deleted step_* that looks complete.
            doomed = root / f".old-{p.name}-{secrets.token_hex(4)}"
            os.rename(p, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint directory named by `checkpoints/latest`, else the highest complete `step_*`; None if none."""
    root = Path(run_dir) / "checkpoints"
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _STEP_RE.match(name) and (root / name / STATE).is_file():
        return root / name
    found = _step_dirs(root)
    return found[-1][1] if found else None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory, verifying every file's size and sha256 against state.json.

    Anything missing, truncated, corrupt or unreadable raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    state_path = path / STATE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} is missing: {path} is incomplete or not a checkpoint")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_path}: unreadable JSON ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: expected a JSON object, got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path}: unsupported format {state.get('format')!r} (this code reads {FORMAT})")
    if state.get("state_sha256") != _state_checksum(state):
        raise CheckpointError(f"{state_path}: checksum mismatch (the file was modified or corrupted)")
    files = state.get("files")
    if not isinstance(files, dict) or TRAINABLE not in files or OPTIMIZER not in files:
        raise CheckpointError(f"{state_path}: 'files' must list {TRAINABLE} and {OPTIMIZER}")
    for fname, meta in files.items():
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath} is missing")
        size, digest = _digest(fpath)
        if size != meta["bytes"]:
            raise CheckpointError(f"{fpath}: {size} bytes, expected {meta['bytes']} (truncated or overwritten)")
        if digest != meta["sha256"]:
            raise CheckpointError(f"{fpath}: sha256 mismatch (corrupt): {digest}, expected {meta['sha256']}")

    trainable = _load_tensors(path / TRAINABLE)
    extra = _load_tensors(path / EXTRA) if EXTRA in files else {}
    try:
        optimizer_state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{path / OPTIMIZER}: cannot be loaded with weights_only=True ({e})") from e
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        trainable=trainable,
        optimizer_state=optimizer_state,
        config=state.get("config", {}),
        user=state.get("user", {}),
        extra_tensors=extra,
        rng=state.get("rng", {}),
    )
