"""Information per image of the embedded datasets, next to the latent sizes the sweeps give them.

    python analysis/information.py [--out paper_figs] [--profile tiny] [--max-images N]

writes data_information.md and data_information.csv (one row per dataset, one per sweep point's latent). Every number
is computed here: dataset rows by `bar.data.datasets.information_bits`, latent rows by composing each sweep point as
`run.py` would and counting its bits (`bar.core.bits.latent_bits`). A latent larger than a dataset's estimate has
nothing left to encode on that dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `analysis` and `bar` importable
    sys.path.insert(0, str(ROOT))

from bar.core.vocabulary import AE, FSQ  # noqa: E402

DATASETS = (("digits", 16), ("photo_crops", 16), ("photo_crops", 32))
LATENT_SWEEPS = ("bits_vs_rfid", "bits_vs_gfid", "codebook_scaling")


def dataset_information(datasets=DATASETS, split: str = "train", max_images: int | None = None) -> pd.DataFrame:
    """One row per (data config, resolution): images, values per image, raw_bits, png_bits, lzma_bits, estimate_bits,
    estimate_from (see `bar.data.datasets.information_bits`)."""
    from bar.data.datasets import build_dataset, information_bits
    from bar.orchestration.config import compose

    rows = []
    for name, resolution in datasets:
        cfg = compose([f"data={name}", f"data.resolution={resolution}"])
        info = information_bits(build_dataset(cfg.data, split), max_images)
        rows.append({"dataset": name, "resolution": resolution, "split": split, **info})
    return pd.DataFrame(rows)


def latent_sizes(sweeps=LATENT_SWEEPS, profile: str = "tiny", resolution: int | None = None) -> pd.DataFrame:
    """One row per distinct latent among the sweeps' points at `profile` (at `data.resolution=resolution` if given),
    each point composed as `run.py` would: kind (fsq / ae), grid, bits_per_token or ae_channels, total_bits, profile,
    sweeps (which of `sweeps` have it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from bar.core.bits import latent_bits
    from bar.orchestration.build import latent_shape
    from bar.orchestration.config import SWEEPS_DIR, compose
    from bar.orchestration.sweep_points import expand_points

    parser = OverridesParser.create()
    wanted = ("tokenizer", "tokenizer.bits", "tokenizer.channels")
    latents: dict[tuple, list[str]] = {}
    for sweep in sweeps:
        spec = OmegaConf.load(SWEEPS_DIR / f"{sweep}.yaml").hydra.sweeper
        grids = [dict(g) for g in (spec.get("grids") or [])]
        for point in expand_points(parser, dict(spec.get("params") or {}), grids, []):
            owners = latents.setdefault(tuple(sorted(o for o in point if o.split("=")[0] in wanted)), [])
            if sweep not in owners:
                owners.append(sweep)
    rows: dict[tuple[str, int, int], dict[str, Any]] = {}    # one per latent shape (kind, grid, per token)
    for overrides, in_sweeps in latents.items():
        base = [f"sweep={in_sweeps[0]}", f"profile={profile}"] + ([f"data.resolution={resolution}"] if resolution
                                                                   else [])
        kind, grid, per_token = latent_shape(compose(base + list(overrides)))
        row = rows.setdefault((kind, grid, per_token), {
            "kind": kind, "grid": f"{grid}x{grid}", "bits_per_token": per_token if kind == FSQ else None,
            "ae_channels": per_token if kind == AE else None,
            "total_bits": latent_bits(kind, grid, grid, per_token, per_token), "profile": profile, "sweeps": []})
        row["sweeps"] += [s for s in in_sweeps if s not in row["sweeps"]]
    table = pd.DataFrame([{**r, "sweeps": ", ".join(r["sweeps"])} for r in rows.values()])
    if table.empty:
        return table
    table = table.sort_values(["kind", "total_bits"], ascending=[False, True], kind="mergesort")
    for col in ("bits_per_token", "ae_channels"):
        table[col] = table[col].astype("Int64")
    return table.reset_index(drop=True)


def _md(table: pd.DataFrame) -> str:
    def cell(v):
        if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
            return "-"
        if isinstance(v, float) and v.is_integer():
            return f"{int(v):,}"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.astype(object).itertuples(index=False)]
    return "\n".join(lines)


def information_markdown(data: pd.DataFrame, latents: pd.DataFrame) -> str:
    digits = data[data["dataset"] == "digits"]["estimate_bits"]
    lines = ["# Information per image vs latent size", "",
             "Generated by `analysis/information.py`. Bits per image: `raw_bits` is the bound from how the images "
             "are made (digits: 64 source pixels x log2 17 grey levels; photo_crops: every uint8 value free, "
             "3 x H x W x 8); `png_bits` is PNG's compressed pixel stream per image (row filters + deflate, fixed "
             "container bytes not counted), `lzma_bits` a raw LZMA2 stream per image; `estimate_bits`, the practical "
             "estimate of the information present, is the shortest of the three lossless codes. Per-image codecs "
             "pay for their own tables and cannot see that the digits are upsampled, so the estimate is an upper "
             "one; for the digits the raw bound is the binding code.", "",
             _md(data[["dataset", "resolution", "split", "images", "channels", "values", "raw_bits", "png_bits",
                       "lzma_bits", "estimate_bits", "estimate_from"]]), ""]
    if not latents.empty:
        lat = latents.copy()
        for _, row in data.iterrows():
            lat[f"<= {row['dataset']} {row['resolution']}"] = lat["total_bits"].map(
                lambda b, e=row["estimate_bits"]: "yes" if b <= e else "no")
        lines += [f"Latents of the points of the sweeps {', '.join(LATENT_SWEEPS)} at profile "
                  f"{lat['profile'].iloc[0]} (as composed for their default data, 16 x 16: the grid a 32 x 32 dataset "
                  "would get is twice as wide). A 'yes' column: the latent is no larger than that dataset's estimate, "
                  "so the dataset still has information for it to encode.", "", _md(lat.drop(columns="profile")),
                  ""]
        if not digits.empty:
            over = lat[lat["total_bits"] > float(digits.iloc[0])]
            lines += [f"{len(over)} of {len(lat)} latents are larger than the digits' {float(digits.iloc[0]):,.0f} "
                      "bits per image.", ""]
    return "\n".join(lines)


def write_information(out_dir, max_images: int | None = None, profile: str = "tiny") -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dataset_information(max_images=max_images)
    latents = latent_sizes(profile=profile)
    (out / "data_information.md").write_text(information_markdown(data, latents) + "\n")
    table = pd.concat([data.assign(row="dataset"), latents.assign(row="latent")], ignore_index=True)
    table.to_csv(out / "data_information.csv", index=False, lineterminator="\n")
    return [out / "data_information.md", out / "data_information.csv"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="information.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "paper_figs"))
    p.add_argument("--profile", default="tiny", help="profile whose latent grid the sweeps' points use")
    p.add_argument("--max-images", type=int, default=None, help="measure only the first N images of each dataset")
    args = p.parse_args(argv)
    for path in write_information(args.out, args.max_images, args.profile):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
