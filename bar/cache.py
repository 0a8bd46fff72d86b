"""Content-addressed artifacts (tokenizers, classifiers, codes, statistics), safe under concurrent jobs.

An entry is a folder `<root>/<kind>/<signature>/` that appears complete or not at all: it is built in a temporary
folder under an exclusive file lock and renamed into place; jobs that want the same entry wait and reuse it."""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry_path(root: str | Path, kind: str, sig: str) -> Path:
    return Path(root) / kind / sig


def is_cached(root: str | Path, kind: str, sig: str) -> bool:
    return entry_path(root, kind, sig).is_dir()


def get_or_build(root: str | Path, kind: str, sig: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
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
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final, True
