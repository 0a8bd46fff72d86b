"""One resource plan per point (bar.orchestration.resources), in process: wall time per stage against the SLURM time
chain (named with its hours, fitting once the chain grows), host memory against mem_gb, both refused by a launch
before anything is submitted, and pricing without the data folder equal to pricing a folder of the stated size."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from bar import UserError
from bar.orchestration.config import compose
from bar.orchestration.cost import point_cost
from bar.orchestration.data_sizes import planned_sizes
from bar.orchestration.planner import Plan
from bar.orchestration.resources import price_points, refusal, resource_lines
from bar.orchestration.validate import validate_config

# BAR-B with the release's tokenizer recipe on 8 GPUs, as the paper sweeps run it; no data folder anywhere
PAPER = ["profile=paper", "launcher=slurm", "hydra.launcher.gpus_per_node=8", "dry_run=true", "head=mbm",
         "tokenizer.bits=16"]


def _plans(cfg, tmp_path, n=1):
    plans = [Plan("mbm-16b", "sig", tmp_path / "point", "run") for _ in range(n)]
    price_points(cfg, [cfg] * n, plans, 8)
    return plans


def test_a_point_longer_than_the_time_chain_is_named_with_its_hours_and_fits_a_longer_chain(tmp_path):
    paths = [f"paths.outputs={tmp_path}"]
    default = compose(PAPER + paths, hydra_node=True)      # 240 min x (1 + 11) = 48 h: a BAR-B point fits
    assert default.hydra.launcher.timeout_min == 240 and default.hydra.launcher.max_num_timeout == 11
    assert refusal(default, _plans(default, tmp_path), ["mbm-16b"]) is None
    paths += ["hydra.launcher.max_num_timeout=5"]          # a 24 h chain, as a cluster's site.yaml may set
    cfg = compose(PAPER + paths, hydra_node=True)
    assert cfg.hydra.launcher.mem_gb == 512 and cfg.hydra.launcher.cpus_per_task == 10 and cfg.data.num_workers == 8
    plans = _plans(cfg, tmp_path)
    r = plans[0].resources
    assert 30 < r.hours["generator training"] < 34 and 32 < r.wall_hours < 38        # BAR-B: ~32-36 h on 8 GPUs
    assert all(r.hours[stage] > 0 for stage in r.hours) and r.checkpoint_gb > 10        # the tokenizer's, with EMA
    line = refusal(cfg, plans, ["mbm-16b"])
    assert line is not None and "\n" not in line
    assert f"mbm-16b needs ~{r.wall_hours:.3g} h on 8 device(s)" in line and "timeout_min=240 x (1 + max_num_timeout" \
        "=5) = 24 h" in line
    assert "hydra.launcher.max_num_timeout=9" in line and "hydra.launcher.timeout_min=370" in line
    section = "\n".join(resource_lines(cfg, plans, ["mbm-16b"]))
    assert "CANNOT FINISH within the time chain" in section and "hydra.launcher.mem_gb=512" in section
    (tmp_path / "point" / "generator").mkdir(parents=True)           # a relaunch resumes half way: what is left
    (tmp_path / "point" / "generator" / "ckpt-000125000.pt").touch()
    resumed = _plans(cfg, tmp_path)
    assert resumed[0].resources.hours["generator training"] == pytest.approx(r.hours["generator training"] / 2)
    assert refusal(cfg, resumed, ["mbm-16b"]) is None
    for fix in (["hydra.launcher.max_num_timeout=9"], ["hydra.launcher.timeout_min=370"], ["hydra.launcher.nodes=2"]):
        longer = compose(PAPER + paths + fix, hydra_node=True)
        world = 16 if fix[0].endswith("nodes=2") else 8
        plans = [Plan("mbm-16b", "sig", tmp_path / "fresh", "run")]
        price_points(longer, [longer], plans, world)
        assert refusal(longer, plans, ["mbm-16b"]) is None, fix


def _sweeper(base, launcher):
    class Loader:
        def load_sweep_config(self, master_config, sweep_overrides):
            return compose(base + list(sweep_overrides), hydra_node=True)

    cfg = compose(base, hydra_node=True)
    return SimpleNamespace(config=cfg, grids=[], params={}, max_batch_size=None, launcher=launcher,
                           hydra_context=SimpleNamespace(config_loader=Loader()))


@pytest.mark.parametrize("limit, said", [
    (["launcher.gpu_tflops=1e-6"], "cannot finish within the SLURM time chain"),   # hours on a slow "GPU"
    (["hydra.launcher.mem_gb=1"], "need more host memory than mem_gb"),
])
def test_a_launch_refuses_in_one_line_before_submitting(tmp_path, capsys, limit, said):
    from bar.orchestration import sweeps

    class NoLauncher:
        def launch(self, *args, **kwargs):
            raise AssertionError("a job was submitted")

    base = ["profile=smoke", "launcher=slurm", "experiment=limits", f"paths.outputs={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *limit]
    with pytest.raises(SystemExit) as exit_:
        sweeps.run_sweep(_sweeper(base, NoLauncher()), [])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing submitted: ") and said in err and "\n" not in err, err
    assert "set hydra.launcher." in err and not (tmp_path / "mlflow.db").exists()


def _folder(root: Path, classes: int = 2, per_class: int = 32) -> Path:
    tiny = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            tiny.save(root / f"c{c}" / f"{i}.jpg")
    return root


def test_pricing_without_the_data_equals_pricing_a_folder_of_its_stated_size(tmp_path):
    base = ["profile=smoke", "data=imagefolder", "data.resolution=16", "data.num_classes=2", "dry_run=true",
            "launcher=slurm", f"paths.outputs={tmp_path / 'out'}"]
    here = compose(base + [f"data.root={_folder(tmp_path / 'images')}"], hydra_node=True)
    absent = compose(base + ["data.train_images=64", "data.val_images=64"], hydra_node=True)
    assert planned_sizes(here) == planned_sizes(absent) == (64, 64)
    assert validate_config(here) == []
    warnings = validate_config(absent)                    # the dry run plans; what needs the data is named
    assert len(warnings) == 1 and "data=imagefolder needs data.root" in warnings[0]
    a, b = point_cost(here, 64, 64), point_cost(absent, *planned_sizes(absent))
    assert (a.tokenizer, a.generator) == (b.tokenizer, b.generator)
    plans = {}
    for name, cfg in (("here", here), ("absent", absent)):
        plans[name] = [Plan("p", "s", tmp_path / name, "run")]
        price_points(cfg, [cfg], plans[name], 1)
    x, y = plans["here"][0].resources, plans["absent"][0].resources
    assert (x.hours, x.host_gib, x.disk_gb, x.checkpoint_gb) == (y.hours, y.host_gib, y.disk_gb, y.checkpoint_gb)
    with pytest.raises(UserError, match="data.root"):     # a launch still checks the folders
        validate_config(compose(base + ["dry_run=false"], hydra_node=True))
    unstated = compose(base, hydra_node=True)
    with pytest.raises(UserError, match=r"state its size \(data.train_images=N"):
        planned_sizes(unstated)


def test_stated_sizes_change_no_signature():
    from bar.orchestration.config import point_signature

    a = compose(["profile=paper", "data.root=/d"])
    b = compose(["profile=paper", "data.root=/d", "data.train_images=10", "data.val_images=5"])
    assert OmegaConf.select(a, "data.train_images") == 1281167 and point_signature(a) == point_signature(b)
