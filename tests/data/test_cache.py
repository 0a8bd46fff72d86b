"""The content-addressed cache keeps its promise: every entry carries checksums, checked before it is handed out (once
per process while its files are unchanged); an entry that fails them is built again; what killed builds leave behind
is cleaned by the next one; a cache entry nobody can rebuild here is one line."""

import json
import os

import numpy as np
import pytest

from bar import UserError
from bar.core.files import save_atomic
from bar.data import cache
from bar.data.cache import CHECKSUMS, entry_path, get_or_build, load_or_rebuild, work_path


class Builds:
    """A build function that writes two files and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, folder):
        self.calls += 1
        (folder / "payload.bin").write_bytes(bytes(range(256)) * 64)
        save_atomic({"weights": list(range(100))}, folder / "model.pt")


def _entry(tmp_path):
    build = Builds()
    folder, built = get_or_build(tmp_path, "kind", "sig", build)
    assert built and build.calls == 1
    return folder, build


def _overwrite(path):
    path.write_bytes(os.urandom(path.stat().st_size))          # same size, other bytes


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


DAMAGE = {
    "payload-overwritten-same-size": lambda f: _overwrite(f / "payload.bin"),
    "payload-truncated": lambda f: _truncate(f / "payload.bin"),
    "checkpoint-overwritten-same-size": lambda f: _overwrite(f / "model.pt"),
    "file-deleted": lambda f: (f / "model.pt").unlink(),
    "checksums-garbage": lambda f: (f / CHECKSUMS).write_text("{not json"),
    "checksums-of-other-content": lambda f: (f / CHECKSUMS).write_text(json.dumps(
        {name: {**v, "sha256": "0" * 64} for name, v in json.loads((f / CHECKSUMS).read_text()).items()})),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_built_again(damage, tmp_path, caplog):
    folder, build = _entry(tmp_path)
    original = (folder / "payload.bin").read_bytes()
    DAMAGE[damage](folder)
    again, built = get_or_build(tmp_path, "kind", "sig", build)
    assert built and build.calls == 2 and again == folder
    assert (folder / "payload.bin").read_bytes() == original
    assert any("building it again" in r.getMessage() for r in caplog.records)
    assert get_or_build(tmp_path, "kind", "sig", build) == (folder, False)     # and now it passes


def test_an_intact_entry_is_hashed_once_per_process_until_its_files_change(tmp_path, monkeypatch):
    folder, build = _entry(tmp_path)
    hashed = []
    real = cache.sha256_of
    monkeypatch.setattr(cache, "sha256_of", lambda p: hashed.append(p.name) or real(p))
    cache._verified.clear()                                   # a new process
    for _ in range(3):
        assert get_or_build(tmp_path, "kind", "sig", build) == (folder, False)
    assert sorted(hashed) == ["model.pt", "model.pt.sha256", "payload.bin"]   # checked once, not on every use
    _overwrite(folder / "payload.bin")                        # changed after this process checked it
    assert get_or_build(tmp_path, "kind", "sig", build)[1] and build.calls == 2


def test_an_entry_built_before_checksums_gets_them_unless_its_checkpoint_fails(tmp_path):
    folder, build = _entry(tmp_path)
    (folder / CHECKSUMS).unlink()                             # as entries were written before
    cache._verified.clear()
    assert get_or_build(tmp_path, "kind", "sig", build) == (folder, False)
    assert set(json.loads((folder / CHECKSUMS).read_text())) == {"model.pt", "model.pt.sha256", "payload.bin"}
    (folder / CHECKSUMS).unlink()
    _truncate(folder / "model.pt")                            # its own checksum fails: rebuilt, not adopted
    assert get_or_build(tmp_path, "kind", "sig", build)[1] and build.calls == 2


def test_what_killed_builds_left_is_removed_by_the_next_build(tmp_path):
    kind = tmp_path / "kind"
    kind.mkdir()
    stale = [kind / ".other.staging-abc123", kind / ".sig.staging-def456", kind / ".older-k3j4h5g6"]
    for path in stale:
        path.mkdir()
        (path / "half.bin").write_bytes(b"x")
    (kind / ".older.lock").touch()                           # the staging name of earlier versions
    (kind / "done").mkdir()
    work_path(tmp_path, "kind", "done").mkdir()             # killed between the rename and the cleanup
    resumable = work_path(tmp_path, "kind", "todo")          # an unfinished build's checkpoints: kept to resume
    resumable.mkdir()
    held = cache.try_lock(kind / ".busy.lock")              # a build running now in another job
    (kind / ".busy.staging-xyz").mkdir()
    try:
        _, built = get_or_build(tmp_path, "kind", "sig", Builds())
    finally:
        held.close()
    assert built
    assert not any(p.exists() for p in stale) and not work_path(tmp_path, "kind", "done").exists()
    assert resumable.is_dir() and (kind / ".busy.staging-xyz").is_dir()
    assert sorted(p.name for p in kind.iterdir() if p.is_dir()) == [".busy.staging-xyz", ".work-todo", "done", "sig"]


def test_a_failed_build_leaves_no_entry_and_no_staging(tmp_path):
    def fails(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        get_or_build(tmp_path, "kind", "sig", fails)
    assert [p.name for p in (tmp_path / "kind").iterdir()] == [".sig.lock"]


def test_load_or_rebuild_rebuilds_an_entry_its_loader_cannot_read(tmp_path):
    build = Builds()

    def load(folder):
        if build.calls == 1:
            raise EOFError("truncated")
        return (folder / "payload.bin").stat().st_size

    assert load_or_rebuild(tmp_path, "kind", "sig", build, load) == (256 * 64, True)
    assert build.calls == 2


def test_adm_reference_features_that_cannot_be_read_are_built_again(tmp_path):
    from bar.eval.fidelity import _load_adm_features

    calls = []

    def build(folder):
        calls.append(folder)
        np.savez(folder / "features.npz", pool=np.ones((4, 3)), spatial=np.ones((4, 2)), logits=np.ones((4, 5)))

    first, _ = load_or_rebuild(tmp_path, "adm-reference", "k", build, _load_adm_features)
    npz = entry_path(tmp_path, "adm-reference", "k") / "features.npz"
    npz.write_bytes(os.urandom(npz.stat().st_size))
    (npz.parent / CHECKSUMS).unlink()                       # even without checksums: unreadable means rebuilt
    cache._verified.clear()
    again, built = load_or_rebuild(tmp_path, "adm-reference", "k", build, _load_adm_features)
    assert built and len(calls) == 2 and np.array_equal(again.pool, first.pool)


def test_a_damaged_cached_tokenizer_for_sampling_is_one_line_and_removed(tmp_path):
    import torch

    from bar.orchestration.build import build_tokenizer
    from bar.orchestration.config import compose, tokenizer_signature
    from bar.orchestration.stages.tokenizer import sampling_tokenizer

    cfg = compose(["profile=smoke", f"paths.outputs={tmp_path}"])
    sig = tokenizer_signature(cfg)
    get_or_build(cfg.paths.cache, "tokenizer", sig,
                 lambda f: save_atomic({"state_dict": build_tokenizer(cfg).state_dict()}, f / "tokenizer.pt"))
    assert sampling_tokenizer(cfg, torch.device("cpu")) is not None
    _overwrite(entry_path(cfg.paths.cache, "tokenizer", sig) / "tokenizer.pt")
    with pytest.raises(UserError) as err:
        sampling_tokenizer(cfg, torch.device("cpu"))
    assert "failed its checksum" in str(err.value) and "\n" not in str(err.value)
    assert not entry_path(cfg.paths.cache, "tokenizer", sig).exists()
    assert sampling_tokenizer(cfg, torch.device("cpu")) is None     # no entry: tokens only, as documented
