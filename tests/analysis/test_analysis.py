"""Analysis package: MLflow store -> frame -> figures, tables, REPORT.md, CLI.

A small sqlite MLflow store is built once per module with the mlflow client, following CONVENTIONS.md: three sweeps
(bits_vs_rfid, codebook_scaling, patch_size), parent + child runs, finished / failed / infeasible / running points,
a repeated attempt of one point, metric histories and artifacts; with `convergence=True` a fourth sweep, convergence,
whose runs log gfid / gfid_nocfg / train_tflop histories at optimizer steps and rfid at tokenizer steps; with
`legacy_latent_metrics=True` the points that reached the tokenizer also log bits_per_token / codebook_log2 / channels
as metrics, as stores written before these were params only did. Claims are also checked on frames edited in memory.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analysis import canvas, claims, convergence, figures, report, tables  # noqa: E402
from analysis.runs import HISTORY_KEYS, StoreError, cast_value, latent_size, load_metric_history, load_runs  # noqa: E402
from bar.core import vocabulary  # noqa: E402

ALL_KEYS = (*HISTORY_KEYS, *convergence.CONVERGENCE_KEYS)

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, ms; fixed so that the store is the same on every build
GRID = 16  # tokens per image (4x4 grid)


# ------------------------------------------------------------------------------------------------ store builder

def _child(client, exp_id, parent_id, name, *, sweep, profile, status, params, metrics, t, signature=None,
           error=None, history=None, artifacts=None, tmp=None):
    from mlflow.entities import Metric, Param, RunTag

    tags = {"role": "point", "sweep": sweep, "profile": profile, "status": status, "point": name,
            "signature": signature or hashlib.sha1(f"{sweep}/{name}/{profile}".encode()).hexdigest()[:12],
            "git_sha": "0" * 40, "fid_extractor": "inception-test", "mlflow.parentRunId": parent_id}
    if error:
        tags["error"] = error
    run = client.create_run(exp_id, start_time=t, tags=tags, run_name=name)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, float(v), t + 1000, 0) for k, v in metrics.items()],
                     tags=[RunTag("mlflow.runName", name)])
    for key, values in (history or {}).items():  # values, or (step, value) pairs
        points = [v if isinstance(v, tuple) else (i, v) for i, v in enumerate(values)]
        client.log_batch(rid, metrics=[Metric(key, float(v), t + 10 * i, step) for i, (step, v) in enumerate(points)])
    for rel, content in (artifacts or {}).items():
        path = tmp / rel
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        client.log_artifact(rid, str(path))
    mlflow_status = {"finished": "FINISHED", "infeasible": "FINISHED", "failed": "FAILED"}.get(status)
    if mlflow_status:
        client.set_terminated(rid, mlflow_status, end_time=t + 60_000)
    return rid


def _params(kind, size, head="mbm", patch=1, preset="tiny", profile="smoke"):
    p = {"tokenizer.kind": kind, "head.name": head, "model.preset": preset, "model.patch_size": patch,
         "profile.name": profile, "data.name": "synthetic", "train.lr": 4e-4, "train.compile": False,
         "sample.allocation": "[2, 2, 5, 7]", "launcher.partition": None}
    p["tokenizer.bits" if kind == "fsq" else "tokenizer.channels"] = size
    return p


def _png_bytes() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


# convergence sweep: gFID at optimizer steps per (head, kind, size); MBM 16b reaches the threshold (20, the diffusion
# run's final gFID) at step 400 with 4 TFLOP, the diffusion run only at step 800 with 16 TFLOP.
CONV_STEPS = (100, 200, 400, 800)
CONV_CURVES = {("mbm", "fsq", 16): [60.0, 30.0, 20.0, 15.0], ("mbm", "fsq", 8): [70.0, 40.0, 25.0, 18.0],
               ("bitwise", "fsq", 16): [80.0, 50.0, 35.0, 28.0], ("softmax", "fsq", 8): [70.0, 45.0, 30.0, 25.0],
               ("diffusion", "ae", 1): [90.0, 60.0, 35.0, 20.0]}
CONV_TFLOP_PER_STEP = {"mbm": 0.01, "bitwise": 0.01, "softmax": 0.012, "diffusion": 0.02}


def _legacy(enabled: bool, kind: str, size: int) -> dict:
    """The latent-size metrics older stores logged next to the params (bits per token and log2 C, or channels)."""
    if not enabled:
        return {}
    return {"bits_per_token": size, "codebook_log2": size} if kind == "fsq" else {"channels": size}


def build_store(root: Path, convergence: bool = False, legacy_latent_metrics: bool = False) -> str:
    """Create the test store under root; return its tracking URI."""
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    tmp = root / "files"
    tmp.mkdir(exist_ok=True)
    t = T0
    legacy = lambda kind, size: _legacy(legacy_latent_metrics, kind, size)  # noqa: E731

    def experiment(name):
        return client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())

    def parent(exp_id, stamp, finished=True):
        run = client.create_run(exp_id, start_time=stamp, tags={"role": "parent", "sweep": "x"},
                                run_name=f"launch-{stamp}")
        if finished:
            client.set_terminated(run.info.run_id, "FINISHED", end_time=stamp + 100_000)
        return run.info.run_id

    # ---- bits_vs_rfid: discrete (fsq) vs continuous (ae); quality improves with bits
    exp = experiment("bits_vs_rfid")
    parent(exp, t - 50_000)  # an older launch
    par = parent(exp, t)
    grid = {"config.yaml": "tokenizer:\n  kind: fsq\n", "recon_grid.png": _png_bytes()}
    for i, bits in enumerate((4, 8, 16)):
        _child(client, exp, par, f"fsq-{bits}b", sweep="bits_vs_rfid", profile="smoke", status="finished",
               params=_params("fsq", bits), t=t + 1000 * i, tmp=tmp, artifacts=grid if bits == 16 else None,
               metrics={"rfid": 40.0 / bits, "gfid": 80.0 / bits, "total_bits": GRID * bits,
                        "sample_img_per_s": 10.0, **legacy("fsq", bits)},
               history={"train_loss": [3.0, 2.0, 1.5, 1.2], "tokenizer_loss": [1.0, 0.5, 0.3]})
    # a failed earlier attempt of fsq-16b (same signature) and a failed 32-bit point
    sig16 = hashlib.sha1(b"bits_vs_rfid/fsq-16b/smoke").hexdigest()[:12]
    _child(client, exp, par, "fsq-16b", sweep="bits_vs_rfid", profile="smoke", status="failed", signature=sig16,
           params=_params("fsq", 16), metrics={}, t=t - 10_000, error="killed by the scheduler")
    _child(client, exp, par, "fsq-32b", sweep="bits_vs_rfid", profile="smoke", status="failed",
           params=_params("fsq", 32), metrics={"total_bits": GRID * 32, **legacy("fsq", 32)}, t=t + 5000,
           error="RuntimeError: CUDA out of memory")
    for i, ch in enumerate((1, 2)):  # continuous: 16 bits per channel -> 256 and 512 total bits
        _child(client, exp, par, f"ae-{ch}c", sweep="bits_vs_rfid", profile="smoke", status="finished",
               params=_params("ae", ch, head="diffusion"), t=t + 6000 + 1000 * i,
               metrics={"rfid": 3.0 / ch, "gfid": 6.0 / ch, "total_bits": GRID * 16 * ch,
                        "sample_img_per_s": 1.0, **legacy("ae", ch)},
               history={"train_loss": [1.0, 0.9]})
    _child(client, exp, par, "ae-4c", sweep="bits_vs_rfid", profile="smoke", status="running",
           params=_params("ae", 4, head="diffusion"), metrics={}, t=t + 9000)

    # ---- codebook_scaling: mbm best everywhere; softmax infeasible at 24 bits
    exp = experiment("codebook_scaling")
    par = parent(exp, t + 100_000)
    quality = {"mbm": 10.0, "softmax": 14.0, "bitwise": 18.0}
    for j, head in enumerate(("mbm", "softmax", "bitwise")):
        for i, bits in enumerate((8, 16, 24)):
            name = f"{head}-{bits}b"
            start = t + 100_000 + 1000 * (3 * j + i)
            if head == "softmax" and bits == 24:
                _child(client, exp, par, name, sweep="codebook_scaling", profile="smoke", status="infeasible",
                       params=_params("fsq", bits, head=head), t=start,
                       metrics={"mem_estimate_gb": 2.0 ** (bits - 14)},
                       error="softmax over 2^24 codes needs 1024 GB")
                continue
            mem = 1.0 + 0.01 * bits if head != "softmax" else 2.0 ** (bits - 14)
            _child(client, exp, par, name, sweep="codebook_scaling", profile="smoke", status="finished",
                   params=_params("fsq", bits, head=head), t=start,
                   metrics={"gfid": quality[head] - bits / 8, "gfid_nocfg": quality[head] - bits / 8 + 5,
                            "total_bits": GRID * bits, "peak_mem_gb": mem, "mem_estimate_gb": mem * 1.1,
                            "sample_img_per_s": 20.0 - j, **legacy("fsq", bits)},
                   history={"train_loss": [2.0, 1.0]})

    # ---- patch_size (profile cpu): bigger groups sample faster; no parent run for this sweep
    exp = experiment("patch_size")
    for i, patch in enumerate((1, 2, 4)):
        _child(client, exp, "0" * 32, f"mbm-p{patch}", sweep="patch_size", profile="cpu", status="finished",
               params=_params("fsq", 16, patch=patch, preset="bar_b4" if patch == 4 else "tiny", profile="cpu"),
               t=t + 200_000 + 1000 * i,
               metrics={"gfid": 5.0 + patch, "sample_img_per_s": 10.0 * patch, "total_bits": GRID * 16,
                        **legacy("fsq", 16)})
    if convergence:
        add_convergence_sweep(client, experiment, parent, t + 300_000, legacy)
    return uri


def add_convergence_sweep(client, experiment, parent, t, legacy=lambda kind, size: {}):
    exp = experiment("convergence")
    par = parent(exp, t)
    for i, ((head, kind, size), curve) in enumerate(CONV_CURVES.items()):
        name = f"{head}-{size}{'b' if kind == 'fsq' else 'c'}"
        history = {"gfid": list(zip(CONV_STEPS, curve)),
                   "gfid_nocfg": list(zip(CONV_STEPS, [g + 10 for g in curve])),
                   "train_tflop": [(s, CONV_TFLOP_PER_STEP[head] * s) for s in CONV_STEPS],
                   "rfid": list(zip((50, 100, 150), (12.0, 8.0, 6.0) if kind == "fsq" else (9.0, 5.0, 3.0))),
                   "train_loss": [2.0, 1.5, 1.2]}
        # the final gFID also logged at step 0 after training (an end-of-run summary, not an evaluation at step 0)
        _child(client, exp, par, name, sweep="convergence", profile="tiny", status="finished",
               params=_params(kind, size, head=head, profile="tiny"), t=t + 1000 * i,
               metrics={"gfid": curve[-1], "rfid": 6.0, "total_bits": GRID * (size if kind == "fsq" else 16 * size),
                        **legacy(kind, size)},
               history=history)
    _child(client, exp, par, "mbm-32b", sweep="convergence", profile="tiny", status="running",
           params=_params("fsq", 32, profile="tiny"), t=t + 9000, metrics={})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def runs(store):
    return load_runs(store)


# ------------------------------------------------------------------------------------------------------- loader

def test_cast_value():
    assert cast_value("16") == 16 and isinstance(cast_value("16"), int)
    assert cast_value("0.0004") == pytest.approx(4e-4)
    assert cast_value("True") is True and cast_value("false") is False
    assert cast_value("None") is None
    assert cast_value("fsq") == "fsq" and cast_value("[2, 2, 5, 7]") == "[2, 2, 5, 7]"


def test_load_runs_types_and_statuses(runs):
    assert list(runs["run_id"]) == list(dict.fromkeys(runs["run_id"]))  # one row per point
    # 3 + fsq-32b + 2 + running ae-4c = 7; 8 + infeasible = 9; 3
    assert len(runs) == 19
    assert runs["tokenizer.bits"].dtype == "Int64"
    assert runs["model.patch_size"].dtype == "Int64"
    assert runs["train.lr"].dtype == float and runs["train.lr"].iloc[0] == pytest.approx(4e-4)
    assert runs["train.compile"].dtype == "boolean" and not runs["train.compile"].any()
    assert "launcher.partition" not in runs.columns  # None everywhere -> dropped as all-missing
    assert runs["sample.allocation"].iloc[0] == "[2, 2, 5, 7]"
    for col in ("rfid", "gfid", "total_bits", "peak_mem_gb"):
        assert runs[col].dtype == float
    assert set(runs["status"]) == {"finished", "failed", "infeasible", "running"}
    assert {"sweep", "signature", "profile", "point", "fid_extractor", "git_sha", "parent_run_id"} <= set(runs.columns)
    assert str(runs["start_time"].dtype).startswith("datetime64")
    fsq16 = runs[(runs["run_name"] == "fsq-16b")].iloc[0]
    assert fsq16["status"] == "finished" and fsq16["n_attempts"] == 2  # the failed earlier attempt collapsed
    assert fsq16["rfid"] == pytest.approx(2.5) and fsq16["tokenizer.bits"] == 16
    inf = runs[runs["status"] == "infeasible"].iloc[0]
    assert inf["run_name"] == "softmax-24b" and pd.isna(inf["gfid"]) and inf["mem_estimate_gb"] == 1024
    assert runs[runs["run_name"] == "fsq-32b"].iloc[0]["error"].endswith("out of memory")
    # sorted deterministically: by sweep, then run name
    assert list(runs["sweep"]) == sorted(runs["sweep"])


def test_load_runs_filters(store, runs):
    cs = load_runs(store, sweep="codebook_scaling")
    assert len(cs) == 9 and set(cs["sweep"]) == {"codebook_scaling"}
    both = load_runs(store, sweep=["codebook_scaling", "patch_size"])
    assert len(both) == 12
    assert set(load_runs(store, profile="cpu")["sweep"]) == {"patch_size"}
    assert len(load_runs(store, experiment="bits_vs_rfid")) == 7
    some = list(runs["run_id"][:2])
    assert sorted(load_runs(store, run_ids=some)["run_id"]) == sorted(some)
    assert set(load_runs(store, statuses=["finished"])["status"]) == {"finished"}
    assert len(load_runs(store, sweep="bits_vs_rfid", dedupe=False)) == 8
    with pytest.raises(StoreError, match="unknown sweep"):
        load_runs(store, sweep="nope")


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no MLflow store"):
        load_runs(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def test_default_uri_uses_env(monkeypatch, store, tmp_path):
    from analysis.runs import default_tracking_uri
    from bar import PROJECT_ROOT

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BAR_OUTPUTS", raising=False)
    assert default_tracking_uri() == f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"
    # BAR_OUTPUTS moves the store for analysis/ exactly as for run.py (one function decides: bar.core.paths)
    monkeypatch.setenv("BAR_OUTPUTS", str(tmp_path / "elsewhere"))
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    from bar.orchestration.config import compose
    assert compose([]).tracking.uri == default_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert len(load_runs(sweep="patch_size")) == 3


def test_metric_history(store, runs):
    hist = load_metric_history(store, sweep="bits_vs_rfid")
    assert set(hist["key"]) == {"train_loss", "tokenizer_loss"}
    one = hist[(hist["run_name"] == "fsq-8b") & (hist["key"] == "train_loss")]
    assert list(one["step"]) == [0, 1, 2, 3] and list(one["value"]) == [3.0, 2.0, 1.5, 1.2]
    assert hist["step"].dtype == "int64"
    again = load_metric_history(store, runs=runs[runs["sweep"] == "bits_vs_rfid"])
    pd.testing.assert_frame_equal(hist, again)


# ------------------------------------------------------------------------------------------- bits under one name

def test_latent_size_reads_the_params_alone():
    df = pd.DataFrame({"tokenizer.kind": ["fsq", "ae", "fsq"], "tokenizer.bits": pd.array([16, None, None], "Int64"),
                       "tokenizer.channels": pd.array([None, 4, None], "Int64"),
                       "bits_per_token": [99.0, None, 7.0], "channels": [None, 99.0, None]},  # stale old metrics
                      index=[10, 11, 12])
    size = latent_size(df)
    assert list(size.index) == [10, 11, 12] and list(size.columns) == ["bits_per_token", "codebook_log2", "channels"]
    assert size.loc[10, "bits_per_token"] == size.loc[10, "codebook_log2"] == 16 and pd.isna(size.loc[10, "channels"])
    assert size.loc[11, "channels"] == 4 and pd.isna(size.loc[11, "bits_per_token"])
    assert size.loc[12].isna().all()  # a metric without the param is not read
    assert latent_size(pd.DataFrame({"run_id": ["a"]})).isna().all().all()


def test_the_tokenizer_stage_logs_no_second_name_for_the_latent_size():
    from types import SimpleNamespace

    from bar.orchestration.stages.tokenizer import latent_metrics

    assert latent_metrics(SimpleNamespace(total_bits=256, grid=4)) == {"total_bits": 256, "grid_tokens": 16}


def _analysis_of(runs: pd.DataFrame, history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables, claims and figure CSV rows that depend on the latent's size, run ids replaced by run names and rows
    ordered by sweep and run (each store has its own run ids, which break ties in the figures' row order)."""
    names = dict(zip(runs["run_id"], runs["run_name"]))
    out = {"measured_points": tables.measured_points_table(runs), "main_results": tables.main_results_table(runs),
           "claims": claims.claims_frame(claims.evaluate_claims(runs, history=history)),
           "convergence": convergence.convergence_frame(history, runs),
           "codebook_scaling": figures._codebook_scaling_table(figures.codebook_scaling_frame(runs)),
           "head_memory": figures._head_memory_table(figures.head_memory_frame(runs)),
           "bits_vs_fid": figures._bits_vs_fid_table(figures.bits_vs_fid_frame(runs))}
    for key, frame in out.items():
        if "run_id" in frame.columns:
            frame = frame.assign(run_id=frame["run_id"].map(names))
            order = [c for c in ("sweep", "run_id", "quantity_key", "step") if c in frame.columns]
            out[key] = frame.sort_values(order, kind="mergesort").reset_index(drop=True)
    return out


def test_stores_with_and_without_the_old_latent_metrics_analyse_alike(tmp_path_factory, conv_store):
    legacy_store = build_store(tmp_path_factory.mktemp("legacy"), convergence=True, legacy_latent_metrics=True)
    legacy_runs, runs = load_runs(legacy_store), load_runs(conv_store)
    assert "bits_per_token" in legacy_runs.columns and "bits_per_token" not in runs.columns
    legacy = _analysis_of(legacy_runs, load_metric_history(legacy_store, runs=legacy_runs, keys=ALL_KEYS))
    new = _analysis_of(runs, load_metric_history(conv_store, runs=runs, keys=ALL_KEYS))
    for key in new:
        pd.testing.assert_frame_equal(legacy[key], new[key], check_dtype=False, obj=key)
    points = new["measured_points"].set_index("run_name")
    assert points.loc["softmax-24b", "codebook_log2"] == 24  # infeasible: its size from the param
    assert points.loc["ae-1c", "bits_per_token"] != points.loc["ae-1c", "bits_per_token"]  # NaN for a continuous one


# ------------------------------------------------------------------------------------------------- one vocabulary

def test_no_analysis_module_spells_a_vocabulary_name_again():
    import ast

    names = {n for n in dir(vocabulary) if n.isupper()}
    again = []
    for path in sorted((ROOT / "analysis").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            again += [f"{path.name}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in names]
    assert not again, again


def test_head_labels_have_one_spelling_and_tables_use_its_short_form(runs):
    assert vocabulary.HEAD_LABEL["mbm"] == "MBM (BAR)" and vocabulary.HEAD_SHORT_LABEL["mbm"] == "MBM"
    assert vocabulary.HEAD_SHORT_LABEL["bitwise"] == vocabulary.HEAD_LABEL["bitwise"] == "per-bit"
    plotted = figures.codebook_scaling_frame(runs).plotted
    assert set(plotted["head"]) == {vocabulary.HEAD_LABEL[h] for h in vocabulary.DISCRETE_HEADS}
    measured = pd.concat(tables.profile_tables(runs).values())
    assert "tiny MBM fsq-16b" in set(measured["model"])
    assert not measured["model"].str.contains("(BAR)", regex=False).any()
    assert "MBM (BAR)" not in "".join(c.evidence for c in claims.evaluate_claims(runs))


# ------------------------------------------------------------------------------------------------------ figures

def _files(result, formats=("png", "pdf")):
    return {p.suffix.lstrip(".") for p in result.files} == set(formats) | {"txt", "csv"}


def test_bits_vs_fid(runs, tmp_path):
    res = figures.bits_vs_fid(runs, tmp_path)
    assert res and _files(res)
    assert all(p.exists() and p.stat().st_size > 0 for p in res.files)
    csv = pd.read_csv(tmp_path / "bits_vs_fid.csv")
    # the discrete gFID series uses the MBM head only (softmax / per-bit points belong to codebook_scaling)
    gfid_ok = runs["gfid"].notna() & ((runs["tokenizer.kind"] == "ae") | (runs["head.name"] == "mbm"))
    expect = runs[runs["tokenizer.kind"].isin(["fsq", "ae"]) & runs["total_bits"].notna()
                  & (runs["rfid"].notna() | gfid_ok)]
    assert set(csv["run_id"]) == set(expect["run_id"])
    merged = csv.merge(runs[["run_id", "rfid", "total_bits"]], on="run_id", suffixes=("", "_frame"))
    assert (merged["rfid"].fillna(-1) == merged["rfid_frame"].fillna(-1)).all()
    assert (merged["total_bits"] == merged["total_bits_frame"]).all()
    assert set(csv["series"]) == {"discrete (BAR-FSQ)", "continuous (AE)"}
    caption = (tmp_path / "bits_vs_fid.txt").read_text()
    assert "fsq-32b (failed" in caption and "ae-4c (running)" in caption


def test_codebook_scaling_marks_infeasible(runs, tmp_path):
    res = figures.codebook_scaling(runs, tmp_path, formats="png,svg")
    assert res and _files(res, ("png", "svg"))
    csv = pd.read_csv(tmp_path / "codebook_scaling.csv")
    assert "softmax-24b" in set(csv["run_name"])  # kept, not dropped
    assert csv.loc[csv["run_name"] == "softmax-24b", "status"].item() == "infeasible"
    cs = runs[runs["head.name"].isin(["mbm", "softmax", "bitwise"]) & ((runs["status"] == "infeasible")
                                                                      | runs["gfid"].notna())]
    assert set(csv["run_id"]) == set(cs["run_id"])
    merged = csv.merge(runs[["run_id", "gfid"]], on="run_id", suffixes=("", "_frame"))
    assert (merged["gfid"].fillna(-1) == merged["gfid_frame"].fillna(-1)).all()
    assert "softmax at log2 C = 24" in res.caption
    # infeasible points are told by a legend entry per head, not by text on the axes
    legend = [t.get_text() for t in res.figure.legends[0].get_texts()]
    assert "softmax: infeasible at log2 C = 24" in legend
    assert all(not ax.texts for ax in res.figure.axes)


def test_quality_vs_cost_and_memory(runs, tmp_path):
    res = figures.quality_vs_cost(runs, tmp_path, reported=tables.load_reported())
    assert res and "p=4" in res.caption and "Grey stars" in res.caption
    csv = pd.read_csv(tmp_path / "quality_vs_cost.csv")
    assert len(csv) == int((runs["gfid"].notna() & runs["sample_img_per_s"].notna()).sum())
    mem = figures.head_memory(runs, tmp_path, formats=["png"])
    assert mem
    mcsv = pd.read_csv(tmp_path / "head_memory.csv")
    est = mcsv[(mcsv["run_name"] == "softmax-24b") & (mcsv["quantity_key"] == "mem_estimate_gb")]
    assert est["memory_gb"].item() == 1024  # infeasible point present through its estimate


def test_training_curves(store, tmp_path):
    hist = load_metric_history(store)
    res = figures.training_curves(hist, tmp_path)
    assert [r.name for r in res] == ["training_curves_bits_vs_rfid", "training_curves_codebook_scaling"]
    assert all(res)
    csv = pd.read_csv(tmp_path / "training_curves_bits_vs_rfid.csv")
    assert len(csv) == len(hist[hist["sweep"] == "bits_vs_rfid"])
    assert "Not logged: tokenizer_loss" in res[1].caption
    thin = figures.training_curves(hist, tmp_path / "thin", max_points=2, sweep="bits_vs_rfid")[0]
    tcsv = pd.read_csv(tmp_path / "thin" / "training_curves_bits_vs_rfid.csv")
    assert thin and tcsv.groupby(["run_id", "key"]).size().max() == 2


def test_figures_skip_without_data(tmp_path):
    empty = pd.DataFrame({"run_id": ["a"], "run_name": ["x"], "status": ["finished"]})
    for fn in (figures.bits_vs_fid, figures.codebook_scaling, figures.quality_vs_cost, figures.head_memory):
        res = fn(empty, tmp_path)
        assert not res and res.skipped
    assert not figures.convergence(empty, None, tmp_path)
    assert not figures.training_curves(pd.DataFrame(), tmp_path)[0]
    assert list(tmp_path.iterdir()) == []


def test_partial_sweep_draws_what_exists(runs, tmp_path):
    partial = runs[(runs["sweep"] == "codebook_scaling") & (runs["head.name"] == "mbm")]
    res = figures.codebook_scaling(partial, tmp_path)
    assert res and "No infeasible points" in res.caption
    half = runs[runs["run_name"].isin(["fsq-8b", "ae-4c"])]
    res = figures.bits_vs_fid(half, tmp_path)
    assert res and "ae-4c (running)" in res.caption


# ------------------------------------------------------------------------------------------------------- tables

def test_main_results_table(runs):
    # this store's runs are at profiles smoke and cpu with no data.resolution: none stands beside a reported row
    table = tables.main_results_table(runs)
    assert list(table["source"]) == list(tables.load_reported()["source"])
    assert table.loc[table["model"] == "BAR-B/4", "gfid"].tolist() == [2.34]
    note = tables.main_results_note(runs)
    assert note.startswith("No measured run at the paper's resolution (256 px or 512 px, profile paper) exists yet")
    assert "measured_cpu.md, measured_smoke.md" in note
    # the bar_b4 point of the cpu profile is in the cpu profile's own table
    cpu = tables.profile_tables(runs)["cpu"]
    src = runs[runs["model.preset"] == "bar_b4"].iloc[0]
    row = cpu[cpu["point"] == src["run_name"]].iloc[0]
    assert row["gfid"] == src["gfid"] and row["section"].startswith("cpu profile, synthetic, resolution not logged")

    md = tables.to_markdown(table, note)
    assert md.splitlines()[0].startswith("| Model | Params | Source |") and "| 2.34 |" in md
    assert md.rstrip().endswith("exists yet: the rows above are the paper's numbers alone. Measured numbers at smaller "
                                "sizes: measured_cpu.md, measured_smoke.md.")
    tex = tables.to_latex(table, caption="c", label="tab:x")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\label{tab:x}", "BAR-B/4"):
        assert token in tex
    assert "_" not in tex.replace(r"\_", "").replace("tab:x", "")
    cpu_tex = tables.to_latex(cpu, caption=tables.profile_caption("cpu"), label="tab:measured-cpu")
    assert "bar\\_b4" in cpu_tex and "_" not in cpu_tex.replace(r"\_", "")


def test_write_tables(runs, tmp_path):
    files = tables.write_tables(runs, tmp_path)
    assert {p.name for p in files} == {"main_results.md", "main_results.tex", "main_results.csv",
                                       "measured_points.md", "measured_points.csv",
                                       *(f"measured_{p}.{s}" for p in ("cpu", "smoke") for s in ("md", "tex", "csv"))}
    points = pd.read_csv(tmp_path / "measured_points.csv")
    assert len(points) == len(runs)
    assert "No measured run at the paper's resolution" in (tmp_path / "main_results.md").read_text()
    assert "No measured run at the paper's resolution" in (tmp_path / "main_results.tex").read_text()
    smoke = pd.read_csv(tmp_path / "measured_smoke.csv")
    assert set(smoke["profile"]) == {"smoke"} and "n" not in smoke.columns  # one row per point: nothing averaged


# ------------------------------------------------------------------------------------------------------- claims

def _verdicts(df):
    return {(c.key, c.sweep, c.profile): c.verdict for c in claims.evaluate_claims(df)}


def test_claims_from_data(runs):
    v = _verdicts(runs)
    bits, cs, ps = ("bits_vs_rfid", "smoke"), ("codebook_scaling", "smoke"), ("patch_size", "cpu")
    assert v[("rfid_falls", *bits)] == "yes"
    assert v[("gfid_falls", *bits)] == "yes"
    assert v[("gfid_falls", *cs)] == "yes"  # MBM points of the codebook sweep, checked on their own
    assert v[("discrete_matches_continuous", *bits)] == "yes"  # fsq 16b (256 bits) 5.0 vs ae-1c 6.0
    assert v[("mbm_beats_baselines", *cs)] == "yes"
    assert v[("softmax_memory_wall", *cs)] == "yes"
    assert v[("mbm_memory_flat", *cs)] == "yes"
    assert v[("patch_faster", *ps)] == "yes"
    # each claim appears only for the sweeps that measure it
    assert ("mbm_beats_baselines", *ps) not in v and ("patch_faster", *cs) not in v
    ev = {c.key: c.evidence for c in claims.evaluate_claims(runs) if c.sweep in ("bits_vs_rfid", "codebook_scaling")}
    assert "256 bits: discrete 5 vs continuous 6" in ev["discrete_matches_continuous"]
    assert "softmax infeasible" in ev["mbm_beats_baselines"]


def test_claims_flip(runs):
    df = runs.copy()
    fsq = df["tokenizer.kind"] == "fsq"
    df.loc[fsq, "rfid"] = 1.0 / df.loc[fsq, "rfid"]  # rFID now rises with bits
    mbm = df["head.name"] == "mbm"
    df.loc[mbm & (df["tokenizer.bits"] == 16), "gfid"] = 99.0  # MBM loses at 2^16
    df.loc[df["run_name"] == "softmax-24b", "status"] = "finished"  # no wall
    df.loc[mbm, "peak_mem_gb"] = df.loc[mbm, "tokenizer.bits"].astype(float) ** 2  # memory grows 9x
    df.loc[df["run_name"] == "ae-1c", "gfid"] = 1.0  # continuous beats discrete at 256 bits
    df.loc[df["sweep"] == "patch_size", "sample_img_per_s"] = [30.0, 20.0, 10.0]
    v = _verdicts(df)
    for key in ("rfid_falls", "discrete_matches_continuous"):
        assert v[(key, "bits_vs_rfid", "smoke")] == "no", key
    for key in ("mbm_beats_baselines", "softmax_memory_wall", "mbm_memory_flat"):
        assert v[(key, "codebook_scaling", "smoke")] == "no", key
    assert v[("patch_faster", "patch_size", "cpu")] == "no"
    ev = {c.key: c.evidence for c in claims.evaluate_claims(df) if c.sweep == "codebook_scaling"}
    assert "log2 C = 16: MBM 99" in ev["mbm_beats_baselines"]


def test_claims_not_measured():
    assert {c.verdict for c in claims.evaluate_claims(pd.DataFrame())} == {"not measured"}
    one = pd.DataFrame({"run_id": ["a"], "run_name": ["x"], "status": ["finished"], "profile": ["p"],
                        "tokenizer.kind": ["fsq"], "total_bits": [64.0], "rfid": [3.0]})
    found = claims.evaluate_claims(one)
    assert {c.verdict for c in found} == {"not measured"} and len(found) == len(claims.CLAIMS)
    assert "at two or more total-bit counts" in found[0].evidence


def test_report(runs, tmp_path):
    figs = figures.all_figures(runs, None, tmp_path, formats="png")
    path = report.write_report(runs, tmp_path, figures=figs)
    text = path.read_text()
    assert "## Claims" in text and "| codebook_scaling | smoke | **yes** |" in text and "## Main results" in text
    assert "fsq-32b: RuntimeError: CUDA out of memory" in text
    assert "- not drawn (no data for them in this sweep): " in text  # e.g. training_curves: no history passed
    assert "[bits_vs_fid.png](bits_vs_fid.png)" in text  # main figure, from sweep bits_vs_rfid
    assert "[codebook_scaling/head_memory.png](codebook_scaling/head_memory.png)" in text
    assert "### Sweep patch_size" in text
    assert "`convergence`: not drawn (drawn from sweep convergence, which has no runs here" in text
    conv = [c for c in claims.evaluate_claims(runs) if c.key == "converges_faster"]
    assert [c.verdict for c in conv] == ["not measured"]  # no history passed


# -------------------------------------------------------------------------------------------------- convergence

@pytest.fixture(scope="module")
def conv_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("mlflow_conv"), convergence=True)


@pytest.fixture(scope="module")
def conv_runs(conv_store):
    return load_runs(conv_store, sweep="convergence")


@pytest.fixture(scope="module")
def conv_history(conv_store, conv_runs):
    return load_metric_history(conv_store, runs=conv_runs, keys=ALL_KEYS)


def test_reach():
    assert convergence.reach([100, 200, 400], [60, 30, 20], 20) == 400
    assert convergence.reach([100, 200, 400], [60, 30, 20], 45) == 150  # linear between evaluations
    assert convergence.reach([100, 200], [10, 5], 50) == 100  # already there at the first evaluation
    assert np.isnan(convergence.reach([100, 200], [60, 30], 20))


def test_convergence_frame(conv_runs, conv_history):
    conv = convergence.convergence_frame(conv_history, conv_runs)
    assert set(conv["run_name"]) == {"mbm-16b", "mbm-8b", "bitwise-16b", "softmax-8b", "diffusion-1c"}
    mbm = conv[conv["run_name"] == "mbm-16b"]
    # the final gFID logged at step 0 after training is not taken for an evaluation before training
    assert list(mbm["step"]) == list(CONV_STEPS) and list(mbm["gfid"]) == CONV_CURVES[("mbm", "fsq", 16)]
    assert list(mbm["gfid_nocfg"]) == [g + 10 for g in CONV_CURVES[("mbm", "fsq", 16)]]
    assert list(mbm["train_tflop"]) == pytest.approx([0.01 * s for s in CONV_STEPS])
    assert mbm["series"].iloc[0] == "MBM (BAR), 16 b"
    assert conv[conv["run_name"] == "diffusion-1c"]["series"].iloc[0] == "diffusion, 1 ch"
    assert list(dict.fromkeys(conv["head.name"])) == ["mbm", "softmax", "bitwise", "diffusion"]
    rfid = convergence.rfid_frame(conv_history, conv_runs)
    assert list(rfid["step"].unique()) == [50, 100, 150] and set(rfid["size_label"]) == {"16 b", "8 b", "1 ch"}


def test_training_budget_says_which_runs_still_improve(conv_runs, conv_history):
    conv = convergence.convergence_frame(conv_history, conv_runs)
    budget = convergence.training_budget(conv).set_index("series")
    # two thirds of 800 steps: the evaluation at step 400; every curve of the store gains > 10% after it
    mbm = budget.loc["MBM (BAR), 16 b"]
    assert (mbm["mid_step"], mbm["mid_gfid"], mbm["final_step"], mbm["final_gfid"]) == (400, 20.0, 800, 15.0)
    assert set(budget["state"]) == {"still improving"}
    # a curve that gains 5% over its last third is flat, one that gets worse too
    flat = conv.copy()
    last = flat["step"] == 800
    flat.loc[last & (flat["run_name"] == "mbm-16b"), "gfid"] = 19.0
    flat.loc[last & (flat["run_name"] == "mbm-8b"), "gfid"] = 30.0
    states = convergence.training_budget(flat).set_index("series")["state"]
    assert states["MBM (BAR), 16 b"] == "flat" and states["MBM (BAR), 8 b"] == "flat"
    assert states["diffusion, 1 ch"] == "still improving"
    text = "\n".join(report.budget_lines(flat))
    assert "## Training budget" in text and "2 of 5 runs flat, 3 still improving." in text


def test_a_convergence_sweep_at_two_profiles_draws_each_profile_s_curves_apart(conv_runs, conv_history, tmp_path):
    small = conv_runs.assign(run_id=conv_runs["run_id"] + "-small", profile="small")
    history = pd.concat([conv_history, conv_history.assign(run_id=conv_history["run_id"] + "-small")])
    runs = pd.concat([conv_runs, small], ignore_index=True)
    rfid = convergence.rfid_frame(history, runs)
    assert set(rfid["profile"]) == {"tiny", "small"} and len(rfid) == 2 * 3 * 3   # 3 tokenizers x 3 steps each
    res = figures.convergence(runs, history, tmp_path)
    assert "MBM (BAR), 16 b [tiny] 15 at step 800" in res.caption
    assert "MBM (BAR), 16 b [small] 15 at step 800" in res.caption
    assert "Threshold of the convergence claim [small]: gFID 20" in res.caption


def test_convergence_figure(conv_runs, conv_history, tmp_path):
    res = figures.convergence(conv_runs, conv_history, tmp_path)
    assert res and _files(res)
    titles = [ax.get_title() for ax in res.figure.axes]
    assert titles == ["gFID vs training steps", "gFID vs training compute", "rFID during tokenizer training"]
    csv = pd.read_csv(tmp_path / "convergence.csv")
    assert len(csv) == 5 * len(CONV_STEPS) and set(csv["series"]) >= {"MBM (BAR), 16 b", "diffusion, 1 ch"}
    assert "Threshold of the convergence claim: gFID 20 " in res.caption
    assert "MBM (BAR), 16 b 15 at step 800 (8 TFLOP)" in res.caption
    assert "mbm-32b (running)" in res.caption
    legend = [t.get_text() for t in res.figure.legends[0].get_texts()]
    assert "claim threshold: gFID 20" in legend and "per-bit, 16 b" in legend


def _conv_verdict(runs, history):
    return {(c.sweep, c.profile): (c.verdict, c.evidence)
            for c in claims.evaluate_claims(runs, history=history) if c.key == "converges_faster"}


def test_convergence_claim_and_flip(conv_runs, conv_history):
    verdict, evidence = _conv_verdict(conv_runs, conv_history)[("convergence", "tiny")]
    assert verdict == "yes"
    assert "threshold gFID 20" in evidence
    assert "MBM (BAR), 16 b reaches it at step 400 / 4 TFLOP" in evidence
    assert "diffusion, 1 ch reaches it at step 800 / 16 TFLOP" in evidence
    # swap the gFID curves of the best MBM run and the diffusion run: the verdict flips
    hist = conv_history.copy()
    ids = {n: conv_runs.loc[conv_runs["run_name"] == n, "run_id"].item() for n in ("mbm-16b", "diffusion-1c")}
    a = (hist["run_id"] == ids["mbm-16b"]) & (hist["key"] == "gfid")
    b = (hist["run_id"] == ids["diffusion-1c"]) & (hist["key"] == "gfid")
    hist.loc[a, "value"], hist.loc[b, "value"] = hist.loc[b, "value"].to_numpy(), hist.loc[a, "value"].to_numpy()
    verdict, evidence = _conv_verdict(conv_runs, hist)[("convergence", "tiny")]
    assert verdict == "no", evidence
    # faster in steps but not in compute is a "no" too
    hist = conv_history.copy()
    tf = (hist["run_id"] == ids["mbm-16b"]) & (hist["key"] == "train_tflop")
    hist.loc[tf, "value"] *= 10  # 40 TFLOP to the threshold vs 16
    verdict, evidence = _conv_verdict(conv_runs, hist)[("convergence", "tiny")]
    assert verdict == "no" and "fewer steps, not less compute" in evidence
    # without compute, steps decide
    hist = conv_history[conv_history["key"] != "train_tflop"]
    assert _conv_verdict(conv_runs, hist)[("convergence", "tiny")][0] == "yes"
    # no continuous run with a history: not measured
    no_cont = conv_history[~conv_history["run_id"].isin([ids["diffusion-1c"]])]
    verdict, evidence = _conv_verdict(conv_runs, no_cont)[("-", "-")]
    assert verdict == "not measured" and "continuous" in evidence


# ------------------------------------------------------------------------------------------ labels never overlap

def _assert_no_overlap(fig):
    boxes = canvas.text_boxes(fig)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    return boxes


def test_annotation_labels_never_overlap(runs, tmp_path):
    # adjacent infeasible sizes (the three labels that used to collide) and the paper's reference points
    df = runs.copy()
    soft = (df["head.name"] == "softmax") & (df["sweep"] == "codebook_scaling")
    df.loc[soft, "status"] = "infeasible"
    res = figures.codebook_scaling(df[df["sweep"] == "codebook_scaling"], tmp_path)
    legend = [t.get_text() for t in res.figure.legends[0].get_texts()]
    assert "softmax: infeasible at log2 C = 8, 16, 24" in legend
    _assert_no_overlap(res.figure)
    res = figures.quality_vs_cost(runs, tmp_path, reported=tables.load_reported())
    boxes = _assert_no_overlap(res.figure)
    assert len(boxes) == len(tables.load_reported().dropna(subset=["sample_img_per_s", "gfid"]))
    # a stress case: many labels at one point are stacked apart
    fig, (ax,) = canvas.new_figure(1)
    ax.plot([1, 2], [1, 2])
    for i in range(6):
        ax.annotate(f"label {i}", (1.5, 1.5), xytext=(4, 3), textcoords="offset points")
    canvas.declutter(fig)
    assert len(_assert_no_overlap(fig)) == 6


def test_every_drawn_figure_has_non_overlapping_labels(conv_store, tmp_path):
    df = load_runs(conv_store)
    hist = load_metric_history(conv_store, runs=df, keys=ALL_KEYS)
    results = figures.all_figures(df, hist, tmp_path, formats="png", reported=tables.load_reported())
    drawn = [r for r in results if r]
    assert {"codebook_scaling", "convergence", "convergence/convergence", "codebook_scaling/head_memory"} <= {
        r.name for r in drawn}
    for r in drawn:
        _assert_no_overlap(r.figure)
    # no figure mixes sweeps: every CSV row of a per-sweep figure belongs to its sweep
    for r in drawn:
        if "/" in r.name:
            csv = pd.read_csv(tmp_path / f"{r.name}.csv")
            assert set(csv["sweep"]) == {r.name.split("/")[0]}, r.name


# ---------------------------------------------------------------------------------------------------------- CLI

def _run_cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, str(ROOT / "analysis" / "make_figures.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.cli
def test_cli_missing_store_exit_2(tmp_path):
    proc = _run_cli("--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "no MLflow store" in proc.stderr


@pytest.mark.cli
def test_cli_empty_store_and_unknown_sweep(tmp_path, store, capsys):
    from mlflow.tracking import MlflowClient

    from analysis.make_figures import main

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=empty).search_experiments()  # creates an empty store
    capsys.readouterr()
    assert main(["--tracking-uri", empty, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sweep points" in err[0]
    assert main(["--tracking-uri", store, "--sweep", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown sweep/experiment nope" in err[0]


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.cli
def test_cli_draws_logs_and_is_deterministic(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from analysis.make_figures import main
    from analysis.runs import latest_parent_run

    root = tmp_path_factory.mktemp("cli")
    uri = build_store(root / "store", convergence=True)  # own store: this test logs artifacts to parent runs
    out = root / "figs"
    assert main(["--tracking-uri", uri, "--out", str(out)]) == 0
    first = _digest(out)
    for name in ("bits_vs_fid.png", "bits_vs_fid.pdf", "codebook_scaling.csv", "quality_vs_cost.txt",
                 "head_memory.pdf", "convergence.png", "convergence.csv", "main_results.md", "main_results.tex",
                 "REPORT.md", "bits_vs_rfid/training_curves.png", "codebook_scaling/training_curves.png",
                 "codebook_scaling/codebook_scaling.png", "patch_size/quality_vs_cost.png",
                 "convergence/convergence.png", "convergence/training_curves.png"):
        assert name in first, name
    # a main figure is its home sweep's figure: the same plotted rows, never points of other sweeps
    assert first["codebook_scaling.csv"] == first["codebook_scaling/codebook_scaling.csv"]
    assert set(pd.read_csv(out / "bits_vs_fid.csv")["sweep"]) == {"bits_vs_rfid"}
    assert not any(n.startswith("training_curves_") for n in first)  # training curves live in the sweep folders
    conv_csv = pd.read_csv(out / "convergence.csv")
    assert set(conv_csv["run_name"]) == {"mbm-16b", "mbm-8b", "bitwise-16b", "softmax-8b", "diffusion-1c"}
    assert "gfid" not in set(pd.read_csv(out / "convergence" / "training_curves.csv")["key"])
    report = (out / "REPORT.md").read_text()
    assert "| convergence | tiny | **yes** |" in report
    assert main(["--tracking-uri", uri, "--out", str(out)]) == 0
    assert _digest(out) == first  # byte-identical rerun
    client = MlflowClient(tracking_uri=uri)
    parent = latest_parent_run("codebook_scaling", uri)
    logged = {a.path for a in client.list_artifacts(parent, "figures")}
    assert {"figures/codebook_scaling.png", "figures/training_curves.png", "figures/REPORT.md"} <= logged
    assert "figures/convergence.png" not in logged  # another sweep's figures stay there
    assert latest_parent_run("patch_size", uri) is None
    # --sweep restricts; --format controls the files
    one = root / "one"
    assert main(["--tracking-uri", uri, "--sweep", "patch_size", "--out", str(one), "--format", "svg",
                 "--no-log"]) == 0
    names = {p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file()}
    assert "quality_vs_cost.svg" in names and not any(n.endswith(".png") for n in names)
    assert "patch_size/bits_vs_fid.svg" in names and "bits_vs_fid.svg" not in names  # home sweep not selected


def test_report_testbed_says_which_latents_exceed_the_data():
    df = pd.DataFrame({"sweep": ["codebook_scaling"] * 3 + ["bits_vs_gfid"], "profile": ["tiny"] * 3 + ["small"],
                       "data.name": ["digits"] * 3 + ["photo_crops"], "data.resolution": [16] * 4,
                       "total_bits": [64, 256, 512, 2048], "status": ["finished"] * 4})
    info = pd.DataFrame({"dataset": ["digits", "photo_crops"], "resolution": [16, 16], "estimate_bits": [262, 3564]})
    verdicts = [claims.Claim("k", "gFID falls", "codebook_scaling", "tiny", "no", ""),
                claims.Claim("k", "gFID falls", "bits_vs_gfid", "small", "no", ""),
                claims.Claim("k", "memory flat", "codebook_scaling", "tiny", "yes", "")]
    text = "\n".join(report.testbed_lines(df, verdicts, info))
    assert "| codebook_scaling | tiny | digits 16x16 | 262 | 64, 256, 512 | 512 |" in text
    assert "| bits_vs_gfid | small | photo_crops 16x16 | 3,564 | 2,048 | none |" in text
    assert "gFID falls (codebook_scaling, tiny): outside in part: 1 of its 3 latents exceed" in text
    assert "gFID falls (bits_vs_gfid, small): inside: every latent is below the data's 3,564" in text
    assert "memory flat" not in text                  # only the 'no's are placed
    assert report.testbed_lines(df, verdicts, None) == []


def test_report_testbed_asks_whether_the_tokenizers_use_their_bits():
    bits, mse = [64, 128, 256, 512], {"tiny": [0.02, 0.01, 0.005, 0.002], "small": [0.015, 0.0106, 0.0105, 0.0095]}
    rfid = {"tiny": [10, 6, 4, 3], "small": [438, 311, 936, 649]}
    df = pd.DataFrame([{"sweep": "codebook_scaling", "profile": p, "data.name": "photo_crops", "data.resolution": 16,
                        "tokenizer.kind": "fsq", "total_bits": b, "recon_mse": m, "rfid": r, "status": "finished"}
                       for p in ("tiny", "small") for b, m, r in zip(bits, mse[p], rfid[p])])
    info = pd.DataFrame({"dataset": ["photo_crops"], "resolution": [16], "estimate_bits": [3564]})
    verdicts = [claims.Claim("gfid_falls", "gFID falls", "codebook_scaling", p, "no", "") for p in ("tiny", "small")]
    text = "\n".join(report.testbed_lines(df, verdicts, info))
    assert "| codebook_scaling | tiny | fsq | 64: 0.0200 / 10, 128: 0.0100 / 6" in text and "| -1.00 | +1.00 |" in text
    assert "| codebook_scaling | small | fsq |" in text and "| -1.00 | -0.60 |" in text
    small = next(line for line in text.splitlines() if line.startswith("- gFID falls (codebook_scaling, small)"))
    tiny = next(line for line in text.splitlines() if line.startswith("- gFID falls (codebook_scaling, tiny)"))
    assert "do not turn more bits" not in small and "do not turn more bits" not in tiny    # both MSE curves fall
    assert "rFID does not follow the tokenizers' recon MSE (Spearman -0.60)" in small
    assert "does not follow" not in tiny                                                  # tiny's rFID follows MSE
    df.loc[(df["profile"] == "small") & (df["total_bits"] == 512), "recon_mse"] = 0.0108
    text = "\n".join(report.testbed_lines(df, verdicts, info))
    small = next(line for line in text.splitlines() if line.startswith("- gFID falls (codebook_scaling, small)"))
    assert "do not turn more bits into better reconstructions (Spearman -0.40" in small
