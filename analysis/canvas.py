"""Where figures are drawn and saved: one style, no pyplot, reproducible bytes, labels that never overlap.

Figures are `matplotlib.figure.Figure` objects on an Agg canvas (no pyplot, no global backend switch), drawn under
one fixed style (`draw`) and saved without timestamps (`save`), so rerunning on the same runs gives byte-identical
files. Before saving, `declutter` moves annotations placed with offset points apart until no two texts of an axes
overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType   # the rc names matplotlib's stubs know (for the checker only)

DEFAULT_FORMATS = ("png", "pdf")
# Fixed metadata: no creation dates, no software strings -> reruns give identical bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None},
             "svg": {"Date": None}}
_RC: dict[RcKeyType, Any] = {"svg.hashsalt": "bar-analysis", "font.size": 9, "axes.titlesize": 10,
                              "legend.fontsize": 8, "figure.dpi": 100, "savefig.dpi": 150, "pdf.fonttype": 42}
MARKERS = ["o", "s", "D", "^", "v", "P", "<", ">", "p", "h"]  # no "x": it marks infeasible points


@dataclass
class FigureResult:
    name: str  # file stem relative to the output folder: `codebook_scaling`, `patch_size/quality_vs_cost`
    files: list[Path] = field(default_factory=list)
    caption: str = ""
    skipped: str | None = None
    figure: Figure | None = field(default=None, repr=False, compare=False)  # the drawn figure (for inspection)

    def __bool__(self) -> bool:  # truthy when something was drawn
        return self.skipped is None


def skip(name: str, reason: str) -> FigureResult:
    """The result of a figure not drawn, with the reason (what data it lacks)."""
    return FigureResult(name=name, skipped=reason)


def safe_name(name: str) -> str:
    """`name` usable as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def formats_of(formats) -> tuple[str, ...]:
    """Figure formats from a list or a comma-separated string (None: png and pdf); ValueError for an unknown one."""
    if formats is None:
        return DEFAULT_FORMATS
    if isinstance(formats, str):
        formats = formats.split(",")
    out = tuple(f.strip().lower().lstrip(".") for f in formats if f.strip())
    bad = [f for f in out if f not in _METADATA]
    if bad:
        raise ValueError(f"unsupported figure format {', '.join(bad)} (use png, pdf or svg)")
    return out


# --------------------------------------------------------------------------------------------------------- drawing

def draw(fn):
    """Run drawing code under the module's style (seaborn whitegrid + fixed rc)."""
    with mpl.rc_context(_RC), sns.axes_style("whitegrid"):
        return fn()


def new_figure(ncols: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list]:
    """A figure of `ncols` panels side by side, with constrained layout."""
    with mpl.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def style_kwargs(style: str | None, data: pd.DataFrame) -> dict:
    """Marker settings for sns.lineplot: one marker per style level when there is a style, else plain dots."""
    if style:
        levels = sorted(data[style].dropna().unique())
        return {"style": style, "style_order": levels, "dashes": False,
                "markers": {lev: MARKERS[i % len(MARKERS)] for i, lev in enumerate(levels)}}
    return {"marker": "o"}


def figure_legend(fig: Figure, axes, extra: list | None = None) -> None:
    """One legend for the whole figure, outside on the right: the union of the panels' entries (first seen order)."""
    entries: dict[str, Artist] = {}     # label -> its first handle
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


def log_if_wide(ax, values, axis: str, ratio: float = 10.0) -> bool:
    """Log scale on `axis` when the positive `values` span at least `ratio`; ticks at 1, 2, 5 x 10^k written plainly,
    minor ticks unlabelled (their labels collide on short spans). True when it switched."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if not (len(v) and (v > 0).all() and v.max() / v.min() >= ratio):
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    scale_axis = ax.xaxis if axis == "x" else ax.yaxis
    scale_axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    scale_axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    scale_axis.set_minor_formatter(NullFormatter())
    return True


# ------------------------------------------------------------------------------------------- labels never overlap

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


def declutter(fig: Figure, pad_px: float = 2.0, max_moves: int = 100) -> None:
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
            _move_clear(text, placed, renderer, fig.dpi, pad_px, max_moves)
            placed.append(_text_box(text, renderer))


def _move_clear(text, placed: list, renderer, dpi: float, pad_px: float, max_moves: int) -> None:
    """Shift `text` (an annotation placed with offset points) down until its box overlaps none of `placed`, at most
    `max_moves` times."""
    for _ in range(max_moves):
        box = _text_box(text, renderer)
        hits = [p for p in placed if box.overlaps(p)]
        if not hits:
            return
        shift_px = box.y1 - min(p.y0 for p in hits) + pad_px
        dx, dy = text.xyann
        text.xyann = (dx, dy - shift_px * 72.0 / dpi)


# ---------------------------------------------------------------------------------------------------------- saving

def save(fig: Figure, out_dir, name: str, formats, caption: str, data: pd.DataFrame) -> FigureResult:
    """Write NAME.<format> for each format (labels decluttered first), NAME.txt (the caption) and NAME.csv (`data`,
    the rows behind the plot) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    declutter(fig)
    files = []
    with mpl.rc_context(_RC):
        for fmt in formats_of(formats):
            path = out / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight")
            files.append(path)
    cap = out / f"{name}.txt"
    cap.write_text(caption.rstrip() + "\n")
    csv = out / f"{name}.csv"
    data.to_csv(csv, index=False, lineterminator="\n")
    files += [cap, csv]
    return FigureResult(name=name, files=files, caption=caption, figure=fig)
