"""Checkpoint write benchmark (not a test): the earlier save (torch.save into a BytesIO, its bytes hashed (SHA-256),
a checksum line + payload written and fsynced) against bar.core.files.save_atomic (torch.save streamed into the
temp file through a hashing writer, fsync, the checksum in a file beside it).

    python benchmarks/checkpoint_write.py [--gb 1.0] [--tensors 64] [--repeats 2] [--dir DIR]

Per way: wall time of the write (best of `repeats`, ways alternated), file size, and the peak extra resident memory
of the process during the write (Linux VmHWM, reset before each write through /proc/self/clear_refs: the page
cache is not counted). Then a verified load of each file (load_verified), timed. Wall-clock on a shared machine:
read as rough figures."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.core.files import MAGIC, checksum_path, load_verified, save_atomic  # noqa: E402


def old_save(obj, path: Path) -> Path:
    """The earlier bar.core.files.save_atomic, as it was: the whole file built in memory first."""
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
    return path


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")     # resets VmHWM to the current RSS
    except OSError:
        pass


def timed_write(save, state, path: Path) -> tuple[float, int]:
    """(seconds, peak extra resident bytes) of one write."""
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)
    _reset_peak()
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    save(state, path)
    seconds = time.perf_counter() - start
    return seconds, (_rss_kb("VmHWM") - before) * 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="state size in GB (float32 tensors)")
    parser.add_argument("--tensors", type=int, default=64, help="tensors the state is split into")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder, removed after)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    per = int(args.gb * 1e9 / 4 / args.tensors)
    state = {"model": {f"w{i}": torch.randn(per) for i in range(args.tensors)}, "step": 1000}
    folder = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    ways = {"old (whole file in a BytesIO)": (old_save, folder / "old.pt"),
            "new (streamed + hashed, .sha256)": (save_atomic, folder / "new.pt")}
    best: dict[str, tuple[float, int]] = {}      # way -> (fastest write, highest peak over its writes)
    try:
        for _ in range(args.repeats):
            for name, (save, path) in ways.items():
                seconds, peak = timed_write(save, state, path)
                was = best.get(name, (float("inf"), 0))
                best[name] = (min(seconds, was[0]), max(peak, was[1]))
        size = args.tensors * per * 4
        print(f"state: {size / 1e9:.2f} GB in {args.tensors} float32 tensors; best of {args.repeats} writes each; "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs")
        print(f"{'way':34s} {'write s':>8s} {'GB/s':>6s} {'file GB':>8s} {'peak extra RSS GB':>18s} {'load s':>7s}")
        for name, (_, path) in ways.items():
            seconds, peak = best[name]
            start = time.perf_counter()
            load_verified(path)
            load_s = time.perf_counter() - start
            print(f"{name:34s} {seconds:8.2f} {size / 1e9 / seconds:6.2f} {path.stat().st_size / 1e9:8.3f} "
                  f"{peak / 1e9:18.2f} {load_s:7.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
