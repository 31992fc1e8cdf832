"""Per-iteration metrics: one JSON object per line in `metrics.jsonl`, optionally mirrored to TensorBoard.

A record is a dict with an int "iteration" and values that are numbers, strings, lists of numbers (e.g.
`instant_reward` [T], the mean one-step-projection reward at each denoising step) or nested dicts of numbers (e.g.
`timings`, seconds per phase). Non-finite floats are written as null, so every line is strict JSON.

Durability: each line is flushed and fsync'ed as it is written, so a SIGKILL loses at most that line. A killed run
may have logged iterations past its last checkpoint; `MetricsWriter(..., resume_from_iteration=N)` drops them (and
any partial last line) before appending, by rewriting the kept lines to a temporary file and `os.replace`-ing it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _clean(value: Any, name: str) -> Any:
    """`value` as plain JSON data; non-finite floats become None. Tensors and numpy values go through .tolist()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v, f"{name}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and numpy scalars, without importing either
        return _clean(value.tolist(), name)
    raise ValueError(
        f"metrics field {name!r} must be a number, string, list or dict of numbers, got {type(value).__name__}"
    )


def flatten_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric leaves of `record` as {tag: value}: nested dicts joined with "/", list items as `name/step_j`.

    "iteration", strings and None (non-finite values) are left out: {"timings": {"train": 1.5},
    "instant_reward": [0.1, 0.2]} -> {"timings/train": 1.5, "instant_reward/step_0": 0.1, "instant_reward/step_1": 0.2}.
    """
    out: dict[str, float] = {}

    def visit(tag: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{tag}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for j, v in enumerate(value):
                visit(f"{tag}/step_{j}", v)
        elif isinstance(value, (bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
            out[tag] = float(value)

    for key, value in record.items():
        if key != "iteration":
            visit(str(key), value)
    return out


def _scan(path: Path) -> tuple[list[tuple[bytes, dict[str, Any]]], bool]:
    """Parse a metrics file: ([(line bytes without newline, record)], whether a partial last line was ignored).

    Every newline-terminated non-blank line must be a JSON object (else ValueError naming file and line). The bytes
    after the last newline are a line cut short by a kill unless they parse as a JSON object.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    kept: list[tuple[bytes, dict[str, Any]]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: line {lineno} is not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {lineno} must be a JSON object, got {type(record).__name__}")
        kept.append((line, record))
    partial = False
    if tail.strip():
        try:
            record = json.loads(tail)
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            kept.append((tail, record))
        else:
            partial = True
    return kept, partial or (bool(tail) and not tail.strip())


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in file order, ignoring a partial final line (a killed writer).

    Raises ValueError naming the file and line number for a corrupt line anywhere before the last.
    """
    return [record for _, record in _scan(Path(path))[0]]


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """{"n", "mean", "std", "min", "max"} of `values`, ignoring None and NaN; std is the population std (ddof=0).

    With no values left, n is 0 and the statistics are None.
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = math.fsum(xs) / len(xs)
    var = math.fsum((x - mean) ** 2 for x in xs) / len(xs)
    return {"n": len(xs), "mean": mean, "std": math.sqrt(var), "min": min(xs), "max": max(xs)}


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; not every platform can open a directory, which is harmless there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rewrite(path: Path, lines: Iterator[bytes]) -> None:
    """Replace `path` with `lines` (each newline-terminated) atomically: a reader sees the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for line in lines:
                f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class MetricsWriter:
    """Appends one JSON line per `write(record)` to `path` (the metrics.jsonl file; parent folders are created).

    An existing file is appended to, after dropping a partial last line. With `resume_from_iteration=N`, records
    with iteration > N are dropped as well (the run is resuming from the checkpoint of iteration N).

    tensorboard_dir: also log every numeric leaf (see `flatten_scalars`) with the record's iteration as step, when
    `torch.utils.tensorboard` imports; otherwise skipped silently, `tensorboard_enabled` says which.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tensorboard_dir: str | os.PathLike | None = None,
        resume_from_iteration: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate(resume_from_iteration)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the writer's lifetime, closed in close()
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step hides the events a killed run logged past the checkpoint it resumes from.
                purge = None if resume_from_iteration is None else resume_from_iteration + 1
                self._tb = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=purge)

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def _truncate(self, resume_from_iteration: int | None) -> None:
        kept, partial = _scan(self.path)
        if resume_from_iteration is not None:
            for i, (_, record) in enumerate(kept):
                it = record.get("iteration")
                if not isinstance(it, int) or isinstance(it, bool):
                    raise ValueError(f"{self.path}: record {i} has no int 'iteration' (got {it!r}), cannot resume")
            n_before = len(kept)
            kept = [(line, r) for line, r in kept if r["iteration"] <= resume_from_iteration]
            changed = len(kept) != n_before
        else:
            changed = False
        ends_clean = self.path.read_bytes().endswith(b"\n") or self.path.stat().st_size == 0
        if partial or changed or not ends_clean:
            _rewrite(self.path, (line for line, _ in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` as one JSON line and make it durable; it must hold an int "iteration"."""
        if self._file.closed:
            raise ValueError(f"MetricsWriter for {self.path} is closed")
        clean = _clean(record, "record")
        it = clean.get("iteration") if isinstance(clean, dict) else None
        if not isinstance(it, int) or isinstance(it, bool):
            raise ValueError(f"record must hold an int 'iteration', got {it!r}")
        line = json.dumps(clean, allow_nan=False, separators=(",", ":")).encode() + b"\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for tag, value in flatten_scalars(clean).items():
                self._tb.add_scalar(tag, value, global_step=it)
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
