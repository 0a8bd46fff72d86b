"""MLflow conventions (see CONVENTIONS.md): experiment = sweep, one parent run per launch, one child run per point.

Stage code never touches MLflow: it hands metrics and files to a `PointRun`."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bar import PROJECT_ROOT

PARAM_BATCH = 100  # MLflow's per-request limit


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_uri() -> str:
    outputs = Path(os.environ.get("BAR_OUTPUTS", PROJECT_ROOT / "outputs")).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{outputs}/mlflow.db"


def client_for(uri: str):
    """An MlflowClient for `uri`; an sqlite store's folder is created first."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str) -> str:
    """Get or create the experiment; with an sqlite store, artifacts go beside the database, not under the cwd."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it first
        return client.get_experiment_by_name(name).experiment_id


def start_parent_run(uri: str, experiment: str, profile: str, num_points: int) -> str:
    client = client_for(uri)
    run = client.create_run(experiment_id(client, experiment, uri), run_name=time.strftime("launch-%Y%m%d-%H%M%S"),
                            tags={"role": "parent", "sweep": experiment, "profile": profile, "git_sha": git_sha(),
                                  "num_points": str(num_points)})
    return run.info.run_id


def end_parent_run(uri: str, run_id: str, counts: dict[str, int]) -> None:
    client = client_for(uri)
    for status, n in counts.items():
        client.log_metric(run_id, f"points_{status}", n)
    client.set_terminated(run_id, "FAILED" if counts.get("failed") else "FINISHED")


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]


class PointRun:
    """The MLflow run of one sweep point. As a context manager it ends the run FINISHED, or FAILED with the error
    as a tag when the body raises (the exception still propagates)."""

    def __init__(self, uri: str, experiment: str, name: str, tags: dict[str, str], parent_run_id: str | None = None):
        self.uri = uri
        self.client = client_for(uri)
        all_tags = {"role": "point", "point": name, "status": "running", "git_sha": git_sha(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if os.environ.get("SLURM_JOB_ID"):
            all_tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        self.run_id = self.client.create_run(experiment_id(self.client, experiment, uri), run_name=name,
                                             tags=all_tags).info.run_id
        self.status = "finished"

    # -- logging
    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAM_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_history(self, name: str, history: list[tuple[int, float]]) -> None:
        """A metric's whole history in batched requests (per-step requests are slow with many writers)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, int(s)) for s, v in history if math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def mark(self, status: str) -> None:
        """finished / infeasible: how the point ended when it did not raise."""
        self.status = status

    # -- lifecycle
    def __enter__(self) -> "PointRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.client.set_tag(self.run_id, "status", self.status)
            self.client.set_terminated(self.run_id, "FINISHED")
        else:
            self.client.set_tag(self.run_id, "status", "failed")
            self.client.set_tag(self.run_id, "error", _one_line(exc))
            self.client.set_terminated(self.run_id, "FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m bar.tracking ui` opens the MLflow UI on the default store."""
    parser = argparse.ArgumentParser(prog="python -m bar.tracking")
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser("ui", help="mlflow ui on the default store (or MLFLOW_TRACKING_URI)")
    ui.add_argument("--port", default="5000")
    ui.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    uri = default_uri()
    client_for(uri)
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}", file=sys.stderr)
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                            "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
