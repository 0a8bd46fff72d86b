import pytest
import torch

from bar.orchestration.build import build_generator
from bar.orchestration.config import compose

MAR_HEADS = {"mar_b": dict(depth=6, width=1024), "mar_l": dict(depth=8, width=1280),
             "mar_h": dict(depth=12, width=1536)}   # MAR's diffusion heads (paper baselines)


@pytest.mark.parametrize("name", sorted(MAR_HEADS))
def test_mar_head_configs(name):
    cfg = compose([f"head=diffusion_{name}", "tokenizer=ae", "tokenizer.channels=16", "profile=paper", "data.root=/d"])
    assert (cfg.head.depth, cfg.head.width) == (MAR_HEADS[name]["depth"], MAR_HEADS[name]["width"])
    with torch.device("meta"):
        model = build_generator(cfg)
    assert model.head.width == MAR_HEADS[name]["width"] and model.cfg.cond_width == MAR_HEADS[name]["width"]
    assert len(model.head.blocks) == MAR_HEADS[name]["depth"]
    assert model.cfg.token_kind == "continuous" and model.cfg.grid == (16, 16)
