"""Draw every figure the runs have data for, the results tables and REPORT.md.

    python analysis/make_figures.py [--sweep NAME ...] [--tracking-uri URI] [--out paper_figs] [--format png,pdf]

Layout of the output folder: the paper's main figures OUT/<figure>.{png,pdf,txt,csv}, each drawn from one sweep
(`analysis.figures.MAIN_FIGURES`); every sweep's own figure set in OUT/<sweep>/ (including its training curves);
tables and REPORT.md in OUT/. No figure mixes points of different sweeps.
Tracking URI: --tracking-uri, else the project default (bar.core.paths: MLFLOW_TRACKING_URI, else the sqlite store under
BAR_OUTPUTS or <project root>/outputs), the same store `run.py` writes to.
A sweep's own figures, the tables and the report are also logged to the sweep's latest parent run (tag role=parent)
under `figures/` (--no-log to skip). Exit code 2 with a one-line message when the store is missing, empty or cannot be
opened (e.g. a file store, which MLflow 3 refuses), a sweep is unknown, or --out cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `analysis` importable
    sys.path.insert(0, str(ROOT))

from mlflow.tracking import MlflowClient  # noqa: E402

from analysis import figures, report, tables  # noqa: E402
from analysis.canvas import formats_of, safe_name  # noqa: E402
from analysis.information import dataset_information  # noqa: E402
from analysis.runs import (  # noqa: E402
    StoreError,
    column,
    default_tracking_uri,
    latest_parent_run,
    load_metric_history,
    load_runs,
    numeric,
)
from bar.core.files import folder_problem  # noqa: E402
from bar.core.vocabulary import EVALUATION_HISTORIES, LOSS_HISTORIES  # noqa: E402
from bar.data.datasets import EMBEDDED_DATASETS  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_figures.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", nargs="+", action="extend", metavar="NAME",
                   help="sweep(s) to draw (default: every experiment in the store)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the "
                                                        "project's outputs/mlflow.db)")
    p.add_argument("--out", default=str(ROOT / "paper_figs"), help="output folder (default: paper_figs/)")
    p.add_argument("--format", default="png,pdf", help="comma-separated figure formats: png, pdf, svg")
    p.add_argument("--profile", nargs="+", action="extend", metavar="NAME", help="keep only these profiles")
    p.add_argument("--no-log", action="store_true", help="do not log the outputs to the parent runs")
    return p


def _fail(message: str) -> int:
    print(f"make_figures: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        formats = formats_of(args.format)
    except ValueError as exc:
        return _fail(str(exc))
    unwritable = folder_problem(args.out)          # before the store is read: nothing drawn for nothing
    if unwritable:
        return _fail(f"--out {args.out} cannot be written: {unwritable}: pass --out DIR")
    try:
        df = load_runs(args.tracking_uri, sweep=args.sweep, profile=args.profile)
    except StoreError as exc:
        return _fail(str(exc))
    if df.empty:
        where = f"sweep {', '.join(args.sweep)}" if args.sweep else "the store"
        return _fail(f"no sweep points (runs tagged role=point) in {where}; run a sweep first")
    history = load_metric_history(args.tracking_uri, runs=df, keys=(*LOSS_HISTORIES, *EVALUATION_HISTORIES))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reported = tables.load_reported()
    results = figures.all_figures(df, history, out, formats, reported=reported)
    for r in results:
        if r.skipped:
            print(f"skipped {r.name}: {r.skipped}", file=sys.stderr)
        else:
            print(f"wrote {r.name} ({', '.join(p.suffix.lstrip('.') for p in r.files)})")
    table_files = tables.write_tables(df, out, reported)
    report_file = report.write_report(df, out, figures=results, reported=reported, history=history,
                                      information=_information_of(df))
    print(f"wrote {', '.join(p.name for p in table_files)}, {report_file.name} into {out}")
    if not args.no_log:
        _log_to_parents(args.tracking_uri, df, results, [*table_files, report_file])
    return 0


def _information_of(df):
    """Information per image of the embedded datasets the runs used (computed here, from the data)."""
    used = {(d, int(r)) for d, r in zip(column(df, "data.name"), numeric(df, "data.resolution"))
            if d in EMBEDDED_DATASETS and r == r}
    return dataset_information(sorted(used)) if used else None


def _log_to_parents(tracking_uri, df, results, extra_files) -> None:
    """Log each sweep's own figure set (OUT/<sweep>/), the tables and the report to the sweep's latest parent run
    under figures/."""
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    sweeps = sorted(set(df["sweep"].dropna() if "sweep" in df.columns else []) | set(df["experiment"].dropna()))
    for sweep in sweeps:
        parent = latest_parent_run(sweep, tracking_uri)
        if parent is None:
            continue
        files = [p for r in results if not r.skipped and r.name.startswith(f"{safe_name(sweep)}/") for p in r.files]
        for path in [*files, *extra_files]:
            client.log_artifact(parent, str(path), artifact_path="figures")
        print(f"logged {len(files) + len(extra_files)} files to parent run {parent} of {sweep} under figures/")


if __name__ == "__main__":
    sys.exit(main())
