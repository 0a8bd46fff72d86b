"""Convergence: gFID against training steps and training compute, and the rule behind the REPORT.md claim
"BAR converges faster than continuous approaches".

Inputs are MLflow metric histories (`analysis.runs.load_metric_history(..., keys=CONVERGENCE_KEYS)`), logged by the
pipeline during generator training: `gfid` and `gfid_nocfg` at several optimizer steps (step = optimizer step; the
last point is the final gFID), `train_tflop` (cumulative estimated training compute, TFLOP, at the same steps), and
for tokenizers `rfid` at tokenizer training steps.

The verdict rule (fixed before any data was seen; `convergence_verdict`):
1. BAR = finished runs with the MBM head; continuous = finished runs with tokenizer.kind = ae (the diffusion head).
   Only runs with a gFID history of two or more evaluations count.
2. Each side is represented by its best run: the lowest final gFID (ties: fewer steps, then run name).
3. Threshold T = the worse (higher) of the two representatives' final gFIDs: the best quality both reach.
4. Each representative's cost to reach T: the first point where its gFID curve (piecewise linear between
   evaluations) is <= T, in optimizer steps, and in training compute (train_tflop) when both log it.
5. "yes" when BAR reaches T in fewer steps and, where compute is logged for both, with less compute; otherwise
   "no" (a tie is a "no"). "not measured" when either side has no run with a gFID history.

Whether a run was trained long enough (`training_budget`; also fixed before the curves it judges were seen): compare
its final gFID with its gFID at the last evaluation at or before two thirds of its steps. "still improving" when the
last third of training lowered gFID by more than FLAT_GAIN (10%); otherwise "flat" (more steps of the same schedule are
unlikely to help much). One curve per run, so noise between evaluations can call either way: the table shows both
values.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.formatting import fmt, head_label
from analysis.runs import BITS_PER_TOKEN, CHANNELS, column, latent_size
from bar.core.vocabulary import (
    AE,
    EVALUATION_HISTORIES,
    FINISHED,
    GFID,
    GFID_NOCFG,
    HEAD_NAME,
    HEAD_ORDER,
    MBM,
    RFID,
    TOKENIZER_KIND,
    TRAIN_TFLOP,
)

CONVERGENCE_KEYS = EVALUATION_HISTORIES
COLUMNS = ["run_id", "run_name", "sweep", "profile", "status", HEAD_NAME, TOKENIZER_KIND, "size", "size_label",
           "series", "step", GFID, GFID_NOCFG, TRAIN_TFLOP]


def _without_final_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Drop a step-0 point that is the run's end-of-run summary, not an evaluation before training: logged after the
    last evaluation, or repeating the value the curve logs at its last step (the pipeline logs the final evaluation
    both at step 0, as the run's headline metric, and at the last step)."""
    if len(points) < 2 or points["step"].iloc[0] != 0:
        return points
    last = points[points["step"] == points["step"].max()]
    if points["timestamp"].iloc[0] > last["timestamp"].max() or points["value"].iloc[0] == last["value"].iloc[-1]:
        return points.iloc[1:]
    return points


def _run_info(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: head, tokenizer kind, size (bits per token, or channels for ae), its label and the series label."""
    info = pd.DataFrame({"run_id": runs["run_id"]})
    info[HEAD_NAME] = column(runs, HEAD_NAME).astype(object).values
    kind = column(runs, TOKENIZER_KIND).astype(object)
    info[TOKENIZER_KIND] = kind.values
    latent = latent_size(runs)
    size = np.where(kind == AE, latent[CHANNELS], latent[BITS_PER_TOKEN])
    info["size"] = size
    info["size_label"] = [("n/a" if pd.isna(s) else f"{int(s)} {'ch' if k == AE else 'b'}")
                          for s, k in zip(size, kind)]
    info["series"] = info[HEAD_NAME].map(head_label) + ", " + info["size_label"]
    for col in ("run_name", "sweep", "profile", "status"):
        values = column(runs, col).astype(object)
        if col == "sweep":
            values = values.where(values.notna(), column(runs, "experiment").astype(object))
        info[col] = values.values
    return info


def convergence_frame(history: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, evaluated optimizer step) for the runs of `runs` with two or more gFID evaluations:
    identity, head.name, tokenizer.kind, size (bits per token or channels), series label, step, gfid, gfid_nocfg
    (NaN where not evaluated at that step) and train_tflop at that step (linear in step between its logged points,
    NaN outside them)."""
    if history is None or history.empty or runs is None or runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    hist = history[history["run_id"].isin(set(runs["run_id"]))]
    info = _run_info(runs).set_index("run_id")
    rows = []
    for run_id, h in hist.groupby("run_id", sort=True):
        g = _without_final_summary(h[h["key"] == GFID].sort_values(["step", "timestamp"]))
        if g["step"].nunique() < 2:
            continue
        frame = pd.DataFrame({"step": g["step"].to_numpy(), GFID: g["value"].to_numpy()})
        nocfg = h[h["key"] == GFID_NOCFG].set_index("step")["value"]
        frame[GFID_NOCFG] = frame["step"].map(nocfg[~nocfg.index.duplicated(keep="last")])
        tf = h[h["key"] == TRAIN_TFLOP].sort_values("step")
        if len(tf):
            xs, ys = tf["step"].to_numpy(dtype=float), tf["value"].to_numpy(dtype=float)
            frame[TRAIN_TFLOP] = [float(np.interp(s, xs, ys)) if xs[0] <= s <= xs[-1] else np.nan
                                  for s in frame["step"]]
        else:
            frame[TRAIN_TFLOP] = np.nan
        meta = info.loc[run_id]
        for col in ("run_name", "sweep", "profile", "status", HEAD_NAME, TOKENIZER_KIND, "size", "size_label",
                    "series"):
            frame[col] = meta[col]
        frame["run_id"] = run_id
        rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(rows, ignore_index=True)[COLUMNS]
    order = {h: i for i, h in enumerate(HEAD_ORDER)}
    out = out.assign(_h=out[HEAD_NAME].map(lambda h: order.get(h, len(order))))
    out = out.sort_values(["_h", TOKENIZER_KIND, "size", "run_name", "run_id", "step"], kind="mergesort")
    return out.drop(columns="_h").reset_index(drop=True)


def rfid_frame(history: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """rFID against tokenizer training step, for runs of `runs` with two or more rFID evaluations."""
    cols = ["run_id", "run_name", "sweep", "profile", "status", TOKENIZER_KIND, "size", "size_label", "step", RFID]
    if history is None or history.empty or runs is None or runs.empty:
        return pd.DataFrame(columns=cols)
    hist = history[(history["key"] == RFID) & history["run_id"].isin(set(runs["run_id"]))]
    info = _run_info(runs).set_index("run_id")
    rows = []
    for run_id, h in hist.groupby("run_id", sort=True):
        h = _without_final_summary(h.sort_values(["step", "timestamp"]))
        if h["step"].nunique() < 2:
            continue
        frame = pd.DataFrame({"step": h["step"].to_numpy(), RFID: h["value"].to_numpy()})
        for col in ("run_name", "sweep", "profile", "status", TOKENIZER_KIND, "size", "size_label"):
            frame[col] = info.loc[run_id, col]
        frame["run_id"] = run_id
        rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.concat(rows, ignore_index=True)[cols]
    # tokenizers are shared between the points of a profile: one curve per tokenizer (profile, kind, size)
    out = out.drop_duplicates(["profile", TOKENIZER_KIND, "size", "step"], keep="first")
    return out.sort_values(["profile", TOKENIZER_KIND, "size", "step"], ascending=[True, False, True, True],
                           kind="mergesort").reset_index(drop=True)


def reach(x, g, target: float) -> float:
    """First x at which the piecewise-linear curve (x, g) is <= target (NaN when it never is)."""
    x, g = np.asarray(x, dtype=float), np.asarray(g, dtype=float)
    ok = np.flatnonzero(g <= target)
    if not len(ok):
        return math.nan
    i = int(ok[0])
    if i == 0:
        return float(x[0])
    if not (np.isfinite(x[i - 1]) and np.isfinite(x[i])):
        return math.nan
    return float(x[i - 1] + (target - g[i - 1]) * (x[i] - x[i - 1]) / (g[i] - g[i - 1]))


def series_summary(conv: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    """One row per run: series, head.name, tokenizer.kind, final_step, final_gfid, and (with `target`) steps_to_target
    and tflop_to_target."""
    rows = []
    for run_id, g in conv.groupby("run_id", sort=False):
        g = g.sort_values("step")
        row = {"run_id": run_id, "run_name": g["run_name"].iloc[0], "series": g["series"].iloc[0],
               HEAD_NAME: g[HEAD_NAME].iloc[0], TOKENIZER_KIND: g[TOKENIZER_KIND].iloc[0],
               "status": g["status"].iloc[0], "evaluations": len(g), "final_step": int(g["step"].iloc[-1]),
               "final_gfid": float(g[GFID].iloc[-1]),
               "final_tflop": float(g[TRAIN_TFLOP].iloc[-1]) if pd.notna(g[TRAIN_TFLOP].iloc[-1]) else math.nan}
        if target is not None:
            row["steps_to_target"] = reach(g["step"], g[GFID], target)
            tflop = g[TRAIN_TFLOP].to_numpy(dtype=float)
            row["tflop_to_target"] = reach(tflop, g[GFID], target) if np.isfinite(tflop).all() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


FLAT_GAIN = 0.10   # the last third of training must lower gFID by more than this fraction to count as still improving


def training_budget(conv: pd.DataFrame) -> pd.DataFrame:
    """One row per run with a gFID history: series, sweep, profile, step and gFID two thirds in, final step and gFID,
    and `state` (still improving / flat) by the rule in the module docstring."""
    rows = []
    for run_id, g in conv.groupby("run_id", sort=False):
        g = g.sort_values("step")
        final_step = int(g["step"].iloc[-1])
        earlier = g[g["step"] <= final_step * 2 / 3]
        if earlier.empty or len(g) < 2:
            continue
        mid, final = earlier.iloc[-1], g.iloc[-1]
        improving = float(final[GFID]) < (1 - FLAT_GAIN) * float(mid[GFID])
        rows.append({"run_id": run_id, "series": g["series"].iloc[0], "sweep": g["sweep"].iloc[0],
                     "profile": g["profile"].iloc[0], "mid_step": int(mid["step"]), "mid_gfid": float(mid[GFID]),
                     "final_step": final_step, "final_gfid": float(final[GFID]),
                     "state": "still improving" if improving else "flat"})
    return pd.DataFrame(rows)


def _best(summary: pd.DataFrame) -> pd.Series | None:
    if summary.empty:
        return None
    return summary.sort_values(["final_gfid", "final_step", "run_name"], kind="mergesort").iloc[0]


def convergence_threshold(conv: pd.DataFrame) -> float | None:
    """T of the verdict rule (module docstring), or None when either side has no gFID history."""
    summary = series_summary(conv[conv["status"] == FINISHED]) if not conv.empty else pd.DataFrame()
    if summary.empty:
        return None
    bar = _best(summary[summary[HEAD_NAME] == MBM])
    cont = _best(summary[summary[TOKENIZER_KIND] == AE])
    if bar is None or cont is None:
        return None
    return max(float(bar["final_gfid"]), float(cont["final_gfid"]))


def _cost_text(r: pd.Series) -> str:
    """What a representative run needs to reach the threshold, and where it ended."""
    text = f"{r['series']} reaches it at step {fmt(float(r['steps_to_target']))}"
    if pd.notna(r["tflop_to_target"]):
        text += f" / {fmt(float(r['tflop_to_target']))} TFLOP"
    return text + f" (final gFID {fmt(float(r['final_gfid']))} at step {r['final_step']})"


def convergence_verdict(conv: pd.DataFrame) -> tuple[str, str]:
    """(yes / no / not measured, evidence) by the rule in the module docstring."""
    finished = conv[conv["status"] == FINISHED] if not conv.empty else conv
    has = {side: not finished.empty and bool(mask.any()) for side, mask in
           (("BAR (MBM head)", column(finished, HEAD_NAME) == MBM),
            ("continuous (ae + diffusion head)", column(finished, TOKENIZER_KIND) == AE))}
    missing = [side for side, ok in has.items() if not ok]
    if missing:
        return "not measured", (f"no finished {' or '.join(missing)} run with a gFID history of two or more "
                                "evaluations during training")
    target = convergence_threshold(conv)
    summary = series_summary(finished, target)
    bar = _best(summary[summary[HEAD_NAME] == MBM])
    cont = _best(summary[summary[TOKENIZER_KIND] == AE])
    assert bar is not None and cont is not None, "both sides have a finished run (`missing` above)"
    faster_steps = bool(bar["steps_to_target"] < cont["steps_to_target"])
    compute = pd.notna(bar["tflop_to_target"]) and pd.notna(cont["tflop_to_target"])
    faster_compute = bool(bar["tflop_to_target"] < cont["tflop_to_target"]) if compute else None
    verdict = "yes" if faster_steps and faster_compute in (True, None) else "no"
    how = (f"{'fewer' if faster_steps else 'not fewer'} steps"
           + (f", {'less' if faster_compute else 'not less'} compute" if compute else ", compute not logged"))
    others = summary[(summary["run_id"] != bar["run_id"]) & (summary["run_id"] != cont["run_id"])]
    other_text = "; ".join(f"{r['series']}: " + (f"step {fmt(float(r['steps_to_target']))}"
                                                 if pd.notna(r["steps_to_target"]) else "not reached")
                           for _, r in others.iterrows())
    evidence = (f"threshold gFID {fmt(target)} (the worse of the two sides' best final gFIDs): {_cost_text(bar)}; "
                f"{_cost_text(cont)}; BAR needs {how}"
                + (f". Other runs to the same gFID: {other_text}" if other_text else ""))
    return verdict, evidence
