"""The dry run at paper scale: per point the micro-batch, accumulation and memory per GPU on 8 x 80 GB, the softmax
memory wall listed apart, GPU-hours with each distinct tokenizer counted once. Nothing is submitted."""

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

pytestmark = pytest.mark.cli


def test_paper_dry_run_plans_micro_batches_and_lists_the_memory_wall(tmp_path):
    (tmp_path / "images" / "n01").mkdir(parents=True)
    tiny = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    for i in range(2048):                      # as many images as the global batch: the files are listed, not read
        tiny.save(tmp_path / "images" / "n01" / f"{i}.jpg")
    proc = run_cli(["-m", "sweep=codebook_scaling", "profile=paper", "launcher=slurm", "dry_run=true",
                    f"data.root={tmp_path / 'images'}", f"data.val_root={tmp_path / 'images'}", "data.num_classes=1",
                    "hydra.launcher.gpus_per_node=8",
                    "head=mbm,softmax", "tokenizer.bits=16,24"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "4 points, 0 already done, 1 infeasible" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "micro 128 x accum 2 x 8 dev" in lines["mbm-16b"] and "micro 128 x accum 2 x 8 dev" in lines["mbm-24b"]
    assert "x 8 dev" in lines["softmax-16b"]
    assert "does not fit" in lines["softmax-24b"] and "GiB per device" in lines["softmax-24b"]
    assert "2 distinct tokenizer(s)" in out and "Inception weights" in out      # warnings, not errors
    assert "eval.protocol=adm needs eval.reference" in out                       # the paper protocol by default
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlflow.db").exists()
