"""Analysis: MLflow runs -> tidy pandas frames -> the paper's figures, tables and report.

Usable from a notebook::

    from analysis import load_runs, load_metric_history, latent_size, figures, tables
    df = load_runs(sweep="codebook_scaling")
    figures.codebook_scaling(df, "paper_figs")

Modules: runs (store -> frames), figures (each figure: frame, plot, caption) drawn by canvas, tables, claims,
convergence, report (REPORT.md), information. Names (experiments, tags, params, metrics) follow CONVENTIONS.md and are
spelled once in bar.core.vocabulary.
"""

from analysis.runs import (
    StoreError,
    default_tracking_uri,
    latent_size,
    latest_parent_run,
    load_metric_history,
    load_runs,
)

__all__ = [
    "StoreError",
    "default_tracking_uri",
    "latent_size",
    "latest_parent_run",
    "load_metric_history",
    "load_runs",
]
