"""The store launcher=slurm logs to, under load: 64 point processes logging at once (bar.orchestration.tracking.
PointRun, as points do) through the shipped tracking server (`python -m bar.orchestration.mlflow_server serve`) lose
nothing and fail nothing, on its sqlite file and, where PostgreSQL is installed (.ci/run installs it), on PostgreSQL.
benchmarks/tracking_load.py does the work; benchmarks/results/tracking_load_cpu.txt has its figures."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.load

WRITERS = 64


def _postgres_missing() -> str | None:
    """Why the PostgreSQL case cannot run here, None when it can."""
    if not (shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")):
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "root, and no runuser to start PostgreSQL as the postgres user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    return None


@pytest.mark.parametrize("backend", ["sqlite-server", "postgres-server"])
def test_64_points_logging_at_once_through_the_server_lose_nothing(backend, tmp_path):
    if backend == "postgres-server" and _postgres_missing():
        pytest.skip(_postgres_missing())
    figures_file = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tracking_load.py"), "--writers", str(WRITERS),
                           "--backend", backend, "--steps", "100", "--json", str(figures_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(figures_file.read_text())["backends"][0]
    assert figures["writers"] == WRITERS
    assert figures["failed"] == 0, figures["failures"]
    assert figures["lost"] == 0, figures["lost_by_kind"]
    assert figures["metric_values_written"] == figures["metric_values_asked"], proc.stdout
