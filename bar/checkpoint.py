"""Checkpoints that survive being killed at any moment, and stopping cleanly on SLURM's signals.

- A checkpoint file is written to a temporary name, fsynced and renamed into place; its first line holds a SHA-256 of
  the payload, so a truncated or corrupted file is detected on load and the previous checkpoint is used instead.
- Stop requests: `install_stop_handlers()` (called inside SLURM jobs) turns SIGUSR1 (submitit's timeout/preemption
  signal) and SIGTERM (scancel, `scontrol requeue`, preemption) into a flag. A training loop that is running checks the
  flag after each optimizer step, writes a checkpoint at that consistent point and then calls `act_on_stop()`: for
  SIGUSR1 that is submitit's own handler (checkpoint the submission and requeue the job), for SIGTERM a plain exit
  (SLURM is already requeueing or cancelling the job). Outside a training loop the signal is acted on at once."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("bar")

MAGIC = b"BARCKPT1 sha256="
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


class CorruptCheckpoint(Exception):
    pass


# ----------------------------------------------------------------------------------------------------- files
def save_atomic(obj, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (temp file in the same folder + fsync + rename), with a checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_verified(path: str | Path, map_location="cpu"):
    """Load a file written by `save_atomic`; raises CorruptCheckpoint when it is truncated or altered."""
    data = Path(path).read_bytes()
    header, sep, payload = data.partition(b"\n")
    if not sep or not header.startswith(MAGIC):
        raise CorruptCheckpoint(f"{path}: not a checkpoint (no header)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC):]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


class CheckpointDir:
    """`folder/ckpt-<step>.pt`, newest last; keeps the `keep` newest (at least 2, so a corrupt last one has a
    predecessor)."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(2, int(keep))

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def path(self, step: int) -> Path:
        return self.folder / f"ckpt-{step:09d}.pt"

    def save(self, state: dict, step: int) -> Path:
        path = save_atomic(state, self.path(step))
        for old in self.steps()[:-self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def load_latest(self, map_location="cpu") -> dict | None:
        """The newest checkpoint that verifies; corrupt ones are reported, renamed aside and skipped."""
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return load_verified(path, map_location)
            except (CorruptCheckpoint, OSError, EOFError, RuntimeError) as err:
                log.warning("checkpoint %s is unusable (%s): falling back to the previous one", path, err)
                try:
                    path.rename(path.with_suffix(".corrupt"))
                except OSError:
                    pass
        return None

    def clear(self) -> None:
        for step in self.steps():
            self.path(step).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------- stop requests
_requested: int = 0           # signal number of a pending stop request, 0 when none
_original: dict[int, object] = {}
_training_depth = 0


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask a running training loop to checkpoint and stop at the end of its current step (tests call this too)."""
    global _requested
    _requested = int(signum)


def stop_requested() -> int:
    return _requested


def clear_stop() -> None:
    global _requested
    _requested = 0


def _handler(signum, frame):
    log.warning("received %s: %s", signal.Signals(signum).name,
                "checkpointing at the end of this step" if _training_depth else "stopping now")
    request_stop(signum)
    if not _training_depth:
        act_on_stop(signum)


def install_stop_handlers(signals=(signal.SIGUSR1, signal.SIGTERM)) -> None:
    """Route `signals` through the stop flag, remembering the handlers already installed (submitit's)."""
    for sig in signals:
        current = signal.getsignal(sig)
        if current is not _handler:
            _original[int(sig)] = current
            signal.signal(sig, _handler)


def act_on_stop(signum: int | None = None):
    """What the stop request asked for, once the state is safe on disk: submitit's requeue for SIGUSR1 (it exits the
    process on rank 0), else exit. Never returns."""
    signum = int(signum or _requested or signal.SIGTERM)
    original = _original.get(signum)
    if signum == signal.SIGUSR1 and callable(original):
        original(signum, None)   # submitit: checkpoint the submission, `scontrol requeue`, sys.exit
    raise SystemExit(128 + signum)


@contextmanager
def training_section():
    """While inside, a stop signal only sets the flag; the loop acts on it at a step boundary."""
    global _training_depth
    _training_depth += 1
    try:
        yield
    finally:
        _training_depth -= 1


# ----------------------------------------------------------------------------------------------------- point folders
def point_folder(cfg) -> Path:
    """Where one sweep point keeps what outlives a job: its MLflow run id (`run.json`), a lock, and its training
    checkpoints. Keyed by experiment and config signature, so a requeued job, or the same sweep launched again,
    finds it."""
    from bar.config import point_signature

    return Path(str(cfg.paths.outputs)) / "points" / str(cfg.experiment) / point_signature(cfg)
