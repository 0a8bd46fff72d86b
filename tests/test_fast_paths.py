"""Fast paths (bar.model.fast) against the eager reference: static KV cache, the static decode step (eager and compiled),
the heads' static samplers, and the compiled training loss. Same seed -> same tokens; compiled loss within 1e-5."""

import pytest
import torch

from bar import UserError
from bar.model.fast import FastDecoder, compile_training, decoder_for, release_decoders
from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import build_head
from bar.model.sampling import generate

HEADS = {  # head -> (head options, sampling schedule)
    "mbm": ({"depth": 1}, {"allocation": [1, 1, 2]}),
    "bitwise": ({}, {}),
    "softmax": ({}, {}),
    "diffusion": ({"depth": 2}, {"steps": 6}),
}


def small_model(head="mbm", k=4, p=1, dim=32, depth=2, class_repeat=3, head_cfg=None):
    torch.manual_seed(0)
    cfg = GeneratorConfig(dim=dim, depth=depth, heads=2, num_classes=5, class_repeat=class_repeat, grid=(4, 4),
                          patch_size=p, token_dim=k, cond_width=32, label_dropout=0.0, order_anneal=(10, 20),
                          token_kind="continuous" if head == "diffusion" else "bits")
    model = BARGenerator(cfg, build_head(head, cfg.step_dim, width=32, **(head_cfg or HEADS[head][0])))
    with torch.no_grad():           # undo AdaLN-Zero: outputs must depend on the inputs for the tests to mean anything
        for prm in model.parameters():
            if prm.ndim == 2 and not prm.any():
                prm.normal_(std=0.1)
    return model.eval()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def assert_same_tokens(head, a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    if head == "diffusion":          # float tokens: the static sampler reorders a few float operations
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5), (a - b).abs().max()
    else:
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# static cache and decode step (eager)
# ---------------------------------------------------------------------------------------------------------------------

def test_static_cache_decode_matches_full_recompute():
    model = small_model()
    L, K, P = model.cfg.steps, model.cfg.step_dim, model.cfg.prefix
    x = torch.randint(0, 2, (3, L, K))
    labels = torch.tensor([1, 2, 5])
    orders = torch.arange(L).expand(3, L)
    full = model.conditions(x[:, :-1], labels, orders)                       # (B, L, W), no cache
    cache = model.new_static_cache(3)
    rows = [model.conditions(x[:, :0], labels, orders, cache=cache)[:, -1]]   # prefix into the static cache
    for i in range(L - 1):
        rows.append(model.decode(x[:, i], labels, torch.tensor(P + i), cache))
    assert torch.allclose(torch.stack(rows, dim=1), full, atol=1e-5)
    assert cache.k0.shape == (3, 2, P + L, model.cfg.dim // 2)                 # preallocated at the final length


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("cfg_scale", [3.0, 1.0])
def test_fast_path_gives_the_eager_tokens(head, cfg_scale):
    _, schedule = HEADS[head]
    model = small_model(head)
    labels = torch.tensor([0, 3, 5])
    ref = generate(model, labels, cfg_scale=cfg_scale, temperature=2.0, generator=seeded(), **schedule)
    fast = generate(model, labels, cfg_scale=cfg_scale, temperature=2.0, generator=seeded(), fast=True, **schedule)
    assert_same_tokens(head, ref, fast)
    other = generate(model, labels, cfg_scale=cfg_scale, temperature=2.0, generator=seeded(1), fast=True, **schedule)
    assert not torch.equal(fast, other)


@pytest.mark.parametrize("p,alloc", [(1, [16]), (2, [4, 4, 8]), (2, [8, 8])])
def test_fast_path_grouped_tokens_and_allocations(p, alloc):
    model = small_model("mbm", k=4 if p == 2 else 16, p=p, depth=1)
    labels = torch.tensor([1, 4])
    for tau in (0.0, 1.5):
        ref = generate(model, labels, cfg_scale=2.5, temperature=tau, allocation=alloc, generator=seeded(3))
        fast = generate(model, labels, cfg_scale=2.5, temperature=tau, allocation=alloc, generator=seeded(3), fast=True)
        assert torch.equal(ref, fast)


def test_head_noise_is_what_sample_draws():
    """sample_noise + sample_static == sample from the same generator state (the contract the fast path rests on)."""
    for name, (opts, schedule) in HEADS.items():
        torch.manual_seed(0)
        head = build_head(name, 4, width=16, **opts).eval()
        with torch.no_grad():
            for prm in head.parameters():
                if prm.ndim == 2 and not prm.any():
                    prm.normal_(std=0.3)
        cond = torch.randn(6, 16)
        g_ref, g = seeded(), seeded()
        a = head.sample(cond, cfg_scale=2.0, temperature=1.5, generator=g_ref, **schedule)
        noise = head.sample_noise(3, 1.5, g, "cpu", **schedule)
        assert torch.equal(g.get_state(), g_ref.get_state())                      # as many draws as `sample`
        b = head.sample_static(cond, torch.tensor(2.0), noise, head.sample_constants(1.5, "cpu", **schedule),
                               **schedule)
        assert_same_tokens(name, a, b)


def test_fast_path_validates_and_reuses_its_decoder():
    model = small_model()
    with pytest.raises(UserError, match="static KV cache"):
        generate(model, torch.tensor([0]), fast=True, kv_cache=False, allocation=[2, 2])
    with pytest.raises(UserError, match="sums to 3"):
        generate(model, torch.tensor([0]), fast=True, allocation=[1, 2])
    generate(model, torch.tensor([0, 1]), cfg_scale=2.0, fast=True, allocation=[2, 2], generator=seeded())
    dec = decoder_for(model, 2, True, 1.0, {"allocation": [2, 2]})
    assert isinstance(dec, FastDecoder) and len(model._fast_decoders) == 1
    generate(model, torch.tensor([2, 3]), cfg_scale=4.0, fast=True, allocation=[2, 2], generator=seeded())
    assert decoder_for(model, 2, True, 1.0, {"allocation": [2, 2]}) is dec      # the CFG scale is an input
    generate(model, torch.tensor([2, 3, 4]), cfg_scale=4.0, fast=True, allocation=[2, 2], generator=seeded())
    assert len(model._fast_decoders) == 2                                        # a new batch size: a new decoder
    generate(model, torch.tensor([2, 3, 4]), fast=True, allocation=[2, 2], generator=seeded())   # no CFG: another
    assert len(model._fast_decoders) == 2 and dec not in model._fast_decoders.values()        # least recent evicted
    release_decoders(model)
    assert not getattr(model, "_fast_decoders", None)


def test_fast_path_restores_training_mode():
    model = small_model().train()
    generate(model, torch.tensor([0]), fast=True, allocation=[4], generator=seeded())
    assert model.training


# ---------------------------------------------------------------------------------------------------------------------
# compiled decode step (torch.compile, default mode on CPU): tiny models, ~10-60 s per test on a cold compile cache
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", sorted(HEADS))
def test_compiled_decode_gives_the_eager_tokens(head):
    _, schedule = HEADS[head]
    model = small_model(head, depth=1, class_repeat=2)
    labels = torch.tensor([0, 3, 5])
    ref = generate(model, labels, cfg_scale=3.0, temperature=2.0, generator=seeded(), **schedule)
    got = generate(model, labels, cfg_scale=3.0, temperature=2.0, generator=seeded(), compile=True, **schedule)
    assert_same_tokens(head, ref, got)
    # a second call reuses the compiled step, with a new CFG scale and seed, and stays equal to eager
    ref = generate(model, labels, cfg_scale=1.5, temperature=2.0, generator=seeded(7), **schedule)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = generate(model, labels, cfg_scale=1.5, temperature=2.0, generator=seeded(7), compile=True, **schedule)
    assert_same_tokens(head, ref, got)


# ---------------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------------

def _batch(head, B=4, k=4):
    g = seeded(11)
    if head == "diffusion":
        return torch.randn(B, 16, k, generator=g), torch.tensor([0, 1, 2, 5])[:B]
    return torch.randint(0, 2, (B, 16, k), dtype=torch.uint8, generator=g), torch.tensor([0, 1, 2, 5])[:B]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_training_draws_reproduce_training_loss(head):
    model = small_model(head).train()
    model.cfg.label_dropout = 0.3
    tokens, labels = _batch(head)
    torch.manual_seed(5)
    a = model.training_loss(tokens, labels, step=15)
    torch.manual_seed(5)
    b = model.loss_from_draws(tokens, labels, model.training_draws(4, 15))
    assert torch.equal(a, b)
    d = model.training_draws(4, 15, generator=seeded(2))
    assert set(d) == {"drop", "orders", "head"} and d["orders"].shape == (4, 16)


@pytest.mark.parametrize("head", ["mbm", "diffusion"])
def test_compiled_training_loss_matches_eager(head):
    model = small_model(head, depth=1).train()
    model.cfg.label_dropout = 0.3
    tokens, labels = _batch(head)
    loss_fn = compile_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in (0, 15):                        # random orders with probability 1, then 0.5
        draws = model.training_draws(4, step, generator=seeded(step))
        a = model.loss_from_draws(tokens, labels, draws)
        b = loss_fn.compiled(tokens, labels, draws)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        ga = torch.autograd.grad(a, params, allow_unused=True)
        gb = torch.autograd.grad(b, params, allow_unused=True)
        for x, y in zip(ga, gb):
            assert (x is None) == (y is None)
            if x is not None:
                assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)
    # the step number (order annealing) never recompiles the graph; same RNG state -> the eager loss
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in (3, 12, 19, 25, None):
            torch.manual_seed(step or 0)
            a = model.training_loss(tokens, labels, step)
            torch.manual_seed(step or 0)
            assert torch.allclose(a, loss_fn(tokens, labels, step), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_training_step_trains():
    model = small_model("mbm", depth=1).train()
    tokens, labels = _batch("mbm")
    loss_fn = compile_training(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = loss_fn(tokens, labels, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_fast_path_under_bf16_autocast():
    """The GPU sampling path runs under bf16 autocast: the static cache takes the autocast dtype (CPU autocast here)."""
    model = small_model("mbm")
    labels = torch.tensor([0, 3, 4])
    kw = dict(cfg_scale=2.0, allocation=[1, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = generate(model, labels, generator=seeded(), **kw)
        fast = generate(model, labels, generator=seeded(), fast=True, **kw)
        assert decoder_for(model, 3, True, 1.0, {"allocation": [1, 1, 2]}).cache.k0.dtype == torch.bfloat16
    assert fast.shape == eager.shape == (3, 16, 4) and fast.max() <= 1
    assert (fast == eager).float().mean() > 0.9       # bf16 rounding may flip a near-tie now and then


def test_model_compile_in_the_training_loop():
    """model.compile=true: the training loop compiles the module; the stage draws the randomness eagerly and passes
    it in (bar/stages/generator.py), so the compiled run follows the eager one step for step."""
    from bar.training.loop import Recipe, train

    tokens, labels = _batch("mbm")
    weights = []
    for compiled in (False, True):
        model = small_model("mbm", depth=1).train()

        def loss_fn(module, batch, step, generator, model=model):
            draws = model.training_draws(batch[0].shape[0], step, batch[0].device, generator)
            return module(*batch, draws=draws)

        train(model, loss_fn, iter([(tokens, labels)] * 3), Recipe(steps=3, lr=1e-3, compile=compiled))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5, rtol=1e-4)
