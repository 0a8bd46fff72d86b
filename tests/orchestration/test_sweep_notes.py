"""What the MLflow UI shows about a sweep (bar.orchestration.sweep_notes): the experiment's description from the sweep
file, each launch's description and headline metrics, written to a real store."""

import json
from pathlib import Path

import pytest

from bar.orchestration import sweep_notes, tracking
from bar.orchestration.config import available_sweeps, compose
from bar.orchestration.planner import Plan
from bar.orchestration.sweep_notes import LaunchNotes, experiment_note, launch_note

DEMO = ["sweep=codebook_scaling", "launcher=local", "hydra.sweeper.max_batch_size=2"]


def _sweep(*overrides: str, uri: str | None = None):
    extra = [f"tracking.uri={uri}"] if uri else []
    return compose([*overrides, *extra], hydra_node=True)


def _row(name, status="finished", earlier=False, **metrics):
    return {"name": name, "status": status, "metrics": metrics, "earlier": earlier}


def _plan(name, action, run_id=None):
    return Plan(name=name, signature="0" * 12, folder=Path("."), action=action, run_id=run_id)


@pytest.mark.parametrize("sweep", available_sweeps())
def test_every_sweep_file_says_which_paper_figure_it_reproduces(sweep):
    sweeper = _sweep(f"sweep={sweep}").hydra.sweeper
    assert sweeper.paper and "\n" not in sweeper.paper and len(sweeper.paper) <= 70   # the collapsed header's line
    assert len(sweeper.description) > 40


def test_experiment_description_names_figure_file_and_commands():
    cfg = _sweep(*DEMO)
    note = experiment_note(cfg, "7")
    first, _, rest = note.partition("\n")
    assert first == "**Paper figure: codebook scaling, gFID vs log2 C per head**"
    assert "the paper's memory wall" in rest     # the sweep file's description
    assert "- sweep file: `sweeps/codebook_scaling.yaml`; run it: `python run.py -m sweep=codebook_scaling`" in rest
    assert ("the latest launch: `python run.py -m sweep=codebook_scaling launcher=local "
            "hydra.sweeper.max_batch_size=2`") in rest
    assert "redraw its figures: `python analysis/make_figures.py --sweep codebook_scaling`" in rest
    assert "(#/experiments/7/runs?viewStateShareKey=headline)" in rest


def test_experiment_description_leads_with_the_latest_numbers():
    results = [_row("mbm-8b", gfid=9.5), _row("mbm-16b", gfid=7.125, rfid=2.0), _row("softmax-24b", "infeasible"),
               _row("bitwise-8b", "failed", gfid=1.0)]        # a failed point's number is not a result
    note = experiment_note(_sweep(*DEMO), "7", results)
    assert note.startswith("best gFID 7.125 (mbm-16b) · **Paper figure: codebook scaling, gFID vs log2 C per head**\n")
    assert "hydra.sweeper.max_batch_size=2`, best gFID 7.125 (mbm-16b), best rFID 2 (mbm-16b)\n" in note
    assert sweep_notes.best_metrics(results) == {"best_gfid": 7.125, "best_rfid": 2.0}


def test_a_sweep_without_a_file_says_so():
    note = experiment_note(_sweep("experiment=adhoc", "tokenizer.bits=4"), "3")
    assert note.startswith("**Sweep adhoc**") and "no sweep file" in note


def test_launch_description_lists_command_points_and_numbers():
    cfg = _sweep(*DEMO)
    results = [_row("mbm-4b", gfid=12.0, earlier=True), _row("mbm-8b", gfid=9.5), _row("softmax-24b", "infeasible")]
    note = launch_note(cfg, results, ["mbm-8b", "softmax-24b", "bitwise-8b"], "running: 2 of 3 points done")
    lines = note.splitlines()
    assert lines[0] == "`python run.py -m sweep=codebook_scaling launcher=local hydra.sweeper.max_batch_size=2`"
    assert lines[2] == "**running: 2 of 3 points done** · profile tiny · best gFID 9.5 (mbm-8b)"
    assert "| mbm-4b | finished (earlier launch) | 12 |  |" in lines
    assert "| softmax-24b | infeasible |  |  |" in lines and "| bitwise-8b | waiting | | |" in lines


def test_headline_view_selects_the_sweeps_metrics():
    columns = json.loads(sweep_notes.headline_view(_sweep("sweep=bits_vs_rfid")))["selectedColumns"]
    assert columns == ["metrics.`best_rfid`", "metrics.`rfid`", "tags.`status`"]
    note = launch_note(_sweep("sweep=bits_vs_rfid"), [_row("fsq-4b", rfid=3.5)], ["fsq-4b"], "finished")
    assert "| point | status | rFID |" in note and "| fsq-4b | finished | 3.5 |" in note   # tokenizers: no gFID


def test_launch_notes_written_to_the_store(tmp_path):
    """A launch that skips a point an earlier launch finished, continues one it left interrupted and runs a new one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _sweep(*DEMO, uri=uri)
    client = tracking.client_for(uri)
    earlier_parent = tracking.start_parent_run(uri, "codebook_scaling", "tiny", 2)
    exp_id = client.get_run(earlier_parent).info.experiment_id

    def point(name, parent, status, gfid=None):
        run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent, "status": status,
                                                             "role": "point"})
        if gfid is not None:
            client.log_metric(run.info.run_id, "gfid", gfid)
        return run.info.run_id

    done, interrupted = point("mbm-4b", earlier_parent, "finished", 12.0), point("mbm-8b", earlier_parent, "running")
    parent = tracking.start_parent_run(uri, "codebook_scaling", "tiny", 2)
    plans = [_plan("mbm-4b", "skip", done), _plan("mbm-8b", "resume", interrupted), _plan("softmax-24b", "run")]
    notes = LaunchNotes(cfg, parent, ["mbm-4b", "mbm-8b", "softmax-24b"], plans)
    notes.update({})
    assert "| softmax-24b | waiting |" in client.get_run(parent).data.tags[tracking.NOTE]
    client.set_tag(interrupted, "status", "finished")      # the resumed point ends, under its first launch
    client.log_metric(interrupted, "gfid", 9.5)
    point("softmax-24b", parent, "infeasible")
    notes.finish({"finished": 1, "infeasible": 1, "failed": 0}, interrupted=False)
    run = client.get_run(parent)
    note = run.data.tags[tracking.NOTE]
    assert run.data.metrics == {"best_gfid": 9.5}
    assert "**finished: 2 of 2 points done (1 finished, 1 infeasible); 1 done by earlier launches**" in note
    assert "| mbm-4b | finished (earlier launch) | 12 |" in note and "| mbm-8b | finished | 9.5 |" in note
    assert "| softmax-24b | infeasible |" in note and "waiting" not in note
    tags = client.get_experiment(exp_id).tags
    assert tags[tracking.NOTE].startswith("best gFID 9.5 (mbm-8b) · **Paper figure: codebook")
    assert json.loads(tags[tracking.SHARED_VIEW + "headline"])["selectedColumns"][0] == "metrics.`best_gfid`"


def test_a_store_problem_is_one_warning_line(tmp_path, capsys):
    cfg = _sweep(*DEMO, uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    LaunchNotes(cfg, "0" * 32, ["mbm-8b"], [_plan("mbm-8b", "run")]).update({})      # no such parent run: the sweep goes on
    ours = [line for line in capsys.readouterr().err.splitlines() if "mlflow.store.db" not in line]   # not MLflow's
    assert len(ours) == 1 and ours[0].startswith("warning: sweep codebook_scaling: the launch's description in MLflow")
