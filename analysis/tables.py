"""The paper's results table next to measured values (Markdown, LaTeX/booktabs) and REPORT.md: each paper claim
checked against the runs.

Reported numbers live in analysis/reported_results.csv (with a `source` column); measured numbers come only from the
run frame (`analysis.runs.load_runs`). Nothing measured is typed in here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import convergence as conv_mod
from analysis.runs import cast_value, column, numeric

REPORTED_CSV = Path(__file__).resolve().parent / "reported_results.csv"
# metric column -> (table header, decimals)
METRICS = {"gfid": ("gFID", 2), "inception_score": ("IS", 1), "sfid": ("sFID", 2), "precision": ("Prec.", 3),
           "recall": ("Rec.", 3), "sample_img_per_s": ("img/s", 2), "rfid": ("rFID", 2)}
SECTIONS = {"main": "BAR (paper main table)", "baseline": "baselines", "peer": "peers (speed plot)",
            "tokenizer": "tokenizers (reconstruction)", "measured": "measured only (no paper counterpart)"}
DISCRETE_HEADS = ("mbm", "softmax", "bitwise")
HEAD_LABEL = {"mbm": "MBM", "softmax": "softmax", "bitwise": "per-bit", "diffusion": "diffusion"}


# ------------------------------------------------------------------------------------------------------ helpers

def load_reported(path=None) -> pd.DataFrame:
    """The paper's numbers: one row per model, columns table, model, match, resolution, params, metrics, source."""
    return pd.read_csv(path or REPORTED_CSV, dtype={"match": str, "params": str, "model": str, "source": str})




def _same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return False
    if isinstance(a, (int, float, np.integer, np.floating)) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def _matches(df: pd.DataFrame, spec) -> pd.Series:
    """Rows of df matching 'key=value;key=value' (values cast like MLflow params)."""
    if not isinstance(spec, str) or not spec.strip():
        return pd.Series(False, index=df.index)
    mask = pd.Series(True, index=df.index)
    for part in spec.split(";"):
        key, _, value = part.partition("=")
        key, value = key.strip(), cast_value(value.strip())
        mask &= column(df, key).astype(object).map(lambda x, v=value: _same(x, v))
    return mask


def _profile(df: pd.DataFrame) -> pd.Series:
    prof = column(df, "profile").astype(object)
    prof = prof.where(prof.notna(), column(df, "profile.name").astype(object))
    return prof.where(prof.notna(), "unknown").astype(str)


def _fmt(value, decimals: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{decimals}f}" if decimals is not None else f"{value:.3g}"
    return str(value)


# ------------------------------------------------------------------------------------------------------- tables

def main_results_table(df: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: each reported row (source = its citation) followed by the measured rows that match it (one per
    sweep and profile, mean over its finished runs, n = how many); then finished runs with no paper counterpart,
    grouped by (model.preset, head.name, model.patch_size, tokenizer), sweep and profile. Numeric metric columns (NaN = not available)."""
    reported = load_reported() if reported is None else reported
    df = df if df is not None else pd.DataFrame()
    finished = df[column(df, "status") == "finished"].copy() if not df.empty else df
    if not finished.empty:
        finished["_profile"] = _profile(finished)
        sweep = column(finished, "sweep").astype(object)
        finished["_sweep"] = sweep.where(sweep.notna(), column(finished, "experiment")).fillna("default").astype(str)
    rows = []
    used = pd.Series(False, index=finished.index)

    def measured_rows(sub: pd.DataFrame, section: str, model: str, params: str):
        out = []
        for (sw, prof), grp in sub.groupby(["_sweep", "_profile"], sort=True):
            row = {"section": section, "model": model, "params": params, "source": "measured", "sweep": sw,
                   "profile": prof, "n": int(len(grp))}
            for m in METRICS:
                vals = numeric(grp, m)
                row[m] = float(vals.mean()) if vals.notna().any() else np.nan
            out.append(row)
        return out

    for _, rep in reported.iterrows():
        section = rep.get("table", "main")
        row = {"section": section, "model": rep["model"], "params": rep.get("params") if isinstance(
            rep.get("params"), str) else "", "source": rep.get("source", "paper"), "sweep": "", "profile": "",
               "n": np.nan}
        for m in METRICS:
            row[m] = float(rep[m]) if m in rep and pd.notna(rep[m]) else np.nan
        rows.append(row)
        if not finished.empty:
            mask = _matches(finished, rep.get("match"))
            used |= mask
            rows += measured_rows(finished[mask], section, rep["model"], row["params"])
    rest = finished[~used] if not finished.empty else finished
    if not rest.empty:
        preset = column(rest, "model.preset").astype(object)
        head = column(rest, "head.name").astype(object)
        patch = column(rest, "model.patch_size").astype(object)
        tok_kind = column(rest, "tokenizer.kind").astype(object)
        tok_size = numeric(rest, "tokenizer.bits").fillna(numeric(rest, "tokenizer.channels"))

        def label(i):
            parts = [str(preset[i]) if pd.notna(preset[i]) else "model?"]
            if pd.notna(head[i]):
                parts.append(HEAD_LABEL.get(head[i], str(head[i])))
            if pd.notna(patch[i]) and str(patch[i]) != "1":
                parts.append(f"p={patch[i]}")
            if pd.notna(tok_kind[i]):
                unit = "b" if tok_kind[i] == "fsq" else "c"
                parts.append(f"{tok_kind[i]}-{_fmt(int(tok_size[i])) if pd.notna(tok_size[i]) else '?'}{unit}")
            return " ".join(parts)

        rest = rest.assign(_label=[label(i) for i in rest.index])
        for lab in sorted(rest["_label"].unique()):
            rows += measured_rows(rest[rest["_label"] == lab], "measured", lab, "")
    table = pd.DataFrame(rows, columns=["section", "model", "params", "source", "sweep", "profile", "n", *METRICS])
    return table.reset_index(drop=True)


def measured_points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every sweep point in the frame (any status), sorted: sweep, point, profile, status, head, bits, metrics."""
    cols = ["sweep", "run_name", "profile", "status", "tokenizer.kind", "head.name", "model.preset", "model.patch_size",
            "bits_per_token", "codebook_log2", "total_bits", "rfid", "gfid", "gfid_nocfg", "sample_img_per_s",
            "peak_mem_gb", "mem_estimate_gb"]
    if df is None or df.empty:
        return pd.DataFrame(columns=cols)
    out = df[[c for c in cols if c in df.columns]].copy()
    keys = [c for c in ("sweep", "run_name", "profile") if c in out.columns]
    return out.sort_values(keys, kind="mergesort", na_position="last").reset_index(drop=True)


def _rendered(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, string cells and per-column alignment ('l' / 'r') shared by the Markdown and LaTeX renderers."""
    if "source" in table.columns and "section" in table.columns:  # main results table
        header = ["Model", "Params", "Source", "Sweep", "Profile", "n"] + [METRICS[m][0] for m in METRICS]
        align = ["l", "l", "l", "l", "l", "r"] + ["r"] * len(METRICS)
        cells = []
        for _, r in table.iterrows():
            cells.append([str(r["model"]), r["params"] if isinstance(r["params"], str) else "", str(r["source"]),
                          str(r["sweep"] or ""), str(r["profile"] or ""), "" if pd.isna(r["n"]) else str(int(r["n"]))]
                         + [_fmt(r[m], METRICS[m][1]) if pd.notna(r[m]) else "-" for m in METRICS])
        return header, cells, align
    header = [str(c) for c in table.columns]
    align = ["r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table.columns]
    cells = [["-" if pd.isna(v) else _fmt(v) for v in r] for r in table.itertuples(index=False)]
    return header, cells, align


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown table (main results: one block per section with a bold section row)."""
    header, cells, align = _rendered(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    sections = list(table["section"]) if "section" in table.columns and "source" in table.columns else None
    last = None
    for i, row in enumerate(cells):
        if sections is not None and sections[i] != last:
            last = sections[i]
            lines.append("| **" + SECTIONS.get(last, str(last)) + "** |" + " |" * (len(header) - 1))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """LaTeX tabular with booktabs rules (\\toprule / \\midrule / \\bottomrule); wrapped in a table float when a caption
    or label is given. Needs \\usepackage{booktabs}."""
    header, cells, align = _rendered(table)
    sections = list(table["section"]) if "section" in table.columns and "source" in table.columns else None
    body = [r"\begin{tabular}{" + "".join(align) + "}", r"\toprule",
            " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    last = None
    for i, row in enumerate(cells):
        if sections is not None and sections[i] != last:
            if last is not None:
                body.append(r"\midrule")
            last = sections[i]
            body.append(r"\multicolumn{" + str(len(header)) + "}{l}{\\textit{" + _tex(SECTIONS.get(last, str(last)))
                        + r"}} \\")
        body.append(" & ".join("--" if c in ("-", "n/a") else _tex(c) for c in row) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(body) + "\n"
    wrapped = [r"\begin{table}[t]", r"\centering", r"\small", *body]
    if caption:
        wrapped.append(r"\caption{" + _tex(caption) + "}")
    if label:
        wrapped.append(r"\label{" + label + "}")
    wrapped.append(r"\end{table}")
    return "\n".join(wrapped) + "\n"


MAIN_CAPTION = ("Main results: the paper's reported numbers (source column) next to the measured ones "
                "(profile, n finished runs averaged). Measured numbers at a small profile are not comparable in "
                "absolute value to the paper's.")


def write_tables(df: pd.DataFrame, out_dir, reported: pd.DataFrame | None = None) -> list[Path]:
    """main_results.{md,tex,csv} and measured_points.{md,csv} into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = main_results_table(df, reported)
    points = measured_points_table(df)
    files = {
        out / "main_results.md": to_markdown(table),
        out / "main_results.tex": to_latex(table, caption=MAIN_CAPTION, label="tab:main-results"),
        out / "measured_points.md": to_markdown(points),
    }
    for path, text in files.items():
        path.write_text(text)
    table.to_csv(out / "main_results.csv", index=False, lineterminator="\n")
    points.to_csv(out / "measured_points.csv", index=False, lineterminator="\n")
    return sorted([*files, out / "main_results.csv", out / "measured_points.csv"])


# ------------------------------------------------------------------------------------------------------- claims

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


def _curve(df: pd.DataFrame, x: pd.Series, y: pd.Series) -> pd.Series:
    """Mean y per x (sorted by x), over rows that are not infeasible and have both values."""
    ok = x.notna() & y.notna() & (column(df, "status") != "infeasible")
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
    return ", ".join(f"{_fmt(x) if not float(x).is_integer() else int(x)}{xname}: {yname}{_fmt(float(y))}"
                     for x, y in curve.items())


def _families(df: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    kind = column(df, "tokenizer.kind")
    head = column(df, "head.name")
    curves = {}
    for fam, label in (("fsq", "discrete"), ("ae", "continuous")):
        sub = df[kind == fam]
        if fam == "fsq" and metric == "gfid":
            sub = sub[column(sub, "head.name").isna() | (column(sub, "head.name") == "mbm")] if head.notna().any() else sub
        curves[label] = _curve(sub, numeric(sub, "total_bits"), numeric(sub, metric))
    return curves


def _claim_falls(df: pd.DataFrame, metric: str, label: str) -> tuple[str, str]:
    curves = {k: c for k, c in _families(df, metric).items() if len(c) >= 2}
    if not curves:
        return "not measured", f"no tokenizer family has {label} at two or more total-bit counts"
    verdicts = {k: _falls(c) for k, c in curves.items()}
    evidence = "; ".join(f"{k} ({'falls' if verdicts[k] else 'does not fall'}): {_curve_text(c, ' bits', label + ' ')}"
                         for k, c in curves.items())
    return ("yes" if all(verdicts.values()) else "no"), evidence


def _interp_log2(curve: pd.Series, x: float) -> float:
    xs = np.log2(curve.index.to_numpy(dtype=float))
    return float(np.interp(math.log2(x), xs, curve.to_numpy(dtype=float)))


def _claim_matched(df: pd.DataFrame, tol: float) -> tuple[str, str]:
    curves = _families(df, "gfid")
    disc, cont = curves["discrete"], curves["continuous"]
    if disc.empty or cont.empty:
        missing = [k for k, c in curves.items() if c.empty]
        return "not measured", f"no gFID for the {' and '.join(missing)} series"
    pairs, how = [], "exact"
    for x in cont.index:
        if x in disc.index:
            pairs.append((x, float(disc[x]), float(cont[x])))
    if not pairs and len(disc) >= 2:
        how = "discrete interpolated in log2(bits)"
        for x in cont.index:
            if disc.index.min() <= x <= disc.index.max():
                pairs.append((x, _interp_log2(disc, x), float(cont[x])))
    if not pairs:
        return "not measured", (f"no matched total bits (discrete at {_curve_text(disc, ' bits')}; continuous at "
                                f"{_curve_text(cont, ' bits')})")
    ok = [d <= c * (1 + tol) for _, d, c in pairs]
    evidence = (f"{how} matches, tolerance {tol:.0%}: "
                + "; ".join(f"{int(x)} bits: discrete {_fmt(d)} vs continuous {_fmt(c)}" for x, d, c in pairs))
    return ("yes" if all(ok) else "no"), evidence


def _claim_mbm(df: pd.DataFrame) -> tuple[str, str]:
    sub = df[column(df, "head.name").isin(list(DISCRETE_HEADS))]
    if sub.empty:
        return "not measured", "no discrete-head runs"
    x = numeric(sub, "codebook_log2", "bits_per_token", "tokenizer.bits")
    gfid = numeric(sub, "gfid")
    compared, lost, notes = [], [], []
    for size in sorted(x.dropna().unique()):
        at = sub[x == size]
        heads = column(at, "head.name")
        g = gfid[x == size]
        mbm = g[(heads == "mbm") & (column(at, "status") != "infeasible")].dropna()
        if mbm.empty:
            continue
        m = float(mbm.mean())
        parts = []
        for other in ("softmax", "bitwise"):
            o_rows = at[heads == other]
            if o_rows.empty:
                continue
            if (o_rows["status"] == "infeasible").all():
                parts.append(f"{HEAD_LABEL[other]} infeasible")
                continue
            o = g[(heads == other)].dropna()
            if o.empty:
                continue
            parts.append(f"{HEAD_LABEL[other]} {_fmt(float(o.mean()))}")
            if not m < float(o.mean()):
                lost.append(f"log2 C = {int(size)}: MBM {_fmt(m)} vs {HEAD_LABEL[other]} {_fmt(float(o.mean()))}")
        if parts:
            compared.append(f"log2 C = {int(size)}: MBM {_fmt(m)} vs " + ", ".join(parts))
    if not compared:
        return "not measured", "no codebook size with MBM and a competing head both measured"
    heads_seen = set(column(sub, "head.name").dropna())
    for other in ("softmax", "bitwise"):
        if other not in heads_seen:
            notes.append(f"{HEAD_LABEL[other]} head not measured")
    evidence = "; ".join(compared) + (f" ({'; '.join(notes)})" if notes else "")
    if lost:
        evidence += ". MBM not better at " + "; ".join(lost)
    return ("no" if lost else "yes"), evidence


def _claim_wall(df: pd.DataFrame) -> tuple[str, str]:
    sub = df[column(df, "head.name") == "softmax"]
    if sub.empty:
        return "not measured", "no softmax-head runs"
    x = numeric(sub, "codebook_log2", "bits_per_token", "tokenizer.bits")
    err = column(sub, "error").fillna("").astype(str).str.lower()
    oom = (sub["status"] == "failed") & err.str.contains("memory|oom")
    wall = (sub["status"] == "infeasible") | oom
    ran = x[sub["status"] == "finished"].dropna()
    est = numeric(sub, "mem_estimate_gb")
    ran_text = f"ran up to log2 C = {int(ran.max())}" if not ran.empty else "no softmax run finished"
    if wall.any():
        walls = sorted(x[wall].dropna().unique())
        est_text = ", ".join(f"{int(s)}: {_fmt(float(est[(x == s) & wall].mean()))} GB"
                             for s in walls if est[(x == s) & wall].notna().any())
        return "yes", (f"softmax cannot run at log2 C = {', '.join(str(int(s)) for s in walls)} "
                       f"(infeasible / out of memory); {ran_text}"
                       + (f"; memory estimate at the wall {est_text}" if est_text else ""))
    return "no", f"every softmax run was feasible: {ran_text}"


def _memory_curve(sub: pd.DataFrame) -> tuple[pd.Series, str]:
    x = numeric(sub, "bits_per_token", "codebook_log2", "tokenizer.bits")
    for col, what in (("peak_mem_gb", "measured peak"), ("mem_estimate_gb", "estimate")):
        curve = _curve(sub, x, numeric(sub, col)) if col != "mem_estimate_gb" else (
            numeric(sub, col).groupby(x).mean().dropna().sort_index() if col in sub.columns else pd.Series(dtype=float))
        if len(curve) >= 2:
            return curve, what
    return pd.Series(dtype=float), ""


def _claim_flat(df: pd.DataFrame, flat_ratio: float) -> tuple[str, str]:
    heads = column(df, "head.name")
    curve, what = _memory_curve(df[heads == "mbm"])
    if curve.empty:
        return "not measured", "no MBM memory (peak_mem_gb or mem_estimate_gb) at two or more bits per token"
    ratio = float(curve.iloc[-1] / curve.iloc[0])
    evidence = (f"MBM {what} memory {_curve_text(curve, ' bits', '')} GB: x{ratio:.2f} from {int(curve.index[0])} "
                f"to {int(curve.index[-1])} bits (flat means <= x{flat_ratio:g})")
    soft, s_what = _memory_curve(df[heads == "softmax"])
    if not soft.empty:
        evidence += f"; softmax {s_what}: x{float(soft.iloc[-1] / soft.iloc[0]):.2f} over {_curve_text(soft, ' bits', '')} GB"
    return ("yes" if ratio <= flat_ratio else "no"), evidence


def _claim_patch(df: pd.DataFrame) -> tuple[str, str]:
    patch = numeric(df, "model.patch_size")
    speed = numeric(df, "sample_img_per_s")
    heads = column(df, "head.name").fillna("?")
    lines, verdicts = [], []
    for head in sorted(heads.unique()):
        sel = heads == head
        curve = _curve(df[sel], patch[sel], speed[sel])
        if len(curve) < 2:
            continue
        increasing = bool((np.diff(curve.to_numpy()) > 0).all())
        verdicts.append(increasing)
        lines.append(f"{HEAD_LABEL.get(head, head)}: " + ", ".join(f"p={int(p)}: {_fmt(float(v))} img/s"
                                                                  for p, v in curve.items()))
    if not verdicts:
        return "not measured", "no head has sample_img_per_s at two or more patch sizes"
    return ("yes" if all(verdicts) else "no"), "; ".join(lines)


def _claim_converges(df: pd.DataFrame, history: pd.DataFrame | None) -> tuple[str, str]:
    """The rule is in analysis/convergence.py (decided before any data was seen)."""
    return conv_mod.convergence_verdict(conv_mod.convergence_frame(history, df))


_CHECKS = {
    "rfid_falls": lambda d, tol, flat, hist: _claim_falls(d, "rfid", "rFID"),
    "gfid_falls": lambda d, tol, flat, hist: _claim_falls(d, "gfid", "gFID"),
    "discrete_matches_continuous": lambda d, tol, flat, hist: _claim_matched(d, tol),
    "mbm_beats_baselines": lambda d, tol, flat, hist: _claim_mbm(d),
    "softmax_memory_wall": lambda d, tol, flat, hist: _claim_wall(d),
    "mbm_memory_flat": lambda d, tol, flat, hist: _claim_flat(d, flat),
    "patch_faster": lambda d, tol, flat, hist: _claim_patch(d),
    "converges_faster": lambda d, tol, flat, hist: _claim_converges(d, hist),
}


def evaluate_claims(df: pd.DataFrame, match_tol: float = 0.05, flat_ratio: float = 1.5,
                    history: pd.DataFrame | None = None) -> list[Claim]:
    """Check each paper claim on the runs, separately for every (sweep, profile): a sweep is one controlled experiment,
    so points of different sweeps are never compared with each other. A claim gets one entry per group that measures
    it, or a single "not measured" entry (profile "-") saying why when none does.
    match_tol: relative gFID margin within which discrete 'matches' continuous; flat_ratio: largest memory growth over
    the measured bit range still called nearly flat; history: metric histories (`load_metric_history` with
    `analysis.convergence.CONVERGENCE_KEYS`) for the convergence claim."""
    if df is None or df.empty:
        return [Claim(k, s, "-", "-", "not measured", "no runs") for k, s in CLAIMS.items()]
    sweep = column(df, "sweep").astype(object)
    sweep = sweep.where(sweep.notna(), column(df, "experiment").astype(object)).fillna("default").astype(str)
    df = df.assign(_profile=_profile(df), _sweep=sweep)
    groups = sorted(df.groupby(["_sweep", "_profile"]).groups)
    out = []
    for key, statement in CLAIMS.items():
        found, reasons = [], []
        for sw, prof in groups:
            sub = df[(df["_sweep"] == sw) & (df["_profile"] == prof)]
            verdict, evidence = _CHECKS[key](sub, match_tol, flat_ratio, history)
            if verdict == "not measured":
                reasons.append(evidence)
            else:
                found.append(Claim(key, statement, sw, prof, verdict, evidence))
        out += found or [Claim(key, statement, "-", "-", "not measured",
                               "; ".join(sorted(set(reasons))) or "no runs")]
    return out


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([c.__dict__ for c in claims], columns=["key", "statement", "sweep", "profile", "verdict",
                                                                    "evidence"])


CONVERGENCE_RULE = (
    "Convergence (the paper: BAR converges \"faster than prior continuous approaches\"), rule fixed before any data: "
    "on each side, BAR (MBM head) and continuous (ae tokenizer + diffusion head), take the finished run with the "
    "lowest final gFID among runs with a gFID history during training; the threshold is the worse of those two final "
    "gFIDs (the best quality both reach); each run's cost to reach it is the first crossing of its gFID curve "
    "(linear between evaluations), in optimizer steps and in training compute (train_tflop). Verdict yes when BAR "
    "needs fewer steps and, where both log compute, less compute; otherwise no (ties are no).")


def testbed_lines(df: pd.DataFrame, claims: list, information: pd.DataFrame | None) -> list[str]:
    """REPORT.md's testbed section: per sweep and profile, the data's information per image (`information`: rows of
    analysis.information.dataset_information) next to the latents the points used; then, for each 'no', whether the
    sweep's latents stay inside the regime the paper's claims are about (latents well below the image's
    information: 4,096 bits for 256x256 RGB at 16x16 x 16 bits) or go past what the data holds."""
    if information is None or information.empty or df.empty or "total_bits" not in df:
        return []
    estimate = {(r.dataset, int(r.resolution)): float(r.estimate_bits) for r in information.itertuples()}
    frame = df.assign(sweep_=column(df, "sweep").fillna(column(df, "experiment")), profile_=_profile(df),
                      data_=column(df, "data.name"), res_=numeric(df, "data.resolution"),
                      bits_=numeric(df, "total_bits"))
    lines = ["## Testbed", "",
             "Information per image (`analysis/information.py`: the shortest lossless code of the raw values, PNG and "
             "LZMA) against the latents each sweep used. A latent larger than the data's information has nothing left "
             "to encode: past it, more bits only make the generator's problem harder. The paper's claims are about "
             "latents far smaller than the image's information.", "",
             "| sweep | profile | data | information (bits/image) | latents (total bits) | latents above it |",
             "|---|---|---|---:|---|---|"]
    regime: dict[tuple[str, str], tuple[int, int, float]] = {}
    for (sweep, profile, data, res), g in frame.groupby(["sweep_", "profile_", "data_", "res_"], dropna=True):
        info = estimate.get((data, int(res)))
        bits = sorted({int(b) for b in g["bits_"].dropna()})
        if info is None or not bits:
            continue
        above = [b for b in bits if b > info]
        regime[(sweep, profile)] = (len(above), len(bits), info)
        lines.append(f"| {sweep} | {profile} | {data} {int(res)}x{int(res)} | {info:,.0f} | "
                     f"{', '.join(f'{b:,}' for b in bits)} | {', '.join(f'{b:,}' for b in above) or 'none'} |")
    uses_bits, fid_agrees = _tokenizer_lines(frame, lines)
    noes = [c for c in claims if c.verdict == "no" and (c.sweep, c.profile) in regime]
    if noes:
        lines += ["", "Each 'no' and its regime:", ""]
    for c in noes:
        n_above, n, info = regime[(c.sweep, c.profile)]
        where = (f"outside in part: {n_above} of its {n} latents exceed the data's {info:,.0f} bits per image, so the "
                 "comparison there is not the one the paper makes" if n_above else
                 f"inside: every latent is below the data's {info:,.0f} bits per image, so this 'no' speaks to the "
                 "method at this scale (training budget and model size aside)")
        rho = uses_bits.get((c.sweep, c.profile))
        if rho is not None and c.key in BITS_CLAIMS and not rho <= USES_BITS_RHO:
            where += (f"; but its binary tokenizers do not turn more bits into better reconstructions (Spearman "
                      f"{rho:+.2f} between bits and recon MSE), so more bits gave the generator nothing to use: the "
                      "tokenizers, not the heads, are what this 'no' measures")
        agree = fid_agrees.get((c.sweep, c.profile))
        if agree is not None and c.key in FID_CLAIMS and not agree >= FID_AGREES_RHO:
            where += (f"; and its rFID does not follow the tokenizers' recon MSE (Spearman {agree:+.2f}): on this "
                      "data the FID features judge images poorly, so FID-based verdicts here say little either way")
        lines.append(f"- {c.statement} ({c.sweep}, {c.profile}): {where}.")
    return lines + [""]


BITS_CLAIMS = ("rfid_falls", "gfid_falls", "discrete_matches_continuous")  # need tokenizers that use their bits
USES_BITS_RHO = -0.8     # recon MSE must fall with bits this consistently (rank correlation) to count as using them
FID_CLAIMS = ("rfid_falls", "gfid_falls", "discrete_matches_continuous", "mbm_beats_baselines", "converges_faster")
FID_AGREES_RHO = 0.5     # rFID must rank reconstructions at least this much like recon MSE to be trusted as a judge


def _tokenizer_lines(frame: pd.DataFrame, lines: list[str]) -> tuple[dict, dict]:
    """The testbed's second table: per sweep, profile and tokenizer kind (one row per distinct latent), recon MSE and
    rFID against total bits, with two rank correlations: does the tokenizer turn more bits into better reconstructions
    (bits vs recon MSE, should be near -1), and does rFID agree with recon MSE (near +1, else the FID extractor is a
    poor judge of reconstructions on this data). Returns both correlations of the binary (fsq) tokenizers, each
    {(sweep, profile): rho}."""
    frame = frame.assign(kind_=column(frame, "tokenizer.kind"), mse_=numeric(frame, "recon_mse"),
                         rfid_=numeric(frame, "rfid"))
    rows, uses_bits, fid_agrees = [], {}, {}
    for (sweep, profile, kind), g in frame.groupby(["sweep_", "profile_", "kind_"], dropna=True):
        per_latent = g.dropna(subset=["bits_", "mse_"]).groupby("bits_")[["mse_", "rfid_"]].mean().sort_index()
        if len(per_latent) < 3:
            continue
        bits = pd.Series(per_latent.index, dtype=float)
        mse, rfid = pd.Series(per_latent["mse_"].values), pd.Series(per_latent["rfid_"].values)
        rho_bits = bits.rank().corr(mse.rank())
        rho_rfid = mse.rank().corr(rfid.rank()) if rfid.notna().sum() >= 3 else float("nan")
        if kind == "fsq":
            uses_bits[(sweep, profile)] = rho_bits
            if not pd.isna(rho_rfid):
                fid_agrees[(sweep, profile)] = rho_rfid
        values = ", ".join(f"{int(b):,}: {m:.4f} / {'-' if pd.isna(r) else _fmt(r)}"
                           for b, m, r in zip(per_latent.index, mse, rfid))
        rows.append(f"| {sweep} | {profile} | {kind} | {values} | {rho_bits:+.2f} | "
                    f"{'-' if pd.isna(rho_rfid) else f'{rho_rfid:+.2f}'} |")
    if rows:
        lines += ["", "Tokenizers (one row per sweep, profile and kind; per latent, total bits: recon MSE / rFID). "
                  f"The paper's bit-scaling claims assume tokenizers that turn more bits into better reconstructions: "
                  f"Spearman between bits and recon MSE at or below {USES_BITS_RHO} counts as using them. A Spearman "
                  "between recon MSE and rFID far below +1 says the FID features judge reconstructions poorly on this "
                  "data.", "",
                  "| sweep | profile | tokenizer | bits: recon MSE / rFID | bits vs MSE | MSE vs rFID |",
                  "|---|---|---|---|---:|---:|", *rows]
    return uses_bits, fid_agrees


def budget_lines(conv: pd.DataFrame | None) -> list[str]:
    """REPORT.md's 'Training budget' section: per run with a gFID history, is it still improving at the end?"""
    budget = conv_mod.training_budget(conv) if conv is not None and not conv.empty else pd.DataFrame()
    if budget.empty:
        return []
    lines = ["## Training budget", "",
             f"Are the generators trained to convergence? Rule (analysis/convergence.py, fixed before the curves it "
             f"judges): a run is 'still improving' when its last third of training lowered gFID by more than "
             f"{conv_mod.FLAT_GAIN:.0%} (final gFID vs the last evaluation at or before two thirds of the steps); "
             f"otherwise 'flat'.", "",
             "| sweep | profile | run | gFID two thirds in (step) | final gFID (step) | state |",
             "|---|---|---|---|---|---|"]
    for r in budget.sort_values(["sweep", "profile", "series"]).itertuples():
        lines.append(f"| {r.sweep} | {r.profile} | {r.series} | {_fmt(r.mid_gfid)} ({r.mid_step}) | "
                     f"{_fmt(r.final_gfid)} ({r.final_step}) | {r.state} |")
    counts = budget["state"].value_counts()
    lines += ["", f"{counts.get('flat', 0)} of {len(budget)} runs flat, {counts.get('still improving', 0)} still "
                  "improving.", ""]
    return lines


def report_markdown(df: pd.DataFrame, figures=None, reported: pd.DataFrame | None = None,
                    match_tol: float = 0.05, flat_ratio: float = 1.5, history: pd.DataFrame | None = None,
                    information: pd.DataFrame | None = None) -> str:
    """REPORT.md text: data summary, claims (yes / no / not measured, with values and profile), the testbed (with
    `information`), main table, figures (the main figures, then each sweep's own set)."""
    df = df if df is not None else pd.DataFrame()
    lines = ["# BAR reproduction report", "",
             "Generated by `analysis/make_figures.py` from the MLflow runs; every number below comes from the runs "
             "except the `reported` rows, which come from `analysis/reported_results.csv`.", ""]
    lines += ["## Data", ""]
    if df.empty:
        lines += ["No runs.", ""]
    else:
        counts = df.assign(sweep=column(df, "sweep").fillna(column(df, "experiment")), profile_=_profile(df)) \
            .groupby(["sweep", "profile_", "status"]).size().rename("n").reset_index()
        lines += ["| sweep | profile | status | points |", "|---|---|---|---:|"]
        lines += [f"| {r.sweep} | {r.profile_} | {r.status} | {r.n} |" for r in counts.itertuples()]
        end = pd.to_datetime(column(df, "end_time"), utc=True).dropna()
        if not end.empty:
            lines += ["", f"Latest run ended {end.max().strftime('%Y-%m-%d %H:%M')} UTC."]
        failed = df[df["status"] == "failed"].sort_values(["run_name", "run_id"])
        if not failed.empty:
            lines += ["", "Failed points:"]
            for _, r in failed.iterrows():
                err = r.get("error") if isinstance(r.get("error"), str) else "no error message"
                lines.append(f"- {r.get('sweep', r.get('experiment'))} / {r['run_name']}: {err}")
        lines.append("")
    lines += ["## Claims", "",
              f"Verdicts per sweep and profile. Discrete 'matches' continuous within {match_tol:.0%} gFID; memory is 'nearly "
              f"flat' when it grows at most x{flat_ratio:g} over the measured bit range. {CONVERGENCE_RULE} Numbers "
              f"from small profiles test the trends, not the paper's absolute values.", "",
              "| claim | sweep | profile | verdict | evidence |", "|---|---|---|---|---|"]
    claims = evaluate_claims(df, match_tol, flat_ratio, history)
    for c in claims:
        lines.append(f"| {c.statement} | {c.sweep} | {c.profile} | **{c.verdict}** | {c.evidence.replace('|', '/')} |")
    lines += [""] + testbed_lines(df, claims, information)
    lines += budget_lines(conv_mod.convergence_frame(history, df) if history is not None and not df.empty else None)
    lines += ["## Main results", "", to_markdown(main_results_table(df, reported)).rstrip(), ""]
    if figures:
        lines += ["## Figures", "",
                  "Main figures, each drawn from one sweep (named in its caption):", ""]
        main = [f for f in figures if "/" not in f.name]
        per_sweep: dict[str, list] = {}
        for f in figures:
            if "/" in f.name:
                per_sweep.setdefault(f.name.split("/", 1)[0], []).append(f)
        lines += [_figure_line(f) for f in main]
        for sweep, items in per_sweep.items():
            lines += ["", f"### Sweep {sweep}", ""]
            lines += [_figure_line(f) for f in items if not f.skipped]
            skipped = [f.name.split("/", 1)[1] for f in items if f.skipped]
            if skipped:
                lines.append(f"- not drawn (no data for them in this sweep): {', '.join(skipped)}.")
        lines.append("")
    return "\n".join(lines)


def _figure_line(f) -> str:
    if f.skipped:
        return f"- `{f.name}`: not drawn ({f.skipped})."
    suffix = next((p.suffix for p in f.files if p.suffix == ".png"), None) or f.files[0].suffix
    return f"- `{f.name}` ([{f.name}{suffix}]({f.name}{suffix})): {f.caption}"


def write_report(df: pd.DataFrame, out_dir, figures=None, reported: pd.DataFrame | None = None, **kwargs) -> Path:
    """Write REPORT.md into out_dir and return its path (kwargs: match_tol, flat_ratio, history, information)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "REPORT.md"
    path.write_text(report_markdown(df, figures, reported, **kwargs))
    return path
