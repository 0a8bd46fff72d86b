"""Stores and outputs that cannot be used are one line before any work: the MLflow store (a file store, a read-only
database, a database without its driver, a server that is not MLflow), the outputs folder and its sub-folders,
make_figures' --out, the dashboard's port; a disk that fills while a point runs is one line too, with nothing
half-written and the run marked failed or left to be continued."""

import errno
import http.server
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest

from bar import UserError
from bar.orchestration import tracking
from bar.orchestration.config import compose
from bar.orchestration.planner import plan_point


@pytest.fixture
def read_only():
    """Make a file or folder read-only, also for root (immutable: chattr +i); undone afterwards."""
    made = []

    def make(path):
        if os.geteuid() != 0:
            path.chmod(0o555 if path.is_dir() else 0o444)
        elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                              capture_output=True).returncode:
            pytest.skip("root, and no chattr here: nothing can be made read-only to root")
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def not_mlflow():
    """An HTTP server that answers /health with OK, and 404 for everything else (e.g. another service's port)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path == "/health"
            self.send_response(200 if found else 404)
            self.end_headers()
            self.wfile.write(b"OK" if found else b"<html>not found</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _database(path):
    with sqlite3.connect(path) as conn:
        conn.execute("create table t (x int)")
    return path


def _one_line_store_error(uri, message):
    with pytest.raises(UserError) as err:
        tracking.check_store(uri)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    return str(err.value)


# ----------------------------------------------------------------------------------------------------- MLflow stores
@pytest.mark.parametrize("form", ["file-uri", "plain-path"])
def test_a_file_store_is_refused_with_the_sqlite_uri_to_use(form, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"file://{tmp_path}/mlruns" if form == "file-uri" else str(tmp_path / "mlruns")
    message = _one_line_store_error(uri, "is a file store")
    assert f"sqlite:///{tmp_path}/mlflow.db" in message
    assert not (tmp_path / "mlruns").exists()


def test_a_file_store_mlflow_is_told_to_allow_is_checked_like_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking.check_store(f"file://{tmp_path}/mlruns")                  # allowed, writable: no error
    (tmp_path / "a_file").write_text("x")
    _one_line_store_error(f"file://{tmp_path}/a_file/mlruns", "a_file is a file")


def test_a_read_only_database_in_a_writable_folder_is_refused(tmp_path, read_only):
    database = read_only(_database(tmp_path / "mlflow.db"))
    _one_line_store_error(f"sqlite:///{database}", "is read-only")


@pytest.mark.parametrize("uri,driver", [("postgresql://user:secret@127.0.0.1:5432/mlflow", "psycopg"),
                                        ("postgresql+psycopg2://user:secret@127.0.0.1/mlflow", "psycopg2"),
                                        ("mysql://user@127.0.0.1/mlflow", "MySQLdb")])
def test_a_database_store_without_its_driver_names_the_driver(uri, driver):
    try:
        __import__(driver)
        pytest.skip(f"{driver} is installed here")
    except ImportError:
        pass
    message = _one_line_store_error(uri, f"driver {driver} is not installed: pip install")
    assert "secret" not in message


def test_a_server_that_answers_health_but_is_not_mlflow_is_refused(not_mlflow):
    _one_line_store_error(not_mlflow, "is not an MLflow tracking server (HTTP 404")


def test_a_real_mlflow_api_is_accepted(monkeypatch):
    """The server check's second request is MLflow's REST API: an MLflow server's answer passes."""
    import io
    import json
    import urllib.request

    answers = {"/health": b"OK", "/api/2.0/mlflow/experiments/search?max_results=1": json.dumps({}).encode()}
    asked = []

    def urlopen(request, timeout):
        url = request if isinstance(request, str) else request.full_url
        asked.append(url.split("5000")[1])
        return io.BytesIO(answers[url.split("5000")[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    tracking.check_store("http://127.0.0.1:5000")
    assert asked == list(answers)


# ----------------------------------------------------------------------------------------------------- outputs
def _planned(tmp_path, outputs, *overrides):
    cfg = compose(["profile=smoke", f"paths.outputs={outputs}", f"tracking.uri=sqlite:///{tmp_path}/db/mlflow.db",
                   *overrides])
    return plan_point(cfg, skip_done=False)


OUTPUT_CASES = {                     # how the outputs are broken -> (outputs folder, what the line says)
    "outputs-a-file": (lambda t, ro: t / "a_file", "a_file is a file"),
    "outputs-under-a-file": (lambda t, ro: t / "a_file" / "out", "a_file is a file"),
    "outputs-read-only": (lambda t, ro: ro(t / "out"), "is not writable"),
    "cache-a-file": (lambda t, ro: t / "with_cache_file", "cache is a file"),
    "points-read-only": (lambda t, ro: (ro(t / "with_points" / "points"), t / "with_points")[1], "is not writable"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_outputs_that_cannot_be_written_are_one_line_before_any_work(case, tmp_path, read_only):
    (tmp_path / "a_file").write_text("x")
    for folder in ("out", "with_cache_file", "with_points/points"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "with_cache_file" / "cache").write_text("x")
    where, message = OUTPUT_CASES[case]
    with pytest.raises(UserError) as err:
        _planned(tmp_path, where(tmp_path, read_only))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "db").exists()                            # no store created, nothing logged


# ----------------------------------------------------------------------------------------------------- make_figures
def _figures(args, capsys):
    from analysis.make_figures import main

    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("case", ["out-under-a-file", "out-read-only"])
def test_make_figures_out_that_cannot_be_written_is_one_line(case, tmp_path, capsys, read_only):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "figs").mkdir()
    out = tmp_path / "a_file" / "figs" if case == "out-under-a-file" else read_only(tmp_path / "figs")
    code, err = _figures(["--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], capsys)
    assert code == 2 and len(err) == 1 and "cannot be written" in err[0], err


def test_make_figures_on_a_file_store_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    code, err = _figures(["--out", str(tmp_path / "figs"), "--tracking-uri", f"file://{tmp_path}/mlruns"], capsys)
    assert code == 2 and len(err) == 1 and "is a file store" in err[0], err


# ----------------------------------------------------------------------------------------------------- dashboard
def test_the_dashboard_on_a_taken_port_is_one_line_and_starts_nothing(tmp_path, capsys, monkeypatch):
    from bar.orchestration import mlflow_server

    monkeypatch.setenv("BAR_OUTPUTS", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow_server.subprocess, "Popen", lambda *a, **k: pytest.fail("a server was started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = mlflow_server.main(["ui", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is taken" in err[0] and "PORT=" in err[0], err
    assert not (tmp_path / "mlflow.db").exists()


def test_the_dashboard_on_outputs_that_are_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    from bar.orchestration import mlflow_server

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("BAR_OUTPUTS", str(tmp_path / "a_file"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow_server.subprocess, "Popen", lambda *a, **k: pytest.fail("a server was started"))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = mlflow_server.main(["ui", "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a_file is a file" in err[0], err


def test_a_server_that_exits_before_answering_is_an_error_not_a_success(capsys):
    from bar.orchestration import mlflow_server

    code = mlflow_server._supervise([sys.executable, "-c", "raise SystemExit(0)", "ui"],
                                    ready_url="http://127.0.0.1:9/", announce="MLflow UI is up")
    err = capsys.readouterr().err
    assert code == 1 and "exited with code 0 before answering" in err and "is up" not in err


# ----------------------------------------------------------------------------------------------------- a full disk
def _full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/outputs/points/x/generator/.ckpt-000000040.pt.tmp-1")


@pytest.mark.parametrize("store", ["recorded-the-failure", "on-the-full-disk-too"])
def test_a_full_disk_is_one_line_that_says_what_to_do(store, capsys):
    from bar.orchestration.runner import _point_failed

    try:
        raise RuntimeError("training step failed") from _full()   # however deep the ENOSPC sits
    except RuntimeError as err:
        if store == "on-the-full-disk-too":
            err.unrecorded_end = "its run r1 stays RUNNING, the store could not record its end"
        with pytest.raises(SystemExit) as code:
            _point_failed(err, multirun=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 1 and len(lines) == 1, lines
    assert "no space left on device writing /outputs/points/x/generator" in lines[0] and "launch again" in lines[0]
    assert ("its run r1 stays RUNNING" in lines[0]) == (store == "on-the-full-disk-too")


def test_a_store_on_the_full_disk_leaves_the_run_to_be_continued_and_says_so_once(tmp_path, capsys):
    from bar.core.files import disk_full

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = tracking.PointRun(uri, "full", "mbm-16b", {"signature": "s"})

    def store_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    run.client.set_tag = store_full
    capsys.readouterr()                                               # MLflow's own lines creating the store
    with pytest.raises(OSError) as err:
        with run:
            raise _full()
    assert err.value.__context__ is None                              # no second traceback chained to the first
    assert capsys.readouterr().err == ""                              # nor MLflow's log of it: the runner's one line
    assert "stays RUNNING" in err.value.unrecorded_end and "the next launch continues it" in err.value.unrecorded_end
    state = tracking.run_state(uri, run.run_id)
    assert state is not None and state[0] == "RUNNING" and state[1] in tracking.RESUMABLE_STATUSES
    full_store = sqlite3.OperationalError("database or disk is full")
    full_store.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert disk_full(full_store) is full_store and disk_full(ValueError("x")) is None
