"""Locks on shared filesystems: only "held by another process" (EWOULDBLOCK / EAGAIN) makes a point or a cache entry
someone else's; a filesystem that cannot lock at all (ENOLCK, EOPNOTSUPP, ...) is one line naming the folder, not
every point silently skipped."""

import errno
import fcntl

import pytest

from bar import UserError
from bar.data import cache


def _flock_raising(code):
    def flock(handle, flags):
        raise OSError(code, f"stand-in for {errno.errorcode[code]}")
    return flock


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL])
def test_a_filesystem_without_locks_is_one_line_naming_the_folder(code, tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _flock_raising(code))
    folder = tmp_path / "nfs" / "cache"
    for lock in (lambda: cache.try_lock(folder / ".sig.lock"),
                 lambda: cache.get_or_build(folder, "kind", "sig", lambda f: None)):
        with pytest.raises(UserError) as err:
            lock()
        message = str(err.value)
        assert "\n" not in message and str(folder) in message and errno.errorcode[code] in message
        assert "BAR_OUTPUTS" in message and "flock" in message


def test_a_lock_held_elsewhere_is_none(tmp_path, monkeypatch):
    held = cache.try_lock(tmp_path / ".sig.lock")               # a real lock held by another open file
    assert held is not None
    try:
        assert cache.try_lock(tmp_path / ".sig.lock") is None
        assert cache.is_locked(tmp_path / ".sig.lock")
    finally:
        held.close()
    assert not cache.is_locked(tmp_path / ".sig.lock")
    for code in (errno.EWOULDBLOCK, errno.EAGAIN):
        monkeypatch.setattr(fcntl, "flock", _flock_raising(code))
        assert cache.try_lock(tmp_path / ".other.lock") is None
