"""The training loop's recipe: gradient accumulation keeps the global batch's gradient, the release's weight-decay
groups reach the optimizer, per-micro-batch random streams depend on where samples sit in the global batch."""

import torch

from bar.training.optim import decay_split, decays
from bar.training.loop import Recipe, _optimizer, infinite_batches, micro_generator, split_batch, train
from conftest import build_model


def _linear_problem():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randn(64, 1)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)), (x, y)


def _fit(accum: int) -> torch.nn.Module:
    model, data = _linear_problem()

    def loss_fn(module, batch, step, generator):
        xb, yb = batch
        return (module(xb) - yb).pow(2).mean()

    train(model, loss_fn, infinite_batches(data, 16, seed=1), Recipe(steps=5, lr=5e-2, accum_steps=accum))
    return model


def test_accumulation_equals_one_big_batch():
    one, four = _fit(1), _fit(4)
    for a, b in zip(one.parameters(), four.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_split_batch_is_contiguous():
    x, y = torch.arange(8), torch.arange(8) * 10
    parts = split_batch((x, y), 4)
    assert [p[0].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert parts[3][1].tolist() == [60, 70]


def test_micro_generators_depend_on_position_not_rank():
    a = torch.rand(3, generator=micro_generator(0, 7, 2, "cpu"))
    assert torch.equal(a, torch.rand(3, generator=micro_generator(0, 7, 2, "cpu")))
    assert not torch.equal(a, torch.rand(3, generator=micro_generator(0, 7, 3, "cpu")))
    assert not torch.equal(a, torch.rand(3, generator=micro_generator(0, 8, 2, "cpu")))


def test_release_weight_decay_groups_reach_the_optimizer():
    model = build_model("profile=smoke")
    optimizer = _optimizer(model, Recipe(steps=1, lr=1e-3, weight_decay=0.03, decays=decays))
    decayed, exempt = decay_split(model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.03, 0.0]
    assert sorted(by_id[id(p)] for p in groups[0]["params"]) == sorted(decayed)
    assert sorted(by_id[id(p)] for p in groups[1]["params"]) == sorted(exempt)
    assert any(".ada." in n for n in exempt) and not any(n.endswith(".bias") for n in decayed)
