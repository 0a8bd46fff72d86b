"""Cached decoding (bar.model.decoding) against the cache-free reference (`generate(..., kv_cache=False)`): the static
KV cache, the decode step (eager and compiled), the heads' one sampler, and the compiled training loss. Same seed ->
same tokens; compiled loss within 1e-5."""

import pytest
import torch

from bar import UserError
from bar.model.decoding import Decoder, decoder_for, release_decoders
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
    if head == "diffusion":          # float tokens: cached and cache-free attention round differently
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
def test_cached_decoding_gives_the_reference_tokens(head, cfg_scale):
    _, schedule = HEADS[head]
    model = small_model(head)
    labels = torch.tensor([0, 3, 5])
    ref = generate(model, labels, cfg_scale=cfg_scale, temperature=2.0, generator=seeded(), kv_cache=False, **schedule)
    got = generate(model, labels, cfg_scale=cfg_scale, temperature=2.0, generator=seeded(), **schedule)
    assert_same_tokens(head, ref, got)
    other = generate(model, labels, cfg_scale=cfg_scale, temperature=2.0, generator=seeded(1), **schedule)
    assert not torch.equal(got, other)


@pytest.mark.parametrize("p,alloc", [(1, [16]), (2, [4, 4, 8]), (2, [8, 8])])
def test_cached_decoding_grouped_tokens_and_allocations(p, alloc):
    model = small_model("mbm", k=4 if p == 2 else 16, p=p, depth=1)
    labels = torch.tensor([1, 4])
    for tau in (0.0, 1.5):
        kw = dict(cfg_scale=2.5, temperature=tau, allocation=alloc)
        ref = generate(model, labels, generator=seeded(3), kv_cache=False, **kw)
        assert torch.equal(ref, generate(model, labels, generator=seeded(3), **kw))


def test_both_paths_draw_the_same_noise():
    """Each AR step draws the head's noise once, in the same order on both paths: the generator ends in one state."""
    for name, (_, schedule) in HEADS.items():
        model = small_model(name)
        g_ref, g = seeded(), seeded()
        generate(model, torch.tensor([0, 2]), cfg_scale=2.0, generator=g_ref, kv_cache=False, **schedule)
        generate(model, torch.tensor([0, 2]), cfg_scale=2.0, generator=g, **schedule)
        assert torch.equal(g.get_state(), g_ref.get_state()), name
        assert not torch.equal(g.get_state(), seeded().get_state())


def test_decoder_validates_and_is_reused():
    model = small_model()
    with pytest.raises(UserError, match="kv_cache=False"):
        generate(model, torch.tensor([0]), compile=True, kv_cache=False, allocation=[2, 2])
    with pytest.raises(UserError, match="sums to 3"):
        generate(model, torch.tensor([0]), allocation=[1, 2])
    generate(model, torch.tensor([0, 1]), cfg_scale=2.0, allocation=[2, 2], generator=seeded())
    dec = decoder_for(model, 2, True, 1.0, {"allocation": [2, 2]})
    assert isinstance(dec, Decoder) and len(model._decoders) == 1
    generate(model, torch.tensor([2, 3]), cfg_scale=4.0, allocation=[2, 2], generator=seeded())
    assert decoder_for(model, 2, True, 1.0, {"allocation": [2, 2]}) is dec      # the CFG scale is an input
    generate(model, torch.tensor([2, 3, 4]), cfg_scale=4.0, allocation=[2, 2], generator=seeded())
    assert len(model._decoders) == 2                                             # a new batch size: a new decoder
    generate(model, torch.tensor([2, 3, 4]), allocation=[2, 2], generator=seeded())   # no CFG: another
    assert len(model._decoders) == 2 and dec not in model._decoders.values()     # least recent evicted
    release_decoders(model)
    assert not getattr(model, "_decoders", None)


def test_prefill_runs_once_per_label_and_fills_every_row():
    """The prefix is computed per distinct label and copied to the rows that share it: the same cache and the same
    first conditions as computing it on every row."""
    model = small_model()
    labels = torch.tensor([2, 0, 2, 5, 0, 5])
    P, L = model.cfg.prefix, model.cfg.steps
    dec = decoder_for(model, 6, False, 1.0, {"allocation": [1, 1, 2]})
    full = model.new_static_cache(6)
    with torch.no_grad():
        cond = dec.prefill(model, labels)
        expect = model.conditions(labels.new_zeros(6, 0, 4), labels, torch.arange(L).expand(6, L), cache=full)[:, -1]
    assert torch.allclose(cond, expect, atol=1e-6)
    for mine, theirs in zip(dec.cache.buffers_kv(), full.buffers_kv()):
        assert torch.allclose(mine, theirs, atol=1e-6) and mine[:, :, :P].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# compiled decode step (torch.compile, default mode on CPU): tiny models, ~10-60 s per test on a cold compile cache
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.compile
@pytest.mark.parametrize("head", sorted(HEADS))
def test_compiled_decode_gives_the_reference_tokens(head):
    _, schedule = HEADS[head]
    model = small_model(head, depth=1, class_repeat=2)
    labels = torch.tensor([0, 3, 5])
    ref = generate(model, labels, cfg_scale=3.0, temperature=2.0, generator=seeded(), kv_cache=False, **schedule)
    got = generate(model, labels, cfg_scale=3.0, temperature=2.0, generator=seeded(), compile=True, **schedule)
    assert_same_tokens(head, ref, got)
    # a second call reuses the compiled step, with a new CFG scale and seed, and stays equal to the reference
    ref = generate(model, labels, cfg_scale=1.5, temperature=2.0, generator=seeded(7), kv_cache=False, **schedule)
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


def compiled_loss(model):
    """The training loss compiled as bar.training.loop compiles it (the module itself; the draws made eagerly and
    passed in), as one graph: `loss_fn(tokens, labels, step)`."""
    compiled = torch.compile(model, fullgraph=True)

    def loss_fn(tokens_BLk, labels_B, step=None):
        return compiled(tokens_BLk, labels_B, draws=model.training_draws(tokens_BLk.shape[0], step))

    return compiled, loss_fn


@pytest.mark.compile
@pytest.mark.parametrize("head", ["mbm", "diffusion"])
def test_compiled_training_loss_matches_eager(head):
    model = small_model(head, depth=1).train()
    model.cfg.label_dropout = 0.3
    tokens, labels = _batch(head)
    compiled, loss_fn = compiled_loss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in (0, 15):                        # random orders with probability 1, then 0.5
        draws = model.training_draws(4, step, generator=seeded(step))
        a = model.loss_from_draws(tokens, labels, draws)
        b = compiled(tokens, labels, draws=draws)
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


@pytest.mark.compile
@pytest.mark.slow
def test_compiled_training_step_trains():
    model = small_model("mbm", depth=1).train()
    tokens, labels = _batch("mbm")
    _, loss_fn = compiled_loss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = loss_fn(tokens, labels, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_cached_decoding_under_bf16_autocast():
    """The GPU sampling path runs under bf16 autocast: the static cache takes the autocast dtype (CPU autocast here)."""
    model = small_model("mbm")
    labels = torch.tensor([0, 3, 4])
    kw = dict(cfg_scale=2.0, allocation=[1, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = generate(model, labels, generator=seeded(), kv_cache=False, **kw)
        got = generate(model, labels, generator=seeded(), **kw)
        assert decoder_for(model, 3, True, 1.0, {"allocation": [1, 1, 2]}).cache.k0.dtype == torch.bfloat16
    assert got.shape == ref.shape == (3, 16, 4) and got.max() <= 1
    assert (got == ref).float().mean() > 0.9          # bf16 rounding may flip a near-tie now and then


@pytest.mark.compile
def test_model_compile_in_the_training_loop():
    """model.compile=true: the training loop compiles the module; the stage draws the randomness eagerly and passes
    it in (bar/orchestration/stages/generator.py), so the compiled run follows the eager one step for step."""
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
