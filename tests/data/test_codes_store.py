"""Packed codes on disk: bit packing, sharded writes by several ranks, memory-mapped reads, pretokenization."""

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bar import UserError
from bar.data.codes import (CodesStore, ShardWriter, is_complete, pack_bits, pretokenize, read_meta, shard_range,
    unpack_bits)
from bar.data.datasets import TensorImages


@pytest.mark.parametrize("grid", [(1, 1), (4, 4), (16, 16), (7, 5)])
def test_pack_round_trip_every_width(grid):
    rng = np.random.default_rng(grid[0] * 100 + grid[1])
    L = grid[0] * grid[1]
    for k in range(1, 257):
        bits = rng.integers(0, 2, (3, L, k), dtype=np.uint8)
        packed = pack_bits(bits)
        assert packed.dtype == np.uint8 and packed.shape == (3, L, (k + 7) // 8)
        assert np.array_equal(unpack_bits(packed, k), bits)


def test_pack_is_msb_first():
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=np.uint8)      # 9 bits
    assert pack_bits(bits).tolist() == [[128, 128]]
    assert np.array_equal(pack_bits(torch.from_numpy(bits)), pack_bits(bits))


def _random_views(n, L, k, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "bits":
        return [torch.randint(0, 2, (n, L, k), generator=g, dtype=torch.uint8) for _ in range(2)]
    return [torch.randn(n, L, k, generator=g) for _ in range(2)]


def _write(root, views, labels, world_size, batch=3, **kw):
    n = len(labels)
    for rank in range(world_size):                       # ranks simulated one after the other
        w = ShardWriter(root, n_total=n, tokens=views[0].shape[1], values_per_token=views[0].shape[2],
                        rank=rank, world_size=world_size, **kw)
        for s in range(w.start, w.stop, batch):
            e = min(s + batch, w.stop)
            w.append([v[s:e] for v in views], labels[s:e])
        w.close()


@pytest.mark.parametrize("access", ["pread", "mmap"])
@pytest.mark.parametrize("k", [1, 10, 16, 64, 256])
def test_bits_store_round_trip(tmp_path, k, access):
    n, L = 11, 16
    views = _random_views(n, L, k, "bits", seed=k)
    labels = torch.arange(n) * 7 % 5
    _write(tmp_path, views, labels, 2, kind="bits")
    store = CodesStore(tmp_path, access=access)
    assert len(store) == n and store.views == 2 and store.k == k and store.L == L
    idx = np.array([3, 0, 10, 3, 7])
    for v in (0, 1):
        tokens, labs = store.read(idx, np.full(len(idx), v))
        assert tokens.dtype == torch.uint8 and torch.equal(tokens, views[v][idx])
        assert torch.equal(labs, labels[idx])
    mixed = np.array([0, 1, 1, 0, 1])
    tokens, _ = store.read(idx, mixed)
    assert all(torch.equal(tokens[j], views[mixed[j]][idx[j]]) for j in range(len(idx)))
    t, label = store[(4, 1)]
    assert torch.equal(t, views[1][4]) and label == int(labels[4])
    bytes_per_item = 2 * L * ((k + 7) // 8) + 8
    assert store.nbytes == n * bytes_per_item == sum(p.stat().st_size for p in tmp_path.glob("*.codes")) + 8 * n


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_continuous_store(tmp_path, dtype):
    views = _random_views(6, 4, 3, "continuous", seed=1)
    labels = torch.arange(6)
    _write(tmp_path, views, labels, 2, kind="continuous", dtype=dtype)
    store = CodesStore(tmp_path)
    tokens, _ = store.read(np.arange(6), np.ones(6, dtype=int))
    assert tokens.dtype == torch.float32
    expected = views[1].to(torch.float16).float() if dtype == "float16" else views[1]
    assert torch.equal(tokens, expected)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_write_equals_single_rank(tmp_path, world_size):
    n, L, k = 13, 9, 20
    views = _random_views(n, L, k, "bits", seed=5)
    labels = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(0))
    _write(tmp_path / "one", views, labels, 1, kind="bits")
    _write(tmp_path / "many", views, labels, world_size, kind="bits", batch=2)
    one, many = CodesStore(tmp_path / "one"), CodesStore(tmp_path / "many")
    all_idx = np.arange(n)
    for v in (0, 1):
        a, b = one.read(all_idx, np.full(n, v)), many.read(all_idx, np.full(n, v))
        assert a[0].numpy().tobytes() == b[0].numpy().tobytes() and torch.equal(a[1], b[1])
    # the shards concatenated are byte for byte the 1-rank file
    for suffix in ("codes", "labels"):
        single = (tmp_path / "one" / f"shard-00000-of-00001.{suffix}").read_bytes()
        parts = b"".join((tmp_path / "many" / f"shard-{r:05d}-of-{world_size:05d}.{suffix}").read_bytes()
                         for r in range(world_size))
        assert single == parts
    assert [shard_range(n, r, world_size) for r in range(world_size)][-1][1] == n


def test_incomplete_or_mixed_store_is_refused(tmp_path):
    views = _random_views(5, 4, 8, "bits", seed=0)
    labels = torch.zeros(5, dtype=torch.long)
    w = ShardWriter(tmp_path, n_total=5, tokens=4, values_per_token=8, kind="bits", rank=0, world_size=2)
    w.append([v[:2] for v in views], labels[:2])
    w.close()
    assert not is_complete(tmp_path)
    with pytest.raises(UserError, match=r"rank \[1\] of 2 are missing or unfinished"):
        CodesStore(tmp_path)
    w = ShardWriter(tmp_path, n_total=5, tokens=4, values_per_token=8, kind="bits", rank=1, world_size=2)
    w.append([v[2:] for v in views], labels[2:])
    with pytest.raises(ValueError, match="3 of 3|holds 3"):
        w.append([v[2:3] for v in views], labels[2:3])
    w.close()
    assert is_complete(tmp_path) and read_meta(tmp_path)["n"] == 5
    _write(tmp_path, views, labels, 1, kind="bits")                # a 1-rank shard in the same folder
    with pytest.raises(UserError, match="mixes shards"):
        CodesStore(tmp_path)


@pytest.mark.parametrize("access", ["pread", "mmap"])
def test_store_pickles_without_its_data(tmp_path, access):
    views = _random_views(50, 16, 16, "bits", seed=0)
    _write(tmp_path, views, torch.zeros(50, dtype=torch.long), 1, kind="bits")
    store = CodesStore(tmp_path, access=access)
    store.read([1, 2])                                   # files opened
    blob = pickle.dumps(store)
    assert len(blob) < 4096
    copy = pickle.loads(blob)
    assert torch.equal(copy.read([7], [1])[0], store.read([7], [1])[0])
    assert torch.equal(copy.read([7], [1])[0][0], views[1][7])


def test_truncated_file_is_an_error(tmp_path):
    views = _random_views(4, 4, 8, "bits", seed=0)
    _write(tmp_path, views, torch.zeros(4, dtype=torch.long), 1, kind="bits")
    path = tmp_path / "shard-00000-of-00001.codes"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(OSError, match="truncated"):
        CodesStore(tmp_path).read([3], [1])


def _tiny_tokenizer(bits=6):
    from bar.tokenizers.tokenizer import Tokenizer

    tok = OmegaConf.create({"kind": "fsq", "bits": bits, "channels": None, "kl": False, "arch": "conv", "width": 8,
                            "num_down": 2, "patch": 4, "vit": None})
    torch.manual_seed(0)
    return Tokenizer(tok, in_channels=3, resolution=16)


def test_pretokenize_two_ranks_equals_one_and_keeps_the_flip(tmp_path):
    from bar.data.images import images_to_float

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 16, 16), generator=g, dtype=torch.uint8)
    dataset = TensorImages(images, torch.arange(9) % 3, num_classes=3)
    tokenizer = _tiny_tokenizer()
    pretokenize(tokenizer, dataset, tmp_path / "one", batch_size=4)
    for rank in range(2):
        pretokenize(tokenizer, dataset, tmp_path / "two", rank=rank, world_size=2, batch_size=2)
    one, two = CodesStore(tmp_path / "one"), CodesStore(tmp_path / "two")
    assert one.meta["grid"] == [4, 4] and one.k == 6 and one.L == 16
    for v in (0, 1):
        a, b = one.read(np.arange(9), np.full(9, v)), two.read(np.arange(9), np.full(9, v))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x = images_to_float(images)
    assert torch.equal(one.read(np.arange(9), np.zeros(9))[0], tokenizer.encode(x))
    assert torch.equal(one.read(np.arange(9), np.ones(9))[0], tokenizer.encode(x.flip(-1)))


# ----------------------------------------------------------------------------------------------------- integrity
def _overwrite(path):
    path.write_bytes(__import__("os").urandom(path.stat().st_size))   # same size, other bytes


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-9])


SHARD = "shard-00000-of-00002"
DAMAGE = {"codes-overwritten-same-size": lambda f: _overwrite(f / f"{SHARD}.codes"),
          "codes-truncated": lambda f: _truncate(f / f"{SHARD}.codes"),
          "codes-deleted": lambda f: (f / f"{SHARD}.codes").unlink(),
          "labels-overwritten-same-size": lambda f: _overwrite(f / f"{SHARD}.labels"),
          "labels-truncated": lambda f: _truncate(f / f"{SHARD}.labels"),
          "shard-json-deleted": lambda f: (f / f"{SHARD}.json").unlink()}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cached_store_is_pretokenized_again(damage, tmp_path):
    from bar.data import cache

    views, labels, calls = _random_views(40, 16, 16, "bits", seed=3), torch.arange(40) % 7, []

    def build(folder):                       # what obtain_codes hands the cache: two ranks' shards
        calls.append(folder)
        _write(folder, views, labels, 2, kind="bits")

    store, built = cache.load_or_rebuild(tmp_path, "codes", "sig", build, CodesStore)
    want = store.read(np.arange(40), np.ones(40))
    DAMAGE[damage](cache.entry_path(tmp_path, "codes", "sig"))
    store, built = cache.load_or_rebuild(tmp_path, "codes", "sig", build, CodesStore)
    assert built and len(calls) == 2
    got = store.read(np.arange(40), np.ones(40))                 # what training reads: the original codes
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_a_store_whose_file_sizes_disagree_with_its_metadata_fails_when_opened(tmp_path):
    _write(tmp_path, _random_views(6, 4, 8, "bits", seed=0), torch.zeros(6, dtype=torch.long), 1, kind="bits")
    labels = tmp_path / "shard-00000-of-00001.labels"
    labels.write_bytes(labels.read_bytes() + b"\0" * 8)                      # rewritten with one item more
    with pytest.raises(OSError, match="56 bytes where the store's metadata says 48"):
        CodesStore(tmp_path)


def test_a_full_disk_while_writing_codes_is_an_oserror_not_a_crash(tmp_path):
    """On a 1 MiB disk, a 4 MiB shard fails with ENOSPC (a memory-mapped shard would take the process down)."""
    import errno
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        writer = ShardWriter(disk, n_total=4096, tokens=256, values_per_token=16, kind="bits")
        views = _random_views(512, 256, 16, "bits", seed=0)
        with pytest.raises(OSError) as err:
            for start in range(0, 4096, 512):
                writer.append(views, torch.zeros(512, dtype=torch.long))
                writer._files[0].flush()
        assert err.value.errno == errno.ENOSPC
        assert not (disk / "shard-00000-of-00001.json").exists()          # never marked complete
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
