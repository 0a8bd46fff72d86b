"""MLflow runs -> tidy pandas frames (one row per sweep point, one row per metric step).

Column layout of `load_runs`:
- identity: run_id, run_name, experiment, experiment_id, parent_run_id, start_time, end_time, mlflow_status,
  n_attempts (child runs that shared the point's signature; the kept one is the best, see `_dedupe`)
- tags (bare names): status, sweep, signature, profile, point, fid_extractor, rfid_extractor, git_sha, error, role,
  slurm_job_id, ...
  (`mlflow.*` system tags are dropped; run name and parent id are in the identity columns)
- params (dotted names as logged): tokenizer.kind, tokenizer.bits, head.name, model.patch_size, ... cast from MLflow's
  strings to int / float / bool / None where the text is one of those; anything else stays a string
- metrics (bare names, latest value): rfid, gfid, gfid_nocfg, total_bits, sample_img_per_s, peak_mem_gb, ...
A name present in more than one source keeps its bare name for the metric (or the tag over a param); the others get a
`param.` / `tag.` prefix.

The latent's size on the paper's axes (bits per token = log2 C, or channels) is a param, not a metric: `latent_size`
derives it for any frame of runs. `sweep_of` / `profile_of` name each run's sweep and profile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from bar import UserError
from bar.core.paths import default_tracking_uri, sqlite_path
from bar.core.vocabulary import (
    FAILED,
    FINISHED,
    INFEASIBLE,
    INTERRUPTED,
    LOSS_HISTORIES,
    RUNNING,
    TOKENIZER_BITS,
    TOKENIZER_CHANNELS,
)
from bar.orchestration.tracking import check_store

# Which attempt of a sweep point represents it when one point was launched several times.
_STATUS_RANK = {FINISHED: 0, INFEASIBLE: 1, RUNNING: 2, INTERRUPTED: 2, FAILED: 3}
_MLFLOW_STATUS = {"FINISHED": FINISHED, "FAILED": FAILED, "KILLED": FAILED, "RUNNING": RUNNING, "SCHEDULED": RUNNING}
HISTORY_KEYS = LOSS_HISTORIES
# The latent's size on the paper's axes: columns `latent_size` derives from the params (no run logs them).
BITS_PER_TOKEN = "bits_per_token"
CODEBOOK_LOG2 = "codebook_log2"
CHANNELS = "channels"
# Names the runs carry (CONVENTIONS.md, bar/orchestration) that bar.core.vocabulary does not spell: the tables and
# claims read them here, once.
DATA_NAME = "data.name"
DATA_RESOLUTION = "data.resolution"                 # param: image side in pixels
MEMORY_BUDGET_GB = "generator.memory_budget_gb"     # param: per-device budget; None: the device's own memory
INFEASIBLE_REASON = "infeasible_reason"             # tag of an infeasible point: the planner's estimate and budget
TOKENIZER_SIGNATURE = "tokenizer_signature"         # tag: hash of what the trained tokenizer depends on
FID_EXTRACTOR = "fid_extractor"                     # tag: the features FID was computed with (gFID's, once scored)
RFID_EXTRACTOR = "rfid_extractor"                   # tag: rFID's (older runs: fid_extractor names both)
GENERATOR_PARAMS = "generator_params"               # metric: the generator's parameter count
IDENTITY_COLUMNS = ["run_id", "run_name", "experiment", "experiment_id", "parent_run_id", "start_time", "end_time",
                    "mlflow_status", "n_attempts"]


class StoreError(RuntimeError):
    """The tracking store is missing, empty, or lacks what was asked for (message is one line for the user)."""


def _client(tracking_uri: str | None):
    uri = tracking_uri or default_tracking_uri()
    path = sqlite_path(uri)
    if path is not None and str(path) != ":memory:" and not path.exists():
        # Opening a missing sqlite file would silently create an empty store; say what is wrong instead.
        raise StoreError(f"no MLflow store at {path} (run a sweep first, or pass --tracking-uri / MLFLOW_TRACKING_URI)")
    try:
        check_store(uri)
    except UserError as err:
        raise StoreError(str(err)) from None
    return MlflowClient(tracking_uri=uri)


def cast_value(text):
    """MLflow param string -> int / float / bool / None, or the string itself."""
    if text is None or not isinstance(text, str):
        return text
    s = text.strip()
    if s in ("None", "null", "~", ""):
        return None
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    try:
        return int(s)
    except ValueError:
        pass
    try:
        value = float(s)
    except ValueError:
        return text
    return value


def _typed_column(values: pd.Series) -> pd.Series:
    """Give a column of cast values one dtype where they agree (ints with gaps -> Int64, int/float mix -> float)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return pd.Series([None] * len(values), index=values.index, dtype=object)
    if all(isinstance(v, bool) for v in present):
        return values.astype("boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return values.astype("Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(values.map(lambda v: float("nan") if v is None else v), errors="coerce").astype(float)
    return values.astype(object)


def _as_list(value) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def _experiments(client, names: list[str] | None):
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=50000)
    if names is None:
        return experiments
    return [e for e in experiments if e.name in names]


def _search_all(client, experiment_ids: list[str], filter_string: str):
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _status(tags: dict, mlflow_status: str) -> str:
    derived = _MLFLOW_STATUS.get(mlflow_status, mlflow_status.lower())
    status = tags.get("status")
    if not status:
        return derived
    if status == RUNNING and derived == FAILED:  # the process died before it could tag the run
        return FAILED
    return status


def _run_record(run, experiment_names: dict[str, str]) -> tuple[dict, dict, dict, dict]:
    info, data = run.info, run.data
    tags = {k: v for k, v in data.tags.items() if not k.startswith("mlflow.")}
    tags["status"] = _status(tags, info.status)
    identity = {
        "run_id": info.run_id,
        "run_name": info.run_name or data.tags.get("mlflow.runName"),
        "experiment": experiment_names.get(info.experiment_id, info.experiment_id),
        "experiment_id": info.experiment_id,
        "parent_run_id": data.tags.get("mlflow.parentRunId"),
        "start_time": info.start_time,
        "end_time": info.end_time,
        "mlflow_status": info.status,
    }
    params = {k: cast_value(v) for k, v in data.params.items()}
    return identity, tags, params, dict(data.metrics)


def _frame(records: list[tuple[dict, dict, dict, dict]]) -> pd.DataFrame:
    identity_keys = set(IDENTITY_COLUMNS)
    metric_keys = sorted({k for r in records for k in r[3]})
    tag_keys = sorted({k for r in records for k in r[1]})
    param_keys = sorted({k for r in records for k in r[2]})
    taken = identity_keys | set(metric_keys)
    tag_names = {k: (f"tag.{k}" if k in taken else k) for k in tag_keys}
    taken |= set(tag_names.values())
    param_names = {k: (f"param.{k}" if k in taken else k) for k in param_keys}

    rows = []
    for identity, tags, params, metrics in records:
        row = dict(identity)
        row.update({tag_names[k]: v for k, v in tags.items()})
        row.update({param_names[k]: v for k, v in params.items()})
        row.update(metrics)
        rows.append(row)
    columns = ([c for c in IDENTITY_COLUMNS if c != "n_attempts"] + [tag_names[k] for k in tag_keys]
               + [param_names[k] for k in param_keys] + metric_keys)
    df = pd.DataFrame(rows, columns=columns)
    for key in param_keys:  # from the records, before pandas turns ints with gaps into floats
        values = pd.Series([r[2].get(key) for r in records], index=df.index, dtype=object)
        df[param_names[key]] = _typed_column(values)
    for key in metric_keys:
        df[key] = pd.to_numeric(df[key], errors="coerce").astype(float)
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
    return df.copy()   # consolidated: the column-by-column typing above left a frame pandas warns is fragmented


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one run per sweep point: (experiment, signature) -> finished over infeasible over running over failed, then
    the latest. Runs without a signature are their own point."""
    if df.empty:
        df["n_attempts"] = pd.Series(dtype="int64")
        return df
    sig = df["signature"] if "signature" in df.columns else pd.Series([None] * len(df), index=df.index)
    key = df["experiment_id"].astype(str) + "/" + sig.where(sig.notna(), "run:" + df["run_id"]).astype(str)
    ranked = df.assign(_key=key, _rank=df["status"].map(_STATUS_RANK).fillna(9),
                       _start=df["start_time"].astype("int64"))
    ranked["n_attempts"] = ranked.groupby("_key")["run_id"].transform("count").astype("int64")
    ranked = ranked.sort_values(["_key", "_rank", "_start", "run_id"], ascending=[True, True, False, True])
    return ranked.drop_duplicates("_key", keep="first").drop(columns=["_key", "_rank", "_start"])


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("sweep", "experiment", "run_name", "start_time", "run_id") if c in df.columns]
    return df.sort_values(keys, kind="mergesort", na_position="last").reset_index(drop=True)


def _point_records(client, names: list[str] | None) -> list[tuple[dict, dict, dict, dict]]:
    """The sweep points (runs tagged role=point) of the named experiments (None: all); StoreError for a name the
    store lacks."""
    experiments = _experiments(client, names)
    if names is not None:
        missing = sorted(set(names) - {e.name for e in experiments})
        if missing:
            known = sorted(e.name for e in _experiments(client, None))
            raise StoreError(f"unknown sweep/experiment {', '.join(missing)} (the store has: "
                             f"{', '.join(known) if known else 'no experiments'})")
    if not experiments:
        return []
    exp_names = {e.experiment_id: e.name for e in experiments}
    return [_run_record(r, exp_names) for r in _search_all(client, list(exp_names), "tags.role = 'point'")]


def _selected(df: pd.DataFrame, sweeps: list | None, exps: list | None, profile, run_ids, statuses) -> pd.DataFrame:
    """The rows of `df` that `load_runs`'s filters keep."""
    if sweeps is not None and "sweep" in df.columns:
        # a run may carry a sweep tag that differs from its experiment (e.g. a sweep logged into `default`)
        df = df[df["sweep"].isin(sweeps) | df["sweep"].isna() & df["experiment"].isin(sweeps)
                | df["experiment"].isin(exps or [])]
    if profile is not None:
        prof = column(df, "profile").astype(object)
        prof = prof.where(prof.notna(), column(df, "profile.name").astype(object))
        df = df[prof.isin(_as_list(profile))]
    if run_ids is not None:
        df = df[df["run_id"].isin(list(run_ids))]
    if statuses is not None:
        df = df[df["status"].isin(list(statuses))]
    return df


def load_runs(tracking_uri: str | None = None, sweep: str | Sequence[str] | None = None,
              experiment: str | Sequence[str] | None = None, profile: str | Sequence[str] | None = None,
              run_ids: Iterable[str] | None = None, statuses: Iterable[str] | None = None,
              dedupe: bool = True) -> pd.DataFrame:
    """One tidy row per sweep point (child runs tagged role=point), sorted by sweep, run name, start time.

    sweep: sweep name(s); selects the experiment(s) of that name and the runs tagged with it.
    experiment: experiment name(s) (a run launched without a sweep lives in `default`).
    profile: keep runs whose `profile` tag (else `profile.name` param) is one of these.
    run_ids: keep only these runs. statuses: keep only these statuses (default: all, incl. failed/infeasible/running).
    dedupe: collapse repeated attempts of one point (same experiment and signature) to one row.
    Raises StoreError when the store is missing or a named sweep/experiment does not exist; an existing store with
    nothing matching gives an empty frame.
    """
    client = _client(tracking_uri)
    sweeps, exps = _as_list(sweep), _as_list(experiment)
    names = sorted(set(sweeps or []) | set(exps or [])) if sweeps is not None or exps is not None else None
    df = _frame(_point_records(client, names))
    if "status" not in df.columns:
        df["status"] = pd.Series(dtype=object)
    df = _selected(df, sweeps, exps, profile, run_ids, statuses)
    df = _sort(_dedupe(df) if dedupe else df.assign(n_attempts=1))
    return df.dropna(axis=1, how="all") if not df.empty else df


def load_metric_history(tracking_uri: str | None = None, sweep: str | Sequence[str] | None = None,
                        experiment: str | Sequence[str] | None = None, profile: str | Sequence[str] | None = None,
                        run_ids: Iterable[str] | None = None, keys: Sequence[str] = HISTORY_KEYS,
                        runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long frame of metric histories: run_id, run_name, sweep, profile, point, status, key, step, value, timestamp.

    Runs are chosen as in `load_runs` (or passed in as a frame from it); keys are the metrics to fetch
    (default: train_loss, tokenizer_loss). Sorted by sweep, run name, key, step.
    """
    if runs is None:
        runs = load_runs(tracking_uri, sweep=sweep, experiment=experiment, profile=profile, run_ids=run_ids)
    columns = ["run_id", "run_name", "sweep", "profile", "point", "status", "key", "step", "value", "timestamp"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    client = _client(tracking_uri)
    rows = []
    for _, run in runs.iterrows():
        for key in keys:
            for m in client.get_metric_history(run["run_id"], key):
                rows.append({"run_id": run["run_id"], "run_name": run.get("run_name"),
                             "sweep": run.get("sweep", run.get("experiment")), "profile": run.get("profile"),
                             "point": run.get("point"), "status": run.get("status"), "key": key,
                             "step": int(m.step), "value": float(m.value), "timestamp": int(m.timestamp)})
    hist = pd.DataFrame(rows, columns=columns)
    if hist.empty:
        return hist
    hist["step"] = hist["step"].astype("int64")
    hist["value"] = hist["value"].astype(float)
    hist = hist.sort_values(["sweep", "run_name", "run_id", "key", "step", "timestamp"], kind="mergesort",
                            na_position="last")
    # a resumed run may log a step twice: keep the latest value
    hist = hist.drop_duplicates(["run_id", "key", "step"], keep="last")
    return hist.reset_index(drop=True)


def latest_parent_run(sweep: str, tracking_uri: str | None = None) -> str | None:
    """Run id of the sweep's most recent parent run (tag role=parent in the experiment of that name), or None."""
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'parent'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


# ------------------------------------------------------------------------------------------- frame helpers
def column(df: pd.DataFrame, name: str) -> pd.Series:
    """Column or an all-missing column of the frame's length."""
    if name in df.columns:
        return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def numeric(df: pd.DataFrame, *names: str) -> pd.Series:
    """First non-missing numeric value across the named columns, row by row (float, NaN where none)."""
    out = pd.Series(np.nan, index=df.index, dtype=float)
    for name in names:
        if name in df.columns:
            out = out.fillna(pd.to_numeric(df[name], errors="coerce").astype(float))
    return out


def sweep_of(df: pd.DataFrame) -> pd.Series:
    """Each run's sweep: its `sweep` tag, else its experiment, else 'default' (str)."""
    sweep = column(df, "sweep").astype(object)
    return sweep.where(sweep.notna(), column(df, "experiment").astype(object)).fillna("default").astype(str)


def profile_of(df: pd.DataFrame) -> pd.Series:
    """Each run's profile: its `profile` tag, else its `profile.name` param, else 'unknown' (str)."""
    prof = column(df, "profile").astype(object)
    prof = prof.where(prof.notna(), column(df, "profile.name").astype(object))
    return prof.where(prof.notna(), "unknown").astype(str)


def latent_size(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's latent size on the paper's axes, read from its params alone (`tokenizer.bits`,
    `tokenizer.channels`; the one place analysis reads them): columns bits_per_token and codebook_log2 (the same
    number: binary FSQ has C = 2^bits codes) and channels; float, NaN where the run's tokenizer has none; indexed like
    `runs`. Older stores also logged metrics of these names, with the same values; they are not read."""
    bits = numeric(runs, TOKENIZER_BITS)
    return pd.DataFrame({BITS_PER_TOKEN: bits, CODEBOOK_LOG2: bits.copy(), CHANNELS: numeric(runs, TOKENIZER_CHANNELS)},
                        index=runs.index)


def with_latent_size(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with the columns of `latent_size` (replacing the metrics of the same names that older stores hold)."""
    return runs.assign(**dict(latent_size(runs).items()))
