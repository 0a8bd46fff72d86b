"""MLflow conventions (see CONVENTIONS.md): experiment = sweep, one parent run per launch, one child run per point.

Stage code never touches MLflow: it hands metrics and files to a `PointRun`."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Literal, Mapping, Sequence

import mlflow
import mlflow.environment_variables
from mlflow.entities import Metric, Param, RunTag
from mlflow.telemetry.client import set_telemetry_client
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from bar import PROJECT_ROOT, UserError
from bar.core.files import folder_problem
from bar.data.cache import file_lock
from bar.core.paths import sqlite_path

PARAM_BATCH = 100  # MLflow's per-request limit


def _telemetry_off() -> None:
    """MLflow's telemetry thread, failing to reach the internet (as on a compute node), deletes an environment variable
    while a log call may be reading the environment: the call fails (KeyError '_MLFLOW_TELEMETRY_SESSION_ID', 1 of
    1,728 calls of 64 points logging at once, benchmarks/tracking_load.py). Off unless MLFLOW_DISABLE_TELEMETRY says."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    set_telemetry_client()      # reads the setting again: no client, no thread


_telemetry_off()


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs",
                       "fuse.glusterfs", "glusterfs", "9p", "afs", "panfs", "wekafs", "fuse.s3fs", "fuse.gcsfuse"}
_warned: set[str] = set()


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem holding `path` (longest matching mount point in /proc/mounts), '' if unknown."""
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    best, kind = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1].replace("\\040", " ")
            if (str(target) == mount or str(target).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, fields[2]
    except OSError:
        return ""
    return kind


def warn_if_network_sqlite(uri: str) -> bool:
    """sqlite locking is unreliable on network filesystems: warn (once per file) and suggest tracking=server."""
    if not uri.startswith("sqlite:///"):
        return False
    path = uri[len("sqlite:///"):]
    kind = filesystem_type(path)
    if kind in NETWORK_FILESYSTEMS or kind.startswith("nfs"):
        if path not in _warned:
            _warned.add(path)
            print(f"warning: the MLflow sqlite store {path} is on a network filesystem ({kind}); many jobs writing "
                  "to it can corrupt or lock it. Start `make mlflow-server HOST=0.0.0.0` on one machine and use "
                  "tracking=server", file=sys.stderr)
        return True
    return False


_ready: set[str] = set()   # stores this process has checked or created


def check_store(uri: str) -> None:
    """A one-line UserError naming the URI and the cause when the store cannot be used, found in seconds and before
    anything is trained or logged (MLflow itself retries for minutes, or fails with a traceback). Creates nothing.
    Stores: sqlite (its folder and file writable, the file a database), http(s) (an MLflow server that answers),
    postgresql / mysql / mssql (their driver installed), file stores (refused: MLflow 3 no longer opens them)."""
    if uri in _ready:
        return
    scheme = urllib.parse.urlparse(uri).scheme.split("+")[0]
    database = sqlite_path(uri)
    if database is not None:
        _check_sqlite(uri, database)
    elif scheme in ("", "file"):
        _check_file_store(uri)
    elif scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in DATABASE_SCHEMES:
        _check_database_driver(uri)


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")    # the SQLAlchemy stores MLflow opens besides sqlite
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient",
                   "pymysql": "pymysql", "pyodbc": "pyodbc"}   # module -> what `pip install` wants


def _check_sqlite(uri: str, database: Path) -> None:
    problem = folder_problem(database.parent)
    if problem:
        raise UserError(f"MLflow store {uri}: {problem} (set MLFLOW_TRACKING_URI or BAR_OUTPUTS)")
    if database.exists():
        if not database.is_file():
            raise UserError(f"MLflow store {uri}: {database} is not a file")
        try:
            os.close(os.open(database, os.O_RDWR))      # opened for writing, nothing written
        except OSError as err:
            raise UserError(f"MLflow store {uri}: {database} is read-only ({err.strerror}): make it writable "
                            "(chmod u+w) or point MLFLOW_TRACKING_URI elsewhere") from None
        try:
            with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
                conn.execute("select name from sqlite_master limit 1").fetchall()
        except sqlite3.DatabaseError as err:
            raise UserError(f"MLflow store {uri}: {database} is not an sqlite database ({err}): move it away or "
                            "point MLFLOW_TRACKING_URI elsewhere") from None


def _check_file_store(uri: str) -> None:
    """A folder store (`file://...` or a plain path): MLflow 3 refuses it unless MLFLOW_ALLOW_FILE_STORE is set."""
    folder = Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri).expanduser().resolve()
    allowed = getattr(mlflow.environment_variables, "MLFLOW_ALLOW_FILE_STORE", None)
    if allowed is not None and not allowed.get():
        raise UserError(f"MLflow store {uri} is a file store, which MLflow {mlflow.__version__} no longer opens: use "
                        f"MLFLOW_TRACKING_URI=sqlite:///{folder.parent}/mlflow.db (`mlflow migrate-filestore` "
                        "converts an existing one) or unset MLFLOW_TRACKING_URI")
    problem = folder_problem(folder)
    if problem:
        raise UserError(f"MLflow store {uri}: {problem} (set MLFLOW_TRACKING_URI or BAR_OUTPUTS)")


def _check_server(uri: str) -> None:
    """The server answers /health within seconds, and its REST API is MLflow's."""
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as reply:
            reply.read()
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"MLflow server {uri} does not answer ({reason}): {start_server_hint(uri)}, or set "
                        "MLFLOW_TRACKING_URI, or use tracking=local") from None
    request = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            if isinstance(json.loads(reply.read() or b"{}"), dict):
                return
        reason = "not a JSON object"
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UserError(f"MLflow server {uri} refuses us (HTTP {err.code}): set MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)") from None
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:
        reason = type(err).__name__
    raise UserError(f"{uri} answers /health but is not an MLflow tracking server ({reason} from "
                    "/api/2.0/mlflow/experiments/search): check tracking.host and tracking.port (or "
                    "MLFLOW_TRACKING_URI)")


def start_server_hint(uri: str) -> str:
    """The command that starts the tracking server `uri` names: on loopback for this machine's jobs, on every
    address (HOST=0.0.0.0) for jobs on other nodes."""
    parsed = urllib.parse.urlparse(uri)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5000
    moved = "" if port == 5000 else f" PORT={port}"
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"start it with `make mlflow-server{moved}`"
    return (f"start it on {host} with `make mlflow-server HOST=0.0.0.0{moved}` "
            f"(python -m bar.orchestration.mlflow_server serve --host 0.0.0.0 --port {port})")


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client would send (its environment variables), for the server check."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _check_database_driver(uri: str) -> None:
    """A database store needs its Python driver (MLflow would fail deep inside SQLAlchemy)."""
    shown = uri.split("@")[-1]          # never a password in a message
    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        url.get_dialect().import_dbapi()
    except ImportError as err:
        module = err.name or str(err)
        raise UserError(f"MLflow store {shown}: its database driver {module} is not installed: pip install "
                        f"{DRIVER_PACKAGES.get(module, module)} (or use tracking=local)") from None
    except Exception as err:   # a URI SQLAlchemy cannot parse, or a dialect it does not know
        raise UserError(f"MLflow store {shown}: not a database URI SQLAlchemy knows "
                        f"({type(err).__name__})") from None


def client_for(uri: str):
    """An MlflowClient for `uri`, the store checked first. An sqlite store is created (folder, tables) under a file
    lock the first time this process uses it: launches that start together on a fresh store would otherwise race
    in MLflow's schema migration."""
    database = sqlite_path(uri)
    if database is not None and uri not in _ready:
        check_store(uri)
        database.parent.mkdir(parents=True, exist_ok=True)
        warn_if_network_sqlite(uri)
        with file_lock(database.with_name(database.name + ".lock")):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _ready.add(uri)
    return MlflowClient(tracking_uri=uri)


DONE_STATUSES = ("finished", "infeasible")
# a point whose run ended without finishing and whose process is gone: the next attempt continues that run
RESUMABLE_STATUSES = ("running", "interrupted")


def done_points(uri: str, experiment: str, signature: str | None = None) -> dict[str, dict]:
    """{signature: {"run_id", "status", "metric"}} of the points of `experiment` that ended finished or infeasible
    (only those with `signature` when given)."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[str, dict] = {}
    token: str | None = None
    while True:
        query = "tags.role = 'point' and attributes.status = 'FINISHED'"
        if signature:
            query += f" and tags.signature = '{signature}'"
        page = client.search_runs([exp.experiment_id], query,
                                  max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get("status") in DONE_STATUSES and tags.get("signature"):
                metrics = run.data.metrics
                out.setdefault(tags["signature"], {
                    "run_id": run.info.run_id, "status": tags["status"], "name": run.info.run_name,
                    "metric": metrics.get("gfid", metrics.get("rfid", math.nan))})
        token = page.token
        if not token:
            return out


def run_state(uri: str, run_id: str) -> tuple[str, str] | None:
    """(MLflow status, `status` tag) of a run, None if it does not exist (or was deleted)."""
    try:
        run = client_for(uri).get_run(run_id)
    except Exception:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    return run.info.status, run.data.tags.get("status", "")


def experiment_id(client, name: str, uri: str) -> str:
    """Get or create the experiment; with an sqlite store, artifacts go beside the database, not under the cwd."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location, db = None, sqlite_path(uri)
    if db is not None:
        location = (db.parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it first
        return client.get_experiment_by_name(name).experiment_id


def start_parent_run(uri: str, experiment: str, profile: str, num_points: int) -> str:
    client = client_for(uri)
    run = client.create_run(experiment_id(client, experiment, uri), run_name=time.strftime("launch-%Y%m%d-%H%M%S"),
                            tags={"role": "parent", "sweep": experiment, "profile": profile, "git_sha": git_sha(),
                                  "num_points": str(num_points), "driver": f"{socket.gethostname()}:{os.getpid()}"})
    return run.info.run_id


def end_parent_run(uri: str, run_id: str, counts: dict[str, int], interrupted: bool = False) -> None:
    client = client_for(uri)
    client.log_batch(run_id, metrics=[Metric(f"points_{status}", n, int(time.time() * 1000), 0)
                                      for status, n in counts.items()])
    if interrupted:
        client.set_tag(run_id, "interrupted", "Ctrl-C or a stop signal ended the launch")
    client.set_terminated(run_id, "KILLED" if interrupted else "FAILED" if counts.get("failed") else "FINISHED")


NOTE = "mlflow.note.content"              # the description the MLflow UI shows for an experiment or a run
SHARED_VIEW = "mlflow.sharedViewState."   # + key: a runs-table view (#/experiments/<id>/runs?viewStateShareKey=<key>)


def describe_experiment(uri: str, experiment: str, note: str, views: Mapping[str, str] | None = None) -> None:
    """The experiment's description (markdown) and its shared runs-table views ({key: the view's JSON})."""
    client = client_for(uri)
    exp_id = experiment_id(client, experiment, uri)
    client.set_experiment_tag(exp_id, NOTE, note)
    for key, view in (views or {}).items():
        client.set_experiment_tag(exp_id, SHARED_VIEW + key, view)


def describe_run(uri: str, run_id: str, note: str, metrics: Mapping[str, float] | None = None) -> None:
    """A run's description (markdown) and metrics of its own (a parent run's headline numbers)."""
    now = int(time.time() * 1000)
    client_for(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                              tags=[RunTag(NOTE, note)])


def launch_results(uri: str, parent_run_id: str, earlier_run_ids: Sequence[str] = ()) -> list[dict]:
    """The points of a launch, in start order: its child runs and the runs of earlier launches it skipped or continues
    (`earlier_run_ids`), each {"run_id", "name", "status", "metrics", "earlier": not a child of this launch}."""
    client = client_for(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    queries = [f"tags.mlflow.parentRunId = '{parent_run_id}'"]
    ids = [i for i in dict.fromkeys(earlier_run_ids) if i]
    queries += [f"attributes.run_id IN ({', '.join(repr(i) for i in ids[k:k + 100])})" for k in range(0, len(ids), 100)]
    runs = {run.info.run_id: run for query in queries for run in client.search_runs([exp_id], query, max_results=1000)}
    return [{"run_id": run_id, "name": run.info.run_name, "metrics": dict(run.data.metrics),
             "status": run.data.tags.get("status", run.info.status.lower()),
             "earlier": run.data.tags.get("mlflow.parentRunId") != parent_run_id}
            for run_id, run in sorted(runs.items(), key=lambda item: item[1].info.start_time or 0)]


def close_stale_parents(uri: str, experiment: str, alive) -> list[str]:
    """Parent runs of `experiment` left RUNNING by a launch whose driver is gone (`alive(run_id)` is False): ended
    KILLED with a tag saying so. Returns their ids."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    stale = [r.info.run_id for r in client.search_runs([exp.experiment_id],
                                                       "tags.role = 'parent' and attributes.status = 'RUNNING'")
             if not alive(r.info.run_id)]
    for run_id in stale:
        client.set_tag(run_id, "interrupted", "its driver stopped without closing it (found by a later launch)")
        client.set_terminated(run_id, "KILLED")
    return stale


def record_dead_point(uri: str, run_id: str, reason: str) -> bool:
    """A point's run whose process died (killed, out of memory, crashed) without ending it: FAILED, with the reason.
    False when the run had already ended."""
    state = run_state(uri, run_id)
    if state is None or state[0] != "RUNNING":
        return False
    client = client_for(uri)
    client.set_tag(run_id, "status", "failed")
    client.set_tag(run_id, "error", reason[:500])
    client.set_terminated(run_id, "FAILED")
    return True


def recorded_run(folder: Path) -> str | None:
    """The MLflow run id a point's folder records (run.json), None when it has none."""
    record = folder / "run.json"
    return json.loads(record.read_text()).get("run_id") if record.is_file() else None


def record_run(folder: Path, run_id: str, signature: str, experiment: str, name: str) -> None:
    """Record in the point's folder which MLflow run is the point's (the next attempt continues or skips it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id, "signature": signature, "experiment": experiment,
                                                 "name": name}))


def record_infeasible_point(uri: str, experiment: str, name: str, *, folder: Path, tags: dict[str, str],
                            params: dict[str, object], config_yaml: str, reason: str, memory_gb: float | None,
                            parent_run_id: str | None = None) -> str:
    """The whole run of a point that cannot run (its estimated memory does not fit), written at once: params, the
    resolved config as `config.yaml`, tags status=infeasible and `infeasible_reason`, the `mem_estimate_gb` metric,
    and the run record in the point's `folder`. `tags` must hold the point's `signature`. Returns the run id."""
    with PointRun(uri, experiment, name, tags, parent_run_id) as run:
        record_run(folder, run.run_id, tags["signature"], experiment, name)
        run.log_params(params)
        run.log_text("config.yaml", config_yaml)
        run.set_tags({"infeasible_reason": reason})
        run.log_metrics({"mem_estimate_gb": memory_gb})
        run.mark("infeasible")
    return run.run_id


@contextmanager
def _store_errors_quiet():
    """MLflow logs a store error with its whole traceback before raising it; where the caller reports the error in
    one line (ending a run that already failed), that log is left out."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]


class PointRun:
    """The MLflow run of one sweep point. As a context manager it ends the run FINISHED, or FAILED with the error
    as a tag when the body raises (the exception still propagates)."""

    def __init__(self, uri: str, experiment: str, name: str, tags: dict[str, str], parent_run_id: str | None = None,
                 resume_run_id: str | None = None):
        self.uri = uri
        self.client = client_for(uri)
        all_tags = {"role": "point", "point": name, "status": "running", "git_sha": git_sha(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if os.environ.get("SLURM_JOB_ID"):
            all_tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        self._logged_steps: dict[str, int] = {}   # metric -> last logged step (resumed runs)
        self._logged_keys: set[str] = set()
        self.resumed = False
        if resume_run_id:  # the same point again after a requeue or a relaunch: continue its run
            run = self.client.get_run(resume_run_id)
            self.run_id, self.resumed = resume_run_id, True
            self._logged_keys = {k for k in run.data.metrics   # metrics it already has at step 0
                                 if any(m.step == 0 for m in self.client.get_metric_history(self.run_id, k))}
            all_tags.pop("mlflow.parentRunId", None)     # it stays under the launch that started it
            all_tags["resumes"] = str(int(run.data.tags.get("resumes", "0")) + 1)
            self.client.update_run(self.run_id, status="RUNNING")
            for key in ("error",):
                if key in run.data.tags:
                    self.client.delete_tag(self.run_id, key)
            self.set_tags(all_tags)
        else:
            self.run_id = self.client.create_run(experiment_id(self.client, experiment, uri), run_name=name,
                                                 tags=all_tags).info.run_id
        self.status = "finished"
        self._kept_running = 0

    # -- logging
    def log_params(self, params: dict[str, object]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAM_BATCH])

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Metrics at `step` (None and non-finite values are left out); in a resumed run, step-0 metrics it already
        has are not logged twice."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
                 and not (self.resumed and step == 0 and k in self._logged_keys)]
        self._logged_keys |= {m.key for m in items}
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_history(self, name: str, history: list[tuple[int, float]]) -> None:
        """A metric's whole history in batched requests (per-step requests are slow with many writers). In a resumed
        run, steps it already has are not logged again."""
        if self.resumed:
            self.append_history(name, history)
            return
        self._write_history(name, history)

    def _write_history(self, name: str, history: list[tuple[int, float]]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, int(s)) for s, v in history if math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def append_history(self, name: str, history: list[tuple[int, float]]) -> None:
        """Log only the steps of `history` after the last one this run already has: flushing the history at every
        checkpoint, and again after a resume, leaves it without gaps or duplicated steps."""
        if name not in self._logged_steps:
            logged = self.client.get_metric_history(self.run_id, name)
            self._logged_steps[name] = max((m.step for m in logged), default=-1)
        last = self._logged_steps[name]
        new = [(s, v) for s, v in history if int(s) > last]
        if new:
            self._write_history(name, new)
            self._logged_steps[name] = max(int(s) for s, _ in new)

    def logged_steps(self, name: str) -> set[int]:
        """The steps at which this run already has metric `name` (an earlier attempt's, in a resumed run)."""
        return {m.step for m in self.client.get_metric_history(self.run_id, name)}

    def set_tags(self, tags: dict[str, str]) -> None:
        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, tags=items[i:i + PARAM_BATCH])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_text(self, name: str, text: str) -> None:
        """`text` as an artifact file called `name`."""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_text(text)
            self.log_artifact(Path(tmp) / name)

    def mark(self, status: str) -> None:
        """finished / infeasible: how the point ended when it did not raise."""
        self.status = status

    # -- lifecycle
    def __enter__(self) -> "PointRun":
        return self

    def keep_running(self, signum: int) -> None:
        """Leave the run RUNNING when the context exits: the job was stopped by signal `signum` to be requeued
        (SLURM timeout, preemption) and the next attempt resumes this run. Tagged at once: the requeue's SIGTERM may
        end the process before the context exits."""
        if not self._kept_running:
            self.client.set_tag(self.run_id, "stopped_by_signal", str(signum))
        self._kept_running = signum

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        """End the run by how the body ended. When the body failed and the store cannot record it (e.g. it sits on
        the disk that filled up), the run is left RUNNING, which the next launch continues; instead of a second
        traceback chained to the first, the exception carries `unrecorded_end`, a sentence saying so."""
        if self._kept_running:
            return False
        try:
            if exc is None:
                self.client.set_tag(self.run_id, "status", self.status)
                self.client.set_terminated(self.run_id, "FINISHED")
            elif isinstance(exc, KeyboardInterrupt):   # Ctrl-C: the next launch continues this run
                with _store_errors_quiet():
                    self.client.set_tag(self.run_id, "status", "interrupted")
                    self.client.set_terminated(self.run_id, "KILLED")
            else:
                with _store_errors_quiet():
                    self.client.set_tag(self.run_id, "status", "failed")
                    self.client.set_tag(self.run_id, "error", _one_line(exc))
                    self.client.set_terminated(self.run_id, "FAILED")
        except Exception as err:
            if exc is None:
                raise
            note = (f"its run {self.run_id} stays RUNNING, the store could not record its end "
                    f"({_one_line(err)[:160]}), and the next launch continues it")
            try:   # for the caller's one line (bar.orchestration.runner)
                exc.unrecorded_end = note   # type: ignore[union-attr]
            except AttributeError:
                print(f"warning: {note}", file=sys.stderr)
        return False


class NullRun:
    """What ranks other than 0 log through: nothing. Same interface as PointRun; `run_id` is rank 0's."""

    resumed = False

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.status = "finished"

    def log_params(self, params) -> None: ...
    def log_metrics(self, metrics, step: int = 0) -> None: ...
    def log_history(self, name, history) -> None: ...
    def append_history(self, name, history) -> None: ...
    def set_tags(self, tags) -> None: ...
    def log_artifact(self, path, folder=None) -> None: ...
    def log_text(self, name, text) -> None: ...

    def logged_steps(self, name) -> set[int]:
        return set()

    def mark(self, status: str) -> None:
        self.status = status
