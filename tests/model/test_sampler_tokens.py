"""Each head's sampled tokens are the ones the samplers gave before they became one sampler per head and one decode
path: tests/fixtures/sampler_tokens_before.pt holds, per case, the model's weights and the tokens of the old static
decoder (`fast`) and of the old cache-free path (`nocache`), made by tests/fixtures/capture_sampler_tokens.py."""

from pathlib import Path

import pytest
import torch

from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import build_head
from bar.model.sampling import generate

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sampler_tokens_before.pt"
CASES = ["mbm", "mbm_p2", "bitwise", "softmax", "diffusion", "diffusion_ddim"]
LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 1])   # 5 = null class
# The old fixture's own static vs cache-free gap on the diffusion cases: up to 6.3e-3 (tokens clamped to +-10; near
# t = T the x0 estimate multiplies a backbone rounding difference by ~1e4)
DIFFUSION_CACHE_FREE_ATOL = 1e-2


@pytest.fixture(scope="module")
def saved():
    return torch.load(FIXTURE, weights_only=False)


def rebuilt(entry) -> BARGenerator:
    """The model of a case, as the capture script builds it, with its saved weights."""
    head = entry["head"]
    cfg = GeneratorConfig(dim=32, depth=2, heads=2, num_classes=5, class_repeat=3, grid=(4, 4),
                          patch_size=entry["patch_size"], token_dim=4, cond_width=32, label_dropout=0.0,
                          order_anneal=(10, 20), token_kind="continuous" if head == "diffusion" else "bits")
    model = BARGenerator(cfg, build_head(head, cfg.step_dim, width=32, **entry["opts"]))
    model.load_state_dict(entry["state_dict"])
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_tokens_unchanged(saved, case):
    entry = saved[case]
    model = rebuilt(entry)
    for cfg_scale in (1.0, 3.0):
        for temperature in (1.0, 0.7):
            before = entry[("fast", cfg_scale, temperature)]
            for kv_cache in (True, False):
                got = generate(model, LABELS, cfg_scale=cfg_scale, temperature=temperature,
                               generator=torch.Generator().manual_seed(7), kv_cache=kv_cache, **entry["schedule"])
                assert got.shape == before.shape and got.dtype == before.dtype
                where = (case, cfg_scale, temperature, kv_cache)
                if entry["head"] != "diffusion":
                    assert torch.equal(got, before), where
                    assert torch.equal(got, entry[("nocache", cfg_scale, temperature)]), where
                elif kv_cache:
                    assert torch.allclose(got, before, atol=1e-6, rtol=0), where
                else:
                    assert torch.allclose(got, before, atol=DIFFUSION_CACHE_FREE_ATOL, rtol=0), where
