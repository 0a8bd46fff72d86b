"""The paper's results table next to measured values, and the list of measured points (Markdown, LaTeX/booktabs, CSV).

Reported numbers live in analysis/reported_results.csv (with a `source` column); measured numbers come only from the
run frame (`analysis.runs.load_runs`). Nothing measured is typed in here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.formatting import fmt, head_label
from analysis.runs import (
    BITS_PER_TOKEN,
    CHANNELS,
    CODEBOOK_LOG2,
    cast_value,
    column,
    numeric,
    profile_of,
    sweep_of,
    with_latent_size,
)
from bar.core.vocabulary import (
    FINISHED,
    FSQ,
    GFID,
    GFID_NOCFG,
    HEAD_NAME,
    INCEPTION_SCORE,
    MEM_ESTIMATE_GB,
    PEAK_MEM_GB,
    PRECISION,
    RECALL,
    RFID,
    SAMPLE_IMG_PER_S,
    SFID,
    TOKENIZER_KIND,
    TOTAL_BITS,
)

REPORTED_CSV = Path(__file__).resolve().parent / "reported_results.csv"
# metric column -> (table header, decimals)
METRICS = {GFID: ("gFID", 2), INCEPTION_SCORE: ("IS", 1), SFID: ("sFID", 2), PRECISION: ("Prec.", 3),
           RECALL: ("Rec.", 3), SAMPLE_IMG_PER_S: ("img/s", 2), RFID: ("rFID", 2)}
SECTIONS = {"main": "BAR (paper main table)", "baseline": "baselines", "peer": "peers (speed plot)",
            "tokenizer": "tokenizers (reconstruction)", "measured": "measured only (no paper counterpart)"}
MAIN_COLUMNS = ["section", "model", "params", "source", "sweep", "profile", "n", *METRICS]
MAIN_CAPTION = ("Main results: the paper's reported numbers (source column) next to the measured ones "
                "(profile, n finished runs averaged). Measured numbers at a small profile are not comparable in "
                "absolute value to the paper's.")


def load_reported(path=None) -> pd.DataFrame:
    """The paper's numbers: one row per model, columns table, model, match, resolution, params, metrics, source."""
    return pd.read_csv(path or REPORTED_CSV, dtype={"match": str, "params": str, "model": str, "source": str})


# ---------------------------------------------------------------------------------------------- main results table

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


def _measured_rows(runs: pd.DataFrame, section: str, model: str, params: str) -> list[dict]:
    """One row per sweep and profile of `runs` (finished): each metric's mean over its runs, n = how many."""
    out = []
    for (sw, prof), grp in runs.groupby(["_sweep", "_profile"], sort=True):
        row = {"section": section, "model": model, "params": params, "source": "measured", "sweep": sw,
               "profile": prof, "n": int(len(grp))}
        for m in METRICS:
            vals = numeric(grp, m)
            row[m] = float(vals.mean()) if vals.notna().any() else np.nan
        out.append(row)
    return out


def _reported_row(rep: pd.Series) -> dict:
    params = rep.get("params")
    row = {"section": rep.get("table", "main"), "model": rep["model"], "params": params if isinstance(params, str)
           else "", "source": rep.get("source", "paper"), "sweep": "", "profile": "", "n": np.nan}
    for m in METRICS:
        row[m] = float(rep[m]) if m in rep and pd.notna(rep[m]) else np.nan
    return row


def _measured_label(run: pd.Series) -> str:
    """What a measured run without a paper counterpart is called: preset, head, patch size, tokenizer and its size,
    e.g. 'tiny MBM fsq-16b', 'bar_b4 MBM p=2 ae-4c'."""
    parts = [str(run["model.preset"]) if pd.notna(run["model.preset"]) else "model?"]
    if pd.notna(run[HEAD_NAME]):
        parts.append(head_label(run[HEAD_NAME], short=True))
    if pd.notna(run["model.patch_size"]) and str(run["model.patch_size"]) != "1":
        parts.append(f"p={run['model.patch_size']}")
    kind = run[TOKENIZER_KIND]
    if pd.notna(kind):
        size = run[BITS_PER_TOKEN] if pd.notna(run[BITS_PER_TOKEN]) else run[CHANNELS]
        parts.append(f"{kind}-{fmt(int(size)) if pd.notna(size) else '?'}{'b' if kind == FSQ else 'c'}")
    return " ".join(parts)


def _unmatched_rows(rest: pd.DataFrame) -> list[dict]:
    """Measured rows of the finished runs no reported row matched, one group per `_measured_label`."""
    columns = ["model.preset", HEAD_NAME, "model.patch_size", TOKENIZER_KIND]
    labelled = with_latent_size(rest).assign(**{c: column(rest, c).astype(object) for c in columns})
    rest = rest.assign(_label=[_measured_label(run) for _, run in labelled.iterrows()])
    return [row for lab in sorted(rest["_label"].unique())
            for row in _measured_rows(rest[rest["_label"] == lab], "measured", lab, "")]


def main_results_table(df: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: each reported row (source = its citation) followed by the measured rows that match it (one per
    sweep and profile, mean over its finished runs, n = how many); then finished runs with no paper counterpart,
    grouped by (model.preset, head.name, model.patch_size, tokenizer), sweep and profile. Numeric metric columns
    (NaN = not available)."""
    reported = load_reported() if reported is None else reported
    df = df if df is not None else pd.DataFrame()
    finished = df[column(df, "status") == FINISHED] if not df.empty else df
    if not finished.empty:
        finished = finished.assign(_profile=profile_of(finished), _sweep=sweep_of(finished))
    rows = []
    used = pd.Series(False, index=finished.index)
    for _, rep in reported.iterrows():
        row = _reported_row(rep)
        rows.append(row)
        if not finished.empty:
            mask = _matches(finished, rep.get("match"))
            used |= mask
            rows += _measured_rows(finished[mask], row["section"], rep["model"], row["params"])
    if not finished.empty and not finished[~used].empty:
        rows += _unmatched_rows(finished[~used])
    return pd.DataFrame(rows, columns=MAIN_COLUMNS).reset_index(drop=True)


def measured_points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every sweep point in the frame (any status), sorted: sweep, point, profile, status, head, bits, metrics."""
    cols = ["sweep", "run_name", "profile", "status", TOKENIZER_KIND, HEAD_NAME, "model.preset", "model.patch_size",
            BITS_PER_TOKEN, CODEBOOK_LOG2, TOTAL_BITS, RFID, GFID, GFID_NOCFG, SAMPLE_IMG_PER_S, PEAK_MEM_GB,
            MEM_ESTIMATE_GB]
    if df is None or df.empty:
        return pd.DataFrame(columns=cols)
    df = with_latent_size(df)
    out = df[[c for c in cols if c in df.columns]].copy()
    keys = [c for c in ("sweep", "run_name", "profile") if c in out.columns]
    return out.sort_values(keys, kind="mergesort", na_position="last").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------- rendering

def _rendered(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, string cells and per-column alignment ('l' / 'r') shared by the Markdown and LaTeX renderers."""
    if "source" in table.columns and "section" in table.columns:  # main results table
        header = ["Model", "Params", "Source", "Sweep", "Profile", "n"] + [METRICS[m][0] for m in METRICS]
        align = ["l", "l", "l", "l", "l", "r"] + ["r"] * len(METRICS)
        cells = []
        for _, r in table.iterrows():
            cells.append([str(r["model"]), r["params"] if isinstance(r["params"], str) else "", str(r["source"]),
                          str(r["sweep"] or ""), str(r["profile"] or ""), "" if pd.isna(r["n"]) else str(int(r["n"]))]
                         + [fmt(r[m], METRICS[m][1]) if pd.notna(r[m]) else "-" for m in METRICS])
        return header, cells, align
    header = [str(c) for c in table.columns]
    align = ["r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table.columns]
    cells = [["-" if pd.isna(v) else fmt(v) for v in r] for r in table.itertuples(index=False)]
    return header, cells, align


def _sections(table: pd.DataFrame) -> list | None:
    """Each row's section for the main results table (rendered as section rows), None for any other table."""
    return list(table["section"]) if "section" in table.columns and "source" in table.columns else None


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown table (main results: one block per section with a bold section row)."""
    header, cells, align = _rendered(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    sections = _sections(table)
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


def _latex_tabular(table: pd.DataFrame) -> list[str]:
    header, cells, align = _rendered(table)
    sections = _sections(table)
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
    return body + [r"\bottomrule", r"\end{tabular}"]


def to_latex(table: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """LaTeX tabular with booktabs rules (\\toprule / \\midrule / \\bottomrule); wrapped in a table float when a caption
    or label is given. Needs \\usepackage{booktabs}."""
    body = _latex_tabular(table)
    if caption is None and label is None:
        return "\n".join(body) + "\n"
    wrapped = [r"\begin{table}[t]", r"\centering", r"\small", *body]
    if caption:
        wrapped.append(r"\caption{" + _tex(caption) + "}")
    if label:
        wrapped.append(r"\label{" + label + "}")
    wrapped.append(r"\end{table}")
    return "\n".join(wrapped) + "\n"


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
