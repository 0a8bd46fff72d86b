"""The dry run at paper scale, with no data folder on this machine (ImageNet's stated size is priced): per point the
micro-batch, accumulation and memory per GPU on 8 x 80 GB, the sampling batch and its memory per GPU, the softmax
memory wall listed apart, GPU-hours with each distinct tokenizer counted once, then every point's wall time per stage
against the SLURM time chain (BAR-B needs ~36 h on 8 GPUs, the default chain gives 24 h: named, with the settings
that fit), host memory per task and node against mem_gb, checkpoints and disk. Nothing is submitted."""

import pytest

from conftest import run_cli

pytestmark = pytest.mark.cli


def test_paper_dry_run_without_the_data_prices_every_stage_against_the_time_chain(tmp_path):
    proc = run_cli(["-m", "sweep=codebook_scaling", "profile=paper", "launcher=slurm", "dry_run=true",
                    "hydra.launcher.gpus_per_node=8", "hydra.launcher.max_num_timeout=5",   # a 24 h chain
                    "head=mbm,softmax", "tokenizer.bits=16,24"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "4 points, 0 already done, 1 infeasible" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "micro 128 x accum 2 x 8 dev" in lines["mbm-16b"] and "micro 128 x accum 2 x 8 dev" in lines["mbm-24b"]
    assert "sample batch 250, " in lines["mbm-16b"] and "GiB/dev" in lines["mbm-16b"].split("sample batch")[1]
    assert "x 8 dev" in lines["softmax-16b"]
    assert "does not fit" in lines["softmax-24b"] and "GiB per device" in lines["softmax-24b"]
    assert "2 distinct tokenizer(s)" in out and "Inception weights" in out      # warnings, not errors
    assert "eval.protocol=adm needs eval.reference" in out                       # the paper protocol by default
    assert "data=imagefolder needs data.root" in out                            # priced without it, named
    plans = {line.split()[0]: line for line in out.splitlines() if " h = " in line and "| host" in line}
    assert set(plans) == {"mbm-16b", "mbm-24b", "softmax-16b"}
    assert "CANNOT FINISH within the time chain" in plans["mbm-16b"]
    hours = [float(h) for h in plans["mbm-16b"].split(" h = ")[1].split(" |")[0].split(" + ")]
    assert len(hours) == 5 and all(h > 0 for h in hours) and 32 < sum(hours) < 38     # every stage priced
    assert "timeout_min=240 x (1 + max_num_timeout=5) = 24 h" in out
    assert "cannot finish within it" in out and "hydra.launcher.max_num_timeout=9" in out
    assert "hydra.launcher.mem_gb=512" in out and "OVER mem_gb" not in out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlflow.db").exists()
