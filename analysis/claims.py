"""The paper's claims, each checked on the runs: yes / no / not measured, with the values that decide it.

A claim is checked separately for every (sweep, profile): a sweep is one controlled experiment, so points of
different sweeps are never compared with each other. Every rule is stated in its check's docstring or in
`CONVERGENCE_RULE`, and was fixed before the data it judges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import convergence as conv_mod
from analysis.formatting import fmt, head_label
from analysis.runs import (
    BITS_PER_TOKEN,
    CODEBOOK_LOG2,
    INFEASIBLE_REASON,
    MEMORY_BUDGET_GB,
    column,
    latent_size,
    numeric,
    profile_of,
    sweep_of,
)
from bar.core.vocabulary import (
    AE,
    BITWISE,
    DISCRETE_HEADS,
    FAILED,
    FINISHED,
    FSQ,
    GFID,
    HEAD_NAME,
    INFEASIBLE,
    LATENT_KIND_LABEL,
    MBM,
    MEM_ESTIMATE_GB,
    PEAK_MEM_GB,
    RFID,
    SAMPLE_IMG_PER_S,
    SOFTMAX,
    TOKENIZER_KIND,
    TOTAL_BITS,
)

NOT_MEASURED = "not measured"


@dataclass
class Claim:
    key: str
    statement: str
    sweep: str
    profile: str
    verdict: str  # "yes" / "no" / "not measured"
    evidence: str


CLAIMS = {
    "rfid_falls": "rFID falls as the latent carries more bits",
    "gfid_falls": "gFID falls as the latent carries more bits",
    "discrete_matches_continuous": "At matched total bits, discrete tokens match or beat continuous ones (gFID)",
    "mbm_beats_baselines": "The MBM head beats the softmax and per-bit heads at every codebook size (gFID)",
    "softmax_memory_wall": "A softmax head hits a memory wall at large codebooks",
    "mbm_memory_flat": "MBM head memory is nearly flat in bits per token",
    "patch_faster": "A larger patch (token-group) size samples faster",
    "converges_faster": ("BAR (MBM head) converges faster than continuous approaches (diffusion head): it reaches a "
                         "common gFID in fewer training steps and, where logged, less training compute"),
}

CONVERGENCE_RULE = (
    "Convergence (the paper: BAR converges \"faster than prior continuous approaches\"), rule fixed before any data: "
    "on each side, BAR (MBM head) and continuous (ae tokenizer + diffusion head), take the finished run with the "
    "lowest final gFID among runs with a gFID history during training; the threshold is the worse of those two final "
    "gFIDs (the best quality both reach); each run's cost to reach it is the first crossing of its gFID curve "
    "(linear between evaluations), in optimizer steps and in training compute (train_tflop). Verdict yes when BAR "
    "needs fewer steps and, where both log compute, less compute; otherwise no (ties are no).")


# ---------------------------------------------------------------------------------------------------------- curves

def _curve(df: pd.DataFrame, x: pd.Series, y: pd.Series) -> pd.Series:
    """Mean y per x (sorted by x), over rows that are not infeasible and have both values."""
    ok = x.notna() & y.notna() & (column(df, "status") != INFEASIBLE)
    if not ok.any():
        return pd.Series(dtype=float)
    return y[ok].groupby(x[ok]).mean().sort_index()


def _falls(curve: pd.Series) -> bool:
    """Lower at the largest x than at the smallest, and ranks negatively correlated (Spearman <= -0.5)."""
    if len(curve) < 2 or not curve.iloc[-1] < curve.iloc[0]:
        return False
    if len(curve) == 2:
        return True
    rho = pd.Series(curve.index, dtype=float).rank().corr(pd.Series(curve.values).rank())
    return bool(rho <= -0.5)


def _curve_text(curve: pd.Series, xname: str = "", yname: str = "") -> str:
    return ", ".join(f"{fmt(x) if not float(x).is_integer() else int(x)}{xname}: {yname}{fmt(float(y))}"
                     for x, y in curve.items())


def _families(df: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    """`metric` against total bits for the discrete (fsq) and continuous (ae) latents; the discrete gFID only from
    the MBM head where the runs name heads."""
    kind = column(df, TOKENIZER_KIND)
    names_heads = column(df, HEAD_NAME).notna().any()
    curves = {}
    for fam in (FSQ, AE):
        sub = df[kind == fam]
        if fam == FSQ and metric == GFID and names_heads:
            sub = sub[column(sub, HEAD_NAME).isna() | (column(sub, HEAD_NAME) == MBM)]
        curves[LATENT_KIND_LABEL[fam]] = _curve(sub, numeric(sub, TOTAL_BITS), numeric(sub, metric))
    return curves


def _interp_log2(curve: pd.Series, x: float) -> float:
    xs = np.log2(curve.index.to_numpy(dtype=float))
    return float(np.interp(math.log2(x), xs, curve.to_numpy(dtype=float)))


# ---------------------------------------------------------------------------------------------------------- checks

def _claim_falls(df: pd.DataFrame, metric: str, label: str) -> tuple[str, str]:
    """Yes when the metric falls with total bits (`_falls`) for every latent kind measured at two or more sizes."""
    curves = {k: c for k, c in _families(df, metric).items() if len(c) >= 2}
    if not curves:
        return NOT_MEASURED, f"no tokenizer family has {label} at two or more total-bit counts"
    verdicts = {k: _falls(c) for k, c in curves.items()}
    evidence = "; ".join(f"{k} ({'falls' if verdicts[k] else 'does not fall'}): {_curve_text(c, ' bits', label + ' ')}"
                         for k, c in curves.items())
    return ("yes" if all(verdicts.values()) else "no"), evidence


def _claim_matched(df: pd.DataFrame, tol: float) -> tuple[str, str]:
    """Yes when at every matched total bits the discrete gFID is within `tol` of the continuous one or better
    (matched exactly, else with the discrete curve interpolated in log2 bits)."""
    curves = _families(df, GFID)
    disc, cont = curves[LATENT_KIND_LABEL[FSQ]], curves[LATENT_KIND_LABEL[AE]]
    if disc.empty or cont.empty:
        missing = [k for k, c in curves.items() if c.empty]
        return NOT_MEASURED, f"no gFID for the {' and '.join(missing)} series"
    pairs, how = [(x, float(disc[x]), float(cont[x])) for x in cont.index if x in disc.index], "exact"
    if not pairs and len(disc) >= 2:
        how = "discrete interpolated in log2(bits)"
        pairs = [(x, _interp_log2(disc, x), float(cont[x])) for x in cont.index
                 if disc.index.min() <= x <= disc.index.max()]
    if not pairs:
        return NOT_MEASURED, (f"no matched total bits (discrete at {_curve_text(disc, ' bits')}; continuous at "
                              f"{_curve_text(cont, ' bits')})")
    ok = [d <= c * (1 + tol) for _, d, c in pairs]
    evidence = (f"{how} matches, tolerance {tol:.0%}: "
                + "; ".join(f"{int(x)} bits: discrete {fmt(d)} vs continuous {fmt(c)}" for x, d, c in pairs))
    return ("yes" if all(ok) else "no"), evidence


def _mbm_against_others(size: float, at: pd.DataFrame, gfid: pd.Series) -> tuple[str | None, list[str]]:
    """At one codebook size: 'log2 C = s: MBM g vs softmax g, per-bit g' (None when nothing compares), and the
    heads MBM does not beat there."""
    heads = column(at, HEAD_NAME)
    mbm = gfid[(heads == MBM) & (column(at, "status") != INFEASIBLE)].dropna()
    if mbm.empty:
        return None, []
    m, mbm_label = float(mbm.mean()), head_label(MBM, short=True)
    parts, lost = [], []
    for other in (SOFTMAX, BITWISE):
        rows, label = at[heads == other], head_label(other, short=True)
        if rows.empty:
            continue
        if (rows["status"] == INFEASIBLE).all():
            parts.append(f"{label} infeasible")
            continue
        o = gfid[heads == other].dropna()
        if o.empty:
            continue
        parts.append(f"{label} {fmt(float(o.mean()))}")
        if not m < float(o.mean()):
            lost.append(f"log2 C = {int(size)}: {mbm_label} {fmt(m)} vs {label} {fmt(float(o.mean()))}")
    compared = f"log2 C = {int(size)}: {mbm_label} {fmt(m)} vs " + ", ".join(parts) if parts else None
    return compared, lost


def _claim_mbm(df: pd.DataFrame) -> tuple[str, str]:
    """Yes when the MBM head's gFID is lower than every competing head's at every codebook size both measured."""
    sub = df[column(df, HEAD_NAME).isin(list(DISCRETE_HEADS))]
    if sub.empty:
        return NOT_MEASURED, "no discrete-head runs"
    x, gfid = latent_size(sub)[CODEBOOK_LOG2], numeric(sub, GFID)
    compared, lost = [], []
    for size in sorted(x.dropna().unique()):
        text, lost_at = _mbm_against_others(size, sub[x == size], gfid[x == size])
        compared += [text] if text else []
        lost += lost_at
    if not compared:
        return NOT_MEASURED, "no codebook size with MBM and a competing head both measured"
    heads_seen = set(column(sub, HEAD_NAME).dropna())
    notes = [f"{head_label(other, short=True)} head not measured" for other in (SOFTMAX, BITWISE)
             if other not in heads_seen]
    evidence = "; ".join(compared) + (f" ({'; '.join(notes)})" if notes else "")
    if lost:
        evidence += ". MBM not better at " + "; ".join(lost)
    return ("no" if lost else "yes"), evidence


def _budget_text(sub: pd.DataFrame, infeasible: pd.Series, oom: pd.Series) -> str:
    """Which memory made the wall: for infeasible points the budget they were planned against, the param
    generator.memory_budget_gb where set (a chosen limit, not the memory of the device), else the budget the planner
    stated in the tag infeasible_reason (the device's own memory); for out-of-memory failures the device's memory."""
    parts = []
    profile = profile_of(sub).iloc[0] if not sub.empty else "?"
    budget = numeric(sub, MEMORY_BUDGET_GB)
    chosen = sorted(budget[infeasible].dropna().unique())
    if chosen:
        parts.append(f"at the {profile} profile's {' / '.join(fmt(float(b)) for b in chosen)} GB budget "
                     f"({MEMORY_BUDGET_GB}), not a GPU's memory")
    unset = infeasible & budget.isna()
    if unset.any():
        reason = column(sub, INFEASIBLE_REASON).astype(object).fillna("").astype(str)
        stated = pd.to_numeric(reason[unset].str.extract(r"budget ([0-9.eE+-]+) GiB", expand=False), errors="coerce")
        values = sorted(stated.dropna().unique())
        parts.append((f"at {' / '.join(fmt(float(v)) for v in values)} GB, " if values else "at a budget not logged, ")
                     + f"the device's own memory ({MEMORY_BUDGET_GB} unset: a GPU's memory, or the host's free "
                       "memory on CPU)")
    if oom.any():
        parts.append("out of the memory of the device that ran it (failed out of memory)")
    return "; ".join(parts)


def _claim_wall(df: pd.DataFrame) -> tuple[str, str]:
    """Yes when some softmax point is infeasible or failed out of memory; the evidence names the memory budget that
    made it so (`_budget_text`)."""
    sub = df[column(df, HEAD_NAME) == SOFTMAX]
    if sub.empty:
        return NOT_MEASURED, "no softmax-head runs"
    x = latent_size(sub)[CODEBOOK_LOG2]
    err = column(sub, "error").fillna("").astype(str).str.lower()
    oom = (sub["status"] == FAILED) & err.str.contains("memory|oom")
    wall = (sub["status"] == INFEASIBLE) | oom
    ran = x[sub["status"] == FINISHED].dropna()
    est = numeric(sub, MEM_ESTIMATE_GB)
    ran_text = f"ran up to log2 C = {int(ran.max())}" if not ran.empty else "no softmax run finished"
    if wall.any():
        walls = sorted(x[wall].dropna().unique())
        est_text = ", ".join(f"{int(s)}: {fmt(float(est[(x == s) & wall].mean()))} GB"
                             for s in walls if est[(x == s) & wall].notna().any())
        return "yes", (f"softmax cannot run at log2 C = {', '.join(str(int(s)) for s in walls)} "
                       f"{_budget_text(sub, sub['status'] == INFEASIBLE, oom)}; {ran_text}"
                       + (f"; estimated training memory at the wall {est_text}" if est_text else ""))
    return "no", f"every softmax run was feasible: {ran_text}"


def _memory_curve(sub: pd.DataFrame) -> tuple[pd.Series, str]:
    """Memory against bits per token: the measured peak where two or more sizes have it, else the estimate (which
    infeasible points have too)."""
    x = latent_size(sub)[BITS_PER_TOKEN]
    curve = _curve(sub, x, numeric(sub, PEAK_MEM_GB))
    if len(curve) >= 2:
        return curve, "measured peak"
    if MEM_ESTIMATE_GB in sub.columns:
        curve = numeric(sub, MEM_ESTIMATE_GB).groupby(x).mean().dropna().sort_index()
        if len(curve) >= 2:
            return curve, "estimate"
    return pd.Series(dtype=float), ""


def _claim_flat(df: pd.DataFrame, flat_ratio: float) -> tuple[str, str]:
    """Yes when MBM memory grows at most `flat_ratio` times from the smallest to the largest bits per token."""
    heads = column(df, HEAD_NAME)
    curve, what = _memory_curve(df[heads == MBM])
    if curve.empty:
        return NOT_MEASURED, "no MBM memory (peak_mem_gb or mem_estimate_gb) at two or more bits per token"
    ratio = float(curve.iloc[-1] / curve.iloc[0])
    evidence = (f"MBM {what} memory {_curve_text(curve, ' bits', '')} GB: x{ratio:.2f} from {int(curve.index[0])} "
                f"to {int(curve.index[-1])} bits (flat means <= x{flat_ratio:g})")
    soft, s_what = _memory_curve(df[heads == SOFTMAX])
    if not soft.empty:
        evidence += (f"; softmax {s_what}: x{float(soft.iloc[-1] / soft.iloc[0]):.2f} over "
                     f"{_curve_text(soft, ' bits', '')} GB")
    return ("yes" if ratio <= flat_ratio else "no"), evidence


def _claim_patch(df: pd.DataFrame) -> tuple[str, str]:
    """Yes when, for every head measured at two or more patch sizes, throughput rises with the patch size."""
    patch = numeric(df, "model.patch_size")
    speed = numeric(df, SAMPLE_IMG_PER_S)
    heads = column(df, HEAD_NAME).fillna("?")
    lines, verdicts = [], []
    for head in sorted(heads.unique()):
        sel = heads == head
        curve = _curve(df[sel], patch[sel], speed[sel])
        if len(curve) < 2:
            continue
        verdicts.append(bool((np.diff(curve.to_numpy()) > 0).all()))
        lines.append(f"{head_label(head, short=True)}: "
                     + ", ".join(f"p={int(p)}: {fmt(float(v))} img/s" for p, v in curve.items()))
    if not verdicts:
        return NOT_MEASURED, "no head has sample_img_per_s at two or more patch sizes"
    return ("yes" if all(verdicts) else "no"), "; ".join(lines)


def _claim_converges(df: pd.DataFrame, history: pd.DataFrame | None) -> tuple[str, str]:
    """The rule is in analysis/convergence.py (decided before any data was seen)."""
    return conv_mod.convergence_verdict(conv_mod.convergence_frame(history, df))


_CHECKS = {
    "rfid_falls": lambda d, tol, flat, hist: _claim_falls(d, RFID, "rFID"),
    "gfid_falls": lambda d, tol, flat, hist: _claim_falls(d, GFID, "gFID"),
    "discrete_matches_continuous": lambda d, tol, flat, hist: _claim_matched(d, tol),
    "mbm_beats_baselines": lambda d, tol, flat, hist: _claim_mbm(d),
    "softmax_memory_wall": lambda d, tol, flat, hist: _claim_wall(d),
    "mbm_memory_flat": lambda d, tol, flat, hist: _claim_flat(d, flat),
    "patch_faster": lambda d, tol, flat, hist: _claim_patch(d),
    "converges_faster": lambda d, tol, flat, hist: _claim_converges(d, hist),
}


def evaluate_claims(df: pd.DataFrame, match_tol: float = 0.05, flat_ratio: float = 1.5,
                    history: pd.DataFrame | None = None) -> list[Claim]:
    """Check each paper claim on the runs, separately for every (sweep, profile). A claim gets one entry per group
    that measures it, or a single "not measured" entry (profile "-") saying why when none does.
    match_tol: relative gFID margin within which discrete 'matches' continuous; flat_ratio: largest memory growth over
    the measured bit range still called nearly flat; history: metric histories (`load_metric_history` with
    `analysis.convergence.CONVERGENCE_KEYS`) for the convergence claim."""
    if df is None or df.empty:
        return [Claim(k, s, "-", "-", NOT_MEASURED, "no runs") for k, s in CLAIMS.items()]
    df = df.assign(_profile=profile_of(df), _sweep=sweep_of(df))
    groups = sorted(df.groupby(["_sweep", "_profile"]).groups)
    out = []
    for key, statement in CLAIMS.items():
        found, reasons = [], []
        for sw, prof in groups:
            sub = df[(df["_sweep"] == sw) & (df["_profile"] == prof)]
            verdict, evidence = _CHECKS[key](sub, match_tol, flat_ratio, history)
            if verdict == NOT_MEASURED:
                reasons.append(evidence)
            else:
                found.append(Claim(key, statement, sw, prof, verdict, evidence))
        out += found or [Claim(key, statement, "-", "-", NOT_MEASURED, "; ".join(sorted(set(reasons))) or "no runs")]
    return out


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """One row per claim entry: key, statement, sweep, profile, verdict, evidence."""
    return pd.DataFrame([c.__dict__ for c in claims], columns=["key", "statement", "sweep", "profile", "verdict",
                                                                "evidence"])
