"""Files that survive being killed at any moment (checkpoints, cached artifacts).

A file is written to a temporary name, fsynced and renamed into place; its first line holds a SHA-256 of the payload,
so a truncated or corrupted file is detected on load (bar.training.checkpoints then falls back to the previous
checkpoint; bar.data.cache rebuilds the entry)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from bar import UserError


MAGIC = b"BARCKPT1 sha256="


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
