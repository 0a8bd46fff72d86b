"""Checkpoint files that survive being killed at any moment.

A checkpoint file is written to a temporary name, fsynced and renamed into place; its first line holds a SHA-256 of
the payload, so a truncated or corrupted file is detected on load and the previous checkpoint is used instead.
`CheckpointDir` keeps the newest few of a training run (`ckpt-<step>.pt`)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path

import torch

from bar import UserError

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


def read_generator_checkpoint(path: str | Path, map_location="cpu"):
    """A generator checkpoint: this project's (written by `save_atomic`: checksum verified) or any torch file, e.g.
    the release's state dict (memory-mapped: a 4 GB file costs nothing until its tensors are read). One-line
    UserError when it is not a checkpoint or is damaged."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC))
    try:
        if head == MAGIC:
            return load_verified(path, map_location)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=True)
    except CorruptCheckpoint as err:
        raise UserError(f"checkpoint {err} (damaged: copy it again)") from None
    except Exception as err:   # pickle / zip / EOF errors of a file that is not (or no longer) a torch checkpoint
        raise UserError(f"checkpoint {path} is not a readable torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else 'truncated?'})") from None
