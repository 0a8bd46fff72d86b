"""The MLflow UI and a shared MLflow tracking server, as commands:

    python -m bar.orchestration.mlflow_server ui [--host H] [--port P]
        the UI on the default store (or MLFLOW_TRACKING_URI)
    python -m bar.orchestration.mlflow_server serve [--host 0.0.0.0] [--port P] [--backend FILE | DATABASE-URI]
        a server for many jobs (tracking=server; launcher=slurm's store, tracking=cluster)

The server keeps its sqlite file on local disk (not the shared outputs folder), or its runs in a database
(`--backend postgresql+psycopg://user@host/db`), and artifacts under outputs/. Each
command says it is up only once its server answers; a port already taken, a store that cannot be opened or a folder
that cannot be written is one line on stderr (exit code 2) before anything starts."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy.engine import make_url

try:
    from mlflow.server.security_utils import get_default_allowed_hosts
except ImportError:     # MLflow before 3.5: the server checks no Host header
    get_default_allowed_hosts = None  # type: ignore[assignment]

from bar import UserError
from bar.core.files import folder_problem
from bar.core.paths import default_tracking_uri, outputs_dir, sqlite_path
from bar.orchestration.tracking import check_store, client_for, warn_if_network_sqlite


def default_server_backend() -> Path:
    """The server's sqlite file: on local disk (not the shared outputs folder), one per user."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "bar" / "mlflow-server.db"


def backend_uri(backend: str | Path) -> str:
    """The server's store: a database URI as given (postgresql://user@host/db), else an sqlite file at that path."""
    text = str(backend)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


# Database connections per server worker: one for each request it serves at once (the 40 threads of anyio's pool, which
# runs MLflow's Flask handlers). MLflow's default, 5 + 10 overflow, made 288 of 1,702 calls of 64 points logging at
# once fail (pool timeout: HTTP 400, not retried) on sqlite, 313 on PostgreSQL; sized: none
# (benchmarks/results/tracking_load_cpu.txt).
POOL_ENV = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "30"}


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers the server accepts: MLflow's default (loopback and private addresses) and, serving beyond
    loopback, this machine's names: MLflow 3 refuses a job that reaches it by name (http://login1:5000) with HTTP 403.
    None where MLflow has no such check (before 3.5) or MLFLOW_SERVER_ALLOWED_HOSTS sets it."""
    if get_default_allowed_hosts is None or os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS") or \
            host in ("127.0.0.1", "localhost", "::1"):
        return None
    names = {socket.gethostname(), socket.getfqdn(), host} - {"0.0.0.0", "::"}
    return get_default_allowed_hosts() + [f"{name}{port}" for name in sorted(names) for port in ("", ":*")]


def serve_command(host: str, port: str | int, backend: str | Path, artifacts: str | Path,
                  workers: int = 2) -> list[str]:
    artifacts, hosts = Path(artifacts).resolve(), allowed_hosts(str(host))
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri(backend),
            "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts", "--host", str(host),
            "--port", str(port), "--workers", str(workers)] + (["--allowed-hosts", ",".join(hosts)] if hosts else [])


def port_problem(host: str, port: str | int) -> str | None:
    """Why a server cannot listen on host:port (taken, or not an address of this machine); None when it can."""
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as err:
        return f"{host}:{port} is not an address to listen on ({err})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn does: TIME_WAIT is not "taken"
        try:
            probe.bind(address)
        except OSError as err:
            return f"port {port} on {host} is taken ({err.strerror}): another server (an MLflow UI already up?)"
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def _supervise(cmd: list[str], ready_url: str | None = None, announce: str = "", ready_s: float = 120) -> int:
    """Run the server in its own process group and take the whole group down when this process is stopped
    (SIGTERM, SIGINT): mlflow server starts uvicorn workers and job runners that outlive a plain kill. With
    `ready_url`, `announce` is printed once the URL answers; a server that exits first is an error (exit code 1)."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + ready_s
        while ready_url and proc.poll() is None and not _answers(ready_url) and time.monotonic() < deadline:
            time.sleep(0.5)
        if ready_url and proc.poll() is not None:
            print(f"error: mlflow {cmd[3]} exited with code {proc.returncode} before answering at {ready_url}",
                  file=sys.stderr)
            return 1
        if announce:
            print(announce, file=sys.stderr)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:  # children may outlive the server process itself
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                time.sleep(0.5)
            except subprocess.TimeoutExpired:
                continue


def main(argv: list[str] | None = None) -> int:
    """`python -m bar.orchestration.mlflow_server ui` opens the MLflow UI on the default store; `serve` starts the
    tracking server that `tracking=server` points jobs at."""
    parser = argparse.ArgumentParser(prog="python -m bar.orchestration.mlflow_server")
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser("ui", help="mlflow ui on the default store (or MLFLOW_TRACKING_URI)")
    ui.add_argument("--port", default="5000")
    ui.add_argument("--host", default="127.0.0.1")
    serve = sub.add_parser("serve", help="mlflow server for many jobs: sqlite on local disk, artifacts on shared "
                                         "storage; use tracking=server tracking.host=... in the jobs")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 for a cluster)")
    serve.add_argument("--port", default="5000")
    serve.add_argument("--backend", default=str(default_server_backend()),
                       help="sqlite file, on local disk; or a database URI (postgresql://user@host/db)")
    serve.add_argument("--artifacts", default=str(outputs_dir() / "mlartifacts"),
                       help="artifact folder (shared storage)")
    serve.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    busy = port_problem(args.host, args.port)
    if busy:
        print(f"error: {busy}: pass another port (make {'dashboard' if args.command == 'ui' else 'mlflow-server'} "
              "PORT=N, or --port N)", file=sys.stderr)
        return 2
    try:
        return _ui(args) if args.command == "ui" else _serve(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _serve(args) -> int:
    """`serve`: a tracking server for many jobs, announced once it answers."""
    store, artifacts = backend_uri(args.backend), Path(args.artifacts).expanduser()
    database = sqlite_path(store)
    for what, folder in (("--backend", database.parent if database else None), ("--artifacts", artifacts)):
        problem = folder and folder_problem(folder)
        if problem:
            raise UserError(f"{what} {folder} cannot be written: {problem}")
    if database is None:
        check_store(store)      # a database URI: its driver installed
        store = make_url(store).render_as_string(hide_password=True)
    else:
        database.parent.mkdir(parents=True, exist_ok=True)
        warn_if_network_sqlite(store)
    artifacts.mkdir(parents=True, exist_ok=True)
    for key, value in POOL_ENV.items():      # the server inherits them; set ones win
        os.environ.setdefault(key, value)
    url = f"http://{args.host}:{args.port}"
    everywhere = args.host in ("0.0.0.0", "::")
    reach = socket.gethostname() if everywhere else args.host     # the name jobs reach it by
    slurm = "; launcher=slurm sweeps launched here use it" if everywhere and str(args.port) == "5000" else ""
    announce = (f"MLflow server at {url} (store {store}, artifacts {artifacts.resolve()}); "
                f"jobs: tracking=server tracking.host={reach} tracking.port={args.port}{slurm}")
    return _supervise(serve_command(args.host, args.port, args.backend, artifacts, args.workers),
                      ready_url=f"{url}/health", announce=announce)


def _ui(args) -> int:
    """`ui`: the MLflow UI on the default store, announced once it answers."""
    uri = default_tracking_uri()
    client_for(uri)
    url = f"http://{args.host}:{args.port}"
    return _supervise([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
                       "--port", str(args.port)], ready_url=f"{url}/health", announce=f"MLflow UI for {uri} at {url}")


if __name__ == "__main__":
    sys.exit(main())
