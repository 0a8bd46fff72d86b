"""Baseline heads (softmax, bitwise, diffusion): learning, sample shapes, CFG, diffusion schedule and sampler, and the
full generator with every head."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_model

from bar import UserError
from bar.core.bits import bits_to_index, index_to_bits
from bar.model.heads import HEADS, BitwiseHead, DiffusionHead, SoftmaxHead, TokenHead, build_head
from bar.model.noise_schedule import cosine_alpha_bar, cosine_schedule, respaced_timesteps
from bar.model.sampling import generate
from bar.orchestration.build import count_params


def head_of(name, k=8, width=32, **cfg):
    torch.manual_seed(0)
    head = build_head(name, k, width=width, **cfg)
    for p in head.parameters():          # leave zero init so outputs depend on the condition
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    return head


def targets(name, B, L, k):
    if HEADS[name][0].token_kind == "continuous":
        return torch.randn(B, L, k)
    return torch.randint(0, 2, (B, L, k), dtype=torch.uint8)


# ----------------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name,opts", [("mbm", dict(depth=1)), ("softmax", {}), ("bitwise", {}),
                                       ("diffusion", dict(depth=2, batch_mul=1))])
def test_each_head_overfits_a_fixed_batch(name, opts):
    k = 8
    head = head_of(name, k, **opts)
    torch.manual_seed(1)
    cond = torch.randn(4, 3, head.width)
    x = targets(name, 4, 3, k)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        # a fixed generator: the same masks / timesteps / noise every step, so the loss is a fixed function
        loss = head.loss(cond, x, generator=torch.Generator().manual_seed(0)) if name in ("mbm", "diffusion") \
            else head.loss(cond, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, (name, losses[:3], losses[-3:])


def test_softmax_loss_is_cross_entropy_over_msb_first_indices():
    k = 6
    head = head_of("softmax", k)
    assert head.num_codes == 64 and head.out.out_features == 64
    cond = torch.randn(2, 5, head.width)
    bits = torch.randint(0, 2, (2, 5, k), dtype=torch.uint8)
    index = (bits.long() * torch.tensor([32, 16, 8, 4, 2, 1])).sum(-1)
    expect = F.cross_entropy(head.out(cond).reshape(-1, 64), index.reshape(-1))
    assert torch.allclose(head.loss(cond, bits), expect, atol=1e-6)


def test_bitwise_loss_is_per_bit_cross_entropy():
    k = 5
    head = head_of("bitwise", k)
    cond = torch.randn(3, 4, head.width)
    bits = torch.randint(0, 2, (3, 4, k), dtype=torch.uint8)
    logits = head.out(cond).reshape(3, 4, k, 2)
    expect = F.cross_entropy(logits.reshape(-1, 2), bits.reshape(-1).long())
    assert torch.allclose(head.loss(cond, bits), expect, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name,dtype", [("softmax", torch.uint8), ("bitwise", torch.uint8),
                                        ("diffusion", torch.float32)])
@pytest.mark.parametrize("cfg_scale", [None, 2.5])
def test_sample_shapes_and_dtypes(name, dtype, cfg_scale):
    k, B = 10, 3
    opts = dict(depth=1, sampling_steps=8) if name == "diffusion" else {}
    head = head_of(name, k, **opts)
    rows = B if cfg_scale is None else 2 * B
    out = head.sample(torch.randn(rows, head.width), cfg_scale=cfg_scale, temperature=1.0,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (B, k) and out.dtype == dtype
    if dtype == torch.uint8:
        assert set(out.unique().tolist()) <= {0, 1}
    else:
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["softmax", "bitwise"])
def test_cfg_scale_one_is_conditional_only_and_zero_unconditional(name):
    k, B = 8, 4
    head = head_of(name, k)
    c, u = torch.randn(B, head.width), torch.randn(B, head.width)
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    for tau in (0.0, 1.5):
        assert torch.equal(head.sample(torch.cat([c, u]), cfg_scale=1.0, temperature=tau, generator=g()),
                           head.sample(c, cfg_scale=None, temperature=tau, generator=g()))
        assert torch.equal(head.sample(torch.cat([c, u]), cfg_scale=0.0, temperature=tau, generator=g()),
                           head.sample(u, cfg_scale=None, temperature=tau, generator=g()))


def test_guided_argmax_at_temperature_zero():
    k, B, s = 8, 4, 3.0
    c, u = torch.randn(B, 32), torch.randn(B, 32)
    soft = head_of("softmax", k)
    lc, lu = soft.out(c), soft.out(u)
    out = soft.sample(torch.cat([c, u]), cfg_scale=s, temperature=0.0)
    assert torch.equal(out, index_to_bits((lu + s * (lc - lu)).argmax(-1), k))
    bit = head_of("bitwise", k)
    lc, lu = bit.logits(c), bit.logits(u)
    out = bit.sample(torch.cat([c, u]), cfg_scale=s, temperature=0.0)
    assert torch.equal(out.long(), (lu + s * (lc - lu)).argmax(-1))


def test_softmax_sample_returns_bits_of_the_chosen_index():
    head = head_of("softmax", 4)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.zero_()
        head.out.bias[5] = 100.0
    out = head.sample(torch.randn(3, head.width), temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.tolist() == [[0, 1, 0, 1]] * 3
    assert bits_to_index(out).tolist() == [5, 5, 5]


def test_temperature_spreads_independent_bits():
    head = head_of("bitwise", 16)
    cond = torch.randn(1, head.width).expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    cold = head.sample(cond, temperature=0.0)
    hot = head.sample(cond, temperature=1.0, generator=g)
    assert (cold == cold[0]).all()                      # greedy: every row identical
    assert 0.3 < hot.float().mean() < 0.7               # near-uniform logits at init: bits ~ fair coins


def test_schedule_options_are_validated():
    for name in ("softmax", "bitwise"):
        with pytest.raises(UserError, match="takes no sampling options"):
            head_of(name).check_schedule(allocation=[4, 4])
    diff = head_of("diffusion", depth=1)
    diff.check_schedule(steps=10, sampler="ddim")
    with pytest.raises(UserError, match="steps"):
        diff.check_schedule(steps=0)
    with pytest.raises(UserError, match="sampler"):
        diff.check_schedule(sampler="euler")
    with pytest.raises(UserError, match="unknown sampling options"):
        diff.check_schedule(allocation=[8])
    assert HEADS["mbm"][0].schedule_options == ("allocation",)
    assert DiffusionHead.schedule_options == ("steps", "sampler")


def test_softmax_beyond_int64_is_a_user_error_and_large_c_builds_on_meta():
    with pytest.raises(UserError, match="int64"):
        build_head("softmax", 64, width=8)
    with torch.device("meta"):
        head = build_head("softmax", 40, width=8)
    assert head.num_codes == 2 ** 40 and head.out.weight.shape == (2 ** 40, 8)


# ----------------------------------------------------------------------------------------------------------- diffusion
def test_cosine_schedule_endpoints_and_monotone():
    assert float(cosine_alpha_bar(0.0)) == pytest.approx(1.0)
    assert float(cosine_alpha_bar(1.0)) < 1e-8
    ab = cosine_schedule(1000)
    assert ab.shape == (1000,)
    assert ab[0] > 0.9999 and ab[0] < 1.0
    assert ab[-1] < 1e-4
    assert (ab[1:] < ab[:-1]).all()
    # the continuous and discrete schedules agree away from the clipped end
    assert torch.allclose(ab[:900], cosine_alpha_bar(torch.arange(1, 901, dtype=torch.float64) / 1000), rtol=1e-6)
    ts = respaced_timesteps(1000, 100)
    assert len(ts) == 100 and ts[0] == 0 and ts[-1] == 999 and ts == sorted(set(ts))
    assert respaced_timesteps(1000, 1) == [999] and respaced_timesteps(1000, 1000) == list(range(1000))


def _gaussian_oracle(head, mean, std):
    """Exact eps predictor for data ~ N(mean, std^2) per channel: E[eps | x_t]."""
    ab_all = head.alphas_cumprod.double()

    def eps(x, t, cond):
        ab = ab_all[t][:, None].to(x.dtype)
        var = ab * std ** 2 + (1 - ab)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mean) / var

    return eps


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_diffusion_sampler_recovers_the_data_distribution_with_an_exact_eps(sampler):
    d, n = 4, 4000
    head = head_of("diffusion", d, depth=1)
    mean, std = 0.7, 0.5
    head.eps = _gaussian_oracle(head, mean, std)
    x = head.sample(torch.zeros(n, head.width), temperature=1.0, generator=torch.Generator().manual_seed(0),
                    steps=50, sampler=sampler)
    assert x.dtype == torch.float32 and x.shape == (n, d)
    assert abs(x.mean().item() - mean) < 0.03
    assert abs(x.std().item() - std) / std < 0.08
    # a point mass (std 0) comes back exactly; temperature 0 removes the sampler's randomness
    head.eps = _gaussian_oracle(head, mean, 0.0)
    x = head.sample(torch.zeros(8, head.width), temperature=1.0, generator=torch.Generator().manual_seed(1),
                    steps=20, sampler=sampler)
    assert torch.allclose(x, torch.full_like(x, mean), atol=1e-3)


def test_diffusion_temperature_and_cfg_on_eps():
    d, B = 4, 2000
    head = head_of("diffusion", d, depth=1)
    head.eps = _gaussian_oracle(head, 0.0, 1.0)
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    hot = head.sample(torch.zeros(B, head.width), temperature=1.0, generator=g(), steps=20)
    cold = head.sample(torch.zeros(B, head.width), temperature=0.5, generator=g(), steps=20)
    assert cold.std() < 0.8 * hot.std()
    # CFG on eps: scale 1 = conditional only, with the same noise
    head = head_of("diffusion", d, depth=1)
    c, u = torch.randn(3, head.width), torch.randn(3, head.width)
    a = head.sample(torch.cat([c, u]), cfg_scale=1.0, generator=g(), steps=5)
    b = head.sample(c, cfg_scale=None, generator=g(), steps=5)
    assert torch.allclose(a, b, atol=1e-5)
    seen = []
    orig = head.eps
    head.eps = lambda x, t, cond: seen.append((x.shape[0], torch.equal(x[:3], x[3:]))) or orig(x, t, cond)
    head.sample(torch.cat([c, u]), cfg_scale=3.0, generator=g(), steps=5)
    assert seen == [(6, True)] * 5            # both halves share x_t; one call per step


def test_diffusion_loss_uses_the_schedule():
    """With a zero network the eps-MSE is E[noise^2] = 1; with the exact x0 known, eps is recoverable."""
    head = head_of("diffusion", 4, depth=1, batch_mul=3)
    x0 = torch.randn(2, 5, 4)
    cond = torch.randn(2, 5, head.width)
    seen = {}
    head.eps = lambda x, t, c: seen.update(x=x, t=t, c=c) or torch.zeros_like(x)
    loss = head.loss(cond, x0, generator=torch.Generator().manual_seed(0))
    assert seen["x"].shape == (30, 4) and seen["c"].shape == (30, head.width)        # batch_mul copies
    assert seen["t"].min() >= 0 and seen["t"].max() < 1000
    assert 0.6 < loss.item() < 1.4
    ab = head.alphas_cumprod[seen["t"]][:, None]
    noise = (seen["x"] - ab.sqrt() * x0.reshape(-1, 4).repeat(3, 1)) / (1 - ab).sqrt()
    assert torch.allclose(loss, (noise ** 2).mean(), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------- generator
@pytest.mark.parametrize("name", ["mbm", "softmax", "bitwise", "diffusion"])
def test_generator_train_step_and_generate_with_every_head(name):
    torch.manual_seed(0)
    extra = ["head.sampling_steps=4", "head.batch_mul=2"] if name == "diffusion" else []
    latent = ["tokenizer=ae", "tokenizer.channels=6"] if name == "diffusion" else ["tokenizer.bits=6"]
    model = build_model("profile=smoke", *latent, f"head={name}", "data.num_classes=4", *extra)
    assert isinstance(model.head, TokenHead) and model.head.token_dim == 6
    assert model.cfg.token_kind == HEADS[name][0].token_kind
    x = targets(name, 4, 16, 6)
    labels = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.training_loss(x, labels, step=0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert model.token_embed.proj.weight.grad is not None and model.head.out.weight.grad is not None
    g = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    out = generate(model, torch.tensor([0, 1]), cfg_scale=2.0, generator=g())
    assert out.shape == (2, 16, 6)
    if name == "diffusion":
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.allclose(out, generate(model, torch.tensor([0, 1]), cfg_scale=2.0, kv_cache=False,
                                            generator=g()), atol=1e-4)
    else:
        assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= {0, 1}
        assert torch.equal(out, generate(model, torch.tensor([0, 1]), cfg_scale=2.0, kv_cache=False, generator=g()))


def test_builder_head_options_and_token_kind():
    # the preset's depth sizes heads that have one; the linear heads take none
    tiny_soft = build_model("profile=tiny", "tokenizer.bits=8", "head=softmax")
    assert isinstance(tiny_soft.head, SoftmaxHead) and tiny_soft.head.width == 128
    assert isinstance(build_model("profile=smoke", "head=bitwise").head, BitwiseHead)
    diff = build_model("profile=tiny", "tokenizer=ae", "tokenizer.channels=4", "head=diffusion", "head.depth=3",
                       "head.width=64")
    assert len(diff.head.blocks) == 3 and diff.head.width == 64 and diff.cfg.token_kind == "continuous"
    assert diff.cfg.cond_width == 64
    with pytest.raises(UserError, match="predicts bits tokens but the tokenizer gives continuous tokens"):
        build_model("profile=smoke", "tokenizer=ae", "head=mbm")
    with pytest.raises(UserError, match="diffusion"):
        build_model("profile=smoke", "tokenizer=ae", "head=softmax")
    m = build_model("profile=smoke", "tokenizer=ae", "tokenizer.channels=2", "model.patch_size=2", "head=diffusion",
                    "head.sampling_steps=3")
    with pytest.raises(UserError, match="steps"):
        m.head.check_schedule(steps=5000)


def test_mar_head_sizes_at_paper_scale():
    model = build_model("profile=paper", "data.root=/d", "tokenizer=ae", "tokenizer.channels=16",
                        "head=diffusion_mar_b", meta=True)
    h = model.head
    assert (len(h.blocks), h.width, h.cfg.num_timesteps, h.cfg.sampling_steps) == (6, 1024, 1000, 100)
    # MAR-B's head: 6 blocks of (2 W^2 MLP + 3 W^2 AdaLN) + timestep MLP + final AdaLN ~ 36M (derived)
    n = count_params(h)
    assert 30e6 < n < 40e6, n
    assert math.isclose(n, 6 * (5 * 1024 ** 2) + 256 * 1024 + 1024 ** 2 + 2 * 1024 ** 2 + 16 * 1024 * 2, rel_tol=0.01)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_diffusion_sampling_stays_bounded_when_the_noise_prediction_is_poor(sampler):
    # An untrained head predicts poor noise; without the x0 clamp the first step from t = T multiplies that error by
    # ~1e4 (alpha_bar_T ~ 2e-9) and tokens come out in the thousands.
    torch.manual_seed(0)
    head = build_head("diffusion", 4, width=32, depth=1, sampler=sampler)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    z = head.sample(torch.randn(64, 32), generator=torch.Generator().manual_seed(0), steps=20)
    assert z.abs().max() <= head.cfg.x0_clip + 5
    unclamped = build_head("diffusion", 4, width=32, depth=1, sampler=sampler, x0_clip=None)
    unclamped.load_state_dict(head.state_dict())
    wild = unclamped.sample(torch.randn(64, 32), generator=torch.Generator().manual_seed(0), steps=20)
    assert wild.abs().max() > 10 * head.cfg.x0_clip
