"""Data-path benchmark (not a test): image loading, pretokenization into the packed store, memory of store reads.

    python benchmarks/bench_loader.py [--images 512] [--pretok-images 64] [--codes 100000] [--workdir DIR]
                                      [--out benchmarks/results/loader.csv] [--sections images,pretok,rss]

Sections:
  images  images/s of bar.data.loader.image_loader over an ImageNet-style folder of JPEGs that the script writes (several
          classes, smooth random content plus noise): bar.data.datasets.ImageFolderImages (RGB, ADM's center_crop_arr to 256,
          uint8 CHW), random flip, global batch 64, with 0 and 2 DataLoader workers. One epoch; the first batch
          (worker start) is timed separately. Folders of 256x256 JPEGs (as asked) and of 500x375 (a typical
          ImageNet size, so the bicubic resize does work).
  pretok  images/s of bar.data.codes.pretokenize (image + horizontal flip encoded, packed into a shard) with a
          small conv BAR-FSQ tokenizer (16 bits, 4 downsamplings: 16x16 grid at 256 px, width 32), 0 workers; and
          the encoder alone on the same images, to separate its cost from loading and packing.
  rss     host memory of one rank reading 16-bit codes of N images (16x16 grid, image + flip, packed: 1 KiB per
          item) through bar.data.loader.codes_loader (global batch 256, one epoch, 0 workers), in a fresh process:
          RSS (VmRSS, and its anonymous / file-backed parts) before the first batch and after the epoch, against
          the store's file size; at N/10 and N items with positional reads (the default), and at N through
          np.memmap (access="mmap").
Timings are wall-clock on a shared 2-core machine: read them as rough figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bar.data.codes import CodesStore, ShardWriter, pretokenize  # noqa: E402
from bar.data.datasets import ImageFolderImages  # noqa: E402
from bar.data.loader import codes_loader, image_loader  # noqa: E402

FIELDS = ["section", "setting", "workers", "items", "seconds", "items_per_s", "first_batch_s", "rss_before_mib",
          "rss_after_mib", "rss_anon_after_mib", "rss_file_after_mib", "file_mib", "note"]


def write_jpegs(root: Path, n: int, size: tuple[int, int], classes: int = 8, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w + 16, h + 16), Image.BILINEAR).crop((0, 0, w, h))
        arr = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:05d}.JPEG", quality=90)


def bench_images(workdir: Path, n: int, rows: list) -> None:
    for size in ((256, 256), (500, 375)):
        root = workdir / f"jpegs_{size[0]}x{size[1]}"
        if not root.exists():
            write_jpegs(root, n, size)
        ds = ImageFolderImages(root, 256)
        for workers in (0, 2):
            loader = image_loader(ds, 64, seed=0, num_workers=workers)
            start = time.perf_counter()
            images, _ = next(loader)
            first = time.perf_counter() - start
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 256, 256)
            count, start = 0, time.perf_counter()
            for _ in range(len(loader.sampler) - 1):
                count += len(next(loader)[0])
            seconds = time.perf_counter() - start
            loader.close()
            rows.append({"section": "images", "setting": f"jpeg {size[0]}x{size[1]} -> 256, batch 64",
                         "workers": workers, "items": count, "seconds": round(seconds, 3),
                         "items_per_s": round(count / seconds, 1), "first_batch_s": round(first, 3),
                         "note": f"{n} images, {len(ds.classes)} classes; first batch timed apart"})


def bench_pretok(workdir: Path, n: int, rows: list) -> None:
    from omegaconf import OmegaConf

    from bar.tokenizers.tokenizer import Tokenizer

    root = workdir / "jpegs_500x375"
    if not root.exists():
        write_jpegs(root, max(n, 64), (500, 375))
    ds = torch.utils.data.Subset(ImageFolderImages(root, 256), range(n))
    tok = OmegaConf.create({"kind": "fsq", "bits": 16, "channels": None, "kl": False, "arch": "conv", "width": 32,
                            "num_down": 4, "patch": 16, "vit": None})
    torch.manual_seed(0)
    tokenizer = Tokenizer(tok, in_channels=3, resolution=256)
    out = workdir / "pretok_store"
    start = time.perf_counter()
    pretokenize(tokenizer, ds, out, batch_size=32, num_workers=0)
    seconds = time.perf_counter() - start
    store = CodesStore(out)
    rows.append({"section": "pretok", "setting": "conv fsq 16 bits, width 32, 16x16 grid, image + flip, batch 32",
                 "workers": 0, "items": n, "seconds": round(seconds, 2), "items_per_s": round(n / seconds, 2),
                 "file_mib": round(store.nbytes / 2 ** 20, 3),
                 "note": f"{sum(p.numel() for p in tokenizer.encoder.parameters()) / 1e6:.2f}M encoder params; "
                         f"2 encodes per image; torch threads {torch.get_num_threads()}"})
    # the encoder alone on the same images (already decoded): what pretokenization costs beyond it is loading + packing
    from bar.data.images import images_to_float

    x = images_to_float(torch.stack([ds[i][0] for i in range(min(n, 32))]))
    start = time.perf_counter()
    tokenizer.encode(x)
    tokenizer.encode(x.flip(-1))
    seconds = time.perf_counter() - start
    rows.append({"section": "pretok", "setting": "encoder only (image + flip), batch 32, images already decoded",
                 "workers": 0, "items": len(x), "seconds": round(seconds, 2), "items_per_s": round(len(x) / seconds, 2),
                 "note": "same tokenizer; no loading, packing or writing"})


def write_codes(root: Path, n: int, chunk: int = 5000) -> None:
    if (root / "shard-00000-of-00001.json").exists():
        return
    rng = np.random.default_rng(0)
    w = ShardWriter(root, n_total=n, tokens=256, values_per_token=16, kind="bits")
    for s in range(0, n, chunk):
        b = min(chunk, n - s)
        views = [rng.integers(0, 2, (b, 256, 16), dtype=np.uint8) for _ in range(2)]
        w.append(views, rng.integers(0, 1000, b))
    w.close()


def _rss() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024          # MiB
    return out


def rss_child(root: str, access: str) -> None:
    """Runs in a fresh process: one epoch of codes_loader over the store; prints JSON."""
    store = CodesStore(root, access=access)
    loader = codes_loader(store, 256, seed=0)
    before = _rss()
    trace, start = [], time.perf_counter()
    for j in range(len(loader.sampler)):
        tokens, labels = next(loader)
        if j % 50 == 0:
            trace.append(round(_rss()["VmRSS"], 1))
    seconds = time.perf_counter() - start
    after = _rss()
    print(json.dumps({"before": before, "after": after, "seconds": seconds, "batches": len(loader.sampler),
                      "items": len(loader.sampler) * 256, "file_mib": store.nbytes / 2 ** 20, "trace": trace,
                      "tokens": list(tokens.shape)}))


def bench_rss(workdir: Path, n: int, rows: list) -> None:
    for count, access in ((n // 10, "pread"), (n, "pread"), (n, "mmap")):
        root = workdir / f"codes_{count}"
        write_codes(root, count)
        subprocess.run(["sync"], check=False)
        res = json.loads(subprocess.run([sys.executable, __file__, "--rss-child", str(root), access],
                                        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append({"section": "rss", "setting": f"{count} images, 16 bits x 16x16, image+flip, global batch 256, "
                                                  f"access {access}",
                     "workers": 0, "items": res["items"], "seconds": round(res["seconds"], 2),
                     "items_per_s": round(res["items"] / res["seconds"], 0),
                     "rss_before_mib": round(res["before"]["VmRSS"], 1),
                     "rss_after_mib": round(res["after"]["VmRSS"], 1),
                     "rss_anon_after_mib": round(res["after"]["RssAnon"], 1),
                     "rss_file_after_mib": round(res["after"]["RssFile"], 1), "file_mib": round(res["file_mib"], 1),
                     "note": f"peak VmHWM {res['after']['VmHWM']:.0f} MiB; VmRSS every 50 batches {res['trace']}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--pretok-images", type=int, default=64)
    parser.add_argument("--codes", type=int, default=100_000)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--sections", default="images,pretok,rss")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loader.csv"))
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        sections = args.sections.split(",")
        if "images" in sections:
            bench_images(workdir, args.images, rows)
        if "pretok" in sections:
            bench_pretok(workdir, args.pretok_images, rows)
        if "rss" in sections:
            bench_rss(workdir, args.codes, rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"cpu cores: {os.cpu_count()} (shared machine); results -> {out}")
    for r in rows:
        print(", ".join(f"{k}={r[k]}" for k in FIELDS if r.get(k) not in (None, "")))


if __name__ == "__main__":
    main()
