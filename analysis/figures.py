"""The paper's figures from the tidy run frame (`analysis.runs.load_runs`).

Every figure function takes the frame (or, for training curves, the history frame) and an output folder and writes
NAME.png / NAME.pdf (formats configurable), NAME.txt (caption, which also says what is missing) and NAME.csv (the rows
behind the plot); `analysis.canvas` draws and saves them. It returns a `FigureResult`; when the data a figure needs is
absent nothing is written and the result carries `skipped` (the reason). Each figure is three steps: its frame (runs
-> the tidy rows it plots, or `NoData`), its plot (rows -> axes) and its caption (rows -> text).

`all_figures` never mixes sweeps in one figure: each sweep gets its own set in OUT/<sweep>/, and the paper's main
figures OUT/<figure>.png are each drawn from one sweep (`MAIN_FIGURES`: the first of its sweeps present).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import convergence as conv_mod
from analysis.canvas import (
    MARKERS,
    FigureResult,
    draw,
    figure_legend,
    log_if_wide,
    new_figure,
    safe_name,
    save,
    skip,
    style_kwargs,
)
from analysis.formatting import fmt, head_label
from analysis.runs import BITS_PER_TOKEN, CODEBOOK_LOG2, column, latent_size, numeric, sweep_of
from bar.core.vocabulary import (
    AE,
    DISCRETE_HEADS,
    EVALUATION_HISTORIES,
    FINISHED,
    FSQ,
    GFID,
    GFID_NOCFG,
    HEAD_LABEL,
    HEAD_NAME,
    HEAD_ORDER,
    INFEASIBLE,
    LATENT_SERIES_LABEL,
    LOSS_HISTORIES,
    MBM,
    MEM_ESTIMATE_GB,
    PEAK_MEM_GB,
    RFID,
    SAMPLE_IMG_PER_S,
    TOKENIZER_BITS,
    TOKENIZER_CHANNELS,
    TOKENIZER_KIND,
    TOTAL_BITS,
    TRAIN_TFLOP,
)


class NoData(Exception):
    """The runs lack what a figure needs; the message says what (it becomes the figure's `skipped`)."""


def _figure(name: str, out_dir, formats, frame: Callable, plot: Callable, caption: Callable,
            table: Callable) -> FigureResult:
    """frame() -> data, then plot(data) -> Figure, caption(data) -> text and table(data) -> the CSV rows, saved as
    `name`; skipped with the reason when frame raises NoData."""
    try:
        data = frame()
    except NoData as why:
        return skip(name, str(why))
    fig = draw(lambda: plot(data))
    return save(fig, out_dir, name, formats, caption(data), table(data))


# ------------------------------------------------------------------------------------------------ frame helpers

def _has(series: pd.Series) -> bool:
    return bool(pd.to_numeric(series, errors="coerce").notna().any())


def _group_label(df: pd.DataFrame) -> pd.Series:
    """'sweep (profile)' per row: used as a style when one figure mixes several sweeps or profiles."""
    sweep = column(df, "sweep").where(column(df, "sweep").notna(), column(df, "experiment")).fillna("?").astype(str)
    profile = column(df, "profile").fillna("?").astype(str)
    return sweep + " (" + profile + ")"


def _head_labels(df: pd.DataFrame) -> pd.Series:
    return column(df, HEAD_NAME).map(head_label)


def _ordered(values, order) -> list:
    present = [v for v in pd.unique(pd.Series(values)) if v is not None and v == v]
    known = [v for v in order if v in present]
    return known + sorted(v for v in present if v not in known)


def _contributing(considered: pd.DataFrame, plotted: pd.DataFrame) -> pd.DataFrame:
    """Rows of `considered` that belong to a sweep with at least one plotted point (what a missing-list reports on)."""
    if "sweep" not in considered.columns or "sweep" not in plotted.columns:
        return considered
    return considered[considered["sweep"].isin(set(plotted["sweep"].dropna()))]


def _csv(df: pd.DataFrame, columns: list[str], sort: list[str]) -> pd.DataFrame:
    cols = [c for c in dict.fromkeys(columns) if c in df.columns]
    keys = [c for c in sort if c in cols]
    out = df[cols].copy()
    if keys:
        out = out.sort_values(keys, kind="mergesort", na_position="last")
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- caption helpers

def _describe_missing(df: pd.DataFrame, need: list[str]) -> list[str]:
    """One entry per run in `df` that is not finished or lacks a needed metric."""
    notes = []
    for _, row in df.sort_values(["run_name", "run_id"]).iterrows():
        status = row.get("status")
        lacking = [m for m in need if m not in df.columns or pd.isna(row.get(m))]
        if status != FINISHED:
            reason = status
            err = row.get("error") if "error" in df.columns else None
            if isinstance(err, str) and err:
                reason += f": {err[:80]}"
            notes.append(f"{row.get('run_name')} ({reason})")
        elif lacking and len(lacking) == len(need):
            notes.append(f"{row.get('run_name')} (finished, no {'/'.join(lacking)})")
    return notes


def _profiles_text(df: pd.DataFrame) -> str:
    profiles = sorted(set(column(df, "profile").dropna().astype(str)))
    sweeps = sorted(set(column(df, "sweep").dropna().astype(str)))
    return f"Sweeps: {', '.join(sweeps) or 'n/a'}; profiles: {', '.join(profiles) or 'n/a'}."


def _missing_text(missing: list[str], none: str = " No missing points.") -> str:
    return f" Missing or incomplete: {'; '.join(missing)}." if missing else none


# ------------------------------------------------------------------------------------------------ 1. bits vs FID

@dataclass
class _BitsVsFid:
    considered: pd.DataFrame          # fsq and ae runs, with total_bits, series, rfid_plotted, gfid_plotted
    plotted: pd.DataFrame             # the rows with total bits and rFID or gFID
    panels: list[tuple[str, str]]     # (column, label) per panel


def bits_vs_fid_frame(df: pd.DataFrame) -> _BitsVsFid:
    """The fsq / ae runs with total bits and rFID or gFID; the discrete series' gFID only from the MBM head (where
    the frame names heads)."""
    sub = df[column(df, TOKENIZER_KIND).isin(list(LATENT_SERIES_LABEL))].copy()
    if sub.empty:
        raise NoData("no runs with tokenizer.kind fsq or ae")
    sub[TOTAL_BITS] = numeric(sub, TOTAL_BITS)
    sub["series"] = column(sub, TOKENIZER_KIND).map(LATENT_SERIES_LABEL)
    sub["group"] = _group_label(sub)
    head = column(sub, HEAD_NAME)
    sub["gfid_eligible"] = (sub[TOKENIZER_KIND] != FSQ) | head.isna() | (head == MBM)
    sub["gfid_plotted"] = numeric(sub, GFID).where(sub["gfid_eligible"])
    sub["rfid_plotted"] = numeric(sub, RFID)
    panels = [(m, label) for m, label in (("rfid_plotted", "rFID"), ("gfid_plotted", "gFID"))
              if _has(sub[m].where(sub[TOTAL_BITS].notna()))]
    if not panels:
        raise NoData("no run has total_bits together with rfid or gfid")
    plotted = sub[sub[TOTAL_BITS].notna() & (sub["rfid_plotted"].notna() | sub["gfid_plotted"].notna())]
    return _BitsVsFid(sub, plotted, panels)


def _bits_vs_fid_plot(data: _BitsVsFid):
    plotted = data.plotted
    style = "group" if plotted["group"].nunique() > 1 else None
    hue_order = _ordered(plotted["series"], list(LATENT_SERIES_LABEL.values()))
    fig, axes = new_figure(len(data.panels))
    for ax, (metric, label) in zip(axes, data.panels):
        sns.lineplot(data=plotted[plotted[metric].notna()], x=TOTAL_BITS, y=metric, hue="series",
                     hue_order=hue_order, ax=ax, errorbar=None, sort=True, **style_kwargs(style, plotted))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("total bits in the latent (log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs bits")
    figure_legend(fig, axes)
    return fig


def _bits_vs_fid_caption(data: _BitsVsFid) -> str:
    sub, plotted = data.considered, data.plotted
    eligible = sub[(sub[TOKENIZER_KIND] == AE) | sub["gfid_eligible"] | sub["rfid_plotted"].notna()]
    missing = _describe_missing(_contributing(eligible, plotted), [RFID, GFID])
    n = plotted.groupby("series")["run_id"].nunique()
    return ("Reconstruction (rFID) and generation (gFID) quality against the total number of bits in the latent "
            "(discrete: h*w*bits_per_token; continuous: h*w*16*channels). Points: "
            + ", ".join(f"{k} {v}" for k, v in n.items()) + ". "
            + ("gFID of the discrete series uses the MBM head. " if column(sub, HEAD_NAME).notna().any() else "")
            + _profiles_text(plotted) + _missing_text(missing))


def _bits_vs_fid_table(data: _BitsVsFid) -> pd.DataFrame:
    return _csv(data.plotted, ["run_id", "run_name", "sweep", "profile", "status", TOKENIZER_KIND, "series", HEAD_NAME,
                               TOKENIZER_BITS, TOKENIZER_CHANNELS, TOTAL_BITS, RFID, GFID],
                ["series", TOTAL_BITS, "run_name", "run_id"])


def bits_vs_fid(df: pd.DataFrame, out_dir, formats=None, name: str = "bits_vs_fid") -> FigureResult:
    """Total bits in the latent (log x) vs rFID and gFID; series: discrete (tokenizer.kind=fsq) and continuous (ae).

    For gFID the discrete series uses the MBM head where the frame names heads (the paper's BAR); the continuous series
    uses whatever head its runs used (the diffusion head)."""
    return _figure(name, out_dir, formats, lambda: bits_vs_fid_frame(df), _bits_vs_fid_plot, _bits_vs_fid_caption,
                   _bits_vs_fid_table)


# -------------------------------------------------------------------------------------------- 2. codebook scaling

_GFID_PANELS = ((GFID, "gFID (with CFG)"), (GFID_NOCFG, "gFID (no CFG)"))


@dataclass
class _CodebookScaling:
    considered: pd.DataFrame          # discrete-head runs with a codebook size, with codebook_log2, head, group
    plotted: pd.DataFrame             # infeasible runs and runs with a plotted metric
    infeasible: pd.DataFrame
    metrics: list[tuple[str, str]]    # (metric, label) per panel
    palette: dict                     # head label -> colour


def codebook_scaling_frame(df: pd.DataFrame) -> _CodebookScaling:
    """Discrete-head runs at their log2 C with gFID or gFID without CFG; infeasible runs kept."""
    sub = df[column(df, HEAD_NAME).isin(list(DISCRETE_HEADS))].copy()
    if sub.empty:
        raise NoData("no runs with a discrete head (mbm, softmax, bitwise)")
    sub[CODEBOOK_LOG2] = latent_size(sub)[CODEBOOK_LOG2]
    sub = sub[sub[CODEBOOK_LOG2].notna()]
    sub["head"] = _head_labels(sub)
    sub["group"] = _group_label(sub)
    metrics = [(m, label) for m, label in _GFID_PANELS if m in sub.columns and _has(sub[m])]
    infeasible = sub[sub["status"] == INFEASIBLE]
    if not metrics and infeasible.empty:
        raise NoData("no discrete-head run has gfid or gfid_nocfg (and none is infeasible)")
    metrics = metrics or [_GFID_PANELS[0]]
    logged = [m for m, _ in metrics if m in sub.columns]
    plotted = sub[(sub["status"] == INFEASIBLE) | sub[logged].notna().any(axis=1)] if logged else infeasible
    hue_order = _ordered(plotted["head"], [HEAD_LABEL[h] for h in DISCRETE_HEADS])
    palette = dict(zip(hue_order, sns.color_palette("deep", len(hue_order))))
    return _CodebookScaling(sub, plotted, infeasible, metrics, palette)


def _mark_infeasible(ax, data: _CodebookScaling) -> None:
    """An x at the top of the axis per infeasible point; heads infeasible at one size are stacked downwards."""
    trans = ax.get_xaxis_transform()  # x in data units, y in axes units
    for _, at in data.infeasible.sort_values([CODEBOOK_LOG2, "head"]).groupby(CODEBOOK_LOG2):
        for k, (_, row) in enumerate(at.iterrows()):
            ax.plot([row[CODEBOOK_LOG2]], [0.95 - 0.06 * k], marker="x", ms=9, mew=2, ls="none",
                    color=data.palette.get(row["head"], "0.3"), transform=trans, clip_on=False)
    xs = sorted(set(data.plotted[CODEBOOK_LOG2]))
    if len(xs) == 1:
        ax.set_xlim(xs[0] - 2, xs[0] + 2)


def _codebook_panel(ax, data: _CodebookScaling, metric: str, label: str) -> None:
    plotted = data.plotted
    style = "group" if plotted["group"].nunique() > 1 else None
    points = plotted[plotted[metric].notna()] if metric in plotted.columns else plotted.iloc[0:0]
    if not points.empty:
        sns.lineplot(data=points, x=CODEBOOK_LOG2, y=metric, hue="head", hue_order=list(data.palette),
                     palette=data.palette, errorbar=None, ax=ax, sort=True, **style_kwargs(style, plotted))
    else:
        ax.text(0.5, 0.5, f"no {metric} measured", transform=ax.transAxes, ha="center", color="0.4")
    if not data.infeasible.empty:
        _mark_infeasible(ax, data)
    ax.set_xlabel("log2 C (bits per token)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs codebook size")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))


def _codebook_scaling_plot(data: _CodebookScaling):
    fig, axes = new_figure(len(data.metrics))
    for ax, (metric, label) in zip(axes, data.metrics):
        _codebook_panel(ax, data, metric, label)
    # one legend entry per head with infeasible sizes, instead of text on the axes (labels could collide)
    extra = [(Line2D([], [], marker="x", ls="none", color=data.palette.get(head, "0.3"), mew=2),
              f"{head}: infeasible at log2 C = {', '.join(fmt(x) for x in sorted(rows[CODEBOOK_LOG2]))}")
             for head, rows in data.infeasible.groupby("head", sort=True)]
    figure_legend(fig, axes, extra)
    return fig


def _codebook_scaling_caption(data: _CodebookScaling) -> str:
    sub, plotted = data.considered, data.plotted
    missing = _describe_missing(_contributing(sub[sub["status"] != INFEASIBLE], plotted), [m for m, _ in data.metrics])
    inf_text = "; ".join(f"{r['head']} at log2 C = {fmt(r[CODEBOOK_LOG2])}"
                         for _, r in data.infeasible.sort_values(["head", CODEBOOK_LOG2]).iterrows())
    sizes = sorted(set(plotted[CODEBOOK_LOG2]))
    return (f"Codebook scaling: gFID against log2 of the codebook size C, one line per head, at log2 C in "
            f"{{{', '.join(fmt(s) for s in sizes)}}}. "
            + (f"Infeasible (marked x at the top): {inf_text}. " if inf_text else "No infeasible points. ")
            + _profiles_text(plotted) + _missing_text(missing))


def _codebook_scaling_table(data: _CodebookScaling) -> pd.DataFrame:
    return _csv(data.plotted, ["run_id", "run_name", "sweep", "profile", "status", HEAD_NAME, "head", CODEBOOK_LOG2,
                               GFID, GFID_NOCFG, PEAK_MEM_GB, MEM_ESTIMATE_GB, "error"],
                [HEAD_NAME, CODEBOOK_LOG2, "run_name", "run_id"])


def codebook_scaling(df: pd.DataFrame, out_dir, formats=None, name: str = "codebook_scaling") -> FigureResult:
    """gFID (and gFID without CFG) vs log2 C, one line per head (mbm / softmax / bitwise). Infeasible points (cannot
    run, e.g. out of memory) are drawn as an x at the top of the axis and labelled, not dropped."""
    return _figure(name, out_dir, formats, lambda: codebook_scaling_frame(df), _codebook_scaling_plot,
                   _codebook_scaling_caption, _codebook_scaling_table)


# ---------------------------------------------------------------------------------------------- 3. quality vs cost

@dataclass
class _QualityVsCost:
    considered: pd.DataFrame          # every run, with numeric gfid and sample_img_per_s
    plotted: pd.DataFrame             # runs with both, with variant (head, patch size) and group
    reference: pd.DataFrame | None    # the paper's reported points with both (other hardware)


def quality_vs_cost_frame(df: pd.DataFrame, reported: pd.DataFrame | None) -> _QualityVsCost:
    """Runs with gFID and a positive sampling throughput, labelled by head and patch size; the reported points."""
    sub = df.copy()
    sub[SAMPLE_IMG_PER_S] = numeric(sub, SAMPLE_IMG_PER_S)
    sub[GFID] = numeric(sub, GFID)
    plotted = sub[sub[SAMPLE_IMG_PER_S].notna() & sub[GFID].notna() & (sub[SAMPLE_IMG_PER_S] > 0)].copy()
    if plotted.empty:
        raise NoData("no run has both gfid and sample_img_per_s")
    patch = column(plotted, "model.patch_size")
    plotted["variant"] = _head_labels(plotted) + patch.map(lambda p: "" if p is None or p != p else f", p={p}")
    plotted["group"] = _group_label(plotted)
    ref = None
    if reported is not None and {GFID, SAMPLE_IMG_PER_S} <= set(reported.columns):
        ref = reported[pd.to_numeric(reported[SAMPLE_IMG_PER_S], errors="coerce").notna()
                       & pd.to_numeric(reported[GFID], errors="coerce").notna()]
    return _QualityVsCost(sub, plotted, ref)


def _has_reference(data: _QualityVsCost) -> bool:
    return data.reference is not None and not data.reference.empty


def _plot_reference(ax, ref: pd.DataFrame) -> None:
    """The paper's points as grey stars, each labelled with its model."""
    ax.scatter(ref[SAMPLE_IMG_PER_S].astype(float), ref[GFID].astype(float), marker="*", s=90,
               facecolors="none", edgecolors="0.5", label="reported (paper, its hardware)")
    for _, r in ref.iterrows():
        ax.annotate(str(r["model"]), (float(r[SAMPLE_IMG_PER_S]), float(r[GFID])), xytext=(4, 3),
                    textcoords="offset points", fontsize=7, color="0.4",
                    arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5, "shrinkA": 0, "shrinkB": 2})


def _quality_vs_cost_plot(data: _QualityVsCost):
    plotted = data.plotted
    style = "group" if plotted["group"].nunique() > 1 else None
    markers = {k: v for k, v in style_kwargs(style, plotted).items() if k != "dashes"} if style else {}
    fig, (ax,) = new_figure(1, width=5.6, height=4.0)
    sns.scatterplot(data=plotted.sort_values(["variant", "run_name"]), x=SAMPLE_IMG_PER_S, y=GFID, hue="variant",
                    hue_order=sorted(plotted["variant"].unique()), s=60, ax=ax, **markers)
    if _has_reference(data):
        _plot_reference(ax, data.reference)
    ax.set_xscale("log")
    ax.set_xlabel("sampling throughput (images / s, log scale)")
    ax.set_ylabel("gFID")
    ax.set_title("quality vs sampling cost")
    figure_legend(fig, [ax])
    return fig


def _quality_vs_cost_caption(data: _QualityVsCost) -> str:
    considered = _contributing(data.considered[column(data.considered, HEAD_NAME).notna()], data.plotted)
    missing = _describe_missing(considered, [GFID, SAMPLE_IMG_PER_S])
    return ("Generation quality (gFID) against sampling throughput (images per second, log scale), coloured by "
            f"head and token-group (patch) size: {', '.join(sorted(data.plotted['variant'].unique()))}. "
            + ("Grey stars: the paper's reported numbers, measured on its hardware. " if _has_reference(data) else "")
            + _profiles_text(data.plotted) + _missing_text(missing))


def _quality_vs_cost_table(data: _QualityVsCost) -> pd.DataFrame:
    return _csv(data.plotted, ["run_id", "run_name", "sweep", "profile", "status", HEAD_NAME, "model.preset",
                               "model.patch_size", "variant", SAMPLE_IMG_PER_S, GFID],
                ["variant", SAMPLE_IMG_PER_S, "run_name", "run_id"])


def quality_vs_cost(df: pd.DataFrame, out_dir, formats=None, reported: pd.DataFrame | None = None,
                    name: str = "quality_vs_cost") -> FigureResult:
    """gFID vs sampling throughput (img/s, log x), one colour per head and patch size. When `reported` (the paper's
    table, `tables.load_reported()`) is given, its points are overlaid in grey as a reference (other hardware)."""
    return _figure(name, out_dir, formats, lambda: quality_vs_cost_frame(df, reported), _quality_vs_cost_plot,
                   _quality_vs_cost_caption, _quality_vs_cost_table)


# ---------------------------------------------------------------------------------------------- 4. training curves

@dataclass
class _Curves:
    sweep: str
    history: pd.DataFrame             # the sweep's thinned history, sorted by key, run, step
    keys: list[str]                   # one panel per key
    runs: list[str]                   # run names (hue order)


def _thin(group: pd.DataFrame, max_points: int) -> pd.DataFrame:
    if len(group) <= max_points:
        return group
    idx = np.unique(np.linspace(0, len(group) - 1, max_points).round().astype(int))
    return group.iloc[idx]


def training_curves_frame(history: pd.DataFrame, sweep: str, max_points: int) -> _Curves:
    """One sweep's loss histories, at most `max_points` points per run and key (evenly spaced, first and last kept)."""
    h = history[history["sweep"] == sweep]
    if h.empty:
        raise NoData(f"no metric history for sweep {sweep}")
    h = h.sort_values(["key", "run_name", "run_id", "step"], kind="mergesort")
    h = (h.groupby(["key", "run_id"], sort=True, group_keys=False)[h.columns.tolist()]
         .apply(lambda g: _thin(g, max_points)).reset_index(drop=True))
    keys = [k for k in LOSS_HISTORIES if k in set(h["key"])]
    keys += sorted(set(h["key"]) - set(keys))
    return _Curves(sweep, h, keys, sorted(h["run_name"].fillna(h["run_id"]).unique()))


def _training_curves_plot(data: _Curves):
    fig, axes = new_figure(len(data.keys))
    for ax, key in zip(axes, data.keys):
        points = data.history[data.history["key"] == key].assign(run=lambda d: d["run_name"].fillna(d["run_id"]))
        sns.lineplot(data=points, x="step", y="value", hue="run", hue_order=data.runs, errorbar=None,
                     estimator=None, units="run_id", ax=ax, linewidth=1.0, sort=True)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
    figure_legend(fig, axes)
    return fig


def _training_curves_caption(data: _Curves) -> str:
    status = data.history.drop_duplicates("run_id")
    not_done = sorted(f"{r.run_name} ({r.status})" for r in status.itertuples() if r.status != FINISHED)
    absent = [k for k in LOSS_HISTORIES if k not in data.keys]
    return (f"Training curves of sweep {data.sweep}: {', '.join(data.keys)} against step, one line per run "
            f"({len(data.runs)} runs). "
            + (f"Not logged: {', '.join(absent)}. " if absent else "")
            + (f"Runs not finished (curves partial): {'; '.join(not_done)}." if not_done else "All runs finished."))


def _training_curves_table(data: _Curves) -> pd.DataFrame:
    return _csv(data.history, ["sweep", "run_id", "run_name", "profile", "status", "key", "step", "value"],
                ["key", "run_name", "run_id", "step"])


def training_curves(history: pd.DataFrame, out_dir, formats=None, sweep: str | None = None,
                    max_points: int = 2000, name: str | None = None) -> list[FigureResult]:
    """Training curves (train_loss, tokenizer_loss vs step) from `load_metric_history`, one figure per sweep, named
    training_curves_<sweep> (or `name`, with one `sweep`). The evaluation histories (gfid, gfid_nocfg, train_tflop,
    rfid) belong to the convergence figure and are left out. Long histories are thinned to at most `max_points`
    points per run and metric (evenly spaced, first and last kept); the CSV holds the plotted points."""
    if history is not None and not history.empty:
        history = history[~history["key"].isin(EVALUATION_HISTORIES)]
    if history is None or history.empty:
        return [skip(name or "training_curves", "no metric history (train_loss / tokenizer_loss) logged")]
    hist = history.assign(sweep=history["sweep"].fillna("default"))
    sweeps = [sweep] if sweep is not None else sorted(hist["sweep"].unique())
    return [_figure(name if name is not None and sweep is not None else f"training_curves_{safe_name(sw)}",
                    out_dir, formats, lambda sw=sw: training_curves_frame(hist, sw, max_points),
                    _training_curves_plot, _training_curves_caption, _training_curves_table)
            for sw in sweeps]


# -------------------------------------------------------------------------------------------------- 5. head memory

@dataclass
class _HeadMemory:
    considered: pd.DataFrame          # discrete-head runs
    long: pd.DataFrame                # one row per run and memory quantity (measured peak, estimate)
    quantities: list[tuple[str, str]]  # (metric, label) of the quantities logged


def head_memory_frame(df: pd.DataFrame) -> _HeadMemory:
    """Discrete-head runs' memory (peak_mem_gb, mem_estimate_gb) at their bits per token, long: one row per quantity."""
    sub = df[column(df, HEAD_NAME).isin(list(DISCRETE_HEADS))].copy()
    if sub.empty:
        raise NoData("no runs with a discrete head (mbm, softmax, bitwise)")
    sub[BITS_PER_TOKEN] = latent_size(sub)[BITS_PER_TOKEN]
    sub["head"] = _head_labels(sub)
    quantities = [(c, label) for c, label in ((PEAK_MEM_GB, "measured peak"), (MEM_ESTIMATE_GB, "estimate"))
                  if c in sub.columns]
    if not quantities:
        raise NoData("no run logged peak_mem_gb or mem_estimate_gb")
    long = sub.melt(id_vars=[c for c in ("run_id", "run_name", "sweep", "profile", "status", HEAD_NAME, "head",
                                         BITS_PER_TOKEN) if c in sub.columns],
                    value_vars=[c for c, _ in quantities], var_name="quantity_key", value_name="memory_gb")
    long["quantity"] = long["quantity_key"].map(dict(quantities))
    long = long[long["memory_gb"].notna() & long[BITS_PER_TOKEN].notna() & (long["memory_gb"] > 0)]
    if long.empty:
        raise NoData("no run has both a bits-per-token value and a memory value")
    return _HeadMemory(sub, long, quantities)


def _head_memory_plot(data: _HeadMemory):
    long = data.long
    hue_order = _ordered(long["head"], [HEAD_LABEL[h] for h in DISCRETE_HEADS])
    style_order = [label for _, label in data.quantities if label in set(long["quantity"])]
    fig, (ax,) = new_figure(1, width=5.6, height=4.0)
    sns.lineplot(data=long, x=BITS_PER_TOKEN, y="memory_gb", hue="head", hue_order=hue_order, style="quantity",
                 style_order=style_order, dashes={"measured peak": "", "estimate": (4, 2)}, markers=True,
                 errorbar=None, ax=ax, sort=True)
    ax.set_yscale("log")
    ax.set_xlabel("bits per token (log2 C)")
    ax.set_ylabel("memory (GB, log scale)")
    ax.set_title("head memory vs bits per token")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    figure_legend(fig, [ax])
    return fig


def _head_memory_caption(data: _HeadMemory) -> str:
    missing = _describe_missing(_contributing(data.considered, data.long), [c for c, _ in data.quantities])
    return ("Memory against bits per token, one colour per head; solid: measured peak memory, dashed: analytic "
            f"estimate (present: {', '.join(label for _, label in data.quantities)}). Infeasible points appear "
            "through their estimate. " + _profiles_text(data.long) + _missing_text(missing))


def _head_memory_table(data: _HeadMemory) -> pd.DataFrame:
    return _csv(data.long, ["run_id", "run_name", "sweep", "profile", "status", HEAD_NAME, "head", BITS_PER_TOKEN,
                            "quantity_key", "quantity", "memory_gb"],
                [HEAD_NAME, "quantity_key", BITS_PER_TOKEN, "run_name", "run_id"])


def head_memory(df: pd.DataFrame, out_dir, formats=None, name: str = "head_memory") -> FigureResult:
    """Memory vs bits per token, one colour per head: measured peak (peak_mem_gb, solid) and analytic estimate
    (mem_estimate_gb, dashed). Infeasible points usually only have the estimate."""
    return _figure(name, out_dir, formats, lambda: head_memory_frame(df), _head_memory_plot, _head_memory_caption,
                   _head_memory_table)


# ------------------------------------------------------------------------------------------------- 6. convergence

@dataclass
class _Convergence:
    runs: pd.DataFrame                # the run frame the histories belong to
    conv: pd.DataFrame                # `analysis.convergence.convergence_frame`
    rfid: pd.DataFrame                # `analysis.convergence.rfid_frame`
    panels: list[str]                 # step, train_tflop (when logged), rfid (when logged)
    by_profile: dict                  # profile -> its rows of conv
    targets: dict                     # profile -> the convergence claim's gFID threshold (or None)

    def tag(self, profile) -> str:
        """' [profile]' when the sweep ran at several profiles (its curves and thresholds are per profile)."""
        return f" [{profile}]" if len(self.by_profile) > 1 else ""


def convergence_figure_frame(df: pd.DataFrame, history: pd.DataFrame | None) -> _Convergence:
    """gFID histories (and rFID during tokenizer training) of the runs, and each profile's claim threshold."""
    conv = conv_mod.convergence_frame(history, df)
    if conv.empty:
        raise NoData("no run has a gFID history of two or more evaluations (periodic gFID during training)")
    rfid = conv_mod.rfid_frame(history, df)
    panels = (["step"] + ([TRAIN_TFLOP] if conv[TRAIN_TFLOP].notna().any() else [])
              + ([RFID] if not rfid.empty else []))
    by_profile = dict(tuple(conv.groupby(conv["profile"].astype(str), sort=False)))
    targets = {p: conv_mod.convergence_threshold(runs) for p, runs in by_profile.items()}
    return _Convergence(df, conv, rfid, panels, by_profile, targets)


def _size_markers(conv: pd.DataFrame) -> dict:
    """One marker per codebook size / channel count: continuous sizes first, then discrete ones, ascending."""
    sizes = list(dict.fromkeys(conv.sort_values([TOKENIZER_KIND, "size"], ascending=[False, True])["size_label"]))
    return {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(sizes)}


def _rfid_panel(ax, data: _Convergence, markers: dict) -> None:
    rfid = data.rfid
    for (prof, kind, label), g in rfid.groupby(["profile", TOKENIZER_KIND, "size_label"], sort=False):
        ax.plot(g["step"], g[RFID], marker=markers.get(label, "o"), ms=4, color="0.35",
                ls="--" if kind == AE else "-", lw=1.2, label=f"tokenizer {kind} {label}{data.tag(prof)}")
    log_if_wide(ax, rfid["step"], "x")
    log_if_wide(ax, rfid[RFID], "y")
    ax.set_xlabel("tokenizer training step")
    ax.set_ylabel("rFID")
    ax.set_title("rFID during tokenizer training")


def _gfid_panel(ax, data: _Convergence, panel: str, markers: dict, palette: dict) -> None:
    """gFID against optimizer steps (panel 'step') or training compute (panel 'train_tflop'), with the thresholds."""
    for _, g in data.conv.groupby("run_id", sort=False):
        g = g[g[panel].notna()] if panel == TRAIN_TFLOP else g
        if g.empty:
            continue
        ax.plot(g[panel], g[GFID], marker=markers.get(g["size_label"].iloc[0], "o"), ms=4, lw=1.4,
                color=palette.get(g[HEAD_NAME].iloc[0], "0.3"), ls="--" if g[TOKENIZER_KIND].iloc[0] == AE else "-",
                label=g["series"].iloc[0] + data.tag(g["profile"].iloc[0]))
    for i, (prof, target) in enumerate(data.targets.items()):
        if target is not None:
            ax.axhline(target, color="0.5", lw=0.8, ls=(":", "-.")[i % 2],
                       label=f"claim threshold{data.tag(prof)}: gFID {fmt(target)}")
    log_if_wide(ax, data.conv[panel], "x")
    log_if_wide(ax, data.conv[GFID], "y")
    ax.set_xlabel("optimizer step" if panel == "step" else "training compute (TFLOP, estimated)")
    ax.set_ylabel("gFID")
    ax.set_title("gFID vs training steps" if panel == "step" else "gFID vs training compute")


def _convergence_plot(data: _Convergence):
    heads = _ordered(data.conv[HEAD_NAME], HEAD_ORDER)
    palette = dict(zip(heads, sns.color_palette("deep", len(heads))))
    markers = _size_markers(data.conv)
    fig, axes = new_figure(len(data.panels))
    for ax, panel in zip(axes, data.panels):
        if panel == RFID:
            _rfid_panel(ax, data, markers)
        else:
            _gfid_panel(ax, data, panel, markers, palette)
    figure_legend(fig, axes)
    return fig


def _final_gfids_text(data: _Convergence) -> str:
    summary = pd.concat([conv_mod.series_summary(data.by_profile[p], t).assign(_tag=data.tag(p))
                         for p, t in data.targets.items()], ignore_index=True)
    return "; ".join(f"{r['series']}{r['_tag']} {fmt(r['final_gfid'])} at step {r['final_step']}"
                     + (f" ({fmt(r['final_tflop'])} TFLOP)" if pd.notna(r["final_tflop"]) else "")
                     for _, r in summary.iterrows())


def _convergence_caption(data: _Convergence) -> str:
    considered = data.runs[column(data.runs, HEAD_NAME).notna()]
    undrawn = considered[~considered["run_id"].isin(set(data.conv["run_id"]))]
    missing = _describe_missing(undrawn, [GFID])
    no_history = sorted(undrawn[column(undrawn, "status") == FINISHED]["run_name"].astype(str))
    thresholds = "".join(f"Threshold of the convergence claim{data.tag(p)}: gFID {fmt(t)} (the worse of the best "
                         "final gFIDs of BAR and of the continuous runs; see REPORT.md). "
                         for p, t in data.targets.items() if t is not None)
    return ("Convergence: gFID measured during generator training, against optimizer steps"
            + (" and against cumulative estimated training compute (train_tflop)" if TRAIN_TFLOP in data.panels else
               " (no train_tflop history: no compute panel)")
            + (", and rFID against tokenizer training steps" if RFID in data.panels else "")
            + "; one line per head and codebook size" + (" and profile" if len(data.by_profile) > 1 else "")
            + f" (solid: discrete, dashed: continuous). Final gFID: {_final_gfids_text(data)}. "
            + (thresholds or "No convergence threshold (BAR or continuous runs without gFID history). ")
            + _profiles_text(data.conv)
            + (f" Without a gFID history: {', '.join(no_history)}." if no_history else "")
            + _missing_text(missing, none=""))


def convergence(df: pd.DataFrame, history: pd.DataFrame | None, out_dir, formats=None,
                name: str = "convergence") -> FigureResult:
    """gFID during generator training against optimizer steps and against training compute (train_tflop, TFLOP),
    one line per head x codebook size (colour: head; marker: bits per token or channels; dashed: continuous), from
    the metric histories (`analysis.convergence`); a third panel shows rFID against tokenizer steps where tokenizers
    logged it. The dotted line is the gFID threshold of the convergence claim. Log axes where values span 10x."""
    return _figure(name, out_dir, formats, lambda: convergence_figure_frame(df, history), _convergence_plot,
                   _convergence_caption,
                   lambda data: _csv(data.conv, conv_mod.COLUMNS, ["series", "run_id", "step"]))


# --------------------------------------------------------------------------------------------- figure sets per sweep

# The paper's main figures (OUT/<name>.png): each drawn from one sweep, the first of these present in the runs.
MAIN_FIGURES = {
    "bits_vs_fid": ("bits_vs_gfid", "bits_vs_rfid"),
    "codebook_scaling": ("codebook_scaling",),
    "quality_vs_cost": ("patch_size",),
    "head_memory": ("codebook_scaling",),
    "convergence": ("convergence",),
}


def _one(fig_name: str, df: pd.DataFrame, history, out_dir, formats, reported) -> FigureResult:
    """Figure `fig_name` of one sweep's runs (training curves: of its history) into out_dir."""
    if fig_name == "training_curves":
        sweeps = sorted(set(sweep_of(df)))
        if len(sweeps) != 1:
            return skip(fig_name, "needs exactly one sweep")
        hist = history if history is not None else pd.DataFrame()
        hist = hist[hist["sweep"].fillna("default").isin(sweeps)] if not hist.empty else hist
        return training_curves(hist, out_dir, formats, sweep=sweeps[0], name=fig_name)[0]
    draw_one = {"bits_vs_fid": lambda: bits_vs_fid(df, out_dir, formats, name=fig_name),
                "codebook_scaling": lambda: codebook_scaling(df, out_dir, formats, name=fig_name),
                "quality_vs_cost": lambda: quality_vs_cost(df, out_dir, formats, reported=reported, name=fig_name),
                "head_memory": lambda: head_memory(df, out_dir, formats, name=fig_name),
                "convergence": lambda: convergence(df, history, out_dir, formats, name=fig_name)}
    if fig_name not in draw_one:
        raise ValueError(f"unknown figure {fig_name}")
    return draw_one[fig_name]()


def sweep_figures(df: pd.DataFrame, history: pd.DataFrame | None, out_dir, formats=None,
                  reported: pd.DataFrame | None = None, prefix: str = "") -> list[FigureResult]:
    """Every figure one sweep's runs support (the frame and history of that sweep only), into out_dir, result names
    prefixed with `prefix` (e.g. `codebook_scaling/`)."""
    results = []
    for fig_name in (*MAIN_FIGURES, "training_curves"):
        res = _one(fig_name, df, history, out_dir, formats, reported)
        res.name = prefix + res.name
        results.append(res)
    return results


def _main_figure(fig_name: str, homes: tuple, per_sweep: dict, out: Path) -> FigureResult:
    """OUT/<fig_name>.*: a copy of the figure of the first of `homes` present in `per_sweep`, its caption naming the
    sweep; skipped when none is present or its figure was skipped."""
    home = next((h for h in homes if h in per_sweep), None)
    if home is None:
        return skip(fig_name, f"drawn from sweep {' or '.join(homes)}, which has no runs here "
                              "(see the per-sweep figures)")
    src = next(r for r in per_sweep[home] if r.name == f"{safe_name(home)}/{fig_name}")
    if src.skipped:
        return skip(fig_name, f"sweep {home}: {src.skipped}")
    caption = f"From sweep {home}. " + src.caption
    files = []
    for path in src.files:
        target = out / f"{fig_name}{path.suffix}"
        if path.suffix == ".txt":
            target.write_text(caption.rstrip() + "\n")
        else:
            shutil.copyfile(path, target)
        files.append(target)
    return FigureResult(name=fig_name, files=files, caption=caption, figure=src.figure)


def all_figures(df: pd.DataFrame, history: pd.DataFrame | None, out_dir, formats=None,
                reported: pd.DataFrame | None = None) -> list[FigureResult]:
    """The main figures (OUT/<figure>.*: a copy of the figure of the first of its `MAIN_FIGURES` sweeps present, its
    caption naming the sweep), then each sweep's own set (OUT/<sweep>/<figure>.*, named `<sweep>/<figure>`). No
    figure mixes points of different sweeps. Skipped ones are returned with their reason."""
    out = Path(out_dir)
    sweep = sweep_of(df) if not df.empty else pd.Series(dtype=str)
    hist = history if history is not None else pd.DataFrame()
    per_sweep = {}
    for sw in sorted(set(sweep)):
        sub = df[sweep == sw]
        h = hist[hist["run_id"].isin(set(sub["run_id"]))] if not hist.empty else hist
        per_sweep[sw] = sweep_figures(sub, h, out / safe_name(sw), formats, reported, prefix=f"{safe_name(sw)}/")
    main = [_main_figure(fig_name, homes, per_sweep, out) for fig_name, homes in MAIN_FIGURES.items()]
    return main + [r for sw in per_sweep for r in per_sweep[sw]]
