"""generator.sample.temperature_is: the MBM head's annealed temperature read as its start (the release) or its mean."""

import pytest

from bar import UserError
from bar.orchestration.build import build_generator, sampling_schedule, sampling_temperature
from bar.orchestration.config import compose
from bar.orchestration.validate import validate_config


def _temperature(*overrides):
    cfg = compose(["profile=small", *overrides])
    model = build_generator(cfg)
    return sampling_temperature(cfg, model, sampling_schedule(cfg, model))


def test_mean_rule_raises_the_mbm_start_so_its_steps_average_the_temperature():
    # K = 4 unmasking steps anneal T, 3T/4, T/2, T/4: on average 5T/8, so a mean of 1.0 starts at 1.6
    assert _temperature("head=mbm") == pytest.approx(1.6)
    assert _temperature("head=mbm", "generator.sample.temperature=2.0") == pytest.approx(3.2)
    one_step = _temperature("head=mbm", "tokenizer.bits=8", "generator.sample.allocation=[8]")
    assert one_step == pytest.approx(1.0)   # one unmasking step: exact
    assert _temperature("head=mbm", "generator.sample.temperature_is=start") == pytest.approx(1.0)


def test_heads_that_sample_exactly_keep_the_temperature():
    for head in ("bitwise", "softmax"):
        assert _temperature(f"head={head}") == pytest.approx(1.0)


def test_an_unknown_meaning_is_one_line():
    cfg = compose(["generator.sample.temperature_is=median"])
    with pytest.raises(UserError, match="temperature_is='median' is not one of start, mean"):
        validate_config(cfg)
