"""The tokenizer's loss parts and the discriminator's statistics reach the run as histories beside tokenizer_loss, at
its steps: a short in-process tokenizer training (profile=smoke) with the GAN on from step 0 and a tiny DINO-shaped
discriminator standing in for the file-backed one."""

import math

import pytest
import torch

from bar.core.vocabulary import DISCRIMINATOR, TOKENIZER_LOSS_PART
from bar.orchestration import runner
from bar.orchestration.config import compose
from bar.orchestration.stages import tokenizer as tok_stage
from bar.orchestration.tracking import NullRun
from bar.tokenizers.losses.combined import LossWeights, TokenizerLoss
from bar.tokenizers.losses.gan import DinoDiscriminator
from bar.training.loop import Recipe
from bar.training.running_metrics import RunningMetrics


class Recorded(NullRun):
    def __init__(self):
        super().__init__("test")
        self.histories: dict[str, list] = {}

    def log_history(self, name, history):
        self.histories[name] = list(history)


def _tiny_gan_loss(loss_node, weights_node=None):
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0,
                            act_layer="gelu_tanh")
    return TokenizerLoss(LossWeights.from_node(loss_node), discriminator=DinoDiscriminator(vit, key_depths=(1,),
                                                                                            kernel=3))


def test_loss_parts_and_discriminator_statistics_are_logged_at_the_loss_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(tok_stage, "build_tokenizer_loss", _tiny_gan_loss)
    cfg = compose(["profile=smoke", "stage=tokenizer", f"paths.outputs={tmp_path}", "tokenizer.train.steps=12",
                   "tokenizer.loss.gan=0.5", "tokenizer.loss.gan_start=0", "tokenizer.discriminator.warmup=0",
                   "tokenizer.discriminator.total=12"])
    train_set, val_set = tok_stage.load_data(cfg)
    run = Recorded()
    runner._tokenizer_stages(cfg, train_set, val_set, torch.device("cpu"), run)
    steps = [s for s, _ in run.histories["tokenizer_loss"]]
    assert steps == [10, 12]
    names = {TOKENIZER_LOSS_PART + p for p in ("l1", "l2", "gan")} | \
        {DISCRIMINATOR + s for s in ("loss", "logits_real", "logits_fake", "lr")}
    assert names <= set(run.histories), sorted(run.histories)
    assert TOKENIZER_LOSS_PART + "gram" not in run.histories            # a part that is off is not logged
    for name in names:
        assert [s for s, _ in run.histories[name]] == steps, name
        assert all(math.isfinite(v) for _, v in run.histories[name]), name
    assert run.histories[DISCRIMINATOR + "loss"][0][1] > 0               # hinge loss of an untrained D: about 1


def test_running_metrics_average_each_window_and_survive_a_checkpoint():
    metrics = RunningMetrics(Recipe(steps=5, lr=0.0, log_every=2))

    class State:
        step = 0

    state = State()
    for step, value in enumerate([1.0, 3.0, 5.0, 7.0, 9.0], start=1):
        metrics.add({"a": torch.tensor(value), "b": value * 10})
        if step == 3:
            saved, metrics = metrics.state_dict(), RunningMetrics(Recipe(steps=5, lr=0.0, log_every=2))
            metrics.load_state_dict(saved)
        state.step = step
        metrics.after_step(state)  # type: ignore[arg-type]
    assert metrics.history["a"] == [(2, 2.0), (4, 6.0), (5, 9.0)]
    assert metrics.history["b"] == [(2, 20.0), (4, 60.0), (5, 90.0)]


def _rank_worker(rank: int, world: int, port: int, folder: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from bar.core import distributed

    distributed.setup("cpu")
    metrics = RunningMetrics(Recipe(steps=2, lr=0.0, log_every=2))

    class State:
        step = 0

    state = State()
    for step in (1, 2):
        metrics.add({"a": torch.tensor(float(rank + step))})
        if rank == 0:
            metrics.add({"only_rank0": 5.0})
        state.step = step
        metrics.after_step(state)  # type: ignore[arg-type]
    torch.save(metrics.history, f"{folder}/rank{rank}.pt")
    distributed.teardown()


@pytest.mark.slow   # two gloo ranks: ~18 s on 2 cores (spawn and imports)
def test_running_metrics_are_averaged_over_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    histories = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert histories[0] == histories[1] == {"a": [(2, 2.0)], "only_rank0": [(2, 5.0)]}   # (1.5 + 2.5) / 2
