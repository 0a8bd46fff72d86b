"""Backbone: token grouping, order annealing, causality, target-aware conditioning, training loss, swappable input."""

import pytest
import torch

from bar import UserError
from bar.model.generator import (BARGenerator, GeneratorConfig, group_tokens, order_probability, rope_tables,
    sample_orders, ungroup_tokens)
from bar.model.heads import TokenHead, build_head


def small_model(k=8, grid=(4, 4), p=1, dim=32, depth=2, heads=2, class_repeat=3, randomize=True, **cfg):
    torch.manual_seed(0)
    c = GeneratorConfig(dim=dim, depth=depth, heads=heads, num_classes=5, class_repeat=class_repeat, grid=grid,
                        patch_size=p, token_dim=k, cond_width=32, label_dropout=0.0, order_anneal=(10, 20), **cfg)
    model = BARGenerator(c, build_head("mbm", c.step_dim, width=32, depth=1))
    if randomize:   # undo AdaLN-Zero so that outputs depend on every input
        for prm in model.parameters():
            if prm.ndim == 2 and prm.abs().sum() == 0:
                torch.nn.init.normal_(prm, std=0.05)
    return model


@pytest.mark.parametrize("p", [1, 2, 4])
def test_group_round_trip(p):
    x = torch.randint(0, 2, (2, 8, 8, 3), dtype=torch.uint8)
    g = group_tokens(x, p)
    assert g.shape == (2, (8 // p) ** 2, p * p * 3)
    assert torch.equal(ungroup_tokens(g, p, (8, 8)), x)


def test_group_content():
    x = torch.arange(4 * 4).reshape(1, 4, 4, 1)
    g = group_tokens(x, 2)
    assert g[0, 0].tolist() == [0, 1, 4, 5]       # top-left 2x2 block, raster inside
    assert g[0, 1].tolist() == [2, 3, 6, 7]
    assert g[0, 2].tolist() == [8, 9, 12, 13]
    with pytest.raises(UserError):
        group_tokens(torch.zeros(1, 6, 6, 1), 4)


def test_order_probability_schedule():
    assert order_probability(0, 100, 200) == 1.0
    assert order_probability(99, 100, 200) == 1.0
    assert order_probability(100, 100, 200) == 1.0
    assert order_probability(150, 100, 200) == pytest.approx(0.5)
    assert order_probability(175, 100, 200) == pytest.approx(0.25)
    assert order_probability(200, 100, 200) == 0.0
    assert order_probability(10**6, 100, 200) == 0.0
    # release schedule: 125k -> 187.5k
    assert order_probability(156_250, 125_000, 187_500) == pytest.approx(0.5)


def test_sample_orders():
    raster = torch.arange(16).expand(4, 16)
    assert torch.equal(sample_orders(4, 16, 0.0), raster)
    g = torch.Generator().manual_seed(0)
    o = sample_orders(64, 16, 1.0, generator=g)
    assert torch.equal(o.sort(-1).values, torch.arange(16).expand(64, 16))
    assert (o != raster[:1]).any(-1).all()
    half = sample_orders(2000, 16, 0.5, generator=g)
    frac_random = (half != torch.arange(16)).any(-1).float().mean().item()
    assert abs(frac_random - 0.5) < 0.05


def test_rope_tables_identity_prefix_and_grid():
    cos, sin = rope_tables((4, 4), 8, prefix=3)
    assert cos.shape == (3 + 16, 8)
    assert torch.equal(cos[:3], torch.ones(3, 8)) and torch.equal(sin[:3], torch.zeros(3, 8))
    # cell (r, c) = row 3 + 4r + c: first half rotates by r, second half by c (freq 1 on the first pair)
    assert torch.allclose(sin[3 + 4 * 2 + 1, 0], torch.sin(torch.tensor(2.0)))
    assert torch.allclose(sin[3 + 4 * 2 + 1, 4], torch.sin(torch.tensor(1.0)))


def test_conditions_are_causal():
    model = small_model().eval()
    L, K = model.cfg.steps, model.cfg.step_dim
    x = torch.randint(0, 2, (2, L, K))
    labels = torch.tensor([1, 4])
    orders = torch.arange(L).expand(2, L)
    base = model.conditions(x[:, :-1], labels, orders)
    assert base.shape == (2, L, model.head.width)
    j = 6
    y = x.clone()
    y[:, j] = 1 - y[:, j]
    pert = model.conditions(y[:, :-1], labels, orders)
    assert torch.allclose(base[:, : j + 1], pert[:, : j + 1], atol=1e-6)   # rows 0..j predict steps 0..j
    assert not torch.allclose(base[:, j + 1], pert[:, j + 1])
    # the label conditions everything
    other = model.conditions(x[:, :-1], torch.tensor([2, 5]), orders)
    assert not torch.allclose(base[:, 0], other[:, 0])


def test_target_aware_conditioning():
    """Same tokens fed in the same cells, different next target -> different condition for the next step."""
    model = small_model().eval()
    L, K = model.cfg.steps, model.cfg.step_dim
    x = torch.randint(0, 2, (1, L, K))
    a = torch.arange(L)[None]
    b = a.clone()
    b[0, [3, 7]] = b[0, [7, 3]]
    ca = model.conditions(x[:, :2], torch.tensor([0]), a)
    cb = model.conditions(x[:, :2], torch.tensor([0]), b)
    assert torch.allclose(ca[:, :2], cb[:, :2], atol=1e-6)
    # position 2 predicts orders[2] in both: same; now swap the third target
    b[0, [2, 9]] = b[0, [9, 2]]
    cb = model.conditions(x[:, :2], torch.tensor([0]), b)
    assert torch.allclose(ca[:, :2], cb[:, :2], atol=1e-6)
    assert not torch.allclose(ca[:, 2], cb[:, 2])


@pytest.mark.parametrize("p", [1, 2])
def test_training_loss_and_backward(p):
    model = small_model(k=4, grid=(4, 4), p=p, randomize=False).train()
    bits = torch.randint(0, 2, (3, 16, 4), dtype=torch.uint8)
    loss = model.training_loss(bits, torch.tensor([0, 1, 5]), step=0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.token_embed.proj.weight.grad is not None
    assert model.head.out.weight.grad is not None
    with pytest.raises(UserError):
        model.training_loss(bits[:, :15], torch.tensor([0, 1, 2]))


def test_label_dropout():
    model = small_model(randomize=False)
    model.cfg.label_dropout = 0.5
    labels = torch.zeros(4000, dtype=torch.long)
    model.train()
    frac = (model.drop_labels(labels) == model.null_class).float().mean().item()
    assert abs(frac - 0.5) < 0.05
    model.eval()
    assert torch.equal(model.drop_labels(labels), labels)


def test_loss_decreases_when_overfitting_one_batch():
    model = small_model(k=8, grid=(4, 4), dim=64, randomize=False).train()
    torch.manual_seed(1)
    bits = torch.randint(0, 2, (4, 16, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(80):
        loss = model.training_loss(bits, labels, step=None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_dropout_is_configurable():
    model = small_model(dropout=0.5, attn_dropout=0.5)
    L, K = model.cfg.steps, model.cfg.step_dim
    x = torch.randint(0, 2, (2, L - 1, K))
    args = (x, torch.tensor([0, 1]), torch.arange(L).expand(2, L))
    model.train()
    assert not torch.allclose(model.conditions(*args), model.conditions(*args))
    model.eval()
    assert torch.equal(model.conditions(*args), model.conditions(*args))


class _StubHead(TokenHead):
    def __init__(self, token_dim, width=32):
        super().__init__()
        self.token_dim, self.width = token_dim, width
        self.lin = torch.nn.Linear(width, token_dim)

    def loss(self, cond_BLW, target_BLk):
        return ((self.lin(cond_BLW) - target_BLk) ** 2).mean()


def test_continuous_tokens_reuse_the_backbone():
    cfg = GeneratorConfig(dim=32, depth=1, heads=2, num_classes=3, class_repeat=2, grid=(4, 4), token_kind="continuous",
                          token_dim=6, cond_width=32, label_dropout=0.0)
    model = BARGenerator(cfg, _StubHead(6))
    z = torch.randn(2, 16, 6)
    loss = model.training_loss(z, torch.tensor([0, 1]), step=0)
    loss.backward()
    assert torch.isfinite(loss) and model.token_embed.proj.weight.grad is not None


def test_config_errors():
    with pytest.raises(UserError, match="even"):
        small_model(heads=3, dim=36)
    with pytest.raises(UserError, match="divisible"):
        small_model(grid=(6, 6), p=4)
