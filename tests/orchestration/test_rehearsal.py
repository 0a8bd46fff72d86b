"""The full rehearsal of the cluster path (issue 22, item 8) on the local SLURM: `profile=paper +shrink=rehearsal`
(bar/conf/shrink/rehearsal.yaml changes sizes only) through `launcher=slurm` at 2 tasks per point (gloo on CPU), the
generator compiled, 2 accumulation steps, on a synthetic 256 px image folder (train and val splits), with every frozen
network, the Inception weights and the ADM reference batch in their real files' formats (random weights):

    tokenizer recipe (GAN from inside the run) -> sharded pretokenization -> generator training, requeued once by
    `scontrol requeue` mid-way -> sampling -> ADM metrics -> make_figures.py --sweep codebook_scaling
    sweep=release_eval from release-format checkpoints at the same sizes -> main_results

Skipped when SLURM is not running (`bash .ci/slurm_up.sh`). Prints its wall time and what the user sees."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, child_runs
from release_files import release_state_dict, write_frozen_weights
from test_slurm import _cluster_up, _job_ids

pytestmark = pytest.mark.slurm

PAPER = ["profile=paper", "+shrink=rehearsal"]
MACHINE = ["device=cpu", "num_threads=1", "launcher=slurm"]
TWO_TASKS = ["hydra.launcher.tasks_per_node=2"]        # 2 gloo ranks per point
SWEEP = ["sweep=codebook_scaling", "head=mbm", "tokenizer.bits=16"]   # a swept key set here: one point of its grid
REHEARSAL = ["generator.train.micro_batch_size=2",    # half the per-rank batch (8 over 2 ranks): 2 accumulation steps
             "launcher.checkpoint_every=10"]          # besides the wall-time ones: the test requeues after the first
CLASSES, TRAIN, VAL, REFERENCE = 4, 8, 2, 16          # per class (train, val); reference images


def _image_folder(root, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.random((256, 256, 3)) * 64 + c * 48 + np.linspace(0, 60, 256)[:, None, None]
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg")


def _reference(path, res: int, inception) -> None:
    """An ADM reference batch in VIRTUAL_imagenet256_labeled.npz's layout: images, and the statistics of their pool
    and spatial features under `inception` (the stand-in Inception the runs score with)."""
    from bar.eval.adm import compute_features, feature_statistics

    rng = np.random.default_rng(res)
    images = (rng.random((REFERENCE, res, res, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        features = compute_features([torch.from_numpy(images)], inception)
    (mu, sigma), (mu_s, sigma_s) = feature_statistics(features.pool), feature_statistics(features.spatial)
    np.savez(path, arr_0=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)


def _inputs(folder) -> list[str]:
    """Image folders, frozen-network weight files, Inception weights and the ADM reference: the overrides."""
    from bar.eval.adm import InceptionADM

    _image_folder(folder / "train", TRAIN, 0)
    _image_folder(folder / "val", VAL, 1)
    inception = InceptionADM.random(0)
    torch.save(inception.net.state_dict(), folder / "pt_inception-2015-12-05.pth")
    _reference(folder / "VIRTUAL_imagenet256_labeled.npz", 256, inception)
    return [f"data.root={folder / 'train'}", f"data.val_root={folder / 'val'}", *write_frozen_weights(folder),
            f"eval.inception_weights={folder / 'pt_inception-2015-12-05.pth'}",
            f"eval.reference={folder / 'VIRTUAL_imagenet256_labeled.npz'}"]


def _release_files(folder) -> list[str]:
    """Release-format generators of every release_eval preset at the shrunk sizes, the three BAR-FSQ tokenizers
    (tiny), the 512 px reference batch; the 256 px one is _inputs'."""
    from bar.eval.adm import InceptionADM
    from bar.model.release_keys import to_release_state_dict
    from bar.orchestration.build import build_generator
    from bar.orchestration.config import compose

    folder.mkdir()
    out = []
    for preset, extra in (("bar_b", []), ("bar_b2", []), ("bar_b4", []), ("bar_l", []),
                          ("bar_l_512", ["tokenizer.bits=10", "data.resolution=512"])):
        torch.manual_seed(0)
        model = build_generator(compose([*PAPER, "data.root=/unused", f"model={preset}", *extra]))
        torch.save(to_release_state_dict(model), folder / f"{preset}.bin")
        out.append(f"release.generators.{preset}={folder / f'{preset}.bin'}")
    for name, bits, res in (("bar_fsq_16bits", 16, 256), ("bar_fsq_16bits_ft", 16, 256),
                            ("bar_fsq_10bits_res512", 10, 512)):
        torch.save(release_state_dict(bits=bits, res=res, seed=2), folder / f"{name}.bin")
        out.append(f"release.tokenizers.{name}={folder / f'{name}.bin'}")
    _reference(folder / "VIRTUAL_imagenet512.npz", 512, InceptionADM.random(0))
    return out + [f"release.references.imagenet256={folder.parent / 'VIRTUAL_imagenet256_labeled.npz'}",
                  f"release.references.imagenet512={folder / 'VIRTUAL_imagenet512.npz'}"]


def _env(outputs) -> dict:
    return {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
            "PYTHONWARNINGS": "ignore"}


def _requeue_once(launch, outputs, before: set) -> None:
    """Wait for the generator's first checkpoint, then `scontrol requeue` its job and let the requeued job start now
    (SLURM holds a requeued job back ~2 min)."""
    deadline = time.time() + 900
    while time.time() < deadline and launch.poll() is None:
        if list(outputs.glob("points/codebook_scaling/*/generator/ckpt-*.pt")):
            break
        time.sleep(0.1)
    assert launch.poll() is None, launch.stdout.read()[-3000:]
    jobs = [j for j in _job_ids() if j not in before]
    assert len(jobs) == 1, jobs
    subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
    for _ in range(300):
        state = subprocess.run(["squeue", "-h", "-j", jobs[0], "-o", "%T"], capture_output=True, text=True).stdout
        if "PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={jobs[0]}", "StartTime=now"], capture_output=True)
            return
        time.sleep(0.2)


def _sweep_with_a_requeue(outputs, inputs: list[str]) -> str:
    before = set(_job_ids())
    launch = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *SWEEP, *PAPER, *MACHINE, *TWO_TASKS,
                               *REHEARSAL, *inputs], cwd=ROOT, env=_env(outputs), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _requeue_once(launch, outputs, before)
        out = launch.communicate(timeout=1200)[0]
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            launch.wait(30)
    assert launch.returncode == 0, out[-4000:]
    return out


def _check_training_sweep(outputs) -> None:
    client, points, parents = child_runs(outputs, "codebook_scaling")
    assert len(points) == 1 and len(parents) == 1                    # one MLflow run across both attempts
    run = points[0]
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags["status"] == "finished", tags.get("error")
    assert tags["resumes"] == "1" and tags["stopped_by_signal"] == str(int(signal.SIGTERM))
    steps = run.data.params["generator.train.steps"]
    assert 10 <= int(tags["resumed_from_step"]) < int(steps)
    assert metrics["world_size"] == 2 and run.data.params["generator.resolved.accum_steps"] == "2"
    assert tags["ranks_in_sync"] == "True"
    history = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(history) == list(range(10, int(steps) + 1, 10))     # no gaps, no duplicates
    for key in metrics:                                               # no metric logged twice at a step
        logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(logged) == len(set(logged)), (key, logged)
    for key in ("rfid", "gfid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(metrics[key]), key
    assert tags["fid_extractor"].startswith("adm:")
    codes = list((outputs / "cache" / "codes").glob("*/shard-*.json"))
    assert sorted(p.name for p in codes) == ["shard-00000-of-00002.json", "shard-00001-of-00002.json"]


def _check_release_eval(outputs) -> None:
    _, points, parents = child_runs(outputs, "release_eval")
    assert len(points) == 5 and len(parents) == 1
    for run in points:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished", run.data.tags.get("error")
        assert run.data.tags["checkpoint_format"] == "official"
        for key in ("gfid", "sfid", "inception_score", "precision", "recall"):
            assert np.isfinite(run.data.metrics[key]), (run.info.run_name, key)


def _figures(outputs) -> str:
    figs = outputs / "figs"
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "make_figures.py"), "--sweep", "codebook_scaling",
                           "release_eval", "--out", str(figs), "--format", "png"], cwd=ROOT, env=_env(outputs),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("main_results.md", "main_results.csv", "main_results.tex", "REPORT.md", "codebook_scaling.png"):
        assert (figs / name).is_file(), name
    assert list((figs / "codebook_scaling").glob("*.png"))
    import pandas as pd

    table = pd.read_csv(figs / "main_results.csv")
    measured = table[table["sweep"] == "release_eval"]
    assert sorted(measured["model"]) == ["BAR-B", "BAR-B/2", "BAR-B/4", "BAR-L", "BAR-L-512"], table.to_string()
    assert measured["gfid"].notna().all() and (measured["profile"] == "paper").all()
    rows = [line for line in (figs / "main_results.md").read_text().splitlines() if "measured" in line]
    return proc.stdout + proc.stderr + "\n".join(rows)


def _seen(text: str) -> str:
    """What a user reads, without submitit's warning (3 lines per poll of the job's state) that this cluster has no
    accounting (sacct): counted instead."""
    noise = ("Bypassing sacct error", "Slurm accounting storage is disabled")
    lines = text.splitlines()
    kept = [line for line in lines if not any(n in line for n in noise)]
    return "\n".join(kept + [f"({len(lines) - len(kept)} lines of submitit's sacct warnings left out)"])


def _job_logs(outputs, sweep: str) -> str:
    """The jobs' own logs (rank 0): progress, the requeue, the resume, the point's summary."""
    said = []
    for log in sorted(outputs.glob(f"multirun/{sweep}/*/.submitit/*/*_0_log.*")):
        said += [line for line in log.read_text().splitlines()
                 if line.strip() and ("[bar]" in line or "REQUEUE" in line or line.startswith(("[", "mbm")))
                 and "Warning" not in line and "[rank0]:W" not in line]
    return "\n".join(said)


def test_paper_profile_shrunk_through_slurm_end_to_end(tmp_path):
    if not _cluster_up():
        pytest.skip("no running SLURM cluster (sinfo missing or no node up): run `bash .ci/slurm_up.sh`")
    start = time.time()
    inputs = _inputs(tmp_path)
    outputs = tmp_path / "out"
    said = _sweep_with_a_requeue(outputs, inputs)
    trained = time.time()
    _check_training_sweep(outputs)
    # sampling only: one task per point (2 points at once on 2 cores), no compile (a cold CPU compile of each
    # preset's sampler takes minutes; the training sweep above compiles training and sampling)
    release = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "sweep=release_eval", *PAPER, *MACHINE,
                              "model.compile=false", *_release_files(tmp_path / "release"), inputs[-2]], cwd=ROOT,
                             env=_env(outputs), capture_output=True, text=True, timeout=1200)
    assert release.returncode == 0, release.stderr[-4000:]
    _check_release_eval(outputs)
    evaluated = time.time()
    drawn = _figures(outputs)
    print(f"\nrehearsal: {time.time() - start:.0f} s wall (training sweep {trained - start:.0f} s, release_eval "
          f"{evaluated - trained:.0f} s, figures {time.time() - evaluated:.0f} s)")
    print("---- training sweep, the launch:\n" + _seen(said)[-3000:])
    print("---- training sweep, the job's log:\n" + _job_logs(outputs, "codebook_scaling")[-3000:])
    print("---- release_eval:\n" + _seen(release.stderr)[-2000:])
    print("---- make_figures:\n" + drawn[-3000:])
