"""Files that survive being killed at any moment (checkpoints, cached artifacts), and the facts about files the
harness checks before work.

A file is a plain torch file (`torch.load(path)` reads it) with its SHA-256 beside it in `<name>.sha256`
(`sha256sum -c` format). torch.save streams into a temp file through a hashing writer (the state is never copied
in memory), which is fsynced and renamed into place, the checksum file likewise. A truncated or corrupted file is
detected on load (bar.training.checkpoints then falls back to the previous checkpoint; bar.data.cache rebuilds the
entry). A write that fails (a full disk) leaves nothing behind: the temporary files are removed and the file it was
to replace is untouched. Files of the earlier format (a `BARCKPT1 sha256=` line, then the torch file, e.g. in
caches built before) still load and verify.

    save_atomic(obj, path)            load_verified(path)            payload_problem(path) -> str | None
    checksum_path(path) -> Path       checksum_of(path) -> (hex | None, offset)       has_header(path) -> bool
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
from typing import BinaryIO, cast

import torch

from bar import UserError


MAGIC = b"BARCKPT1 sha256="   # the earlier format's first line
SIDECAR = ".sha256"          # the checksum file beside each file
_CHUNK = 1 << 22     # bytes hashed per read


class CorruptCheckpoint(Exception):
    pass


# ----------------------------------------------------------------------------------------------------- files
def checksum_path(path: str | Path) -> Path:
    """Where the SHA-256 of the file at `path` is kept: `<name>.sha256` beside it."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR)


class _HashingWriter:
    """A file that hashes what torch.save writes through it (torch hands it memoryviews of the storages: nothing is
    copied), so the checksum costs no second read of the file."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _save_synced(obj, tmp: Path) -> str:
    """torch.save `obj` streamed into `tmp`, fsynced; the SHA-256 of what was written."""
    with open(tmp, "wb") as handle:
        writer = _HashingWriter(handle)
        torch.save(obj, cast(BinaryIO, writer))     # torch needs only write and flush
        handle.flush()
        os.fsync(handle.fileno())
    return writer.digest.hexdigest()


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (temp files in the same folder + fsync + rename), its SHA-256 in
    `checksum_path(path)`. Both are written in full before either is renamed: on any error (e.g. ENOSPC) the temp
    files are removed and `path` keeps its old content and checksum; the checksum is renamed first, so a new file
    never appears without it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = checksum_path(path)
    tmp, tmp_sum = (p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in (path, sidecar))
    try:
        digest = _save_synced(obj, tmp)
        _write_synced(tmp_sum, f"{digest}  {path.name}\n".encode())     # sha256sum -c reads it
        os.replace(tmp_sum, sidecar)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
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


def has_header(path: str | Path) -> bool:
    """Whether the file starts with the earlier format's checksum line."""
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def load_verified(path: str | Path, map_location="cpu"):
    """Load a file written by `save_atomic` (either format); raises CorruptCheckpoint when it is truncated or
    altered, or carries no checksum (its write did not finish, or it is no file of this project's)."""
    if has_header(path):
        return _load_with_header(path, map_location)
    if not checksum_path(path).is_file():
        raise CorruptCheckpoint(f"{path}: no checksum beside it ({checksum_path(path).name} is missing)")
    problem = payload_problem(path)
    if problem:
        raise CorruptCheckpoint(problem)
    return torch.load(path, map_location=map_location, weights_only=False)


def _load_with_header(path: str | Path, map_location):
    """The earlier format: the checksum line, then the torch file."""
    data = Path(path).read_bytes()
    header, sep, payload = data.partition(b"\n")
    if not sep or not header.startswith(MAGIC):
        raise CorruptCheckpoint(f"{path}: not a checkpoint (no header)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC):]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


def checksum_of(path: str | Path) -> tuple[str | None, int]:
    """The SHA-256 the file should have and the offset its hashed bytes start at: the header's (earlier format:
    after the line) or the checksum file's (from 0); (None, 0) when it carries neither."""
    with open(path, "rb") as handle:
        if handle.read(len(MAGIC)) == MAGIC:
            line = handle.readline(128)
            return line.rstrip(b"\n").decode(errors="replace"), len(MAGIC) + len(line)
    try:
        text = checksum_path(path).read_text(errors="replace")
    except FileNotFoundError:
        return None, 0
    return (text.split() or [""])[0], 0


def payload_problem(path: str | Path) -> str | None:
    """Why the file fails its checksum (its header's or the one beside it), streamed, without loading it; None when
    it passes or carries no checksum."""
    expected, offset = checksum_of(path)
    if expected is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected:
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
    """A generator checkpoint: this project's (written by `save_atomic`: checksum verified when it is there) or any
    torch file, e.g. the release's state dict (memory-mapped: a 4 GB file costs nothing until its tensors are read).
    One-line UserError when it is not a checkpoint or is damaged."""
    path = Path(path)
    try:
        if has_header(path):
            return load_verified(path, map_location)
        problem = payload_problem(path)
        if problem:
            raise CorruptCheckpoint(problem)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=True)
    except CorruptCheckpoint as err:
        raise UserError(f"checkpoint {err} (damaged: copy it again)") from None
    except Exception as err:   # pickle / zip / EOF errors of a file that is not (or no longer) a torch checkpoint
        raise UserError(f"checkpoint {path} is not a readable torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else 'truncated?'})") from None
