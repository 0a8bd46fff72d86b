"""AR sampling: the cached and cache-free paths agree, CFG ramp, raster output layout, labels, schedule validation,
seeding."""

import pytest
import torch

from bar import UserError
from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import build_head
from bar.model.sampling import cfg_scale_at, generate


def small_model(k=8, grid=(4, 4), p=1, num_classes=5):
    torch.manual_seed(0)
    c = GeneratorConfig(dim=32, depth=2, heads=2, num_classes=num_classes, class_repeat=3, grid=grid, patch_size=p,
                        token_dim=k, cond_width=32, label_dropout=0.0)
    model = BARGenerator(c, build_head("mbm", c.step_dim, width=32, depth=1))
    for prm in model.parameters():   # undo AdaLN-Zero: outputs must depend on inputs for the tests to mean anything
        if prm.ndim == 2 and prm.abs().sum() == 0:
            torch.nn.init.normal_(prm, std=0.1)
    return model.eval()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("p,g", [(1, 3.0), (1, 1.0), (2, 2.5)])
def test_kv_cache_gives_identical_tokens(p, g):
    model = small_model(k=4, p=p)
    labels = torch.tensor([0, 3, 5])           # batch of 3; 5 = null class
    alloc = [2, 2] if p == 1 else [4, 4, 8]
    a = generate(model, labels, cfg_scale=g, temperature=2.0, allocation=alloc, kv_cache=True, generator=seeded())
    b = generate(model, labels, cfg_scale=g, temperature=2.0, allocation=alloc, kv_cache=False, generator=seeded())
    assert a.shape == (3, 16, 4) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    c = generate(model, labels, cfg_scale=g, temperature=2.0, allocation=alloc, kv_cache=True, generator=seeded(1))
    assert not torch.equal(a, c)


@pytest.mark.parametrize("p", [1, 2])
def test_cached_conditions_match_full_recompute(p):
    model = small_model(k=4, p=p)
    L, K, P = model.cfg.steps, model.cfg.step_dim, model.cfg.prefix
    x = torch.randint(0, 2, (2, L, K))
    labels = torch.tensor([1, 2])
    orders = torch.arange(L).expand(2, L)
    full = model.conditions(x[:, :-1], labels, orders)
    cache = model.new_static_cache(2)
    rows = [model.conditions(x[:, :0], labels, orders, cache=cache)[:, -1]]
    for i in range(L - 1):
        rows.append(model.decode(x[:, i], labels, torch.tensor(P + i), cache))
    assert torch.allclose(torch.stack(rows, dim=1), full, atol=1e-5)


def test_cfg_ramp_values():
    assert cfg_scale_at(0, 256, 5.0) == 1.0
    assert cfg_scale_at(128, 256, 5.0) == pytest.approx(3.0)
    assert cfg_scale_at(255, 256, 5.0) == pytest.approx(1 + 4 * 255 / 256)


def _record_head_calls(model):
    """Spy on the head's sampler: (rows of conditions, CFG scale or None, tokens) per call."""
    calls = []
    orig = model.head.sample_with_noise

    def spy(cond, cfg_scale, noise, consts, **kw):
        tok = orig(cond, cfg_scale, noise, consts, **kw)
        calls.append((cond.shape[0], None if cfg_scale is None else float(cfg_scale), tok))
        return tok

    model.head.sample_with_noise = spy
    return calls


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generate_passes_ramped_scale_and_doubled_batch(kv_cache):
    model = small_model()
    calls = _record_head_calls(model)
    L, g = model.cfg.steps, 4.0
    generate(model, torch.tensor([0, 1, 2, 3, 4]), cfg_scale=g, allocation=[4, 4], generator=seeded(),
             kv_cache=kv_cache)
    assert len(calls) == L
    assert all(n == 10 for n, _, _ in calls)            # [conditional; unconditional]
    assert [s for _, s, _ in calls] == pytest.approx([1 + (g - 1) * i / L for i in range(L)])
    calls.clear()
    generate(model, torch.tensor([0, 1, 2]), cfg_scale=1.0, allocation=[4, 4], generator=seeded(), kv_cache=kv_cache)
    assert len(calls) == L and all(n == 3 and s is None for n, s, _ in calls)


@pytest.mark.parametrize("p", [1, 2])
def test_output_is_raster_and_ungrouped(p):
    model = small_model(k=2, grid=(4, 4), p=p)
    calls = _record_head_calls(model)
    out = generate(model, torch.tensor([1, 2]), cfg_scale=2.0, temperature=3.0, generator=seeded(), kv_cache=False)
    steps = torch.stack([tok for _, _, tok in calls], dim=1)          # (B, L, K) in AR order
    assert out.shape == (2, 16, 2)
    assert torch.equal(model.group(out), steps)


def test_labels_and_schedule_are_validated_first():
    model = small_model(k=16)
    with pytest.raises(UserError, match=r"allocation \[2,2,5\] sums to 9, bits_per_token is 16"):
        generate(model, torch.tensor([0]), allocation=[2, 2, 5])
    with pytest.raises(UserError, match="labels"):
        generate(model, torch.tensor([6]), allocation=[16])
    out = generate(model, torch.tensor([5]), cfg_scale=3.0, allocation=[16], generator=seeded())   # null class ok
    assert out.shape == (1, 16, 16)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generate_restores_training_mode(kv_cache):
    model = small_model().train()
    generate(model, torch.tensor([0]), allocation=[8], generator=seeded(), kv_cache=kv_cache)
    assert model.training
