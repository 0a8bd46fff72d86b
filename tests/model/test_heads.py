"""MBM head: masking statistics, loss weights, allocation validation, unmasking schedule, CFG, registry."""

import pytest
import torch
import torch.nn.functional as F

from bar import UserError
from bar.model.heads import HEADS, MASK, MBMHead, TokenHead, build_head, even_allocation


def small_head(k=16, width=32, depth=1, **cfg):
    torch.manual_seed(0)
    head = build_head("mbm", k, width=width, depth=depth, **cfg)
    for p in head.parameters():          # leave AdaLN-Zero so outputs depend on the condition
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    return head


def test_mask_statistics():
    k = 16
    head = small_head(k)
    g = torch.Generator().manual_seed(1)
    draws = head.loss_draws(20000, "cpu", generator=g)
    mask, ratio = draws["mask"], draws["ratio"]
    counts = mask.sum(-1)
    assert counts.min() >= 1
    assert torch.equal(counts, (k * ratio).round().clamp(min=1).long())
    assert ratio.min() >= 1 / k - 1e-6 and ratio.max() <= 1.0
    # 1 - sigmoid(N(0, 0.8^2)) is symmetric around 1/2
    assert abs(counts.float().mean().item() / k - 0.5) < 0.02
    assert abs(ratio.mean().item() - 0.5) < 0.02
    # every bit position is equally likely to be masked
    per_bit = mask.float().mean(0)
    assert (per_bit - per_bit.mean()).abs().max() < 0.03


def test_loss_weights_match_manual_computation():
    k, B, L = 16, 3, 5
    head = small_head(k, masked_weight=1.0, visible_weight=0.1)
    cond = torch.randn(B, L, head.width)
    bits = torch.randint(0, 2, (B, L, k), dtype=torch.uint8)
    loss = head.loss(cond, bits, generator=torch.Generator().manual_seed(3))

    draws = head.loss_draws(B * L, "cpu", generator=torch.Generator().manual_seed(3))
    mask, ratio = draws["mask"], draws["ratio"]
    flat = bits.reshape(-1, k).long()
    logits = head.logits(torch.where(mask, MASK, flat), cond.reshape(-1, head.width), ratio)
    ce = F.cross_entropy(logits.reshape(-1, 2), flat.reshape(-1), reduction="none").reshape(flat.shape)
    w = mask.float() * 1.0 + (~mask).float() * 0.1
    assert torch.allclose(loss, (ce * w).sum() / w.sum(), atol=1e-6)

    # visible weight 0: only masked bits count
    head.cfg.visible_weight = 0.0
    loss0 = head.loss(cond, bits, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(loss0, ce[mask].mean(), atol=1e-6)


def test_allocation_validation():
    head = small_head(16)
    with pytest.raises(UserError, match=r"^allocation \[2,2,5\] sums to 9, bits_per_token is 16$"):
        head.check_schedule(allocation=[2, 2, 5])
    with pytest.raises(ValueError, match="non-decreasing"):
        head.check_schedule(allocation=[7, 5, 2, 2])
    with pytest.raises(ValueError, match="positive"):
        head.check_schedule(allocation=[0, 8, 8])
    with pytest.raises(ValueError, match="unknown sampling options"):
        head.check_schedule(allocation=[16], steps=3)
    head.check_schedule(allocation=[2, 2, 5, 7])
    head.check_schedule()   # default: even split
    with pytest.raises(UserError):
        head.sample(torch.randn(2, head.width), allocation=[1, 2])
    assert even_allocation(16, 4) == [4, 4, 4, 4]
    assert even_allocation(10, 4) == [2, 2, 3, 3]
    assert even_allocation(3, 4) == [1, 1, 1]


@pytest.mark.parametrize("k,alloc", [(16, [2, 2, 5, 7]), (32, [8, 8, 8, 8]), (64, [16, 16, 16, 16])])
def test_unmasking_follows_allocation(k, alloc):
    head = small_head(k)
    masked = []
    orig = head.embed_bits

    def spy(ids):
        masked.append((ids == MASK).sum(-1))
        return orig(ids)

    head.embed_bits = spy
    B = 5
    out = head.sample(torch.randn(2 * B, head.width), cfg_scale=2.0, temperature=1.5,
                      generator=torch.Generator().manual_seed(0), allocation=alloc)
    assert out.shape == (B, k) and out.dtype == torch.uint8 and set(out.unique().tolist()) <= {0, 1}
    assert len(masked) == len(alloc) == head.sampling_passes(allocation=alloc)
    consts = head.sampling_constants(1.5, "cpu", allocation=alloc)
    revealed = 0
    for step, (n_masked, a) in enumerate(zip(masked, alloc)):
        assert (n_masked == k - revealed).all()
        assert consts["ratio"][step].item() == pytest.approx(1 - revealed / k)
        assert consts["tau"][step].item() == pytest.approx(1.5 * (1 - step / len(alloc)))
        revealed += a


def test_batched_modulation_is_the_per_step_network():
    """The sampler computes every step's AdaLN modulation up front; each step's logits are still `logits(ids, cond,
    mask ratio)`: at temperature 0 the first step's choice is its argmax, and later steps keep what was revealed."""
    k, B = 16, 6
    head = small_head(k, depth=2)
    cond = torch.randn(B, head.width)
    alloc = [3, 5, 8]
    out = head.sample(cond, temperature=0.0, allocation=alloc)
    first = head.logits(torch.full((B, k), MASK), cond, torch.ones(B)).argmax(-1)
    conf = head.logits(torch.full((B, k), MASK), cond, torch.ones(B)).max(-1).values
    kept = conf.topk(alloc[0], dim=-1).indices                   # the most confident bits stay revealed
    assert torch.equal(out.long().gather(1, kept), first.gather(1, kept))


@pytest.mark.parametrize("k", [32, 64])
def test_mbm_head_at_32_and_64_bits_learns(k):
    head = small_head(k, width=64)
    torch.manual_seed(0)
    cond = torch.randn(4, 2, head.width)
    bits = torch.randint(0, 2, (4, 2, k), dtype=torch.uint8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = head.loss(cond, bits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    out = head.sample(cond[:, 0], temperature=1.0, allocation=even_allocation(k, 4),
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, k)


def test_cfg_combines_conditional_and_unconditional_logits():
    k, B = 16, 4
    head = small_head(k)
    c, u = torch.randn(B, head.width), torch.randn(B, head.width)
    both = torch.cat([c, u])
    kw = dict(temperature=0.0, allocation=[2, 2, 5, 7])
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    assert torch.equal(head.sample(both, cfg_scale=1.0, generator=g(), **kw),
                       head.sample(c, cfg_scale=None, generator=g(), **kw))
    assert torch.equal(head.sample(both, cfg_scale=0.0, generator=g(), **kw),
                       head.sample(u, cfg_scale=None, generator=g(), **kw))
    # the first step's choice is argmax of l_u + s (l_c - l_u)
    s = 3.0
    ratio = torch.ones(2 * B)
    logits = head.logits(torch.full((2 * B, k), MASK), both, ratio)
    guided = logits[B:] + s * (logits[:B] - logits[B:])
    out = head.sample(both, cfg_scale=s, generator=g(), temperature=0.0, allocation=[16])
    assert torch.equal(out.long(), guided.argmax(-1))


def test_sampling_is_seeded():
    head = small_head(16)
    cond = torch.randn(3, head.width)
    a = head.sample(cond, temperature=2.0, generator=torch.Generator().manual_seed(5), allocation=[4, 4, 4, 4])
    b = head.sample(cond, temperature=2.0, generator=torch.Generator().manual_seed(5), allocation=[4, 4, 4, 4])
    assert torch.equal(a, b)


def test_sampling_passes_count_head_evaluations():
    head = small_head(16)
    assert head.sampling_passes(allocation=[2, 2, 5, 7]) == 4
    assert head.sampling_passes() == 4                        # the default even split
    assert head.sampling_passes(allocation=[16]) == 1
    with pytest.raises(UserError, match="sums to 9"):
        head.sampling_passes(allocation=[2, 2, 5])
    assert build_head("softmax", 8, width=8).sampling_passes() == 1
    assert build_head("bitwise", 8, width=8).sampling_passes() == 1
    diffusion = build_head("diffusion", 4, width=8, depth=1, sampling_steps=30)
    assert diffusion.sampling_passes() == 30 and diffusion.sampling_passes(steps=7, sampler="ddim") == 7


def test_sampler_takes_all_its_randomness_as_noise():
    """`sample_with_noise` is a function of its inputs: no random draws of its own (what lets the decoder compile it
    and the cached and cache-free paths agree); other noise, other tokens."""
    head = small_head(16)
    cond = torch.randn(8, head.width)
    schedule = {"allocation": [4, 4, 8]}
    consts = head.sampling_constants(1.0, "cpu", **schedule)
    noise = head.draw_noise(4, 1.0, torch.Generator().manual_seed(0), "cpu", **schedule)
    assert [n.shape for n in noise] == [(4, 16, 2), (4, 16), (4, 16, 2), (4, 16), (4, 16, 2)]
    rng = torch.random.get_rng_state()
    a = head.sample_with_noise(cond, torch.tensor(2.0), noise, consts, **schedule)
    b = head.sample_with_noise(cond, torch.tensor(2.0), noise, consts, **schedule)
    assert torch.equal(a, b) and torch.equal(rng, torch.random.get_rng_state())
    other = head.draw_noise(4, 1.0, torch.Generator().manual_seed(1), "cpu", **schedule)
    assert not torch.equal(a, head.sample_with_noise(cond, torch.tensor(2.0), other, consts, **schedule))


def test_registry_and_zero_init():
    assert "mbm" in HEADS
    head = build_head("mbm", 16, width=32, depth=2)
    assert isinstance(head, TokenHead) and isinstance(head, MBMHead)
    assert head.width == 32 and head.token_dim == 16
    assert all((b.ada.weight == 0).all() and (b.ada.bias == 0).all() for b in head.blocks)
    assert (head.final.ada.weight == 0).all()
    assert head.blocks[0].mlp.w3.in_features == int(2 / 3 * 32 * 4)
    with pytest.raises(UserError, match="unknown head"):
        build_head("nope", 16)
    with pytest.raises(UserError, match="no option"):
        build_head("mbm", 16, widht=3)
