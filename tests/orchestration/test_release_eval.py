"""From the release's files to the paper's protocol, without downloads: a release-format generator checkpoint and
tokenizer (small sizes, the release's key names), the ADM reference batch layout and a weights file of the Inception
architecture go through `stage=sample` (release generator -> release tokenizer -> ADM .npz -> gFID / sFID / IS /
precision / recall); `sweep=release_eval` picks each preset's checkpoint, tokenizer and reference."""

import numpy as np
import pytest
import torch

from bar.eval.adm import InceptionADM
from bar.orchestration.build import build_generator
from bar.orchestration.config import compose
from bar.model.release_keys import to_release_state_dict
from conftest import child_runs, run_cli
from release_files import release_state_dict

SMALL = ["model.compile=false", "model.dim=32", "model.depth=1", "model.heads=2", "model.head_width=32",
         "model.head_depth=1"]


def test_release_eval_sweep_picks_each_preset_s_files():
    paths = [f"release.generators.{p}=/g/{p}.bin" for p in ("bar_b", "bar_b2", "bar_b4", "bar_l", "bar_l_512")]
    paths += [f"release.tokenizers.{t}=/t/{t}.bin" for t in ("bar_fsq_16bits", "bar_fsq_16bits_ft",
                                                               "bar_fsq_10bits_res512")]
    paths += ["release.references.imagenet256=/r/256.npz", "release.references.imagenet512=/r/512.npz"]
    for model, tok, ref in (("bar_b", "bar_fsq_16bits_ft", "256"), ("bar_b4", "bar_fsq_16bits", "256"),
                            ("bar_l", "bar_fsq_16bits_ft", "256")):
        cfg = compose(["sweep=release_eval", f"model={model}", *paths])
        assert (cfg.checkpoint, cfg.tokenizer.checkpoint) == (f"/g/{model}.bin", f"/t/{tok}.bin")
        assert cfg.eval.protocol == "adm" and cfg.eval.reference == f"/r/{ref}.npz" and cfg.stage == "sample"
    grids = compose(["sweep=release_eval"], hydra_node=True).hydra.sweeper.grids
    assert str(grids[0]["model"]) == "bar_b4,bar_b2,bar_b,bar_l" and grids[1]["model"] == "bar_l_512"


@pytest.mark.slow
def test_release_files_through_stage_sample_to_adm_metrics(tmp_path):
    cfg = compose(["profile=paper", "data.root=/unused", "model=bar_b", *SMALL])
    torch.save(to_release_state_dict(build_generator(cfg)), tmp_path / "bar_b.bin")
    torch.save(release_state_dict(bits=16, res=256), tmp_path / "bar_fsq_16bits_ft.bin")
    torch.save(InceptionADM.random(0).net.state_dict(), tmp_path / "inception.pth")
    reference = (np.random.default_rng(0).random((24, 256, 256, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=reference)
    proc = run_cli(["stage=sample", "profile=paper", "device=cpu", "model=bar_b", *SMALL, "tokenizer.size=tiny",
                    f"checkpoint={tmp_path / 'bar_b.bin'}", f"tokenizer.checkpoint={tmp_path / 'bar_fsq_16bits_ft.bin'}",
                    "eval.protocol=adm", f"eval.reference={tmp_path / 'VIRTUAL_ref.npz'}",
                    f"eval.inception_weights={tmp_path / 'inception.pth'}", "eval.batch_size=8",
                    "generator.sample.num_samples=12", "generator.sample.batch_size=6"], tmp_path / "out", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, (run,), _ = child_runs(tmp_path / "out", "default")
    assert run.data.tags["checkpoint_format"] == "official" and run.data.tags["fid_extractor"] == "adm:VIRTUAL_ref.npz"
    samples = np.load(run.data.params["samples.npz"])["arr_0"]
    assert samples.shape == (12, 256, 256, 3) and samples.dtype == np.uint8
    for key in ("gfid", "sfid", "inception_score", "precision", "recall", "sample_img_per_s"):
        assert np.isfinite(run.data.metrics[key]), key
