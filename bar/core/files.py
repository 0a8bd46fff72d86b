"""Files that survive being killed at any moment (checkpoints, cached artifacts), and the facts about files the
harness checks before work.

A file is written to a temporary name, fsynced and renamed into place; its first line holds a SHA-256 of the payload,
so a truncated or corrupted file is detected on load (bar.training.checkpoints then falls back to the previous
checkpoint; bar.data.cache rebuilds the entry). A write that fails (a full disk) leaves nothing behind: the
temporary file is removed and the file it was to replace is untouched.

    save_atomic(obj, path)            load_verified(path)            payload_problem(path) -> str | None
    sha256_of(path) -> hex            file_identity(path) -> {bytes, mtime_ns} | None
    folder_problem(folder) -> str | None    (why a folder cannot be written or created)
    disk_full(error) -> error | None        (the 'no space left' behind an error, if any)"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sqlite3
from pathlib import Path

import torch

from bar import UserError


MAGIC = b"BARCKPT1 sha256="
_CHUNK = 1 << 22     # bytes hashed per read


class CorruptCheckpoint(Exception):
    pass


# ----------------------------------------------------------------------------------------------------- files
def save_atomic(obj, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (temp file in the same folder + fsync + rename), with a checksum. On
    any error (e.g. ENOSPC) the temp file is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)            # a failed write says which file (e.g. ENOSPC)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems refuse to fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def is_temporary(path: Path) -> bool:
    """Whether `path` is the temp file of a `save_atomic` that did not finish (its process was killed)."""
    return path.name.startswith(".") and ".tmp-" in path.name


def load_verified(path: str | Path, map_location="cpu"):
    """Load a file written by `save_atomic`; raises CorruptCheckpoint when it is truncated or altered."""
    data = Path(path).read_bytes()
    header, sep, payload = data.partition(b"\n")
    if not sep or not header.startswith(MAGIC):
        raise CorruptCheckpoint(f"{path}: not a checkpoint (no header)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC):]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


def payload_problem(path: str | Path) -> str | None:
    """For a file that starts with `save_atomic`'s header: why its payload fails the checksum (None when it passes,
    or when the file carries no header), without loading it."""
    with open(path, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            return None
        header = MAGIC + handle.readline(128)
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest().encode() != header[len(MAGIC):].rstrip(b"\n"):
        return f"{path}: checksum mismatch (truncated or corrupted)"
    return None


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (hashlib releases the GIL: threads hash files in parallel)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_identity(path: str | Path) -> dict | None:
    """What identifies a file's content cheaply: its size and modification time (ns); None when it does not
    exist. Replacing the file (cp, mv, a new save) changes it; reading it does not."""
    try:
        stat = Path(path).expanduser().stat()
    except OSError:
        return None
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def folder_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot be written, or created in its nearest existing parent (None when it can); creates
    nothing. The answer holds for root too: a read-only mount or an immutable folder is not writable."""
    probe = Path(folder).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def disk_full(error: BaseException | None) -> BaseException | None:
    """The 'no space left' error behind `error` (itself, or what it was raised from or during): an OSError ENOSPC or
    EDQUOT (a quota), or sqlite's SQLITE_FULL (an MLflow store on the full disk); None when it was something else."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


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
