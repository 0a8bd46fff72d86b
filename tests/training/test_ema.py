"""EMA of the tokenizer (bar/ema.py): the release's update arithmetic, and its state through a checkpoint."""

import io

import pytest
import torch
import torch.nn as nn

from bar.training.ema import EMA, EMAHook


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(0.0))
        self.frozen = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.register_buffer("count", torch.tensor(7.0))


def test_decay_schedule_is_the_release_warmup():
    ema = EMA(Scalar(), decay=0.999)
    assert ema.decay_at(1) == 0.0                         # the first update copies the weights
    assert ema.decay_at(2) == pytest.approx(2 / 11)       # (1 + k) / (10 + k), k = n - 1
    assert ema.decay_at(3) == pytest.approx(3 / 12)
    assert ema.decay_at(8990) < 0.999 and ema.decay_at(20_000) == 0.999


def test_update_arithmetic_matches_the_closed_form():
    model = Scalar()
    ema = EMA(model)
    for value in (1.0, 2.0, 4.0):
        with torch.no_grad():
            model.p.fill_(value)
            model.frozen.fill_(value * 10)
        ema.update(model)
    # s1 = p1 = 1; s2 = 2/11 * 1 + 9/11 * 2 = 20/11; s3 = 1/4 * 20/11 + 3/4 * 4 = 38/11
    assert ema.shadow["p"].item() == pytest.approx(38 / 11, rel=1e-6)
    assert ema.shadow["frozen"].item() == 40.0            # frozen parameters are copied, not averaged
    assert ema.num_updates == 3


def test_copy_to_and_applied_touch_parameters_only():
    model = Scalar()
    ema = EMA(model)
    with torch.no_grad():
        model.p.fill_(5.0)
    ema.update(model)
    with torch.no_grad():
        model.p.fill_(9.0)
        model.count.fill_(3.0)
    with ema.applied(model):
        assert model.p.item() == 5.0 and model.count.item() == 3.0
    assert model.p.item() == 9.0
    ema.copy_to(model)
    assert model.p.item() == 5.0 and model.count.item() == 3.0


def test_hook_updates_once_per_step_and_twice_after_the_gan_start():
    class State:
        def __init__(self, model):
            self.model, self.step = model, 0

    model, hook = Scalar(), EMAHook(EMA(Scalar()), extra_update_from=2)
    state = State(model)
    for _ in range(4):                                    # steps 0, 1 once; steps 2, 3 twice
        state.step += 1
        hook.after_step(state)
    assert hook.ema.num_updates == 1 + 1 + 2 + 2


def test_hook_state_survives_save_and_restore():
    model = Scalar()
    hook = EMAHook(EMA(model))
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.p.fill_(value)
        hook.ema.update(model)
    buffer = io.BytesIO()
    torch.save(hook.state_dict(), buffer)
    buffer.seek(0)
    restored = EMAHook(EMA(Scalar()))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.ema.num_updates == 2 and restored.ema.decay == 0.999
    assert torch.equal(restored.ema.shadow["p"], hook.ema.shadow["p"])
    with torch.no_grad():
        model.p.fill_(2.0)
    hook.ema.update(model)
    restored.ema.update(model)
    assert torch.equal(restored.ema.shadow["p"], hook.ema.shadow["p"])    # the decay schedule continues too
