"""Analysis: MLflow runs -> tidy pandas frames -> the paper's figures, tables and report.

Usable from a notebook::

    from analysis import load_runs, load_metric_history, figures, tables
    df = load_runs(sweep="codebook_scaling")
    figures.codebook_scaling(df, "paper_figs")

Names (experiments, tags, params, metrics) follow CONVENTIONS.md.
"""

from analysis.runs import (
    StoreError,
    default_tracking_uri,
    latest_parent_run,
    load_metric_history,
    load_runs,
)

__all__ = [
    "StoreError",
    "default_tracking_uri",
    "latest_parent_run",
    "load_metric_history",
    "load_runs",
]
