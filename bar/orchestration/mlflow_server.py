"""The MLflow UI and a shared MLflow tracking server, as commands:

    python -m bar.orchestration.mlflow_server ui [--host H] [--port P]
        the UI on the default store (or MLFLOW_TRACKING_URI)
    python -m bar.orchestration.mlflow_server serve [--host 0.0.0.0] [--port P]
        a server for many jobs (tracking=server)

The server keeps its sqlite file on local disk (not the shared outputs folder) and artifacts under outputs/. Each
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

from bar import UserError
from bar.core.files import folder_problem
from bar.core.paths import default_tracking_uri, outputs_dir
from bar.orchestration.tracking import client_for, warn_if_network_sqlite


def default_server_backend() -> Path:
    """The server's sqlite file: on local disk (not the shared outputs folder), one per user."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "bar" / "mlflow-server.db"


def serve_command(host: str, port: str | int, backend: str | Path, artifacts: str | Path,
                  workers: int = 2) -> list[str]:
    backend, artifacts = Path(backend).resolve(), Path(artifacts).resolve()
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{backend}",
            "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts", "--host", str(host),
            "--port", str(port), "--workers", str(workers)]


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
    serve.add_argument("--backend", default=str(default_server_backend()), help="sqlite file, on local disk")
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
    backend, artifacts = Path(args.backend).expanduser(), Path(args.artifacts).expanduser()
    for what, folder in (("--backend", backend.parent), ("--artifacts", artifacts)):
        problem = folder_problem(folder)
        if problem:
            raise UserError(f"{what} {folder} cannot be written: {problem}")
    backend.parent.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    warn_if_network_sqlite(f"sqlite:///{backend.resolve()}")
    url = f"http://{args.host}:{args.port}"
    announce = (f"MLflow server at {url} (store sqlite:///{backend.resolve()}, artifacts {artifacts.resolve()}); "
                f"jobs: tracking=server tracking.host={args.host} tracking.port={args.port}")
    return _supervise(serve_command(args.host, args.port, backend, artifacts, args.workers),
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
