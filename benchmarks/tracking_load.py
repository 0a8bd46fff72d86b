"""Load test of the MLflow store that many SLURM jobs share (not a test; tests/orchestration/test_tracking_load.py runs
it): N point processes log at once, then everything is read back and counted.

    python benchmarks/tracking_load.py [--writers 64] [--backend sqlite-server postgres-server sqlite-direct]
                                       [--server-workers 2] [--out FILE] [--json FILE]

Each writer is a process forked from this one (which imported the project once, as launcher=local's fork server
does) that logs one point through bar.orchestration.tracking.PointRun, the code path of every point: a child run under
one parent run, 100 params, the resolved config as an artifact, tags, 5 metric histories of 200 steps flushed every
50 steps (append_history, as the training loop's checkpoints do), 10 final metrics, a small PNG, the run ended. All
writers start at once (a barrier). Counted afterwards:
    written   metric values whose logging call returned (of writers x (metrics x steps + finals) asked)
    lost      writes whose call returned but which the store does not have (metric values, params, tags, artifacts,
              run ends)
    failed    PointRun calls that raised (after the MLflow client's own retries); a writer whose run could not be
              created counts its one failed call
    p50/p99   latency of one PointRun call, ms; wall: first writer's start to last writer's end
Backends:
    sqlite-server    the shipped server (`python -m bar.orchestration.mlflow_server serve`), its sqlite file on
                     local disk
    postgres-server  the same server on a PostgreSQL cluster started here from the Debian packages (initdb + pg_ctl in a
                     temporary folder on loopback, as the postgres user when run as root)
    sqlite-direct    no server: every writer opens the sqlite file itself (MLFLOW_TRACKING_URI=sqlite:///...)"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from bar.orchestration import tracking  # noqa: E402

os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"   # no "View run ..." line per run
BACKENDS = ("sqlite-server", "postgres-server", "sqlite-direct")
EXPERIMENT = "tracking_load"


@dataclass
class Workload:
    params: int = 100
    metrics: int = 5
    steps: int = 200
    flush_every: int = 50       # steps between history flushes (a checkpoint's append_history)
    finals: int = 10

    def metric_values(self) -> int:
        return self.metrics * self.steps + self.finals


# ------------------------------------------------------------------------------------------------------ one writer
def _writer(index: int, uri: str, parent_run_id: str, work: Workload, barrier, results) -> None:
    """One point's logging, timed call by call; what returned is reported, for the read-back to look for."""
    calls: list[tuple[str, float]] = []
    failures: list[str] = []

    def call(name: str, fn: Callable, *args) -> bool:
        start = time.perf_counter()
        try:
            fn(*args)
            return True
        except Exception as err:
            failures.append(f"{name}: {tracking._one_line(err)[:200]}")
            return False
        finally:
            calls.append((name, time.perf_counter() - start))

    barrier.wait()
    report: dict = {"index": index, "start": time.time(), "calls": calls, "failures": failures, "run_id": None,
                    "params": False, "tags": False, "finals": False, "artifacts": [], "ended": False, "history": {}}
    holder: list = []
    if call("create_run", lambda: holder.append(tracking.PointRun(
            uri, EXPERIMENT, f"writer-{index}", {"sweep": EXPERIMENT, "signature": f"sig{index:04d}"},
            parent_run_id))):
        _log_point(holder[0], index, work, call, report)
    report["end"] = time.time()
    results.put(report)


def _log_point(run, index: int, work: Workload, call: Callable, report: dict) -> None:
    """What a point logs, in the order runner.py logs it."""
    report["run_id"] = run.run_id
    report["params"] = call("log_params", run.log_params, {f"group{i % 7}.key{i}": i * 0.5 for i in range(work.params)})
    if call("log_text", run.log_text, "config.yaml", "\n".join(f"key{i}: {i}" for i in range(200))):
        report["artifacts"].append("config.yaml")
    report["tags"] = call("set_tags", run.set_tags, {"tokenizer_reused": "False", "fid_extractor": "classifier",
                                                     "writer": str(index)})
    names = [f"loss_{m}" for m in range(work.metrics)]
    for flush in range(work.flush_every, work.steps + work.flush_every, work.flush_every):
        for name in names:   # the whole history so far, as at a checkpoint: append_history logs only the new steps
            history = [(s, 1.0 / (s + 1) + index) for s in range(min(flush, work.steps))]
            if call("append_history", run.append_history, name, history):
                report["history"].setdefault(name, []).extend(range(flush - work.flush_every, min(flush, work.steps)))
    report["finals"] = call("log_metrics", run.log_metrics, {f"final_{i}": float(i) for i in range(work.finals)})
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "sample_grid.png"
        grid.write_bytes(os.urandom(4096))
        if call("log_artifact", run.log_artifact, grid):
            report["artifacts"].append("sample_grid.png")
    report["ended"] = call("end_run", run.__exit__, None, None, None)


# ------------------------------------------------------------------------------------------------ run and count
def _in_child(fn: Callable, *args):
    """fn(*args) in a forked process, its result back: this process keeps no MLflow connection (or engine) that the
    writers forked from it would share."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    proc = context.Process(target=lambda: queue.put(fn(*args)))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


def _parent_run(uri: str) -> str:
    return tracking.start_parent_run(uri, EXPERIMENT, "load", 0)


def run_writers(uri: str, writers: int, work: Workload) -> list[dict]:
    """`writers` forked processes log at once (after a barrier); their reports, in writer order."""
    parent = _in_child(_parent_run, uri)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(writers), context.Queue()
    procs = [context.Process(target=_writer, args=(i, uri, parent, work, barrier, results)) for i in range(writers)]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
    return sorted(reports, key=lambda r: r["index"])


def _lost_in_run(client: MlflowClient, report: dict, work: Workload) -> dict[str, int]:
    """What the writer was told was logged but the store does not have, by kind."""
    run = client.get_run(report["run_id"])
    lost = {"metric_values": 0, "params": 0, "tags": 0, "artifacts": 0, "run_ends": 0}
    if report["params"]:
        lost["params"] = work.params - len([k for k in run.data.params if k.startswith("group")])
    if report["tags"]:
        lost["tags"] = len({"tokenizer_reused", "fid_extractor", "writer"} - set(run.data.tags))
    for name, steps in report["history"].items():
        lost["metric_values"] += len(set(steps) - {m.step for m in client.get_metric_history(run.info.run_id, name)})
    if report["finals"]:
        lost["metric_values"] += len({f"final_{i}" for i in range(work.finals)} - set(run.data.metrics))
    listed = {Path(f.path).name for f in client.list_artifacts(run.info.run_id)}
    lost["artifacts"] = len(set(report["artifacts"]) - listed)
    if report["ended"]:
        lost["run_ends"] = int(run.info.status != "FINISHED" or run.data.tags.get("status") != "finished")
    return lost


def count(uri: str, reports: list[dict], work: Workload) -> dict:
    """The figures of one backend: written, lost (by kind), failed, latency, wall."""
    client = MlflowClient(tracking_uri=uri)
    lost: dict[str, int] = {}
    for report in reports:
        if report["run_id"]:
            for kind, n in _lost_in_run(client, report, work).items():
                lost[kind] = lost.get(kind, 0) + n
    latencies = sorted(s for r in reports for _, s in r["calls"])
    written = sum(sum(len(v) for v in r["history"].values()) + (work.finals if r["finals"] else 0) for r in reports)
    failures = [f for r in reports for f in r["failures"]]
    by_call: dict[str, list[float]] = {}
    for name, seconds in (c for r in reports for c in r["calls"]):
        by_call.setdefault(name, []).append(seconds)
    return {"writers": len(reports), "metric_values_asked": len(reports) * work.metric_values(),
            "metric_values_written": written, "lost": sum(lost.values()), "lost_by_kind": lost,
            "failed": len(failures), "failures": failures[:20], "calls": len(latencies),
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "max_ms": 1000 * latencies[-1],
            "median_ms_by_call": {k: round(1000 * statistics.median(v), 1) for k, v in sorted(by_call.items())},
            "wall_s": max(r["end"] for r in reports) - min(r["start"] for r in reports)}


# ------------------------------------------------------------------------------------------------ the stores
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_server(store: str, folder: Path, workers: int = 2, env: dict | None = None) -> Iterator[str]:
    """`python -m bar.orchestration.mlflow_server serve` on loopback with `store` as its backend (an sqlite file or a
    database URI; `env` added to its environment): its URL while it runs, stopped (its process group) afterwards."""
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bar.orchestration.mlflow_server", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--backend", store, "--artifacts", str(folder / "artifacts"),
                             "--workers", str(workers)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not _answers(f"{url}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)    # mlflow_server takes its server's process group down with it
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them off PATH), None when not installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (initdb + pg_ctl in a temporary folder; as the postgres user when
    this runs as root, which PostgreSQL refuses) with an `mlflow` database: its URI while it runs."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="bar-pg-"))     # under /tmp: reachable by the postgres user
    if as_user:
        shutil.chown(root, "postgres")
    port, data = _free_port(), root / "data"
    try:
        subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=root)
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True,
                       capture_output=True, cwd=root, timeout=120)
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                       cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def store(backend: str, folder: Path, server_workers: int = 2, server_env: dict | None = None) -> Iterator[str]:
    """The tracking URI the writers log to, for one backend (whatever it needs running while they do)."""
    if backend == "sqlite-direct":
        yield f"sqlite:///{folder / 'direct' / 'mlflow.db'}"
    elif backend == "sqlite-server":
        with mlflow_server(str(folder / "server" / "mlflow.db"), folder / "server", server_workers, server_env) as url:
            yield url
    elif backend == "postgres-server":
        with postgres_cluster() as database, mlflow_server(database, folder / "pg", server_workers, server_env) as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend}: one of {', '.join(BACKENDS)}")


# MLflow's own connection pool per server worker (5 + 10 overflow), which `mlflow_server serve` sizes up (POOL_ENV)
MLFLOW_DEFAULT_POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "10"}


def measure(backend: str, writers: int = 64, work: Workload | None = None, server_workers: int = 2,
            mlflow_pool: bool = False) -> dict:
    """One backend's figures (see the module docstring); `mlflow_pool`: the server with MLflow's default pool."""
    work = work or Workload()
    with tempfile.TemporaryDirectory(prefix="bar-load-") as tmp, store(
            backend, Path(tmp), server_workers, MLFLOW_DEFAULT_POOL if mlflow_pool else None) as uri:
        reports = run_writers(uri, writers, work)
        label = backend + (" (pool 5+10)" if mlflow_pool and backend.endswith("server") else "")
        return {"backend": label, **count(uri, reports, work), "server_replies": server_replies(Path(tmp))}


def server_replies(folder: Path) -> dict[str, int]:
    """How many replies of each HTTP status the server's log shows (503: the store was busy, the client retried)."""
    replies: dict[str, int] = {}
    for log in folder.glob("*/server.log"):
        for status in re.findall(r'" (\d{3}) ', log.read_text(errors="replace")):
            replies[status] = replies.get(status, 0) + 1
    return dict(sorted(replies.items()))


# ------------------------------------------------------------------------------------------------ the table
HEADER = (f"{'backend':<28} {'writers':>7} {'metric values written':>22} {'lost':>5} {'failed':>6} {'calls':>6} "
          f"{'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} {'wall s':>7} {'server 4xx/5xx':>14}")


def row(figures: dict) -> str:
    written = f"{figures['metric_values_written']}/{figures['metric_values_asked']}"
    replies = figures.get("server_replies") or {}
    errors = "-" if not replies else "/".join(str(sum(n for s, n in replies.items() if s.startswith(c))) for c in "45")
    return (f"{figures['backend']:<28} {figures['writers']:>7} {written:>22} {figures['lost']:>5} "
            f"{figures['failed']:>6} {figures['calls']:>6} {figures['p50_ms']:>7.0f} {figures['p99_ms']:>8.0f} "
            f"{figures['max_ms']:>8.0f} {figures['wall_s']:>7.1f} {errors:>14}")


def preamble(args, work: Workload) -> list[str]:
    return [f"# python benchmarks/tracking_load.py --writers {args.writers} --backend {' '.join(args.backend)} "
            f"--server-workers {args.server_workers} --steps {args.steps}" + (" --mlflow-pool" * args.mlflow_pool),
            f"# {os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, "
            f"mlflow {mlflow.__version__}; "
            f"per writer: {work.params} params, {work.metrics} metrics x {work.steps} steps flushed every "
            f"{work.flush_every} + {work.finals} final metrics, 2 artifacts, tags, run ended"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow_server serve --workers (its default)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mlflow-pool", action="store_true",
                        help="the server with MLflow's default connection pool (5 + 10) instead of serve's")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="every backend's figures (failures included) as JSON")
    args = parser.parse_args(argv)
    work = Workload(steps=args.steps)
    lines = preamble(args, work) + [HEADER]
    print("\n".join(lines), flush=True)
    every: list[dict] = []
    for backend in args.backend:
        printed = len(lines)
        try:
            figures = measure(backend, args.writers, work, args.server_workers, args.mlflow_pool)
        except Exception as err:     # one backend that cannot run (e.g. no PostgreSQL) leaves the others' rows
            figures = {"backend": backend, "error": tracking._one_line(err)}
            lines.append(f"{backend:<28} could not run: {figures['error']}")
        else:
            lines.append(row(figures))
            lines.extend(f"    e.g. {failure}" for failure in sorted(set(figures["failures"]))[:2])
        every.append(figures)
        print("\n".join(lines[printed:]), flush=True)
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")
        if args.json:
            args.json.write_text(json.dumps({"workload": asdict(work), "backends": every}, indent=1))
    return 1 if any("error" in f for f in every) else 0


if __name__ == "__main__":
    sys.exit(main())
