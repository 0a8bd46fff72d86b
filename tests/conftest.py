import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_cli(args: list[str], outputs: Path, env_extra: dict | None = None, timeout: int = 600):
    """Run `python run.py ARGS` with outputs and the MLflow store under `outputs`."""
    env = {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
           "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def child_runs(outputs: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{outputs}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("role") == "point"], [r for r in runs if r.data.tags.get("role") == "parent"]


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """The bits_vs_rfid sweep at the smoke profile, run once for every test that inspects it."""
    outputs = tmp_path_factory.mktemp("smoke_sweep")
    proc = run_cli(["-m", "sweep=bits_vs_rfid", "profile=smoke"], outputs)
    return outputs, proc


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """In-process tests use tiny models: one thread is as fast, and does not fight other processes for the cores."""
    import torch

    torch.set_num_threads(1)


def build_model(*overrides: str, meta: bool = False):
    """The generator a run with these overrides would train (composed like run.py; on the meta device if asked)."""
    import torch

    from bar.orchestration.build import build_generator
    from bar.orchestration.config import compose

    cfg = compose(list(overrides))
    if meta:
        with torch.device("meta"):
            return build_generator(cfg)
    return build_generator(cfg)
