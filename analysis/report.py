"""REPORT.md: the data, each paper claim checked against the runs, the testbed, the training budget, the main table
and the figures.

Every number comes from the runs, except the `reported` rows, which come from analysis/reported_results.csv.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import convergence as conv_mod
from analysis.claims import CONVERGENCE_RULE, evaluate_claims
from analysis.formatting import fmt
from analysis.runs import column, numeric, profile_of
from analysis.tables import (
    MAIN_CAPTION,
    main_results_note,
    main_results_table,
    profile_caption,
    profile_tables,
    to_markdown,
)
from bar.core.vocabulary import FAILED, FSQ, RECON_MSE, RFID, TOKENIZER_KIND, TOTAL_BITS

BITS_CLAIMS = ("rfid_falls", "gfid_falls", "discrete_matches_continuous")  # need tokenizers that use their bits
USES_BITS_RHO = -0.8     # recon MSE must fall with bits this consistently (rank correlation) to count as using them
FID_CLAIMS = ("rfid_falls", "gfid_falls", "discrete_matches_continuous", "mbm_beats_baselines", "converges_faster")
FID_AGREES_RHO = 0.5     # rFID must rank reconstructions at least this much like recon MSE to be trusted as a judge


# -------------------------------------------------------------------------------------------------------- testbed

def testbed_lines(df: pd.DataFrame, claims: list, information: pd.DataFrame | None) -> list[str]:
    """REPORT.md's testbed section: per sweep and profile, the data's information per image (`information`: rows of
    analysis.information.dataset_information) next to the latents the points used; then, for each 'no', whether the
    sweep's latents stay inside the regime the paper's claims are about (latents well below the image's
    information: 4,096 bits for 256x256 RGB at 16x16 x 16 bits) or go past what the data holds."""
    if information is None or information.empty or df.empty or TOTAL_BITS not in df:
        return []
    estimate = {(r.dataset, int(r.resolution)): float(r.estimate_bits) for r in information.itertuples()}
    frame = df.assign(sweep_=column(df, "sweep").fillna(column(df, "experiment")), profile_=profile_of(df),
                      data_=column(df, "data.name"), res_=numeric(df, "data.resolution"),
                      bits_=numeric(df, TOTAL_BITS))
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
    lines += [_regime_line(c, regime[(c.sweep, c.profile)], uses_bits.get((c.sweep, c.profile)),
                           fid_agrees.get((c.sweep, c.profile))) for c in noes]
    return lines + [""]


def _regime_line(claim, regime: tuple[int, int, float], uses_bits: float | None, fid_agrees: float | None) -> str:
    """One 'no' placed: are its sweep's latents inside the data's information, do its tokenizers use their bits
    (`uses_bits`: Spearman bits vs recon MSE) and does rFID follow recon MSE (`fid_agrees`)?"""
    n_above, n, info = regime
    where = (f"outside in part: {n_above} of its {n} latents exceed the data's {info:,.0f} bits per image, so the "
             "comparison there is not the one the paper makes" if n_above else
             f"inside: every latent is below the data's {info:,.0f} bits per image, so this 'no' speaks to the "
             "method at this scale (training budget and model size aside)")
    if uses_bits is not None and claim.key in BITS_CLAIMS and not uses_bits <= USES_BITS_RHO:
        where += (f"; but its binary tokenizers do not turn more bits into better reconstructions (Spearman "
                  f"{uses_bits:+.2f} between bits and recon MSE), so more bits gave the generator nothing to use: the "
                  "tokenizers, not the heads, are what this 'no' measures")
    if fid_agrees is not None and claim.key in FID_CLAIMS and not fid_agrees >= FID_AGREES_RHO:
        where += (f"; and its rFID does not follow the tokenizers' recon MSE (Spearman {fid_agrees:+.2f}): on this "
                  "data the FID features judge images poorly, so FID-based verdicts here say little either way")
    return f"- {claim.statement} ({claim.sweep}, {claim.profile}): {where}."


def _tokenizer_lines(frame: pd.DataFrame, lines: list[str]) -> tuple[dict, dict]:
    """The testbed's second table: per sweep, profile and tokenizer kind (one row per distinct latent), recon MSE and
    rFID against total bits, with two rank correlations: does the tokenizer turn more bits into better reconstructions
    (bits vs recon MSE, should be near -1), and does rFID agree with recon MSE (near +1, else the FID extractor is a
    poor judge of reconstructions on this data). Returns both correlations of the binary (fsq) tokenizers, each
    {(sweep, profile): rho}."""
    frame = frame.assign(kind_=column(frame, TOKENIZER_KIND), mse_=numeric(frame, RECON_MSE),
                         rfid_=numeric(frame, RFID))
    rows, uses_bits, fid_agrees = [], {}, {}
    for (sweep, profile, kind), g in frame.groupby(["sweep_", "profile_", "kind_"], dropna=True):
        per_latent = g.dropna(subset=["bits_", "mse_"]).groupby("bits_")[["mse_", "rfid_"]].mean().sort_index()
        if len(per_latent) < 3:
            continue
        bits = pd.Series(per_latent.index, dtype=float)
        mse, rfid = pd.Series(per_latent["mse_"].values), pd.Series(per_latent["rfid_"].values)
        rho_bits = bits.rank().corr(mse.rank())
        rho_rfid = mse.rank().corr(rfid.rank()) if rfid.notna().sum() >= 3 else float("nan")
        if kind == FSQ:
            uses_bits[(sweep, profile)] = rho_bits
            if not pd.isna(rho_rfid):
                fid_agrees[(sweep, profile)] = rho_rfid
        values = ", ".join(f"{int(b):,}: {m:.4f} / {'-' if pd.isna(r) else fmt(r)}"
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


# ------------------------------------------------------------------------------------------------ training budget

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
        lines.append(f"| {r.sweep} | {r.profile} | {r.series} | {fmt(r.mid_gfid)} ({r.mid_step}) | "
                     f"{fmt(r.final_gfid)} ({r.final_step}) | {r.state} |")
    counts = budget["state"].value_counts()
    lines += ["", f"{counts.get('flat', 0)} of {len(budget)} runs flat, {counts.get('still improving', 0)} still "
                  "improving.", ""]
    return lines


# --------------------------------------------------------------------------------------------------------- report

def _data_lines(df: pd.DataFrame) -> list[str]:
    """Points per sweep, profile and status; when the latest run ended; the failed points with their errors."""
    lines = ["## Data", ""]
    if df.empty:
        return lines + ["No runs.", ""]
    counts = df.assign(sweep=column(df, "sweep").fillna(column(df, "experiment")), profile_=profile_of(df)) \
        .groupby(["sweep", "profile_", "status"]).size().rename("n").reset_index()
    lines += ["| sweep | profile | status | points |", "|---|---|---|---:|"]
    lines += [f"| {r.sweep} | {r.profile_} | {r.status} | {r.n} |" for r in counts.itertuples()]
    end = pd.to_datetime(column(df, "end_time"), utc=True).dropna()
    if not end.empty:
        lines += ["", f"Latest run ended {end.max().strftime('%Y-%m-%d %H:%M')} UTC."]
    failed = df[df["status"] == FAILED].sort_values(["run_name", "run_id"])
    if not failed.empty:
        lines += ["", "Failed points:"]
        for _, r in failed.iterrows():
            err = r.get("error") if isinstance(r.get("error"), str) else "no error message"
            lines.append(f"- {r.get('sweep', r.get('experiment'))} / {r['run_name']}: {err}")
    return lines + [""]


def results_lines(df: pd.DataFrame, reported: pd.DataFrame | None) -> list[str]:
    """The main results table (the paper's numbers; beside them only paper-profile runs of the same model, resolution
    and head, with a line saying so when there are none), then each profile's measured table under its own heading."""
    table = main_results_table(df, reported)
    lines = ["## Main results", "", MAIN_CAPTION, "",
             to_markdown(table, main_results_note(df, reported)).rstrip(), ""]
    measured = profile_tables(df, reported)
    if measured:
        lines += ["## Measured, per profile", "",
                  "Each profile's runs in a table of their own, never beside the paper's numbers.", ""]
    for profile, frame in measured.items():
        lines += [f"### Profile {profile}", "", profile_caption(profile), "", to_markdown(frame).rstrip(), ""]
    return lines


def _claims_header(match_tol: float, flat_ratio: float) -> list[str]:
    return ["## Claims", "",
            f"Verdicts per sweep and profile. Discrete 'matches' continuous within {match_tol:.0%} gFID; memory is "
            f"'nearly flat' when it grows at most x{flat_ratio:g} over the measured bit range. {CONVERGENCE_RULE} "
            "Numbers from small profiles test the trends, not the paper's absolute values.", "",
            "| claim | sweep | profile | verdict | evidence |", "|---|---|---|---|---|"]


def _figure_line(f) -> str:
    if f.skipped:
        return f"- `{f.name}`: not drawn ({f.skipped})."
    suffix = next((p.suffix for p in f.files if p.suffix == ".png"), None) or f.files[0].suffix
    return f"- `{f.name}` ([{f.name}{suffix}]({f.name}{suffix})): {f.caption}"


def _figures_lines(figures: list) -> list[str]:
    """The main figures, then each sweep's own set (those not drawn named in one line)."""
    lines = ["## Figures", "", "Main figures, each drawn from one sweep (named in its caption):", ""]
    lines += [_figure_line(f) for f in figures if "/" not in f.name]
    per_sweep: dict[str, list] = {}
    for f in figures:
        if "/" in f.name:
            per_sweep.setdefault(f.name.split("/", 1)[0], []).append(f)
    for sweep, items in per_sweep.items():
        lines += ["", f"### Sweep {sweep}", ""]
        lines += [_figure_line(f) for f in items if not f.skipped]
        skipped = [f.name.split("/", 1)[1] for f in items if f.skipped]
        if skipped:
            lines.append(f"- not drawn (no data for them in this sweep): {', '.join(skipped)}.")
    return lines + [""]


def report_markdown(df: pd.DataFrame, figures=None, reported: pd.DataFrame | None = None,
                    match_tol: float = 0.05, flat_ratio: float = 1.5, history: pd.DataFrame | None = None,
                    information: pd.DataFrame | None = None) -> str:
    """REPORT.md text: data summary, claims (yes / no / not measured, with values and profile), the testbed (with
    `information`), the training budget (with `history`), main table, figures (the main figures, then each sweep's
    own set)."""
    df = df if df is not None else pd.DataFrame()
    lines = ["# BAR reproduction report", "",
             "Generated by `analysis/make_figures.py` from the MLflow runs; every number below comes from the runs "
             "except the `reported` rows, which come from `analysis/reported_results.csv`.", ""]
    lines += _data_lines(df) + _claims_header(match_tol, flat_ratio)
    claims = evaluate_claims(df, match_tol, flat_ratio, history)
    lines += [f"| {c.statement} | {c.sweep} | {c.profile} | **{c.verdict}** | {c.evidence.replace('|', '/')} |"
              for c in claims]
    lines += [""] + testbed_lines(df, claims, information)
    lines += budget_lines(conv_mod.convergence_frame(history, df) if history is not None and not df.empty else None)
    lines += results_lines(df, reported)
    if figures:
        lines += _figures_lines(figures)
    return "\n".join(lines)


def write_report(df: pd.DataFrame, out_dir, figures=None, reported: pd.DataFrame | None = None, **kwargs) -> Path:
    """Write REPORT.md into out_dir and return its path (kwargs: match_tol, flat_ratio, history, information)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "REPORT.md"
    path.write_text(report_markdown(df, figures, reported, **kwargs))
    return path
