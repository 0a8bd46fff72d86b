import pytest
import torch

from bar.config import compose
from bar.generator_stage import make_generator
from bar.presets import MAR_HEADS


@pytest.mark.parametrize("name", ["mar_b", "mar_l", "mar_h"])
def test_mar_head_configs_match_the_presets(name):
    cfg = compose([f"head=diffusion_{name}", "tokenizer=ae", "tokenizer.channels=16", "profile=paper", "data.root=/d"])
    assert dict(cfg.head.options) == MAR_HEADS[name]
    with torch.device("meta"):
        model = make_generator(cfg)
    assert model.head.width == MAR_HEADS[name]["width"]
    assert model.cfg.token_kind == "continuous" and model.cfg.grid == (16, 16)
