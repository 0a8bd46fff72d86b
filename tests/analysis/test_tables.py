"""Tables that do not mislead: a measured number stands beside a reported one only for the same model, resolution and
head (paper profile); smaller profiles get tables of their own; nothing is averaged over heads or profiles; the
memory-wall verdict names the memory budget behind it.

The store (built once with the mlflow client, as the runner logs): sweep codebook_scaling at profiles tiny and small,
16 px, MBM and per-bit heads at 16 and 32 bits per token (the points of one profile and size share one tokenizer), and
softmax at 4 bits with 16 and 32 bits infeasible against generator.memory_budget_gb = 0.5; sweep paper_runs at
profile paper, 256 px: bar_b4 with MBM and with per-bit at 32 bits (one tokenizer), bar_b4 MBM at 16 bits (the
paper's BAR-B/4), and bar_l_512 MBM at 256 px (the paper reports it at 512 px).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analysis import claims, report, tables  # noqa: E402
from analysis.runs import load_runs  # noqa: E402

T0 = 1_767_225_600_000  # fixed start time (ms): the store is the same on every build


def _gfid(profile: str, head: str, bits: int) -> float:
    """A distinct gFID per point (heads 7 apart, sizes 1 apart), so that a mean of two points is no point's value."""
    base = {"tiny": 40.0, "small": 10.0, "paper": 2.0}[profile]
    return base + {"mbm": 0.0, "bitwise": 7.0, "softmax": 3.0}[head] + bits / 16


def _rfid(profile: str, bits: int) -> float:
    return {"tiny": 5.0, "small": 15.0, "paper": 0.5}[profile] + 8 / bits


def _point(client, exp_id, *, sweep, profile, preset, head, bits, resolution, status="finished", t):
    from mlflow.entities import Metric, Param, RunTag

    name = f"{head}-{bits}b" + ("" if preset in ("tiny", "bar_b4") else f"-{preset}")
    tokenizer = hashlib.sha1(f"{profile}/{resolution}/{bits}".encode()).hexdigest()[:12]
    tags = {"role": "point", "sweep": sweep, "profile": profile, "status": status, "point": name,
            "signature": hashlib.sha1(f"{sweep}/{name}/{profile}".encode()).hexdigest()[:12],
            "tokenizer_signature": tokenizer, "fid_extractor": "classifier"}
    params = {"tokenizer.kind": "fsq", "tokenizer.bits": bits, "head.name": head, "model.preset": preset,
              "model.patch_size": 4 if preset == "bar_b4" else 1, "profile.name": profile,
              "data.name": "digits" if resolution == 16 else "imagenet", "data.resolution": resolution,
              "generator.memory_budget_gb": 0.5 if profile != "paper" else None}
    if status == "infeasible":
        tags["infeasible_reason"] = (f"estimated training memory does not fit: needs {2.0 ** (bits - 16)} GiB per "
                                     "device, 0.5 GiB usable (budget 0.5 GiB per device)")
        metrics = {"mem_estimate_gb": 2.0 ** (bits - 16)}
    else:
        metrics = {"gfid": _gfid(profile, head, bits), "inception_score": 5.0, "sample_img_per_s": 100.0,
                   "rfid": _rfid(profile, bits), "generator_params": 4.16e8 if profile == "paper" else 1.5e6,
                   "mem_estimate_gb": 0.1}
    run = client.create_run(exp_id, start_time=t, tags=tags, run_name=name)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, float(v), t + 1000, 0) for k, v in metrics.items()],
                     tags=[RunTag("mlflow.runName", name)])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=t + 60_000)


def build_store(root: Path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    small = client.create_experiment("codebook_scaling", artifact_location=(root / "a1").as_uri())
    paper = client.create_experiment("paper_runs", artifact_location=(root / "a2").as_uri())
    t = T0
    for profile in ("tiny", "small"):
        for head in ("mbm", "bitwise"):
            for bits in (16, 32):
                t += 1000
                _point(client, small, sweep="codebook_scaling", profile=profile, preset="bar_b4", head=head,
                       bits=bits, resolution=16, t=t)
        for bits, status in ((4, "finished"), (16, "infeasible"), (32, "infeasible")):
            t += 1000
            _point(client, small, sweep="codebook_scaling", profile=profile, preset="tiny", head="softmax",
                   bits=bits, resolution=16, status=status, t=t)
    for preset, head, bits in (("bar_b4", "mbm", 32), ("bar_b4", "bitwise", 32), ("bar_b4", "mbm", 16),
                               ("bar_l_512", "mbm", 32)):
        t += 1000
        _point(client, paper, sweep="paper_runs", profile="paper", preset=preset, head=head, bits=bits,
               resolution=256, t=t)
    return uri


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return load_runs(build_store(tmp_path_factory.mktemp("tables_store")))


def _blocks(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each reported row's block: the reported row and the measured rows that follow it."""
    blocks, current = {}, None
    for _, row in table.iterrows():
        if row["source"] != tables.MEASURED_SOURCE:
            current = row["model"]
            blocks[current] = [row]
        else:
            blocks[current].append(row)
    return {k: pd.DataFrame(v) for k, v in blocks.items()}


def test_main_results_holds_no_mixed_row(runs):
    table = tables.main_results_table(runs)
    measured = table[table["source"] == tables.MEASURED_SOURCE]
    assert set(measured["profile"]) == {"paper"} and set(measured["resolution"]) == {256.0}
    assert "codebook_scaling" not in set(measured["sweep"])      # no 16 px row beside a 256 px reported row
    blocks = _blocks(table)
    # beside BAR-B/4 (MBM, 16 bits per token): the paper-profile bar_b4 MBM 16-bit point alone, its own value (not
    # a mean with the per-bit head's, nor with the 32-bit point, whose tokenizer is not the paper's)
    b4 = blocks["BAR-B/4"].iloc[1:]
    assert list(b4["point"]) == ["mbm-16b"] and list(b4["gfid"]) == [_gfid("paper", "mbm", 16)]
    assert b4["rfid"].isna().all()                                # a generator row holds generation metrics only
    assert len(blocks["BAR-L-512"]) == 1                          # its run is at 256 px, the paper's at 512 px
    # beside the tokenizer row: one row per tokenizer, its rFID only, never a gFID or a mean over generator heads
    fsq = blocks["BAR-FSQ (C=2^32)"].iloc[1:]
    assert len(fsq) == 1 and fsq.iloc[0]["rfid"] == _rfid("paper", 32)
    assert fsq[list(tables.GENERATION_METRICS)].isna().all().all()
    assert fsq.iloc[0]["point"] == "bitwise-32b, mbm-32b, mbm-32b-bar_l_512"
    # every measured gFID is one run's gFID: no value is a mean
    assert set(measured["gfid"].dropna()) <= set(runs["gfid"].dropna())
    assert tables.main_results_note(runs) is None


def test_each_profile_table_holds_only_its_profile(runs):
    measured = tables.profile_tables(runs)
    assert set(measured) == {"tiny", "small", "paper"}
    for profile, frame in measured.items():
        assert set(frame["profile"]) == {profile}, profile
        assert frame["section"].str.startswith(f"{profile} profile, ").all()
    for profile in ("tiny", "small"):
        frame = measured[profile]
        gen = frame[frame["section"] == f"{profile} profile, digits 16x16 px: generators (one row per sweep point)"]
        assert len(gen) == 5                                       # 2 heads x 2 sizes + softmax-4b: one row each
        expected = {f"{h}-{b}b": _gfid(profile, h, b) for h in ("mbm", "bitwise") for b in (16, 32)}
        assert dict(zip(gen["point"], gen["gfid"])) == {**expected, "softmax-4b": _gfid(profile, "softmax", 4)}
        tok = frame[frame["section"].str.endswith("tokenizers (rFID, one row per tokenizer)")]
        assert list(tok["model"]) == ["BAR-FSQ 4 bits/token", "BAR-FSQ 16 bits/token", "BAR-FSQ 32 bits/token"]
        assert list(tok["rfid"]) == [_rfid(profile, b) for b in (4, 16, 32)]
        assert tok["gfid"].isna().all()
    paper = measured["paper"]  # only what matches no reported row at its resolution, model and head
    assert sorted(paper.loc[paper["gfid"].notna(), "point"]) == ["bitwise-32b", "mbm-32b", "mbm-32b-bar_l_512"]
    assert list(paper.loc[paper["rfid"].notna(), "model"]) == ["BAR-FSQ 16 bits/token"]
    assert set(paper["data"]) == {"imagenet 256x256 px"}


def test_main_results_without_a_paper_profile_run(runs):
    small = runs[runs["profile"] != "paper"]
    table = tables.main_results_table(small)
    assert (table["source"] != tables.MEASURED_SOURCE).all() and len(table) == len(tables.load_reported())
    note = tables.main_results_note(small)
    assert note == ("No measured run at the paper's resolution (256 px or 512 px, profile paper) exists yet: the rows "
                    "above are the paper's numbers alone. Measured numbers at smaller sizes: measured_small.md, "
                    "measured_tiny.md.")
    # paper-profile runs, none beside a reported row: a per-bit head (BAR-B/4 reports MBM), its rFID not logged
    unmatched = runs[(runs["profile"] != "paper") | (runs["head.name"] == "bitwise")].copy()
    unmatched.loc[unmatched["profile"] == "paper", "rfid"] = float("nan")
    assert tables.main_results_note(unmatched).startswith(
        "No finished paper-profile run matches a reported row's model, resolution (256 px or 512 px) and head yet")


def test_write_tables_and_report(runs, tmp_path):
    names = {p.name for p in tables.write_tables(runs, tmp_path)}
    for profile in ("tiny", "small", "paper"):
        assert {f"measured_{profile}.{s}" for s in ("md", "tex", "csv")} <= names
    main = pd.read_csv(tmp_path / "main_results.csv", keep_default_na=False)
    assert set(main["profile"]) == {"", "paper"} and "16.0" not in set(main["resolution"].astype(str))
    tiny = pd.read_csv(tmp_path / "measured_tiny.csv")
    assert set(tiny["profile"]) == {"tiny"}
    assert set(tiny["gfid"].dropna()) <= set(runs.loc[runs["profile"] == "tiny", "gfid"].dropna())  # one run each
    assert "tiny profile, digits 16x16 px: generators" in (tmp_path / "measured_tiny.md").read_text()
    text = report.report_markdown(runs)
    main_part = text[text.index("## Main results"):text.index("## Measured, per profile")]
    assert "codebook_scaling" not in main_part and "| BAR-B/4 | 416M | measured (paper profile) |" in main_part
    assert "### Profile tiny" in text and "### Profile small" in text and "### Profile paper" in text


def test_memory_wall_names_its_budget(runs):
    walls = [c for c in claims.evaluate_claims(runs) if c.key == "softmax_memory_wall"]
    assert {(c.profile, c.verdict) for c in walls} == {("tiny", "yes"), ("small", "yes")}
    for c in walls:
        assert (f"softmax cannot run at log2 C = 16, 32 at the {c.profile} profile's 0.5 GB budget "
                "(generator.memory_budget_gb), not a GPU's memory") in c.evidence
    unset = runs.assign(**{"generator.memory_budget_gb": None})
    wall = next(c for c in claims.evaluate_claims(unset) if c.key == "softmax_memory_wall")
    assert "at 0.5 GB, the device's own memory (generator.memory_budget_gb unset" in wall.evidence
    assert "at the tiny profile's 0.5 GB budget (generator.memory_budget_gb)" in report.report_markdown(runs)
