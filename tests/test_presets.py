"""Presets: release parameter counts (meta device), settings, allocations, builder options, CPU presets."""

import pytest
import torch

from bar import UserError
from bar.presets import PRESETS, allocation_for, build_generator, count_params, get_preset
from bar.sampling import generate



@pytest.mark.parametrize("name,target,tol", [
    ("bar_b", 415e6, 0.01), ("bar_b2", 415e6, 0.01), ("bar_b4", 416e6, 0.01),
    ("bar_l", 1.1e9, 0.05), ("bar_l_512", 1.1e9, 0.05),
])
def test_release_parameter_counts(name, target, tol):
    with torch.device("meta"):
        model = build_generator(name)
    n = count_params(model)
    assert abs(n - target) / target < tol, f"{name}: {n / 1e6:.2f}M"
    # the MBM head is ~156M of every release preset (derived)
    assert abs(count_params(model.head) - 156e6) / 156e6 < 0.01


def test_release_settings():
    b = get_preset("bar_b")
    assert (b.dim, b.depth, b.heads, b.patch_size, b.head_width, b.head_depth) == (768, 24, 12, 1, 2048, 3)
    assert (b.lr, b.betas, b.weight_decay, b.warmup_steps, b.train_steps) == (4e-4, (0.9, 0.96), 0.03, 62_500, 250_000)
    assert b.order_anneal == (125_000, 187_500) and b.label_dropout == 0.1 and b.class_repeat == 32
    assert (b.cfg_scale, b.temperature, b.allocation) == (5.0, 2.5, (2, 2, 5, 7))
    assert get_preset("bar_b4").allocation == (64, 64, 64, 64) and get_preset("bar_b4").cfg_scale == 9.6
    assert get_preset("bar_b2").allocation == (16, 16, 16, 16) and get_preset("bar_b2").temperature == 2.0
    l512 = get_preset("bar_l_512")
    assert (l512.dim, l512.depth, l512.heads, l512.dropout, l512.attn_dropout) == (1280, 32, 16, 0.2, 0.0)
    assert l512.grid == (32, 32) and l512.bits_per_token == 10 and l512.order_anneal == (62_500, 93_750)
    for name, pre in PRESETS.items():   # each preset's allocation fits its own bits per step
        assert sum(pre.allocation) == pre.bits_per_step, name
        assert list(pre.allocation) == sorted(pre.allocation), name


def test_allocation_for_other_bit_widths():
    assert allocation_for("bar_b", 16) == [2, 2, 5, 7]
    assert allocation_for("bar_b", 32) == [4, 4, 10, 14]
    for k in [1, 2, 3, 5, 10, 17, 64, 100, 256]:
        a = allocation_for("bar_b", k)
        assert sum(a) == k and min(a) >= 1 and a == sorted(a) and len(a) <= 4, (k, a)


def test_builder_options_and_errors():
    m = build_generator("smoke", bits_per_token=6, grid=(4, 4), patch_size=2, num_classes=3, head_width=16,
                        class_repeat=1)
    assert m.cfg.step_dim == 24 and m.cfg.steps == 4 and m.head.width == 16 and m.cfg.cond_width == 16
    assert m.null_class == 3 and m.cfg.prefix == 2
    with pytest.raises(UserError, match="bits per AR step"):
        m.head.check_schedule(allocation=[2, 2])
    with pytest.raises(UserError, match="unknown model preset"):
        build_generator("bar_xl")
    with pytest.raises(UserError, match="unknown head"):
        build_generator("smoke", head="softmaxx")
    with pytest.raises(UserError, match="unknown generator option"):
        build_generator("smoke", depthh=3)


@pytest.mark.parametrize("name", ["smoke", "tiny"])
def test_cpu_presets_train_and_sample(name):
    pre = get_preset(name)
    model = build_generator(name)
    bits = torch.randint(0, 2, (2, pre.grid[0] * pre.grid[1], pre.bits_per_token), dtype=torch.uint8)
    loss = model.training_loss(bits, torch.tensor([0, 1]), step=0)
    loss.backward()
    assert torch.isfinite(loss)
    out = generate(model, torch.tensor([0, pre.num_classes]), cfg_scale=pre.cfg_scale, temperature=pre.temperature,
                   allocation=list(pre.allocation), generator=torch.Generator().manual_seed(0))
    assert out.shape == bits.shape
