"""The paper's figures from the tidy run frame (`analysis.runs.load_runs`).

Every function takes the frame (or, for training curves, the history frame) and an output folder and writes
NAME.png / NAME.pdf (formats configurable), NAME.txt (caption, which also says what is missing) and NAME.csv (the rows
behind the plot). It returns a `FigureResult`; when the data a figure needs is absent nothing is written and the result
carries `skipped` (the reason). Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot, no global backend
switch), and saved without timestamps, so rerunning on the same runs gives byte-identical files. Text labels placed on
a figure never overlap (`_declutter` moves offset annotations apart before saving).

`all_figures` never mixes sweeps in one figure: each sweep gets its own set in OUT/<sweep>/, and the paper's main
figures OUT/<figure>.png are each drawn from one sweep (`MAIN_FIGURES`: the first of its sweeps present).
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation, Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis import convergence as conv_mod
from analysis.runs import column, numeric

DISCRETE_HEADS = ("mbm", "softmax", "bitwise")
HEAD_ORDER = ("mbm", "softmax", "bitwise", "diffusion")
HEAD_LABEL = {"mbm": "MBM (BAR)", "softmax": "softmax", "bitwise": "per-bit", "diffusion": "diffusion"}
FAMILY = {"fsq": "discrete (BAR-FSQ)", "ae": "continuous (AE)"}
DEFAULT_FORMATS = ("png", "pdf")
# Fixed metadata: no creation dates, no software strings -> reruns give identical bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None},
             "svg": {"Date": None}}
_RC = {"svg.hashsalt": "bar-analysis", "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
       "figure.dpi": 100, "savefig.dpi": 150, "pdf.fonttype": 42}


@dataclass
class FigureResult:
    name: str  # file stem relative to the output folder: `codebook_scaling`, `patch_size/quality_vs_cost`
    files: list[Path] = field(default_factory=list)
    caption: str = ""
    skipped: str | None = None
    figure: Figure | None = field(default=None, repr=False, compare=False)  # the drawn figure (for inspection)

    def __bool__(self) -> bool:  # truthy when something was drawn
        return self.skipped is None


# ----------------------------------------------------------------------------------------------------------- helpers

def _formats(formats) -> tuple[str, ...]:
    if formats is None:
        return DEFAULT_FORMATS
    if isinstance(formats, str):
        formats = formats.split(",")
    out = tuple(f.strip().lower().lstrip(".") for f in formats if f.strip())
    bad = [f for f in out if f not in _METADATA]
    if bad:
        raise ValueError(f"unsupported figure format {', '.join(bad)} (use png, pdf or svg)")
    return out




def _has(series: pd.Series) -> bool:
    return bool(pd.to_numeric(series, errors="coerce").notna().any())


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _group_label(df: pd.DataFrame) -> pd.Series:
    """'sweep (profile)' per row: used as a style when one figure mixes several sweeps or profiles."""
    sweep = column(df, "sweep").where(column(df, "sweep").notna(), column(df, "experiment")).fillna("?").astype(str)
    profile = column(df, "profile").fillna("?").astype(str)
    return sweep + " (" + profile + ")"


def _head_label(df: pd.DataFrame) -> pd.Series:
    return column(df, "head.name").map(lambda h: HEAD_LABEL.get(h, str(h)) if h is not None and h == h else "?")


def _ordered(values, order) -> list:
    present = [v for v in pd.unique(pd.Series(values)) if v is not None and v == v]
    known = [v for v in order if v in present]
    return known + sorted(v for v in present if v not in known)


def _describe_missing(df: pd.DataFrame, need: list[str]) -> list[str]:
    """One entry per run in `df` that is not finished or lacks a needed metric."""
    notes = []
    for _, row in df.sort_values(["run_name", "run_id"]).iterrows():
        status = row.get("status")
        lacking = [m for m in need if m not in df.columns or pd.isna(row.get(m))]
        if status != "finished":
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
    return (f"Sweeps: {', '.join(sweeps) or 'n/a'}; profiles: {', '.join(profiles) or 'n/a'}.")


def _csv(df: pd.DataFrame, columns: list[str], sort: list[str]) -> pd.DataFrame:
    cols = [c for c in dict.fromkeys(columns) if c in df.columns]
    keys = [c for c in sort if c in cols]
    out = df[cols].copy()
    if keys:
        out = out.sort_values(keys, kind="mergesort", na_position="last")
    return out.reset_index(drop=True)


def _renderer(fig: Figure):
    """A renderer for `fig` with its layout done (attaches an Agg canvas: no pyplot, no global backend)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    with mpl.rc_context(_RC):
        canvas.draw()
    return canvas.get_renderer()


def _text_box(text, renderer):
    """The window extent of a text's characters (an annotation's leader line left out)."""
    if isinstance(text, Annotation):
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def text_boxes(fig: Figure) -> list:
    """Window extents of every visible, non-empty text placed on the figure's axes (annotations included, without
    their leader lines) and on the figure itself; tick labels, titles and legends are laid out by matplotlib and not
    counted."""
    renderer = _renderer(fig)
    texts = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
    return [_text_box(t, renderer) for t in texts if t.get_visible() and t.get_text().strip()]


def _declutter(fig: Figure, pad_px: float = 2.0, max_moves: int = 100) -> None:
    """Move annotations placed with offset points downwards, one at a time, until no two texts of an axes overlap.
    Texts are visited left to right, top to bottom; a text that cannot move (plain `ax.text`) stays and the others
    make room for it."""
    for ax in fig.axes:
        texts = [t for t in ax.texts if t.get_visible() and t.get_text().strip()]
        if len(texts) < 2:
            continue
        renderer = _renderer(fig)
        fixed = [t for t in texts if not (isinstance(t, Annotation) and t.anncoords == "offset points")]
        movable = [t for t in texts if t not in fixed]
        for text in movable:
            text.set_in_layout(False)  # a moved label must not shrink the axes under constrained layout
        movable.sort(key=lambda t: (_text_box(t, renderer).x0, -_text_box(t, renderer).y1))
        placed = [_text_box(t, renderer) for t in fixed]
        for text in movable:
            for _ in range(max_moves):
                box = _text_box(text, renderer)
                hits = [p for p in placed if box.overlaps(p)]
                if not hits:
                    break
                shift_px = box.y1 - min(p.y0 for p in hits) + pad_px
                dx, dy = text.xyann
                text.xyann = (dx, dy - shift_px * 72.0 / fig.dpi)
            placed.append(_text_box(text, renderer))


def _save(fig: Figure, out_dir, name: str, formats, caption: str, data: pd.DataFrame) -> FigureResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _declutter(fig)
    files = []
    with mpl.rc_context(_RC):
        for fmt in _formats(formats):
            path = out / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight")
            files.append(path)
    cap = out / f"{name}.txt"
    cap.write_text(caption.rstrip() + "\n")
    csv = out / f"{name}.csv"
    data.to_csv(csv, index=False, lineterminator="\n")
    files += [cap, csv]
    return FigureResult(name=name, files=files, caption=caption, figure=fig)


def _new_figure(ncols: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list]:
    with mpl.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _draw(fn):
    """Run drawing code under the module's style (seaborn whitegrid + fixed rc)."""
    with mpl.rc_context(_RC), sns.axes_style("whitegrid"):
        return fn()


_MARKERS = ["o", "s", "D", "^", "v", "P", "<", ">", "p", "h"]  # no "x": it marks infeasible points


def _style_kwargs(style: str | None, data: pd.DataFrame) -> dict:
    """Marker settings for sns.lineplot: one marker per style level when there is a style, else plain dots."""
    if style:
        levels = sorted(data[style].dropna().unique())
        return {"style": style, "style_order": levels, "dashes": False,
                "markers": {lev: _MARKERS[i % len(_MARKERS)] for i, lev in enumerate(levels)}}
    return {"marker": "o"}


def _figure_legend(fig: Figure, axes, extra: list | None = None) -> None:
    """One legend for the whole figure, outside on the right: the union of the panels' entries (first seen order)."""
    entries = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        for h, lab in zip(handles, labels):
            entries.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    for h, lab in extra or []:
        entries.setdefault(lab, h)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside right upper", frameon=False)


def _contributing(considered: pd.DataFrame, plotted: pd.DataFrame) -> pd.DataFrame:
    """Rows of `considered` that belong to a sweep with at least one plotted point (what a missing-list reports on)."""
    if "sweep" not in considered.columns or "sweep" not in plotted.columns:
        return considered
    return considered[considered["sweep"].isin(set(plotted["sweep"].dropna()))]


def _log2_axis(ax):
    ax.set_xscale("log", base=2)


def _skip(name: str, reason: str) -> FigureResult:
    return FigureResult(name=name, skipped=reason)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


# ------------------------------------------------------------------------------------------------ 1. bits vs FID

def bits_vs_fid(df: pd.DataFrame, out_dir, formats=None, name: str = "bits_vs_fid") -> FigureResult:
    """Total bits in the latent (log x) vs rFID and gFID; series: discrete (tokenizer.kind=fsq) and continuous (ae).

    For gFID the discrete series uses the MBM head where the frame names heads (the paper's BAR); the continuous series
    uses whatever head its runs used (the diffusion head)."""
    kind = column(df, "tokenizer.kind")
    sub = df[kind.isin(list(FAMILY))].copy()
    if sub.empty:
        return _skip(name, "no runs with tokenizer.kind fsq or ae")
    sub["total_bits"] = numeric(sub, "total_bits")
    sub["series"] = column(sub, "tokenizer.kind").map(FAMILY)
    sub["group"] = _group_label(sub)
    head = column(sub, "head.name")
    gfid_ok = (sub["tokenizer.kind"] != "fsq") | head.isna() | (head == "mbm")
    sub["gfid_plotted"] = numeric(sub, "gfid").where(gfid_ok)
    sub["rfid_plotted"] = numeric(sub, "rfid")
    panels = [(m, label) for m, label in (("rfid_plotted", "rFID"), ("gfid_plotted", "gFID"))
              if _has(sub[m].where(sub["total_bits"].notna()))]
    if not panels:
        return _skip(name, "no run has total_bits together with rfid or gfid")
    plotted = sub[sub["total_bits"].notna() & (sub["rfid_plotted"].notna() | sub["gfid_plotted"].notna())]
    style = "group" if plotted["group"].nunique() > 1 else None
    hue_order = _ordered(plotted["series"], list(FAMILY.values()))

    def draw():
        fig, axes = _new_figure(len(panels))
        for ax, (metric, label) in zip(axes, panels):
            data = plotted[plotted[metric].notna()]
            sns.lineplot(data=data, x="total_bits", y=metric, hue="series", hue_order=hue_order, ax=ax,
                         errorbar=None, sort=True, **_style_kwargs(style, plotted))
            _log2_axis(ax)
            ax.set_xlabel("total bits in the latent (log scale)")
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs bits")
        _figure_legend(fig, axes)
        return fig

    fig = _draw(draw)
    eligible = sub[(sub["tokenizer.kind"] == "ae") | gfid_ok | sub["rfid_plotted"].notna()]
    missing = _describe_missing(_contributing(eligible, plotted), ["rfid", "gfid"])
    n = plotted.groupby("series")["run_id"].nunique()
    caption = ("Reconstruction (rFID) and generation (gFID) quality against the total number of bits in the latent "
               "(discrete: h*w*bits_per_token; continuous: h*w*16*channels). Points: "
               + ", ".join(f"{k} {v}" for k, v in n.items()) + ". "
               + ("gFID of the discrete series uses the MBM head. " if head.notna().any() else "")
               + _profiles_text(plotted)
               + (f" Missing or incomplete: {'; '.join(missing)}." if missing else " No missing points."))
    data = _csv(plotted, ["run_id", "run_name", "sweep", "profile", "status", "tokenizer.kind", "series", "head.name",
                          "tokenizer.bits", "tokenizer.channels", "total_bits", "rfid", "gfid"],
                ["series", "total_bits", "run_name", "run_id"])
    return _save(fig, out_dir, name, formats, caption, data)


# -------------------------------------------------------------------------------------------- 2. codebook scaling

def _codebook_x(df: pd.DataFrame) -> pd.Series:
    return numeric(df, "codebook_log2", "bits_per_token", "tokenizer.bits")


def codebook_scaling(df: pd.DataFrame, out_dir, formats=None, name: str = "codebook_scaling") -> FigureResult:
    """gFID (and gFID without CFG) vs log2 C, one line per head (mbm / softmax / bitwise). Infeasible points (cannot
    run, e.g. out of memory) are drawn as an x at the top of the axis and labelled, not dropped."""
    sub = df[column(df, "head.name").isin(list(DISCRETE_HEADS))].copy()
    if sub.empty:
        return _skip(name, "no runs with a discrete head (mbm, softmax, bitwise)")
    sub["codebook_log2"] = _codebook_x(sub)
    sub = sub[sub["codebook_log2"].notna()]
    sub["head"] = _head_label(sub)
    sub["group"] = _group_label(sub)
    metrics = [(m, label) for m, label in (("gfid", "gFID (with CFG)"), ("gfid_nocfg", "gFID (no CFG)"))
               if m in sub.columns and _has(sub[m])]
    infeasible = sub[sub["status"] == "infeasible"]
    if not metrics and infeasible.empty:
        return _skip(name, "no discrete-head run has gfid or gfid_nocfg (and none is infeasible)")
    if not metrics:
        metrics = [("gfid", "gFID (with CFG)")]
    plotted = sub[(sub["status"] == "infeasible") | sub[[m for m, _ in metrics if m in sub.columns]].notna().any(axis=1)
                  ] if any(m in sub.columns for m, _ in metrics) else infeasible
    hue_order = _ordered(plotted["head"], [HEAD_LABEL[h] for h in DISCRETE_HEADS])
    palette = dict(zip(hue_order, sns.color_palette("deep", len(hue_order))))
    style = "group" if plotted["group"].nunique() > 1 else None

    def draw():
        fig, axes = _new_figure(len(metrics))
        for ax, (metric, label) in zip(axes, metrics):
            data = plotted[plotted[metric].notna()] if metric in plotted.columns else plotted.iloc[0:0]
            if not data.empty:
                sns.lineplot(data=data, x="codebook_log2", y=metric, hue="head", hue_order=hue_order, palette=palette,
                             errorbar=None, ax=ax, sort=True, **_style_kwargs(style, plotted))
            else:
                ax.text(0.5, 0.5, f"no {metric} measured", transform=ax.transAxes, ha="center", color="0.4")
            if not infeasible.empty:
                trans = ax.get_xaxis_transform()  # x in data units, y in axes units
                # heads infeasible at the same size share the x position: stack their markers downwards
                for _, at in infeasible.sort_values(["codebook_log2", "head"]).groupby("codebook_log2"):
                    for k, (_, row) in enumerate(at.iterrows()):
                        ax.plot([row["codebook_log2"]], [0.95 - 0.06 * k], marker="x", ms=9, mew=2, ls="none",
                                color=palette.get(row["head"], "0.3"), transform=trans, clip_on=False)
                xs = sorted(set(plotted["codebook_log2"]))
                if len(xs) == 1:
                    ax.set_xlim(xs[0] - 2, xs[0] + 2)
            ax.set_xlabel("log2 C (bits per token)")
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs codebook size")
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        # one legend entry per head with infeasible sizes, instead of text on the axes (labels could collide)
        extra = [(Line2D([], [], marker="x", ls="none", color=palette.get(head, "0.3"), mew=2),
                  f"{head}: infeasible at log2 C = {', '.join(_fmt(x) for x in sorted(rows['codebook_log2']))}")
                 for head, rows in infeasible.groupby("head", sort=True)]
        _figure_legend(fig, axes, extra)
        return fig

    fig = _draw(draw)
    need = [m for m, _ in metrics]
    missing = _describe_missing(_contributing(sub[sub["status"] != "infeasible"], plotted), need)
    inf_text = "; ".join(f"{r['head']} at log2 C = {_fmt(r['codebook_log2'])}"
                         for _, r in infeasible.sort_values(["head", "codebook_log2"]).iterrows())
    sizes = sorted(set(plotted["codebook_log2"]))
    caption = (f"Codebook scaling: gFID against log2 of the codebook size C, one line per head, at log2 C in "
               f"{{{', '.join(_fmt(s) for s in sizes)}}}. "
               + (f"Infeasible (marked x at the top): {inf_text}. " if inf_text else "No infeasible points. ")
               + _profiles_text(plotted)
               + (f" Missing or incomplete: {'; '.join(missing)}." if missing else " No missing points."))
    data = _csv(plotted, ["run_id", "run_name", "sweep", "profile", "status", "head.name", "head", "codebook_log2",
                          "gfid", "gfid_nocfg", "peak_mem_gb", "mem_estimate_gb", "error"],
                ["head.name", "codebook_log2", "run_name", "run_id"])
    return _save(fig, out_dir, name, formats, caption, data)


# ---------------------------------------------------------------------------------------------- 3. quality vs cost

def quality_vs_cost(df: pd.DataFrame, out_dir, formats=None, reported: pd.DataFrame | None = None,
                    name: str = "quality_vs_cost") -> FigureResult:
    """gFID vs sampling throughput (img/s, log x), one colour per head and patch size. When `reported` (the paper's
    table, `tables.load_reported()`) is given, its points are overlaid in grey as a reference (other hardware)."""
    sub = df.copy()
    sub["sample_img_per_s"] = numeric(sub, "sample_img_per_s")
    sub["gfid"] = numeric(sub, "gfid")
    plotted = sub[sub["sample_img_per_s"].notna() & sub["gfid"].notna() & (sub["sample_img_per_s"] > 0)].copy()
    if plotted.empty:
        return _skip(name, "no run has both gfid and sample_img_per_s")
    patch = column(plotted, "model.patch_size")
    plotted["variant"] = _head_label(plotted) + patch.map(lambda p: "" if p is None or p != p else f", p={p}")
    plotted["group"] = _group_label(plotted)
    style = "group" if plotted["group"].nunique() > 1 else None
    order = sorted(plotted["variant"].unique())
    ref = None
    if reported is not None and {"gfid", "sample_img_per_s"} <= set(reported.columns):
        ref = reported[pd.to_numeric(reported["sample_img_per_s"], errors="coerce").notna()
                       & pd.to_numeric(reported["gfid"], errors="coerce").notna()]

    def draw():
        fig, (ax,) = _new_figure(1, width=5.6, height=4.0)
        sns.scatterplot(data=plotted.sort_values(["variant", "run_name"]), x="sample_img_per_s", y="gfid",
                        hue="variant", hue_order=order, s=60, ax=ax,
                        **({k: v for k, v in _style_kwargs(style, plotted).items() if k != "dashes"} if style
                           else {}))
        if ref is not None and not ref.empty:
            ax.scatter(ref["sample_img_per_s"].astype(float), ref["gfid"].astype(float), marker="*", s=90,
                       facecolors="none", edgecolors="0.5", label="reported (paper, its hardware)")
            for _, r in ref.iterrows():
                ax.annotate(str(r["model"]), (float(r["sample_img_per_s"]), float(r["gfid"])), xytext=(4, 3),
                            textcoords="offset points", fontsize=7, color="0.4",
                            arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5, "shrinkA": 0, "shrinkB": 2})
        ax.set_xscale("log")
        ax.set_xlabel("sampling throughput (images / s, log scale)")
        ax.set_ylabel("gFID")
        ax.set_title("quality vs sampling cost")
        _figure_legend(fig, [ax])
        return fig

    fig = _draw(draw)
    considered = _contributing(sub[column(sub, "head.name").notna()], plotted)
    missing = _describe_missing(considered, ["gfid", "sample_img_per_s"])
    caption = ("Generation quality (gFID) against sampling throughput (images per second, log scale), coloured by "
               f"head and token-group (patch) size: {', '.join(order)}. "
               + ("Grey stars: the paper's reported numbers, measured on its hardware. " if ref is not None
                  and not ref.empty else "")
               + _profiles_text(plotted)
               + (f" Missing or incomplete: {'; '.join(missing)}." if missing else " No missing points."))
    data = _csv(plotted, ["run_id", "run_name", "sweep", "profile", "status", "head.name", "model.preset",
                          "model.patch_size", "variant", "sample_img_per_s", "gfid"],
                ["variant", "sample_img_per_s", "run_name", "run_id"])
    return _save(fig, out_dir, name, formats, caption, data)


# ---------------------------------------------------------------------------------------------- 4. training curves

def _thin(group: pd.DataFrame, max_points: int) -> pd.DataFrame:
    if len(group) <= max_points:
        return group
    idx = np.unique(np.linspace(0, len(group) - 1, max_points).round().astype(int))
    return group.iloc[idx]


def training_curves(history: pd.DataFrame, out_dir, formats=None, sweep: str | None = None,
                    max_points: int = 2000, name: str | None = None) -> list[FigureResult]:
    """Training curves (train_loss, tokenizer_loss vs step) from `load_metric_history`, one figure per sweep, named
    training_curves_<sweep> (or `name`, with one `sweep`). The evaluation histories (gfid, gfid_nocfg, train_tflop,
    rfid) belong to the convergence figure and are left out. Long histories are thinned to at most `max_points`
    points per run and metric (evenly spaced, first and last kept); the CSV holds the plotted points."""
    if history is not None and not history.empty:
        history = history[~history["key"].isin(conv_mod.CONVERGENCE_KEYS)]
    if history is None or history.empty:
        return [_skip(name or "training_curves", "no metric history (train_loss / tokenizer_loss) logged")]
    hist = history.copy()
    hist["sweep"] = hist["sweep"].fillna("default")
    sweeps = [sweep] if sweep is not None else sorted(hist["sweep"].unique())
    results = []
    for sw in sweeps:
        stem = name if name is not None and sweep is not None else f"training_curves_{_safe(sw)}"
        h = hist[hist["sweep"] == sw]
        if h.empty:
            results.append(_skip(stem, f"no metric history for sweep {sw}"))
            continue
        h = h.sort_values(["key", "run_name", "run_id", "step"], kind="mergesort")
        h = (h.groupby(["key", "run_id"], sort=True, group_keys=False)[h.columns.tolist()]
             .apply(lambda g: _thin(g, max_points)).reset_index(drop=True))
        keys = [k for k in ("train_loss", "tokenizer_loss") if k in set(h["key"])]
        keys += sorted(set(h["key"]) - set(keys))
        runs = sorted(h["run_name"].fillna(h["run_id"]).unique())

        def draw(h=h, keys=keys, runs=runs):
            fig, axes = _new_figure(len(keys))
            for ax, key in zip(axes, keys):
                data = h[h["key"] == key].assign(run=lambda d: d["run_name"].fillna(d["run_id"]))
                sns.lineplot(data=data, x="step", y="value", hue="run", hue_order=runs, errorbar=None,
                             estimator=None, units="run_id", ax=ax, linewidth=1.0, sort=True)
                ax.set_xlabel("step")
                ax.set_ylabel(key)
                ax.set_title(key)
            _figure_legend(fig, axes)
            return fig

        fig = _draw(draw)
        status = h.drop_duplicates("run_id")
        not_done = sorted(f"{r.run_name} ({r.status})" for r in status.itertuples() if r.status != "finished")
        absent = [k for k in ("train_loss", "tokenizer_loss") if k not in keys]
        caption = (f"Training curves of sweep {sw}: {', '.join(keys)} against step, one line per run "
                   f"({len(runs)} runs). "
                   + (f"Not logged: {', '.join(absent)}. " if absent else "")
                   + (f"Runs not finished (curves partial): {'; '.join(not_done)}." if not_done
                      else "All runs finished."))
        data = _csv(h, ["sweep", "run_id", "run_name", "profile", "status", "key", "step", "value"],
                    ["key", "run_name", "run_id", "step"])
        results.append(_save(fig, out_dir, stem, formats, caption, data))
    return results


# -------------------------------------------------------------------------------------------------- 5. head memory

def head_memory(df: pd.DataFrame, out_dir, formats=None, name: str = "head_memory") -> FigureResult:
    """Memory vs bits per token, one colour per head: measured peak (peak_mem_gb, solid) and analytic estimate
    (mem_estimate_gb, dashed). Infeasible points usually only have the estimate."""
    sub = df[column(df, "head.name").isin(list(DISCRETE_HEADS))].copy()
    if sub.empty:
        return _skip(name, "no runs with a discrete head (mbm, softmax, bitwise)")
    sub["bits_per_token"] = numeric(sub, "bits_per_token", "codebook_log2", "tokenizer.bits")
    sub["head"] = _head_label(sub)
    quantities = [(c, label) for c, label in (("peak_mem_gb", "measured peak"), ("mem_estimate_gb", "estimate"))
                  if c in sub.columns]
    if not quantities:
        return _skip(name, "no run logged peak_mem_gb or mem_estimate_gb")
    long = sub.melt(id_vars=[c for c in ("run_id", "run_name", "sweep", "profile", "status", "head.name", "head",
                                         "bits_per_token") if c in sub.columns],
                    value_vars=[c for c, _ in quantities], var_name="quantity_key", value_name="memory_gb")
    long["quantity"] = long["quantity_key"].map(dict(quantities))
    long = long[long["memory_gb"].notna() & long["bits_per_token"].notna() & (long["memory_gb"] > 0)]
    if long.empty:
        return _skip(name, "no run has both a bits-per-token value and a memory value")
    hue_order = _ordered(long["head"], [HEAD_LABEL[h] for h in DISCRETE_HEADS])
    style_order = [label for _, label in quantities if label in set(long["quantity"])]

    def draw():
        fig, (ax,) = _new_figure(1, width=5.6, height=4.0)
        sns.lineplot(data=long, x="bits_per_token", y="memory_gb", hue="head", hue_order=hue_order, style="quantity",
                     style_order=style_order, dashes={"measured peak": "", "estimate": (4, 2)}, markers=True,
                     errorbar=None, ax=ax, sort=True)
        ax.set_yscale("log")
        ax.set_xlabel("bits per token (log2 C)")
        ax.set_ylabel("memory (GB, log scale)")
        ax.set_title("head memory vs bits per token")
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        _figure_legend(fig, [ax])
        return fig

    fig = _draw(draw)
    measured_only = [label for _, label in quantities]
    missing = _describe_missing(_contributing(sub, long), [c for c, _ in quantities])
    caption = ("Memory against bits per token, one colour per head; solid: measured peak memory, dashed: analytic "
               f"estimate (present: {', '.join(measured_only)}). Infeasible points appear through their estimate. "
               + _profiles_text(long)
               + (f" Missing or incomplete: {'; '.join(missing)}." if missing else " No missing points."))
    data = _csv(long, ["run_id", "run_name", "sweep", "profile", "status", "head.name", "head", "bits_per_token",
                       "quantity_key", "quantity", "memory_gb"],
                ["head.name", "quantity_key", "bits_per_token", "run_name", "run_id"])
    return _save(fig, out_dir, name, formats, caption, data)


# ------------------------------------------------------------------------------------------------- 6. convergence

def _log_if_wide(ax, values, axis: str, ratio: float = 10.0) -> bool:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if len(v) and (v > 0).all() and v.max() / v.min() >= ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # ticks at 1, 2, 5 x 10^k written plainly; unlabelled minor ticks (their labels collide on short spans)
        scale_axis = ax.xaxis if axis == "x" else ax.yaxis
        scale_axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        scale_axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        scale_axis.set_minor_formatter(NullFormatter())
        return True
    return False


_SIZE_MARKERS = ["o", "s", "D", "^", "v", "P", "<", ">", "p", "h"]


def convergence(df: pd.DataFrame, history: pd.DataFrame | None, out_dir, formats=None,
                name: str = "convergence") -> FigureResult:
    """gFID during generator training against optimizer steps and against training compute (train_tflop, TFLOP),
    one line per head x codebook size (colour: head; marker: bits per token or channels; dashed: continuous), from
    the metric histories (`analysis.convergence`); a third panel shows rFID against tokenizer steps where tokenizers
    logged it. The dotted line is the gFID threshold of the convergence claim. Log axes where values span 10x."""
    conv = conv_mod.convergence_frame(history, df)
    if conv.empty:
        return _skip(name, "no run has a gFID history of two or more evaluations (periodic gFID during training)")
    rfid = conv_mod.rfid_frame(history, df)
    has_compute = conv["train_tflop"].notna().any()
    panels = ["step"] + (["train_tflop"] if has_compute else []) + (["rfid"] if not rfid.empty else [])
    # a sweep run at two profiles: its curves (and claim thresholds) are per profile, named as such
    by_profile = dict(tuple(conv.groupby(conv["profile"].astype(str), sort=False)))
    profiles = list(by_profile)
    tag = (lambda p: f" [{p}]") if len(profiles) > 1 else (lambda p: "")
    targets = {p: conv_mod.convergence_threshold(runs) for p, runs in by_profile.items()}
    heads = _ordered(conv["head.name"], conv_mod.HEAD_ORDER)
    palette = dict(zip(heads, sns.color_palette("deep", len(heads))))
    sizes = [s for s in dict.fromkeys(conv.sort_values(["tokenizer.kind", "size"], ascending=[False, True])
                                      ["size_label"])]
    markers = {s: _SIZE_MARKERS[i % len(_SIZE_MARKERS)] for i, s in enumerate(sizes)}

    def draw():
        fig, axes = _new_figure(len(panels))
        for ax, panel in zip(axes, panels):
            if panel == "rfid":
                for (prof, kind, label), g in rfid.groupby(["profile", "tokenizer.kind", "size_label"], sort=False):
                    ax.plot(g["step"], g["rfid"], marker=markers.get(label, "o"), ms=4, color="0.35",
                            ls="--" if kind == "ae" else "-", lw=1.2, label=f"tokenizer {kind} {label}{tag(prof)}")
                _log_if_wide(ax, rfid["step"], "x")
                _log_if_wide(ax, rfid["rfid"], "y")
                ax.set_xlabel("tokenizer training step")
                ax.set_ylabel("rFID")
                ax.set_title("rFID during tokenizer training")
                continue
            for run_id, g in conv.groupby("run_id", sort=False):
                g = g[g[panel].notna()] if panel == "train_tflop" else g
                if g.empty:
                    continue
                head = g["head.name"].iloc[0]
                ax.plot(g[panel], g["gfid"], marker=markers.get(g["size_label"].iloc[0], "o"), ms=4, lw=1.4,
                        color=palette.get(head, "0.3"), ls="--" if g["tokenizer.kind"].iloc[0] == "ae" else "-",
                        label=g["series"].iloc[0] + tag(g["profile"].iloc[0]))
            for i, (prof, target) in enumerate(targets.items()):
                if target is not None:
                    ax.axhline(target, color="0.5", lw=0.8, ls=(":", "-.")[i % 2],
                               label=f"claim threshold{tag(prof)}: gFID {_fmt(target)}")
            _log_if_wide(ax, conv[panel], "x")
            _log_if_wide(ax, conv["gfid"], "y")
            ax.set_xlabel("optimizer step" if panel == "step" else "training compute (TFLOP, estimated)")
            ax.set_ylabel("gFID")
            ax.set_title("gFID vs training steps" if panel == "step" else "gFID vs training compute")
        _figure_legend(fig, axes)
        return fig

    fig = _draw(draw)
    summary = pd.concat([conv_mod.series_summary(by_profile[p], t).assign(_tag=tag(p)) for p, t in targets.items()],
                        ignore_index=True)
    considered = df[column(df, "head.name").notna()]
    drawn = set(conv["run_id"])
    missing = [n for n in _describe_missing(considered[~considered["run_id"].isin(drawn)], ["gfid"])]
    no_history = sorted(considered[~considered["run_id"].isin(drawn) & (column(considered, "status") == "finished")]
                        ["run_name"].astype(str))
    finals = "; ".join(f"{r['series']}{r['_tag']} {_fmt(r['final_gfid'])} at step {r['final_step']}"
                       + (f" ({_fmt(r['final_tflop'])} TFLOP)" if pd.notna(r["final_tflop"]) else "")
                       for _, r in summary.iterrows())
    caption = ("Convergence: gFID measured during generator training, against optimizer steps"
               + (" and against cumulative estimated training compute (train_tflop)" if has_compute else
                  " (no train_tflop history: no compute panel)")
               + (", and rFID against tokenizer training steps" if not rfid.empty else "")
               + "; one line per head and codebook size" + (" and profile" if len(profiles) > 1 else "")
               + f" (solid: discrete, dashed: continuous). Final gFID: {finals}. "
               + ("".join(f"Threshold of the convergence claim{tag(p)}: gFID {_fmt(t)} (the worse of the best final "
                          "gFIDs of BAR and of the continuous runs; see REPORT.md). " for p, t in targets.items()
                          if t is not None)
                  or "No convergence threshold (BAR or continuous runs without gFID history). ")
               + _profiles_text(conv)
               + (f" Without a gFID history: {', '.join(no_history)}." if no_history else "")
               + (f" Missing or incomplete: {'; '.join(missing)}." if missing else ""))
    data = conv.copy()
    return _save(fig, out_dir, name, formats, caption, _csv(data, conv_mod.COLUMNS, ["series", "run_id", "step"]))


# --------------------------------------------------------------------------------------------- figure sets per sweep

# The paper's main figures (OUT/<name>.png): each drawn from one sweep, the first of these present in the runs.
MAIN_FIGURES = {
    "bits_vs_fid": ("bits_vs_gfid", "bits_vs_rfid"),
    "codebook_scaling": ("codebook_scaling",),
    "quality_vs_cost": ("patch_size",),
    "head_memory": ("codebook_scaling",),
    "convergence": ("convergence",),
}


def _sweep_of(df: pd.DataFrame) -> pd.Series:
    sweep = column(df, "sweep").astype(object)
    return sweep.where(sweep.notna(), column(df, "experiment").astype(object)).fillna("default").astype(str)


def _one(fig_name: str, df: pd.DataFrame, history, out_dir, formats, reported, name: str) -> FigureResult:
    if fig_name == "bits_vs_fid":
        return bits_vs_fid(df, out_dir, formats, name=name)
    if fig_name == "codebook_scaling":
        return codebook_scaling(df, out_dir, formats, name=name)
    if fig_name == "quality_vs_cost":
        return quality_vs_cost(df, out_dir, formats, reported=reported, name=name)
    if fig_name == "head_memory":
        return head_memory(df, out_dir, formats, name=name)
    if fig_name == "convergence":
        return convergence(df, history, out_dir, formats, name=name)
    raise ValueError(f"unknown figure {fig_name}")


def sweep_figures(df: pd.DataFrame, history: pd.DataFrame | None, out_dir, formats=None,
                  reported: pd.DataFrame | None = None, prefix: str = "") -> list[FigureResult]:
    """Every figure one sweep's runs support (the frame and history of that sweep only), into out_dir, result names
    prefixed with `prefix` (e.g. `codebook_scaling/`)."""
    results = []
    for fig_name in (*MAIN_FIGURES, "training_curves"):
        if fig_name == "training_curves":
            hist = history if history is not None else pd.DataFrame()
            sweeps = sorted(set(_sweep_of(df)))
            res = (training_curves(hist[hist["sweep"].fillna("default").isin(sweeps)] if not hist.empty else hist,
                                   out_dir, formats, sweep=sweeps[0], name=fig_name)[0]
                   if len(sweeps) == 1 else _skip(fig_name, "needs exactly one sweep"))
        else:
            res = _one(fig_name, df, history, out_dir, formats, reported, fig_name)
        res.name = prefix + res.name
        results.append(res)
    return results


def all_figures(df: pd.DataFrame, history: pd.DataFrame | None, out_dir, formats=None,
                reported: pd.DataFrame | None = None) -> list[FigureResult]:
    """The main figures (OUT/<figure>.*: a copy of the figure of the first of its `MAIN_FIGURES` sweeps present, its
    caption naming the sweep), then each sweep's own set (OUT/<sweep>/<figure>.*, named `<sweep>/<figure>`). No
    figure mixes points of different sweeps. Skipped ones are returned with their reason."""
    out = Path(out_dir)
    sweep = _sweep_of(df) if not df.empty else pd.Series(dtype=str)
    present = sorted(set(sweep))
    hist = history if history is not None else pd.DataFrame()
    per_sweep = {}
    for sw in present:
        sub = df[sweep == sw]
        h = hist[hist["run_id"].isin(set(sub["run_id"]))] if not hist.empty else hist
        per_sweep[sw] = sweep_figures(sub, h, out / _safe(sw), formats, reported, prefix=f"{_safe(sw)}/")
    main = []
    for fig_name, homes in MAIN_FIGURES.items():
        home = next((h for h in homes if h in present), None)
        if home is None:
            main.append(_skip(fig_name, f"drawn from sweep {' or '.join(homes)}, which has no runs here "
                                        "(see the per-sweep figures)"))
            continue
        src = next(r for r in per_sweep[home] if r.name == f"{_safe(home)}/{fig_name}")
        if src.skipped:
            main.append(_skip(fig_name, f"sweep {home}: {src.skipped}"))
            continue
        caption = f"From sweep {home}. " + src.caption
        files = []
        for path in src.files:
            target = out / f"{fig_name}{path.suffix}"
            if path.suffix == ".txt":
                target.write_text(caption.rstrip() + "\n")
            else:
                shutil.copyfile(path, target)
            files.append(target)
        main.append(FigureResult(name=fig_name, files=files, caption=caption, figure=src.figure))
    return main + [r for sw in present for r in per_sweep[sw]]
