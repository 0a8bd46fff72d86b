"""The MLflow UI and a shared MLflow tracking server, as commands:

    python -m bar.orchestration.mlflow_server ui [--host H] [--port P]
        the UI on the default store (or MLFLOW_TRACKING_URI)
    python -m bar.orchestration.mlflow_server serve [--host 0.0.0.0] [--port P]
        a server for many jobs (tracking=server)

The server keeps its sqlite file on local disk (not the shared outputs folder) and artifacts under outputs/."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _supervise(cmd: list[str]) -> int:
    """Run the server in its own process group and take the whole group down when this process is stopped
    (SIGTERM, SIGINT): mlflow server starts uvicorn workers and job runners that outlive a plain kill."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
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
    if args.command == "serve":
        backend = Path(args.backend).expanduser()
        backend.parent.mkdir(parents=True, exist_ok=True)
        Path(args.artifacts).expanduser().mkdir(parents=True, exist_ok=True)
        warn_if_network_sqlite(f"sqlite:///{backend.resolve()}")
        print(f"MLflow server at http://{args.host}:{args.port} (store sqlite:///{backend.resolve()}, artifacts "
              f"{Path(args.artifacts).resolve()}); jobs: tracking=server tracking.host={args.host} "
              f"tracking.port={args.port}", file=sys.stderr)
        cmd = serve_command(args.host, args.port, backend, Path(args.artifacts).expanduser(), args.workers)
        return _supervise(cmd)
    uri = default_tracking_uri()
    client_for(uri)
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}", file=sys.stderr)
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                            "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
