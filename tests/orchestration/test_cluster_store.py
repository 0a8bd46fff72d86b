"""launcher=slurm's store (tracking=cluster): the tracking server on the machine the sweep is launched from, unless
MLFLOW_TRACKING_URI is set or another store is chosen; a server that does not answer is one line naming the command
that starts it; the server takes an sqlite file or a database URI. The load that decided it:
tests/orchestration/test_tracking_load.py."""

import pickle
import socket
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bar import UserError
from bar.orchestration import tracking
from bar.orchestration.config import compose
from bar.orchestration.mlflow_server import allowed_hosts, backend_uri, serve_command
from conftest import ROOT


@pytest.fixture
def no_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BAR_OUTPUTS", raising=False)


def test_slurm_logs_to_the_server_on_the_submitting_machine(no_uri):
    assert compose(["launcher=slurm"]).tracking.uri == f"http://{socket.gethostname()}:5000"
    assert compose(["launcher=slurm", "tracking.host=gpu01", "tracking.port=5001"]).tracking.uri == "http://gpu01:5001"


def test_local_stays_the_sqlite_file_and_an_explicit_choice_wins(no_uri):
    local = f"sqlite:///{ROOT}/outputs/mlflow.db"
    assert compose([]).tracking.uri == local
    assert compose(["launcher=slurm", "tracking=local"]).tracking.uri == local
    assert compose(["launcher=slurm", "tracking=server"]).tracking.uri == "http://127.0.0.1:5000"


def test_mlflow_tracking_uri_wins_on_slurm(no_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/mlflow.db")
    assert compose(["launcher=slurm"]).tracking.uri == "sqlite:////shared/mlflow.db"


def test_jobs_on_other_nodes_get_the_submitting_machines_name(no_uri, monkeypatch):
    """The sweep's config resolves the host once (cached); Hydra copies that cache into each job's config, as a
    submitit job does on its node (hydra's load_sweep_config)."""
    master = compose(["launcher=slurm"])
    uri = master.tracking.uri
    shipped = pickle.loads(pickle.dumps(master))
    monkeypatch.setattr(socket, "gethostname", lambda: "node042")
    job = compose(["launcher=slurm"])
    OmegaConf.copy_cache(from_config=shipped, to_config=job)
    assert job.tracking.uri == uri


def test_inside_a_submitit_job_without_the_cache_slurm_names_the_submitting_machine(monkeypatch):
    from bar.orchestration.resolvers import submit_host

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_SUBMIT_HOST", "login1")
    assert submit_host() == "login1"


@pytest.mark.parametrize("uri,command", [("http://127.0.0.1:9", "`make mlflow-server PORT=9`"),
                                         ("http://login1:5000", "start it on login1 with `make mlflow-server "
                                                                "HOST=0.0.0.0` (python -m bar.orchestration."
                                                                "mlflow_server serve --host 0.0.0.0 --port 5000)")])
def test_a_server_that_does_not_answer_names_the_command_that_starts_it(uri, command):
    if uri == "http://login1:5000":
        try:
            socket.getaddrinfo("login1", 5000)
            pytest.skip("a host called login1 exists here")
        except OSError:
            pass
    with pytest.raises(UserError) as err:
        tracking.check_store(uri)
    assert "does not answer" in str(err.value) and command in str(err.value) and "\n" not in str(err.value)


def test_the_server_takes_an_sqlite_file_or_a_database_uri(tmp_path):
    assert backend_uri(tmp_path / "m.db") == f"sqlite:///{tmp_path}/m.db"
    assert backend_uri("postgresql://mlflow@db:5432/mlflow") == "postgresql://mlflow@db:5432/mlflow"
    command = serve_command("0.0.0.0", 5000, "postgresql://mlflow@db/mlflow", tmp_path / "artifacts")
    assert command[command.index("--backend-store-uri") + 1] == "postgresql://mlflow@db/mlflow"
    assert Path(command[command.index("--artifacts-destination") + 1][len("file://"):]) == tmp_path / "artifacts"


def test_a_server_for_the_cluster_accepts_jobs_that_reach_it_by_this_machines_name(monkeypatch):
    """MLflow 3 answers a request whose Host header is not loopback or a private address with HTTP 403."""
    monkeypatch.delenv("MLFLOW_SERVER_ALLOWED_HOSTS", raising=False)
    command = serve_command("0.0.0.0", 5000, "/tmp/m.db", "/tmp/artifacts")
    if allowed_hosts("0.0.0.0") is None:
        pytest.skip("this MLflow has no Host header check")
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert f"{socket.gethostname()}:*" in hosts and "127.0.0.1:*" in hosts
    assert "--allowed-hosts" not in serve_command("127.0.0.1", 5000, "/tmp/m.db", "/tmp/artifacts")
