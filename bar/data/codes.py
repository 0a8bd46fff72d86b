"""Pretokenized training data on disk: every image and its horizontal flip as tokens, in per-rank shard files.

    shard_range(n, rank, world_size) -> (start, stop)          the contiguous slice of the dataset a rank encodes
    ShardWriter(root, n_total=, tokens=, values_per_token=, kind=, rank=, world_size=, dtype=, views=2)
        .append([tokens_view0_BLk, tokens_view1_BLk], labels_B)  then .close()  (writes the shard's JSON last)
    pretokenize(tokenizer, dataset, root, rank=0, world_size=1, batch_size=64, num_workers=0, device="cpu")
        encode this rank's slice (image and its flip) into its shard
    is_complete(root) -> bool;  read_meta(root) -> dict
    CodesStore(root, access="pread")  all shards, read-only: len, read(indices, views) -> (tokens, labels), [i]
    pack_bits(bits_..k) -> uint8 (..., ceil(k/8));  unpack_bits(packed, k) -> uint8 (..., k)

Layout of a store folder (one pair of files per writing rank, no merge step):

    shard-RRRRR-of-WWWWW.codes    raw array (count, views, L, row): packed bits (uint8, row = ceil(k / 8), most
                                  significant bit first, `numpy.packbits` along the bit axis) for discrete tokens, or
                                  float16 / float32 (row = d channels) for continuous latents
    shard-RRRRR-of-WWWWW.labels   int64 (count,)
    shard-RRRRR-of-WWWWW.json     {kind, dtype, views, tokens, values_per_token, n_total, start, count, ...}; written
                                  atomically when the shard is complete, so its presence marks the shard done

Rank r of W encodes items [r*n//W, (r+1)*n//W) of the dataset in order, so the shards concatenated are exactly the
1-rank store. View 0 is the image as preprocessed, view 1 its horizontal flip (the release pretokenizes both and
trains on one of the two, drawn per sample; bar.data.loader's sampler draws it).

Integrity: opening a store checks every file's size against its shard's metadata (a truncated file is an OSError
at once, not mid-training); the cache entry holding the store (bar.data.cache) records the SHA-256 of every file
when it is built and checks them before a job uses it (on a 1.28M-image store of 16-bit tokens, 256 per image, two
views: 1.32 GB, 1.3 s per job on rank 0; see bar/data/cache.py).

Writing appends to plain files, front to back (a full disk is an OSError at the write that does not fit).
Reading never loads the set: a batch reads only its own rows, by default with positional reads (os.pread) so that
nothing is mapped into the process and its RSS stays flat however large the set (the page cache, shared by the ranks
of a node, does the caching); `access="mmap"` reads through np.memmap instead (see `_ShardFiles` for why that makes
RSS climb to the file size). benchmarks/bench_loader.py measures both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from bar import UserError
from bar.core.progress import Progress
from bar.data.images import images_to_float

FORMAT = "bar-codes/1"
DTYPES = {"bits": "packed-bits", "float16": "float16", "float32": "float32"}
VIEWS = 2   # token sets `pretokenize` stores per image: the image as preprocessed and its horizontal flip


# ----------------------------------------------------------------------------------------------------- bit packing
def pack_bits(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """{0, 1} bits (..., k) -> uint8 (..., ceil(k / 8)), most significant bit first (zero-padded at the end)."""
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().cpu().numpy()
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=-1)


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `pack_bits`: uint8 (..., ceil(k / 8)) -> uint8 bits (..., k)."""
    return np.unpackbits(packed, axis=-1, count=k)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous slice [start, stop) of n items (sizes differ by at most one)."""
    return rank * n // world_size, (rank + 1) * n // world_size


def _stem(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}"


def _row(kind: str, values_per_token: int) -> int:
    return (values_per_token + 7) // 8 if kind == "bits" else values_per_token


# ----------------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Writes one rank's shard: items [start, stop) of the dataset, in order, `views` token sets per item.

    kind "bits": tokens are {0, 1} uint8 (B, L, k), stored packed. kind "continuous": float (B, L, d), stored as
    `dtype` (float16 or float32)."""

    def __init__(self, root: str | Path, *, n_total: int, tokens: int, values_per_token: int, kind: str,
                 rank: int = 0, world_size: int = 1, dtype: str = "float16", views: int = VIEWS,
                 extra: dict | None = None):
        if kind not in ("bits", "continuous"):
            raise UserError(f"codes kind {kind!r} must be 'bits' or 'continuous'")
        if kind == "continuous" and dtype not in ("float16", "float32"):
            raise UserError(f"continuous codes are stored as float16 or float32, not {dtype!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.kind, self.k, self.L, self.views = kind, values_per_token, tokens, views
        self.dtype = "bits" if kind == "bits" else dtype
        self.start, self.stop = shard_range(n_total, rank, world_size)
        self.count = self.stop - self.start
        self.stem = _stem(rank, world_size)
        self.meta = {"format": FORMAT, "kind": kind, "dtype": DTYPES[self.dtype], "views": views, "tokens": tokens,
                     "values_per_token": values_per_token, "n_total": n_total, "rank": rank,
                     "world_size": world_size, "start": self.start, "count": self.count, **(extra or {})}
        (self.root / f"{self.stem}.json").unlink(missing_ok=True)          # not complete until close()
        self.np_dtype = np.dtype(np.uint8) if kind == "bits" else np.dtype(dtype)
        # items arrive in order, so both files are written front to back: a full disk is an OSError (ENOSPC) at the
        # write that does not fit, where a memory-mapped file would kill the process with SIGBUS
        self._files: tuple | None = (open(self.root / f"{self.stem}.codes", "wb"),
                                     open(self.root / f"{self.stem}.labels", "wb"))
        self.filled = 0

    def append(self, views: list, labels) -> None:
        """Add B items: `views` is a list of `self.views` token tensors (B, L, k|d), one per view; labels (B,)."""
        if len(views) != self.views:
            raise ValueError(f"expected {self.views} views, got {len(views)}")
        arrays = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in views]
        B = arrays[0].shape[0]
        if self.filled + B > self.count:
            raise ValueError(f"shard {self.stem} holds {self.count} items; {self.filled + B} written")
        for a in arrays:
            if a.shape != (B, self.L, self.k):
                raise ValueError(f"tokens of shape {a.shape}, the store holds (B, {self.L}, {self.k})")
        stacked = np.stack(arrays, axis=1)                                       # (B, V, L, k)
        if self.kind == "bits":
            if stacked.min(initial=0) < 0 or stacked.max(initial=0) > 1:
                raise ValueError("discrete tokens must be {0, 1} bits")
            stacked = pack_bits(stacked)
        if B == 0:
            return
        assert self._files is not None, f"shard {self.stem} is closed"
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        self._files[0].write(np.ascontiguousarray(stacked, dtype=self.np_dtype).tobytes())
        self._files[1].write(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        self.filled += B

    def close(self) -> None:
        """Flush the data and mark the shard complete (its JSON, written atomically)."""
        if self.filled != self.count:
            raise ValueError(f"shard {self.stem}: {self.filled} of {self.count} items written")
        assert self._files is not None, f"shard {self.stem} is already closed"
        for handle in self._files:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self._files = None
        tmp = self.root / f"{self.stem}.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.root / f"{self.stem}.json")


@torch.no_grad()
def pretokenize(tokenizer, dataset, root: str | Path, *, rank: int = 0, world_size: int = 1, batch_size: int = 64,
                num_workers: int = 0, device: str | torch.device = "cpu", dtype: str = "float16") -> Path:
    """Encode this rank's slice of `dataset` ((uint8 CHW image, label) items) with `tokenizer` (bar.tokenizers.tokenizer
    .Tokenizer: `encode`, `kind`, `latent_dim`, `grid`), each image and its horizontal flip, into its shard of the
    store at `root`. Returns the shard's JSON path. Every rank calls it with its own rank; the store is complete
    when all have returned (`is_complete`)."""
    n = len(dataset)
    kind = "bits" if tokenizer.kind == "fsq" else "continuous"
    writer = ShardWriter(root, n_total=n, tokens=tokenizer.grid ** 2, values_per_token=tokenizer.latent_dim,
                         kind=kind, rank=rank, world_size=world_size, dtype=dtype,
                         extra={"grid": [tokenizer.grid, tokenizer.grid]})
    loader = DataLoader(Subset(dataset, range(writer.start, writer.stop)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    tokenizer.eval()
    with Progress(writer.stop - writer.start, "pretokenize", unit="img") as bar:
        for images, labels in loader:
            x = images_to_float(images.to(device))
            writer.append([tokenizer.encode(x), tokenizer.encode(x.flip(-1))], labels)
            bar.update(len(labels))
    writer.close()
    return writer.root / f"{writer.stem}.json"


# ----------------------------------------------------------------------------------------------------- reading
def _shard_metas(root: Path) -> list[dict]:
    metas = [json.loads(p.read_text()) for p in sorted(root.glob("shard-*-of-*.json"))]
    for m in metas:
        if m.get("format") != FORMAT:
            raise UserError(f"{root}: shard {m.get('rank')} has format {m.get('format')!r}, expected {FORMAT}")
    return metas


def _check(root: Path, metas: list[dict]) -> str | None:
    """Why the shards at `root` do not form one complete store (None if they do)."""
    if not metas:
        return f"no complete shard in {root}"
    worlds = {m["world_size"] for m in metas}
    if len(worlds) > 1:
        return f"{root} mixes shards written by {sorted(worlds)} ranks"
    world = worlds.pop()
    ranks = sorted(m["rank"] for m in metas)
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        return f"{root}: shard(s) of rank {missing[:8]} of {world} are missing or unfinished"
    keys = ("kind", "dtype", "views", "tokens", "values_per_token", "n_total")
    if len({tuple(m[k] for k in keys) for m in metas}) > 1:
        return f"{root}: shards disagree on {keys}"
    pos = 0
    for m in sorted(metas, key=lambda m: m["rank"]):
        if m["start"] != pos:
            return f"{root}: shard of rank {m['rank']} starts at {m['start']}, expected {pos}"
        pos += m["count"]
    if pos != metas[0]["n_total"]:
        return f"{root}: shards hold {pos} of {metas[0]['n_total']} items"
    return None


def is_complete(root: str | Path) -> bool:
    root = Path(root)
    return root.is_dir() and _check(root, _shard_metas(root)) is None


def read_meta(root: str | Path) -> dict:
    """The store's metadata (of its first shard, less the per-shard fields); UserError if it is incomplete."""
    root = Path(root)
    metas = _shard_metas(root) if root.is_dir() else []
    problem = _check(root, metas)
    if problem:
        raise UserError(problem)
    meta = {k: v for k, v in metas[0].items() if k not in ("rank", "start", "count")}
    meta["n"] = meta["n_total"]
    return meta


class _ShardFiles:
    """One shard's codes and labels, opened lazily in the process that reads them (pickling carries paths only).

    access "pread": positional reads (os.pread) of exactly the rows asked for; the kernel's page cache (shared by
    the ranks of a node) does the caching and the process maps nothing, so its RSS does not grow. access "mmap":
    np.memmap views, fancy-indexed: a little faster, but the pages a process touches join its RSS as file-backed
    memory, and random row reads map far more than the rows (kernel fault-around, large page-cache folios): here
    one batch of 256 random rows mapped 72 MiB of a 98 MiB file, so RSS climbs to the size of the files."""

    def __init__(self, root: Path, stem: str, count: int, views: int, view_shape: tuple, dtype, access: str):
        self.codes_path, self.labels_path = root / f"{stem}.codes", root / f"{stem}.labels"
        self.count, self.views, self.view_shape, self.dtype = count, views, view_shape, np.dtype(dtype)
        self.access = access
        self.view_bytes = int(np.prod(view_shape)) * self.dtype.itemsize
        self._fds: tuple[int, int] | None = None                   # opened on first read ("pread")
        self._maps: tuple[np.memmap, np.memmap] | None = None      # mapped on first read ("mmap")

    def __getstate__(self):
        return {**self.__dict__, "_fds": None, "_maps": None}

    def check_sizes(self) -> None:
        """OSError when a file's size is not what the shard's metadata says (truncated, or rewritten)."""
        for path, expected in ((self.codes_path, self.count * self.views * self.view_bytes),
                               (self.labels_path, self.count * 8)):
            size = path.stat().st_size
            if size != expected:
                raise OSError(f"{path} has {size} bytes where the store's metadata says {expected}: the file is "
                              "truncated or was rewritten")

    def __del__(self):
        for fd in getattr(self, "_fds", None) or ():
            os.close(fd)

    def read(self, local: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows (b, *view_shape), labels (b,)) of shard-local items `local` (sorted ascending) in views `views`."""
        if self.access == "mmap":
            if self._maps is None:
                self._maps = (np.memmap(self.codes_path, self.dtype, "r",
                                        shape=(self.count, self.views, *self.view_shape)),
                              np.memmap(self.labels_path, np.int64, "r", shape=(self.count,)))
            return np.asarray(self._maps[0][local, views]), np.asarray(self._maps[1][local])
        if self._fds is None:
            self._fds = (os.open(self.codes_path, os.O_RDONLY), os.open(self.labels_path, os.O_RDONLY))
        rows = self._pread(self._fds[0], local * self.views + views, self.view_bytes, self.codes_path)
        labels = self._pread(self._fds[1], local, 8, self.labels_path)
        return (np.frombuffer(rows, self.dtype).reshape(len(local), *self.view_shape),
                np.frombuffer(labels, np.int64).copy())

    @staticmethod
    def _pread(fd: int, rows: np.ndarray, nbytes: int, path: Path) -> bytearray:
        buf = bytearray(nbytes * len(rows))
        view = memoryview(buf)
        for j, r in enumerate(rows.tolist()):
            if os.preadv(fd, [view[j * nbytes:(j + 1) * nbytes]], r * nbytes) != nbytes:
                raise OSError(f"short read from {path}: the file is truncated")
        return buf


class CodesStore(torch.utils.data.Dataset):
    """All shards of a store, read-only. Items are global indices 0 .. n-1 in dataset order.

    read(indices, views=None) -> (tokens, labels): tokens uint8 bits (B, L, k) or float32 (B, L, d); labels int64 (B,).
    views: per-item view (0 = image, 1 = flip); None means view 0. store[i] -> (tokens (L, k|d), label) of view 0;
    store[(i, v)] -> of view v. access: "pread" (default; RSS flat) or "mmap" (see _ShardFiles).
    Files are opened lazily in each process: DataLoader workers open their own."""

    def __init__(self, root: str | Path, access: str = "pread"):
        if access not in ("pread", "mmap"):
            raise UserError(f"codes store access {access!r} must be 'pread' or 'mmap'")
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.kind, self.views = self.meta["kind"], self.meta["views"]
        self.k, self.L, self.n = self.meta["values_per_token"], self.meta["tokens"], self.meta["n"]
        dtype = np.uint8 if self.kind == "bits" else np.dtype(self.meta["dtype"])
        view_shape = (self.L, _row(self.kind, self.k))
        metas = sorted(_shard_metas(self.root), key=lambda m: m["rank"])
        metas = [m for m in metas if m["count"]]
        self._starts = np.array([m["start"] for m in metas], dtype=np.int64)
        self._shards = [_ShardFiles(self.root, _stem(m["rank"], m["world_size"]), m["count"], self.views,
                                    view_shape, dtype, access) for m in metas]
        self._view_shape, self._dtype = view_shape, dtype
        for shard in self._shards:
            shard.check_sizes()

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the store's files."""
        return sum(s.count * (s.views * s.view_bytes + 8) for s in self._shards)

    def read(self, indices, views=None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"index out of range for a store of {self.n} items")
        v = np.zeros_like(idx) if views is None else np.broadcast_to(np.asarray(views, dtype=np.int64), idx.shape)
        if v.size and (v.min() < 0 or v.max() >= self.views):
            raise IndexError(f"view out of range: the store holds {self.views} view(s)")
        rows = np.empty((idx.size, *self._view_shape), dtype=self._dtype)
        labels = np.empty(idx.size, dtype=np.int64)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            sel = sel[np.argsort(idx[sel], kind="stable")]                    # read in file order
            rows[sel], labels[sel] = self._shards[s].read(idx[sel] - self._starts[s], v[sel])
        tokens = unpack_bits(rows, self.k) if self.kind == "bits" else rows.astype(np.float32)
        return torch.from_numpy(tokens), torch.from_numpy(labels)

    def __getitem__(self, item):
        i, v = item if isinstance(item, tuple) else (item, 0)
        tokens, labels = self.read([i], [v])
        return tokens[0], int(labels[0])
