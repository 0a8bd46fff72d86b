"""Model presets are config files (bar/conf/model/*.yaml) holding every value: the release's sizes, training recipe and
sampling settings; parameter counts on the meta device; the allocation fitted to other bit widths; CPU presets run."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, build_model
from hydra.errors import HydraException
from omegaconf import OmegaConf

from bar.model.generator import order_probability
from bar.model.sampling import generate
from bar.orchestration.build import build_generator, count_params, fit_allocation, order_anneal_steps, sampling_schedule
from bar.orchestration.config import CONF_DIR, compose

RELEASE = {"bar_b": (415e6, 0.01, []), "bar_b2": (415e6, 0.01, []), "bar_b4": (416e6, 0.01, []),
           "bar_l": (1.1e9, 0.05, []), "bar_l_512": (1.1e9, 0.05, ["tokenizer.bits=10", "data.resolution=512"])}


def release_cfg(name, *extra):
    return compose(["profile=paper", f"model={name}", "data.root=/data", *RELEASE[name][2], *extra])


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_release_parameter_counts(name):
    target, tol, _ = RELEASE[name]
    with torch.device("meta"):
        model = build_generator(release_cfg(name))
    n = count_params(model)
    assert abs(n - target) / target < tol, f"{name}: {n / 1e6:.2f}M"
    # the MBM head is ~156M of every release preset (derived)
    assert abs(count_params(model.head) - 156e6) / 156e6 < 0.01


def test_release_settings():
    b = release_cfg("bar_b")
    m, t, s = b.model, b.generator.train, b.generator.sample
    assert (m.dim, m.depth, m.heads, m.patch_size, m.head_width, m.head_depth) == (768, 24, 12, 1, 2048, 3)
    assert (t.lr, list(t.betas), t.weight_decay, t.warmup, t.steps, t.batch_size) == (4e-4, [0.9, 0.96], 0.03,
                                                                                      62_500, 250_000, 2048)
    assert list(t.order_anneal) == [0.5, 0.75] and m.label_dropout == 0.1 and m.class_repeat == 32
    assert (s.cfg_scale, s.temperature, list(s.allocation_shape)) == (5.0, 2.5, [2, 2, 5, 7])
    b4 = release_cfg("bar_b4").generator.sample
    assert list(b4.allocation_shape) == [64, 64, 64, 64] and b4.cfg_scale == 9.6
    b2 = release_cfg("bar_b2").generator.sample
    assert list(b2.allocation_shape) == [16, 16, 16, 16] and b2.temperature == 2.0
    l512 = release_cfg("bar_l_512")
    assert (l512.model.dim, l512.model.depth, l512.model.heads, l512.model.dropout, l512.model.attn_dropout) == \
        (1280, 32, 16, 0.2, 0.0)
    assert list(l512.generator.train.order_anneal) == [0.5, 0.75]


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_each_release_allocation_fits_its_own_bits_per_step(name):
    cfg = release_cfg(name)
    with torch.device("meta"):
        model = build_generator(cfg)
    assert sampling_schedule(cfg, model)["allocation"] == list(cfg.generator.sample.allocation_shape)
    assert sum(cfg.generator.sample.allocation_shape) == model.cfg.step_dim


def test_fit_allocation_to_other_bit_widths():
    assert fit_allocation([2, 2, 5, 7], 16) == [2, 2, 5, 7]
    assert fit_allocation([2, 2, 5, 7], 32) == [4, 4, 10, 14]
    for k in [1, 2, 3, 5, 10, 17, 64, 100, 256]:
        a = fit_allocation([2, 2, 5, 7], k)
        assert sum(a) == k and min(a) >= 1 and a == sorted(a) and len(a) <= 4, (k, a)


def test_an_explicit_allocation_wins():
    cfg = compose(["profile=smoke", "tokenizer.bits=8", "generator.sample.allocation=[1,3,4]"])
    assert sampling_schedule(cfg, build_generator(cfg))["allocation"] == [1, 3, 4]


def test_builder_options_and_errors():
    m = build_model("profile=smoke", "tokenizer.bits=6", "model.patch_size=2", "head.width=16",
                    "model.class_repeat=1", "data.num_classes=3")
    assert m.cfg.step_dim == 24 and m.cfg.steps == 4 and m.head.width == 16 and m.cfg.cond_width == 16
    assert m.null_class == 3 and m.cfg.prefix == 2
    with pytest.raises(Exception, match="bits per AR step"):
        m.head.check_schedule(allocation=[2, 2])
    for bad in (["model=bar_xl"], ["head=softmaxx"], ["model.depthh=3"], ["head=softmax", "head.depth=2"]):
        with pytest.raises(HydraException):
            compose(bad)


@pytest.mark.parametrize("profile", ["smoke", "tiny"])
def test_cpu_presets_train_and_sample(profile):
    cfg = compose([f"profile={profile}"])
    model = build_generator(cfg)
    grid, k = model.cfg.grid, model.cfg.token_dim
    bits = torch.randint(0, 2, (2, grid[0] * grid[1], k), dtype=torch.uint8)
    loss = model.training_loss(bits, torch.tensor([0, 1]), step=0)
    loss.backward()
    assert torch.isfinite(loss)
    s = cfg.generator.sample
    out = generate(model, torch.tensor([0, cfg.data.num_classes]), cfg_scale=s.cfg_scale, temperature=s.temperature,
                   generator=torch.Generator().manual_seed(0), **sampling_schedule(cfg, model))
    assert out.shape == bits.shape


@pytest.mark.cli
def test_cfg_job_shows_every_release_value():
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=bar_b", "--cfg", "job"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120).stdout
    for line in ("dim: 768", "depth: 24", "head_width: 2048", "steps: 250000", "batch_size: 2048", "lr: 0.0004",
                 "warmup: 62500", "weight_decay: 0.03", "cfg_scale: 5.0", "temperature: 2.5", "- 0.75", "- 7"):
        assert line in out, line


# Each preset's (and profile's) generator steps and the optimizer steps of its random-order anneal
# (GeneratorConfig.order_anneal), pinned: the fractions in the config must give exactly these.
ANNEAL_STEPS = {
    ("paper", "bar_b"): (250_000, (125_000, 187_500)), ("paper", "bar_b2"): (250_000, (125_000, 187_500)),
    ("paper", "bar_b4"): (250_000, (125_000, 187_500)), ("paper", "bar_l"): (250_000, (125_000, 187_500)),
    ("paper", "bar_l_512"): (125_000, (62_500, 93_750)), ("tiny", "tiny"): (300, (200, 300)),
    ("small", "small"): (3000, (1500, 2250)), ("smoke", "smoke"): (6, (6, 6)),
}


@pytest.mark.parametrize("profile,preset", sorted(ANNEAL_STEPS))
def test_each_preset_anneals_order_at_its_pinned_steps(profile, preset):
    cfg = (release_cfg(preset) if profile == "paper" else compose([f"profile={profile}"]))
    steps, anneal = ANNEAL_STEPS[profile, preset]
    assert cfg.model.preset == preset and cfg.generator.train.steps == steps
    assert order_anneal_steps(cfg) == anneal
    with torch.device("meta"):
        assert build_generator(cfg).cfg.order_anneal == anneal


def test_smoke_trains_every_step_in_random_order_as_its_former_steps_did():
    """smoke's [1.0, 1.0] gives steps (6, 6) where it had (5, 8): the same order probability at each of its 6 steps."""
    cfg = compose(["profile=smoke"])
    assert [order_probability(s, *order_anneal_steps(cfg)) for s in range(6)] == \
        [order_probability(s, 5, 8) for s in range(6)] == [1.0] * 6


def test_anneal_fractions_follow_the_steps():
    cfg = compose(["profile=small", "generator.train.steps=1000"])
    assert order_anneal_steps(cfg) == (500, 750)


def test_the_small_profile_has_its_own_preset_at_the_release_fractions():
    """profile=small trains the `small` preset: tiny's sizes, its anneal at the release's fractions of the steps."""
    small, tiny, b = (compose(["profile=small"]), compose(["profile=tiny"]), release_cfg("bar_b"))
    assert small.model.preset == "small" and list(small.generator.train.order_anneal) == [0.5, 0.75]
    assert list(small.generator.train.order_anneal) == list(b.generator.train.order_anneal)
    sizes = lambda cfg: {k: v for k, v in cfg.model.items() if k != "preset"}   # noqa: E731
    assert sizes(small) == sizes(tiny)


@pytest.mark.parametrize("profile", ["tiny", "small", "smoke", "paper"])
def test_profiles_never_override_their_presets_values(profile):
    """Every value a model preset file sets reaches the composed config of the profile that picks it."""
    cfg = compose([f"profile={profile}", "data.root=/data"])
    preset = OmegaConf.load(CONF_DIR / "model" / f"{cfg.model.preset}.yaml")
    for key, value in _leaves(OmegaConf.to_container(preset)):
        assert OmegaConf.select(cfg, key) == value, key


def _leaves(node, prefix=""):
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else k)]
