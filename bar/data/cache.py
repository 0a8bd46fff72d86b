"""Content-addressed artifacts (tokenizers, classifiers, codes, statistics), safe under concurrent jobs.

An entry is a folder `<root>/<kind>/<signature>/` that appears complete or not at all: it is built in a staging
folder under an exclusive file lock and renamed into place; jobs that want the same entry wait and reuse it. The ranks
of one job can build an entry together (`get_or_build_together`, e.g. sharded pretokenization), and long builds keep
resumable work in `work_path` (e.g. tokenizer training checkpoints).

Every entry carries the SHA-256 of each of its files (`checksums.json`, written before the rename). An entry is
checked before it is handed out, once per process while its files are unchanged (their size, mtime and inode), by
the process (rank 0) that takes it; one that fails (overwritten, truncated, a file missing) is removed and built
again. The check reads the entry once per job: a pretokenized ImageNet (1.28M images, 16-bit tokens, 256 per image,
two views: 1.32 GB) took 1.3 s to check and 1.6 s to record on one core of this machine (SHA-256 at ~1.1 GB/s; the
shards of several ranks are hashed in parallel threads), a later check in the same process 0.2 ms. Entries built
before entries carried checksums get theirs on first use, after their checkpoint files pass their own checksums.
Staging folders that a killed build left behind are removed by the next job that takes an entry of the same kind."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

from bar import UserError
from bar.core import distributed
from bar.core.files import CorruptCheckpoint, payload_problem, sha256_of

log = logging.getLogger("bar")
T = TypeVar("T")   # what an entry's `load` returns

CHECKSUMS = "checksums.json"    # {relative path: {"bytes": size, "sha256": hex}} of every other file of the entry
_STAGING = ".staging-"          # staging folders: .<sig>.staging-<random>
_OLD_STAGING = re.compile(r"^\.(?P<sig>.+)-[a-z0-9_]{8}$")   # .<sig>-<random> (tempfile's 8 characters)
_verified: dict[Path, tuple] = {}   # entry -> its files' (name, size, mtime, inode) when this process checked it


HELD = (errno.EWOULDBLOCK, errno.EAGAIN)     # flock's only answers for "another process holds it"


def _flock(handle, flags: int, path: Path) -> None:
    """fcntl.flock, with any error but "held" (a filesystem mounted without locks: ENOLCK, EOPNOTSUPP, EINVAL...) as a
    one-line UserError: taken for "held", every job would skip every point and build nothing."""
    try:
        fcntl.flock(handle, flags)
    except OSError as err:
        if err.errno in HELD:
            raise
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        raise UserError(f"cannot lock files in {path.parent} ({name}: {err.strerror}): its filesystem does not support "
                        "flock; mount it with locks (NFS: local_lock=flock or lock; Lustre: -o flock), or set "
                        "BAR_OUTPUTS (and paths.cache) to a folder on a filesystem that does") from None


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        _flock(handle, fcntl.LOCK_EX, path)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_lock(path: Path):
    """An exclusive, non-blocking lock on `path` (held while the handle is open); None if another process holds it,
    a one-line UserError if the filesystem cannot lock (_flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    try:
        _flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
    except OSError:                  # held (any other error is _flock's UserError)
        handle.close()
        return None
    except UserError:
        handle.close()
        raise
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


def work_path(root: str | Path, kind: str, sig: str) -> Path:
    """A folder for an entry's work in progress (e.g. training checkpoints) that survives the job building it, so
    the next job to build the same entry resumes where it stopped. Removed once the entry is complete."""
    return Path(root) / kind / f".work-{sig}"


# ----------------------------------------------------------------------------------------------------- checksums
def _entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def _hash_files(paths: list[Path]) -> list[str]:
    if len(paths) <= 1:
        return [sha256_of(p) for p in paths]
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(sha256_of, paths))


def write_checksums(folder: Path) -> None:
    """Record the size and SHA-256 of every file of the entry being built in `folder` (atomically)."""
    files = _entry_files(folder)
    record = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": digest}
              for p, digest in zip(files, _hash_files(files))}
    tmp = folder / f".{CHECKSUMS}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / CHECKSUMS)


def _fingerprint(folder: Path, names) -> tuple:
    stats = []
    for name in sorted(names):
        stat = (folder / name).stat()
        stats.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(stats)


def checksum_problem(folder: Path) -> str | None:
    """Why the entry at `folder` fails its checksums (None when it passes). Hashes its files once per process while
    they are unchanged; an entry without checksums (built before they existed) gets them, unless one of its
    checkpoint files fails its own checksum."""
    try:
        record = json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return _adopt(folder)
    except (OSError, ValueError) as err:
        return f"unreadable {CHECKSUMS} ({type(err).__name__})"
    if not isinstance(record, dict):
        return f"unreadable {CHECKSUMS} (not a mapping)"
    try:
        fingerprint = _fingerprint(folder, record)
    except OSError as err:
        return f"{Path(err.filename or '?').name} is missing"
    if _verified.get(folder) == fingerprint:
        return None
    for (name, expected), (_, size, _, _) in zip(sorted(record.items()), fingerprint):
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, {expected['bytes']} were written"
    names = sorted(record)
    for name, digest in zip(names, _hash_files([folder / n for n in names])):
        if digest != record[name]["sha256"]:
            return f"{name} fails its SHA-256 (overwritten or corrupted)"
    _verified[folder] = fingerprint
    return None


def _adopt(folder: Path) -> str | None:
    """Checksums for an entry built before entries carried them: recorded when its self-checking files pass."""
    for path in _entry_files(folder):
        problem = payload_problem(path)
        if problem:
            return problem
    try:
        write_checksums(folder)
        log.info("cache entry %s: checksums recorded (it was built before entries carried them)", folder)
    except OSError as err:     # a read-only cache is still usable
        log.warning("cache entry %s carries no checksums and none can be written (%s)", folder, err)
    return None


def _usable(final: Path, quiet: bool = False) -> bool:
    """The entry exists and passes its checksums."""
    if not final.is_dir():
        return False
    problem = checksum_problem(final)
    if problem and not quiet:
        log.warning("cache entry %s fails its checksum (%s): building it again", final, problem)
    return problem is None


def _discard(final: Path) -> None:
    _verified.pop(final, None)
    shutil.rmtree(final, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- staging
def _staging_sig(name: str, kind_dir: Path) -> str | None:
    """The signature whose staging folder `name` is (None: not a staging folder)."""
    if not name.startswith(".") or name.startswith(".work-"):
        return None
    if _STAGING in name:
        return name[1:name.rindex(_STAGING)]
    old = _OLD_STAGING.match(name)
    return old["sig"] if old and (kind_dir / f".{old['sig']}.lock").exists() else None


def clean_stale(kind_dir: Path, held: str | None = None) -> None:
    """Remove what killed builds left in `kind_dir`: staging folders, and work folders of entries that are complete.
    Each is removed under its entry's lock (`held`: the signature whose lock this process holds now), so nothing a
    running build uses is touched."""
    if not kind_dir.is_dir():
        return
    stale: dict[str, list[Path]] = {}
    for path in kind_dir.iterdir():
        sig = _staging_sig(path.name, kind_dir)
        if sig is None and path.name.startswith(".work-") and (kind_dir / path.name[len(".work-"):]).is_dir():
            sig = path.name[len(".work-"):]
        if sig is not None and path.is_dir():
            stale.setdefault(sig, []).append(path)
    for sig, paths in stale.items():
        handle = None if sig == held else try_lock(kind_dir / f".{sig}.lock")
        if sig != held and handle is None:
            continue                                   # its build is running now
        try:
            for path in paths:
                log.info("removing %s, left by a build that did not finish", path)
                shutil.rmtree(path, ignore_errors=True)
        finally:
            if handle is not None:
                handle.close()


def _new_staging(final: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{final.name}{_STAGING}", dir=final.parent))


def _complete(staging: Path, final: Path, work: Path) -> None:
    """Seal a built entry: its checksums, then the rename that publishes it; its work folder is no longer needed."""
    write_checksums(staging)
    staging.rename(final)
    shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- building
def get_or_build(root: str | Path, kind: str, sig: str, build: Callable[[Path], object]) -> tuple[Path, bool]:
    """The entry's folder, building it with `build(folder)` if absent or if it fails its checksums. Returns (folder,
    built_now)."""
    final = entry_path(root, kind, sig)
    if _usable(final, quiet=True):
        return final, False
    with file_lock(final.parent / f".{sig}.lock"):
        clean_stale(final.parent, held=sig)
        if _usable(final):  # built by another job while we waited
            return final, False
        _discard(final)
        staging = _new_staging(final)
        try:
            build(staging)
            _complete(staging, final, work_path(root, kind, sig))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final, True


def get_or_build_together(root: str | Path, kind: str, sig: str,
                          build: Callable[[Path], object]) -> tuple[Path, bool]:
    """`get_or_build` for the ranks of one job building one entry together: rank 0 checks the entry, holds the lock
    and picks the staging folder, every rank runs `build(staging)` (its share of the work), rank 0 seals it into
    place. All ranks must call it. Returns (folder, built_now) on every rank."""
    final = entry_path(root, kind, sig)
    if distributed.world_size() == 1:
        return get_or_build(root, kind, sig, build)
    lock, staging = None, None
    if distributed.is_main() and not _usable(final, quiet=True):
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = open(final.parent / f".{sig}.lock", "w")
        _flock(lock, fcntl.LOCK_EX, final.parent / f".{sig}.lock")
        clean_stale(final.parent, held=sig)
        if not _usable(final):
            _discard(final)
            staging = _new_staging(final)
    staging = distributed.broadcast_object(staging)
    try:
        if staging is not None:
            build(staging)
            distributed.barrier()
            if distributed.is_main():
                _complete(staging, final, work_path(root, kind, sig))
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
    """`load(folder)` of the entry, building it if absent (`together`: by all ranks of the job). An entry that fails
    its checksums, or that `load` cannot read (truncated, deleted while in use), is removed and built once more
    instead of failing every later launch. Returns (loaded, built_now)."""
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
                _discard(folder)
            if together:
                distributed.barrier()
    raise AssertionError("unreachable")


def verified_entry(root: str | Path, kind: str, sig: str) -> Path | None:
    """The entry's folder when it exists and passes its checksums; None when it does not exist. One that fails is
    removed and reported as a one-line UserError (for callers that cannot build it, e.g. sampling's tokenizer)."""
    final = entry_path(root, kind, sig)
    if not final.is_dir():
        return None
    problem = checksum_problem(final)
    if problem:
        _discard(final)
        raise UserError(f"cache entry {final} failed its checksum ({problem}) and was removed: run the stage that "
                        "builds it again")
    return final
