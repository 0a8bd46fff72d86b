"""The paper's results table next to measured values, the measured tables of each profile, and the list of measured
points (Markdown, LaTeX/booktabs, CSV).

Reported numbers live in analysis/reported_results.csv (with a `source` column); measured numbers come only from the
run frame (`analysis.runs.load_runs`). Nothing measured is typed in here. No measured number is a mean: the frame
holds one run per sweep point, and each measured row is one point (or one tokenizer).

What stands where, so that no row compares unlike things:
- main_results: each reported row, followed only by finished runs of the `paper` profile whose `data.resolution` is
  the row's resolution and that match its `match` spec; a row of generation metrics also needs its spec to name the
  head (`head.name`), since those numbers depend on it. Beside a generation row: one row per sweep point, generation
  metrics only. Beside a tokenizer row (rFID only): one row per tokenizer, its rFID, never a mean over the generators
  trained on it. With no such run, the reported rows stand alone and `main_results_note` says why.
- measured_<profile>: every other finished run, one table per profile, in sections per dataset and resolution:
  generators (one row per sweep point) and tokenizers (one row per tokenizer, rFID).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.formatting import fmt, head_label
from analysis.runs import (
    BITS_PER_TOKEN,
    CHANNELS,
    CODEBOOK_LOG2,
    DATA_NAME,
    DATA_RESOLUTION,
    FID_EXTRACTOR,
    RFID_EXTRACTOR,
    GENERATOR_PARAMS,
    TOKENIZER_SIGNATURE,
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
    HEAD_ORDER,
    INCEPTION_SCORE,
    MEM_ESTIMATE_GB,
    PEAK_MEM_GB,
    PRECISION,
    RECALL,
    RFID,
    SAMPLE_IMG_PER_S,
    SFID,
    TOKENIZER_KIND,
    TOKENIZER_LABEL,
    TOTAL_BITS,
)

REPORTED_CSV = Path(__file__).resolve().parent / "reported_results.csv"
PAPER_PROFILE = "paper"   # the profile at the paper's sizes: the only one whose runs stand beside reported rows
# metric column -> (table header, decimals)
METRICS = {GFID: ("gFID", 2), INCEPTION_SCORE: ("IS", 1), SFID: ("sFID", 2), PRECISION: ("Prec.", 3),
           RECALL: ("Rec.", 3), SAMPLE_IMG_PER_S: ("img/s", 2), RFID: ("rFID", 2)}
GENERATION_METRICS = (GFID, INCEPTION_SCORE, SFID, PRECISION, RECALL, SAMPLE_IMG_PER_S)  # depend on the head
SECTIONS = {"main": "BAR (paper main table)", "baseline": "baselines", "peer": "peers (speed plot)",
            "tokenizer": "tokenizers (reconstruction)"}
MEASURED_SOURCE = f"measured ({PAPER_PROFILE} profile)"
MAIN_COLUMNS = ["section", "model", "params", "source", "profile", "sweep", "point", "resolution", *METRICS]
PROFILE_COLUMNS = ["section", "profile", "data", "resolution", "model", "sweep", "point", *METRICS]
MAIN_CAPTION = (f"Main results: the paper's reported numbers (source column). Beside a reported row stand only "
                f"finished runs of the {PAPER_PROFILE} profile at the row's resolution, model and (for generation "
                "metrics) head: one row per sweep point, or per tokenizer for rFID; no mean over heads, points or "
                "profiles. Runs at other profiles are in each profile's own table.")


def load_reported(path=None) -> pd.DataFrame:
    """The paper's numbers: one row per model, columns table, model, match, resolution, params, metrics, source."""
    return pd.read_csv(path or REPORTED_CSV, dtype={"match": str, "params": str, "model": str, "source": str})


# ----------------------------------------------------------------------------------------------- the runs' rows

def _same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return False
    if isinstance(a, (int, float, np.integer, np.floating)) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def _spec_keys(spec) -> set[str]:
    """The param names a 'key=value;key=value' spec constrains."""
    return {part.partition("=")[0].strip() for part in spec.split(";")} if isinstance(spec, str) else set()


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


def _tokenizer_key(runs: pd.DataFrame) -> pd.Series:
    """Which trained tokenizer each run used and who judged its rFID: the `tokenizer_signature` tag the runner logs,
    else the params a tokenizer depends on (tokenizer.*, data.*, seed); then the FID extractor."""
    cols = sorted(c for c in runs.columns if str(c).startswith(("tokenizer.", "data.")) or c == "seed")
    params = pd.Series([";".join(f"{c}={v}" for c, v in zip(cols, values)) for values in
                        runs[cols].astype(object).itertuples(index=False, name=None)], index=runs.index, dtype=object)
    sig = column(runs, TOKENIZER_SIGNATURE).astype(object)
    judge = column(runs, RFID_EXTRACTOR).astype(object)     # under eval.protocol=adm fid_extractor is gFID's
    judge = judge.where(judge.notna(), column(runs, FID_EXTRACTOR).astype(object))
    judge = judge.where(judge.notna(), column(runs, "eval.extractor").astype(object))
    return sig.where(sig.notna(), params).astype(str) + "|" + judge.astype(str)


def _where(runs: pd.DataFrame) -> pd.Series:
    """Each run's data and resolution as a section names them: 'digits 16x16 px' ('resolution not logged')."""
    res = numeric(runs, DATA_RESOLUTION)
    data = column(runs, DATA_NAME).astype(object).fillna("data not logged").astype(str)
    return pd.Series([f"{d} {int(r)}x{int(r)} px" if r == r else f"{d}, resolution not logged"
                      for d, r in zip(data, res)], index=runs.index, dtype=object)


def _finished(df: pd.DataFrame | None) -> pd.DataFrame:
    """The finished runs, with their profile, sweep, resolution, data and tokenizer (columns _profile, _sweep,
    _resolution, _where, _tokenizer) and a label (_label, `_measured_label`)."""
    extra = ["_profile", "_sweep", "_resolution", "_where", "_tokenizer", "_label"]
    if df is None or df.empty or "status" not in df.columns:
        return pd.DataFrame(columns=["run_name", "status", *extra])
    runs = df[df["status"] == FINISHED]
    return runs.assign(_profile=profile_of(runs), _sweep=sweep_of(runs), _resolution=numeric(runs, DATA_RESOLUTION),
                       _where=_where(runs), _tokenizer=_tokenizer_key(runs), _label=_labels(runs))


def _is_generator(runs: pd.DataFrame) -> pd.Series:
    """Runs with at least one generation metric (a tokenizer-only point has none)."""
    mask = pd.Series(False, index=runs.index)
    for m in GENERATION_METRICS:
        mask |= numeric(runs, m).notna()
    return mask


def _measured_label(run: pd.Series) -> str:
    """What a measured generator is called: preset, head, patch size, tokenizer and its size, e.g. 'tiny MBM fsq-16b',
    'bar_b4 MBM p=2 ae-4c'."""
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


def _labels(runs: pd.DataFrame) -> pd.Series:
    columns = ["model.preset", HEAD_NAME, "model.patch_size", TOKENIZER_KIND]
    labelled = with_latent_size(runs).assign(**{c: column(runs, c).astype(object) for c in columns})
    return pd.Series([_measured_label(run) for _, run in labelled.iterrows()], index=runs.index, dtype=object)


def _tokenizer_label(run: pd.Series) -> str:
    """A tokenizer as the tables name it: 'BAR-FSQ 16 bits/token', 'AE 4 channels'."""
    kind = run.get(TOKENIZER_KIND)
    name = TOKENIZER_LABEL.get(kind, str(kind)) if isinstance(kind, str) else "tokenizer?"
    bits = pd.to_numeric(run.get("tokenizer.bits"), errors="coerce")
    channels = pd.to_numeric(run.get("tokenizer.channels"), errors="coerce")
    if pd.notna(bits):
        return f"{name} {int(bits)} bits/token"
    if pd.isna(channels):
        return name
    return f"{name} {int(channels)} channel{'' if int(channels) == 1 else 's'}"


def _params_text(run: pd.Series) -> str:
    """The measured generator's parameter count (metric generator_params), '' where not logged."""
    n = pd.to_numeric(run.get(GENERATOR_PARAMS), errors="coerce")
    if n is None or not n == n:
        return ""
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _generator_order(runs: pd.DataFrame) -> pd.DataFrame:
    """Generator runs in table order: sweep, head (HEAD_ORDER), tokenizer kind and size, patch size, point."""
    head = column(runs, HEAD_NAME).map(lambda h: HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER))
    size = numeric(runs, "tokenizer.bits", "tokenizer.channels")
    keyed = runs.assign(_h=head, _k=column(runs, TOKENIZER_KIND).astype(str), _s=size,
                        _p=numeric(runs, "model.patch_size"))
    return keyed.sort_values(["_sweep", "_h", "_k", "_s", "_p", "run_name"], kind="mergesort").drop(
        columns=["_h", "_k", "_s", "_p"])


def _point_rows(runs: pd.DataFrame, section: str, model: str | None, source: str) -> list[dict]:
    """One row per generator run (sweep point), its generation metrics alone; `model` None: the run's label."""
    rows = []
    for _, run in _generator_order(runs[_is_generator(runs)]).iterrows():
        row = {"section": section, "model": model or run["_label"], "params": _params_text(run), "source": source,
               "profile": run["_profile"], "data": run["_where"], "resolution": run["_resolution"],
               "sweep": run["_sweep"], "point": run["run_name"]}
        row.update({m: float(run[m]) if m in GENERATION_METRICS and m in run and pd.notna(run[m]) else np.nan
                    for m in METRICS})
        rows.append(row)
    return rows


def _tokenizer_rows(runs: pd.DataFrame, section: str, model: str | None, source: str) -> list[dict]:
    """One row per tokenizer the runs used (`_tokenizer_key`): its rFID, the sweeps and points that share it (never a
    mean over them; a tokenizer judged differently, with another rFID, gets a row per value). `model` None: the
    tokenizer's label."""
    runs = runs.assign(_rfid=numeric(runs, RFID), _size=numeric(runs, "tokenizer.bits", "tokenizer.channels"),
                       _kind=column(runs, TOKENIZER_KIND).astype(str)).dropna(subset=["_rfid"])
    runs = runs.sort_values(["_kind", "_size", "_sweep", "run_name"], kind="mergesort")
    rows = []
    for (_, rfid), grp in runs.groupby(["_tokenizer", "_rfid"], sort=False):
        first = grp.iloc[0]
        row = {"section": section, "model": model or _tokenizer_label(first), "params": "", "source": source,
               "profile": first["_profile"], "data": first["_where"], "resolution": first["_resolution"],
               "sweep": ", ".join(sorted(set(grp["_sweep"]))), "point": ", ".join(sorted(set(grp["run_name"])))}
        row.update({m: float(rfid) if m == RFID else np.nan for m in METRICS})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- main results table

def _reports_generation(rep: pd.Series) -> bool:
    """Does the reported row hold numbers that depend on the generator's head (any generation metric)?"""
    return any(m in rep and pd.notna(rep[m]) for m in GENERATION_METRICS)


def _beside(runs: pd.DataFrame, rep: pd.Series) -> pd.Series:
    """The runs that may stand beside reported row `rep`: paper profile, its resolution, its `match` spec, and for a
    row of generation metrics a spec that names the head (else no run: the head the numbers belong to is unknown)."""
    spec = rep.get("match")
    if _reports_generation(rep) and HEAD_NAME not in _spec_keys(spec):
        return pd.Series(False, index=runs.index)
    resolution = pd.to_numeric(rep.get("resolution"), errors="coerce")
    same_res = runs["_resolution"].astype(float) == float(resolution)
    return (runs["_profile"] == PAPER_PROFILE) & same_res & _matches(runs, spec)


def _reported_row(rep: pd.Series) -> dict:
    params = rep.get("params")
    resolution = pd.to_numeric(rep.get("resolution"), errors="coerce")
    row = {"section": rep.get("table", "main"), "model": rep["model"], "params": params if isinstance(params, str)
           else "", "source": rep.get("source", "paper"), "profile": "", "sweep": "", "point": "",
           "resolution": float(resolution)}
    for m in METRICS:
        row[m] = float(rep[m]) if m in rep and pd.notna(rep[m]) else np.nan
    return row


def _shown_in_main(runs: pd.DataFrame, reported: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Which runs main_results shows: as generators (beside a generation row) and through their tokenizer (beside a
    tokenizer row; every run of that tokenizer at the paper profile)."""
    gen = pd.Series(False, index=runs.index)
    tok = pd.Series(False, index=runs.index)
    for _, rep in reported.iterrows():
        mask = _beside(runs, rep)
        if _reports_generation(rep):
            gen |= mask & _is_generator(runs)
        else:
            tok |= mask & numeric(runs, RFID).notna()
    paper = runs["_profile"] == PAPER_PROFILE
    return gen, paper & runs["_tokenizer"].isin(set(runs.loc[tok, "_tokenizer"]))


def main_results_table(df: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: each reported row (source = its citation), then the measured rows that may stand beside it
    (`_beside`): one per sweep point (generation rows) or per tokenizer (tokenizer rows). Runs of other profiles, and
    paper-profile runs that match no reported row, are in `profile_tables`. Numeric metric columns (NaN = not
    available)."""
    reported = load_reported() if reported is None else reported
    runs = _finished(df)
    rows = []
    for _, rep in reported.iterrows():
        row = _reported_row(rep)
        rows.append(row)
        near = runs[_beside(runs, rep)]
        make = _point_rows if _reports_generation(rep) else _tokenizer_rows
        rows += make(near, row["section"], rep["model"], MEASURED_SOURCE)
    return pd.DataFrame(rows, columns=MAIN_COLUMNS).reset_index(drop=True)


def main_results_note(df: pd.DataFrame, reported: pd.DataFrame | None = None) -> str | None:
    """A line under main_results when no measured row stands in it: why (no paper-profile run yet, or none at a
    reported row's resolution, model and head) and where the measured numbers are. None when it has measured rows."""
    reported = load_reported() if reported is None else reported
    if (main_results_table(df, reported)["source"] == MEASURED_SOURCE).any():
        return None
    runs = _finished(df)
    resolutions = sorted({int(r) for r in pd.to_numeric(reported["resolution"], errors="coerce").dropna()})
    at = " or ".join(f"{r} px" for r in resolutions)
    others = sorted(set(runs["_profile"]) - {PAPER_PROFILE})
    where = (" Measured numbers at smaller sizes: " + ", ".join(f"{profile_stem(p)}.md" for p in others) + "."
             if others else "")
    if not (runs["_profile"] == PAPER_PROFILE).any():
        return (f"No measured run at the paper's resolution ({at}, profile {PAPER_PROFILE}) exists yet: the rows "
                f"above are the paper's numbers alone.{where}")
    return (f"No finished {PAPER_PROFILE}-profile run matches a reported row's model, resolution ({at}) and head yet: "
            f"the rows above are the paper's numbers alone; the {PAPER_PROFILE} profile's runs are in "
            f"{profile_stem(PAPER_PROFILE)}.md.{where}")


# --------------------------------------------------------------------------------------------- tables per profile

def profile_stem(profile: str) -> str:
    """File name (no suffix) of a profile's measured table: measured_<profile> (measured_points is taken)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(profile))
    return f"measured_{safe}" if safe != "points" else "measured_profile_points"


def profile_caption(profile: str) -> str:
    extra = (" Only the runs that match no reported row at its resolution, model and head (those that do are in the "
             "main results table)." if profile == PAPER_PROFILE else
             " Not comparable in absolute value to the paper's numbers (main results table): other data, resolution "
             "and model sizes.")
    return (f"Measured at the {profile} profile, in sections per dataset and resolution: generators (one row per "
            f"sweep point, generation metrics) and tokenizers (one row per tokenizer, rFID; the points that share it "
            f"listed).{extra}")


def _profile_rows(profile: str, gen: pd.DataFrame, tok: pd.DataFrame) -> list[dict]:
    """A profile's rows, per dataset and resolution (sorted by resolution): generators, then tokenizers."""
    places = pd.concat([gen[["_where", "_resolution"]], tok[["_where", "_resolution"]]])
    order = places.assign(_r=places["_resolution"].astype(float).fillna(np.inf)).drop_duplicates("_where")
    rows = []
    for where in order.sort_values(["_r", "_where"])["_where"]:
        head = f"{profile} profile, {where}"
        rows += _point_rows(gen[gen["_where"] == where], f"{head}: generators (one row per sweep point)", None, "")
        rows += _tokenizer_rows(tok[tok["_where"] == where], f"{head}: tokenizers (rFID, one row per tokenizer)",
                                None, "")
    return rows


def profile_tables(df: pd.DataFrame, reported: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """{profile: its measured table}: every finished run of a profile other than the paper's, and the paper-profile
    runs main_results does not show; columns PROFILE_COLUMNS (section says profile, dataset and resolution)."""
    reported = load_reported() if reported is None else reported
    runs = _finished(df)
    gen_in_main, tok_in_main = _shown_in_main(runs, reported)
    out = {}
    for profile in sorted(set(runs["_profile"])):
        mine = runs["_profile"] == profile
        gen = runs[mine & _is_generator(runs) & ~gen_in_main]
        tok = runs[mine & numeric(runs, RFID).notna() & ~tok_in_main]
        rows = _profile_rows(profile, gen, tok)
        if rows:
            out[profile] = pd.DataFrame(rows, columns=PROFILE_COLUMNS).reset_index(drop=True)
    return out


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

# Sectioned tables: (column, header, alignment) before the metric columns.
_MAIN_LAYOUT = [("model", "Model", "l"), ("params", "Params", "l"), ("source", "Source", "l"), ("sweep", "Sweep", "l"),
                ("point", "Point", "l"), ("resolution", "Res.", "r")]
_PROFILE_LAYOUT = [("model", "Model", "l"), ("sweep", "Sweep", "l"), ("point", "Point", "l")]


def _cell(value) -> str:
    """A non-metric cell: '' when missing, whole floats as integers (a resolution of 256.0 is '256')."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _rendered(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, string cells and per-column alignment ('l' / 'r') shared by the Markdown and LaTeX renderers."""
    if "section" in table.columns:  # main results or a profile's table
        layout = _MAIN_LAYOUT if "source" in table.columns else _PROFILE_LAYOUT
        header = [h for _, h, _ in layout] + [METRICS[m][0] for m in METRICS]
        align = [a for _, _, a in layout] + ["r"] * len(METRICS)
        cells = [[_cell(r[c]) for c, _, _ in layout]
                 + [fmt(r[m], METRICS[m][1]) if pd.notna(r[m]) else "-" for m in METRICS]
                 for _, r in table.iterrows()]
        return header, cells, align
    header = [str(c) for c in table.columns]
    align = ["r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table.columns]
    cells = [["-" if pd.isna(v) else fmt(v) for v in r] for r in table.itertuples(index=False)]
    return header, cells, align


def _sections(table: pd.DataFrame) -> list | None:
    """Each row's section for a sectioned table (rendered as section rows), None for any other table."""
    return list(table["section"]) if "section" in table.columns else None


def to_markdown(table: pd.DataFrame, note: str | None = None) -> str:
    """GitHub Markdown table (sectioned tables: one block per section with a bold section row); `note`: a line
    under it."""
    header, cells, align = _rendered(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    sections = _sections(table)
    last = None
    for i, row in enumerate(cells):
        if sections is not None and sections[i] != last:
            last = sections[i]
            lines.append("| **" + SECTIONS.get(last, str(last)) + "** |" + " |" * (len(header) - 1))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


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
    """Into out_dir: main_results.{md,tex,csv} (with `main_results_note` when it has no measured row),
    measured_<profile>.{md,tex,csv} for each profile with runs to show (`profile_tables`), measured_points.{md,csv}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reported = load_reported() if reported is None else reported
    table, note = main_results_table(df, reported), main_results_note(df, reported)
    points = measured_points_table(df)
    texts = {out / "main_results.md": to_markdown(table, note),
             out / "main_results.tex": to_latex(table, caption=MAIN_CAPTION + (f" {note}" if note else ""),
                                                label="tab:main-results"),
             out / "measured_points.md": to_markdown(points)}
    frames = {out / "main_results.csv": table, out / "measured_points.csv": points}
    for profile, measured in profile_tables(df, reported).items():
        stem = profile_stem(profile)
        texts[out / f"{stem}.md"] = to_markdown(measured)
        texts[out / f"{stem}.tex"] = to_latex(measured, caption=profile_caption(profile),
                                              label=f"tab:{stem.replace('_', '-')}")
        frames[out / f"{stem}.csv"] = measured
    for path, text in texts.items():
        path.write_text(text)
    for path, frame in frames.items():
        frame.to_csv(path, index=False, lineterminator="\n")
    return sorted([*texts, *frames])
