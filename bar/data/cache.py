"""Content-addressed artifacts (tokenizers, classifiers, codes, statistics), safe under concurrent jobs.

An entry is a folder `<root>/<kind>/<signature>/` that appears complete or not at all: it is built in a temporary
folder under an exclusive file lock and renamed into place; jobs that want the same entry wait and reuse it. The ranks
of one job can build an entry together (`get_or_build_together`, e.g. sharded pretokenization), and long builds keep
resumable work in `work_path` (e.g. tokenizer training checkpoints)."""

from __future__ import annotations

import fcntl
import logging
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

from bar import UserError
from bar.core import distributed
from bar.core.files import CorruptCheckpoint

log = logging.getLogger("bar")
T = TypeVar("T")   # what an entry's `load` returns


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_lock(path: Path):
    """An exclusive, non-blocking lock on `path` (held while the handle is open); None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock on `path` now."""
    if not path.exists():
        return False
    handle = try_lock(path)
    if handle is None:
        return True
    handle.close()
    return False


def entry_path(root: str | Path, kind: str, sig: str) -> Path:
    return Path(root) / kind / sig


def get_or_build(root: str | Path, kind: str, sig: str, build: Callable[[Path], object]) -> tuple[Path, bool]:
    """The entry's folder, building it with `build(folder)` if absent. Returns (folder, built_now)."""
    final = entry_path(root, kind, sig)
    if final.is_dir():
        return final, False
    with file_lock(final.parent / f".{sig}.lock"):
        if final.is_dir():  # built by another job while we waited
            return final, False
        staging = Path(tempfile.mkdtemp(prefix=f".{sig}-", dir=final.parent))
        try:
            build(staging)
            staging.rename(final)
            shutil.rmtree(work_path(root, kind, sig), ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final, True


def work_path(root: str | Path, kind: str, sig: str) -> Path:
    """A folder for an entry's work in progress (e.g. training checkpoints) that survives the job building it, so
    the next job to build the same entry resumes where it stopped. Removed once the entry is complete."""
    return Path(root) / kind / f".work-{sig}"


def get_or_build_together(root: str | Path, kind: str, sig: str,
                          build: Callable[[Path], object]) -> tuple[Path, bool]:
    """`get_or_build` for the ranks of one job building one entry together: rank 0 holds the lock and picks the
    staging folder, every rank runs `build(staging)` (its share of the work), rank 0 renames it into place. All ranks
    must call it. Returns (folder, built_now) on every rank."""
    final = entry_path(root, kind, sig)
    if distributed.world_size() == 1:
        return get_or_build(root, kind, sig, build)
    lock, staging = None, None
    if distributed.is_main() and not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = open(final.parent / f".{sig}.lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f".{sig}-", dir=final.parent))
    staging = distributed.broadcast_object(staging)
    try:
        if staging is not None:
            build(staging)
            distributed.barrier()
            if distributed.is_main():
                staging.rename(final)
                shutil.rmtree(work_path(root, kind, sig), ignore_errors=True)
        distributed.barrier()
    except BaseException:
        if staging is not None and distributed.is_main():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.close()
    return final, staging is not None


def load_or_rebuild(root: str | Path, kind: str, sig: str, build: Callable[[Path], object],
                    load: Callable[[Path], T], together: bool = False) -> tuple[T, bool]:
    """`load(folder)` of the entry, building it if absent (`together`: by all ranks of the job). An entry that cannot
    be loaded (fails its checksum, truncated, deleted while in use) is removed and built once more instead of failing
    every later launch. Returns (loaded, built_now)."""
    getter = get_or_build_together if together else get_or_build
    for attempt in range(2):
        folder, built = getter(root, kind, sig, build)
        try:
            return load(folder), built
        except (CorruptCheckpoint, OSError, EOFError, RuntimeError, pickle.UnpicklingError, UserError) as err:
            if attempt:
                raise
            log.warning("cache entry %s is unusable (%s): building it again", folder, err)
            if distributed.is_main():
                shutil.rmtree(folder, ignore_errors=True)
            if together:
                distributed.barrier()
    raise AssertionError("unreachable")
