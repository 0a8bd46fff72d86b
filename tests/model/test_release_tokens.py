"""This project's sampler gives the official release's tokens (github.com/amazon-far/BAR at faf903f), in fp32 on
the CPU, without the release's code: tests/fixtures/release_tokens.pt holds toy-size random weights in the release's
state-dict layout, labels, a seed, each preset's sampling settings (the release README's CFG, temperature and
allocation) and the tokens the release's own `BAR.generate` sampled from them (made by
benchmarks/gpu/release_tokens_fixture.py, which imports the release from a snapshot).

Why equality can be exact: the release draws its random numbers from the default generator, seeded by
`torch.manual_seed(seed)`: first B uniforms for the label-dropout mask (`preprocess_condition`, p = 0 at sampling),
then per AR step and per MBM unmasking step the uniforms behind the Gumbel noise of the (B, k, 2) guided logits and,
except at the last unmasking step, of the (B, k) confidences (`zeros_like(t).uniform_(0, 1)`); nothing else. This
project's MBM head draws the same shapes in the same order with torch.rand (MBMHead.draw_noise), so a generator
seeded `seed` and advanced by B uniforms carries the release's stream. The rest is the same arithmetic: Gumbel argmax
at temperature T (1 - step / K), CFG on the logits with the linear ramp, re-masking the least confident bits.
"""

from pathlib import Path

import pytest
import torch

from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import build_head
from bar.model.release_keys import load_official
from bar.model.sampling import generate

FIXTURE = Path(__file__).parents[1] / "fixtures" / "release_tokens.pt"
CASES = ["bar_b", "bar_b_nocfg", "bar_l_settings", "bar_b2", "bar_b4", "bar_l_512"]


@pytest.fixture(scope="module")
def saved():
    return torch.load(FIXTURE, weights_only=False)


def our_model(saved, case: str) -> BARGenerator:
    entry = saved["cases"][case]
    opts = dict(entry["project_config"])
    head_depth = opts.pop("head_depth")
    cfg = GeneratorConfig(**opts)
    model = BARGenerator(cfg, build_head("mbm", cfg.step_dim, width=cfg.cond_width, depth=head_depth))
    load_official(model, {k: v.float() for k, v in saved["weights"][entry["weights"]].items()})
    return model.eval()


def our_tokens(model, saved, settings, skip_label_draws: bool = True, **kwargs) -> torch.Tensor:
    labels = saved["labels"]
    g = torch.Generator().manual_seed(saved["seed"])
    if skip_label_draws:
        torch.rand(labels.shape[0], generator=g)           # the release's label-dropout draw
    out = generate(model, labels, cfg_scale=settings["cfg_scale"], temperature=settings["temperature"],
                   generator=g, allocation=list(settings["allocation"]), **kwargs)
    return out.reshape(out.shape[0], -1)


def describe(ours: torch.Tensor, theirs: torch.Tensor, bits_per_step: int) -> str:
    same = ours == theirs
    steps = same.reshape(same.shape[0], -1, bits_per_step).all(-1)          # (B, AR steps)
    parted = (~steps).any(0).nonzero()
    return (f"{same.float().mean():.4f} of bits equal, {int(same.all(1).sum())}/{same.shape[0]} samples identical, "
            f"first differing AR step {int(parted[0]) if len(parted) else '-'}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kv_cache", [True, False], ids=["cached", "cache_free"])
def test_tokens_are_the_release_tokens(saved, case, kv_cache):
    entry = saved["cases"][case]
    model = our_model(saved, case)
    ours = our_tokens(model, saved, entry["settings"], kv_cache=kv_cache)
    theirs = entry["tokens"].to(ours.dtype)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs), describe(ours, theirs, model.cfg.step_dim)


def test_the_comparison_sees_the_network_and_the_stream(saved):
    """Negative controls: the fixture's tokens are not reproduced by a slightly different network (1% noise on one
    weight matrix of the backbone or of the head) or without the release's label-dropout draw."""
    entry = saved["cases"]["bar_b"]
    theirs = entry["tokens"]
    assert not torch.equal(our_tokens(our_model(saved, "bar_b"), saved, entry["settings"], skip_label_draws=False)
                           .to(theirs.dtype), theirs)
    g = torch.Generator().manual_seed(0)
    for pick in (lambda m: m.blocks[1].mlp.w3.weight, lambda m: m.head.blocks[0].mlp.w12.weight):
        model = our_model(saved, "bar_b")
        with torch.no_grad():
            w = pick(model)
            w.add_(0.01 * w.std() * torch.randn(w.shape, generator=g))
        assert not torch.equal(our_tokens(model, saved, entry["settings"]).to(theirs.dtype), theirs)


def test_fixture_covers_the_release_settings(saved):
    """The cases sample at the release README's settings (CFG, temperature, allocation) of BAR-B, B/2, B/4, L, L-512."""
    readme = {"bar_b": (5.0, 2.5, [2, 2, 5, 7]), "bar_b2": (5.5, 2.0, [16, 16, 16, 16]),
              "bar_b4": (9.6, 1.4, [64, 64, 64, 64]), "bar_l_settings": (5.3, 3.0, [2, 2, 5, 7]),
              "bar_l_512": (4.2, 2.8, [2, 2, 2, 4])}
    for case, (g, t, alloc) in readme.items():
        s = saved["cases"][case]["settings"]
        assert (s["cfg_scale"], s["temperature"], list(s["allocation"])) == (g, t, alloc), case
    assert saved["cases"]["bar_b4"]["project_config"]["patch_size"] == 4
    assert saved["cases"]["bar_l_512"]["project_config"]["token_dim"] == 10
