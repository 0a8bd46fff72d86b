"""The paper tokenizer's recipe with the GAN on, trained by 2 gloo ranks (torch.multiprocessing) past gan_start: the
stage's own assembly (bar.orchestration.stages.tokenizer: recipe_hooks, training_loss_fn, tokenizer_recipe) around a
tiny release-structured BAR-FSQ and a tiny DINO-structured discriminator read from a stand-in weight file in the real
file's format (timm ViT keys, non-zero k-biases).

What holds: both ranks end with identical heads, tokenizer and EMA, and a 1-rank run over the same global batches ends
with the same weights up to float rounding of the gradient averages, except for parameters whose gradient is 0 in
exact arithmetic: D's conv biases in front of BatchNormLocal (its mean subtraction removes them) and the tokenizer's
attention key biases (a constant per query under the softmax). Their gradients are rounding noise, which differs
between a 2-rank average and a 1-rank sum, and Adam scales noise up to its learning rate: they may differ by about
the LR per step (D's by up to 2.5e-4 after 2 steps at 1e-4), and no output can tell (D's logits agree). Why the rest
is exact here:
- BatchNormLocal normalises over virtual batches of at most 8 consecutive samples of whatever batch D is given, i.e. of
  each rank's part. With 8 samples per rank (the paper: 32 per GPU) the groups are the same consecutive 8 samples as
  one process would form from the global batch; with parts that are not a multiple of 8 they would differ (as under
  the release's DDP, which does not synchronise them).
- Spectral norm's power iteration reads only the weights and the stored vectors, once per D forward: every rank runs
  as many D forwards as one process (one per G step, two per D step), so the vectors agree. A 1-rank run with 2
  gradient-accumulation steps would run D twice per G step (one more power iteration) and is not comparable.
- The G step's crop + flip is drawn per micro-batch (bar.training.loop.micro_generator): 2 ranks equal 1 rank with 2
  accumulation steps there, not 1 rank with 1, so the weight comparison turns augmentation off (the images are already
  256 px). The D iteration's augmentation is drawn per sample, keyed by its position in the global batch
  (DiscriminatorHook.discriminator_images), so it is checked on its own: 2 ranks draw what 1 rank draws, and the
  samples of different ranks are not augmented alike.
- D's crop-or-resize draws (its images are larger than its 32 px input): in the G step from the global torch RNG,
  which every rank moves alike; in the D iteration from a stream keyed by the step. Either way every rank crops alike,
  as one process would crop the whole batch.
Rank 1 also starts with different discriminator heads: the trainer broadcasts rank 0's, as DDP does for a module."""

import os
import socket
from typing import Any, cast

import pytest
import torch
import torch.multiprocessing as mp

STEPS, GAN_START, GLOBAL_BATCH, RES = 4, 2, 16, 256
DINO_SIZE = 32                         # the discriminator's input (the real one's is 224): 256 px images are cropped


def _dino(path):
    """The frozen backbone from the stand-in file, 12 blocks (5 heads: the embedding and blocks 2, 5, 8, 11)."""
    from bar.tokenizers.losses.gan import dino_vit_small

    return dino_vit_small(path, img_size=DINO_SIZE, embed_dim=16, depth=12, num_heads=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_dino(path) -> None:
    """A DINO ViT-S-structured file at a tiny size: timm's VisionTransformer keys, as the real checkpoint has them."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(7)
    vit = VisionTransformer(img_size=DINO_SIZE, patch_size=8, embed_dim=16, depth=12, num_heads=2, num_classes=0,
                            act_layer="gelu_tanh")
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("attn.qkv.bias"):
                p.normal_()                                      # DINO's k-biases are not zero (the loader zeroes)
    torch.save(vit.state_dict(), path)


def _config(folder, augment: bool):
    from bar.orchestration.config import compose

    return compose(["profile=paper", "data.root=/unused", "device=cpu", "tokenizer.size=tiny", "tokenizer.bits=8",
                    "tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0", "tokenizer.loss.gan=0.5",
                    f"tokenizer.loss.gan_start={GAN_START}", f"tokenizer.train.steps={STEPS}",
                    f"tokenizer.train.batch_size={GLOBAL_BATCH}", "tokenizer.train.warmup=1",
                    f"tokenizer.train.augment={augment}", "tokenizer.discriminator.warmup=0",
                    "tokenizer.discriminator.total=4", f"tokenizer.weights.dino_vits={folder}/dino.pth"])


def _images(n: int, width: int = RES) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, RES, width), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _train(folder, rank: int, world: int) -> dict:
    """The stage's recipe (augmentation off: see the module docstring) on this rank's part of every global batch."""
    from bar.data.datasets import TensorImages
    from bar.data.loader import image_loader
    from bar.orchestration.stages.tokenizer import new_tokenizer, recipe_hooks, tokenizer_recipe, training_loss_fn
    from bar.tokenizers.losses.combined import LossWeights, TokenizerLoss
    from bar.tokenizers.losses.gan import DinoDiscriminator
    from bar.training.loop import TrainHook, train
    from bar.training.tokenizer_hooks import DiscriminatorHook

    cfg, cpu = _config(folder, augment=False), torch.device("cpu")
    tokenizer = new_tokenizer(cfg, cpu)                                       # seeds torch with cfg.seed
    disc = DinoDiscriminator(_dino(folder / "dino.pth"))
    if rank == 1:                                  # a different start: rank 0's heads must be broadcast
        with torch.no_grad():
            for t in disc.heads.state_dict().values():
                t.add_(0.25)
    initial = {k: v.clone() for k, v in disc.heads.state_dict().items()}
    loss = TokenizerLoss(LossWeights.from_node(cfg.tokenizer.loss), discriminator=disc)
    hooks, ema, _ = recipe_hooks(cfg, tokenizer, loss, cpu, folder / f"work{world}")
    d_hook = next(h for h in hooks if isinstance(h, DiscriminatorHook))
    counts: list[int] = []

    class CountDSteps(TrainHook):
        def after_step(self, state):
            counts.append(d_hook.trainer.steps)

    batches = image_loader(TensorImages(_images(2 * GLOBAL_BATCH), torch.zeros(2 * GLOBAL_BATCH), 1), GLOBAL_BATCH,
                           seed=cfg.seed, rank=rank, world_size=world, flip=False)
    result = train(tokenizer, training_loss_fn(cfg, loss, cpu), batches, tokenizer_recipe(cfg, cpu),
                   distributed=world > 1, hooks=[*hooks, CountDSteps()])
    assert ema is not None
    return {"tokenizer": tokenizer.state_dict(), "heads": disc.heads.state_dict(), "initial_heads": initial,
            "trained": [n for n, _ in disc.heads.named_parameters()], "ema": dict(ema.shadow), "d_steps": counts,
            "d_last": d_hook.last, "history": result.history}


def _augmented(rank: int, world: int) -> torch.Tensor:
    """The D iteration's images of one global batch (4 images, twice: positions i and i + 4 hold the same image) at
    generator step 5, as this rank's hook makes them from its part (crops along the width, flips)."""
    from bar.tokenizers.augment import augment
    from bar.training.tokenizer_hooks import DiscriminatorHook

    images = _images(4, width=RES + 64).repeat(2, 1, 1, 1)
    part = images.tensor_split(world)[rank]
    def images_of(batch: Any) -> torch.Tensor:
        return augment(batch[0], RES)

    hook = DiscriminatorHook(cast(Any, None), images_of, lambda m, x: x, seed=0)     # no D step: no trainer
    return hook.discriminator_images([part, torch.zeros(len(part))], step=5)


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bar.core import distributed

    env = distributed.setup("cpu")
    assert env.world_size == world and env.backend == "gloo"
    out = _train(Path(folder), rank, world)
    out["augmented"] = _augmented(rank, world)
    torch.save(out, Path(folder) / f"rank{rank}.pt")
    distributed.teardown()


def _same(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


NOISE_BOUND = 2 * 1e-4 * STEPS         # Adam moves a parameter by at most ~its LR (<= 1e-4) a step, either way


def _gradient_free(key: str, value: torch.Tensor) -> torch.Tensor:
    """Elements whose gradient is 0 in exact arithmetic: a discriminator conv bias followed by BatchNormLocal (its
    mean subtraction removes a per-channel constant) and attention key biases (a constant per query in the logits)."""
    mask = torch.zeros_like(value, dtype=torch.bool)
    if key.endswith((".0.0.bias", ".1.fn.0.bias", "self_attn.k_proj.bias")):
        mask[:] = True
    elif key.endswith("attn.qkv.bias"):
        mask[len(value) // 3:2 * len(value) // 3] = True
    return mask


def _mismatches(a: dict, b: dict) -> list[str]:
    """Keys where a and b differ beyond float rounding (gradient-free elements: beyond NOISE_BOUND)."""
    bad = []
    for key in a:
        diff, free = (a[key] - b[key]).abs(), _gradient_free(key, a[key])
        if (diff[free] > NOISE_BOUND).any() or (diff[~free] > 2e-6 + 1e-4 * b[key].abs()[~free]).any():
            bad.append(key)
    return bad


def _logits(folder, heads: dict) -> torch.Tensor:
    """The discriminator with these heads on fixed images of its input size (no crop), eval mode."""
    from bar.tokenizers.losses.gan import DinoDiscriminator

    disc = DinoDiscriminator(_dino(folder / "dino.pth"))
    disc.heads.load_state_dict(heads)
    with torch.no_grad():
        return disc.eval()(_images(16)[..., :DINO_SIZE, :DINO_SIZE].float() / 127.5 - 1)


@pytest.mark.slow   # two gloo ranks plus a one-rank reference: ~25 s on 2 cores
def test_two_ranks_train_the_discriminator_past_gan_start_as_one_rank_does(tmp_path):
    _write_dino(tmp_path / "dino.pth")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)     # a crash fails here
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # the discriminator trained once per step from gan_start on, on every rank, and its heads moved
    assert r0["d_steps"] == r1["d_steps"] == [max(0, s + 1 - GAN_START) for s in range(STEPS)]
    assert len(r0["trained"]) == 5 * (3 + 2) * 2          # 5 heads x (3 spectral-norm convs + 2 BatchNormLocal) x 2
    assert set(r0["trained"]) <= set(_same(r0["initial_heads"], r0["heads"]))   # every trained tensor moved
    assert all(abs(v) < 1e3 for v in r0["d_last"].values()) and set(r0["d_last"]) >= {"d_loss", "d_lr"}
    # both ranks hold the same heads (spectral-norm vectors included), tokenizer and EMA: gradients were averaged,
    # and rank 1, which started with other heads, was given rank 0's
    assert set(_same(r0["initial_heads"], r1["initial_heads"])) == set(r0["heads"])
    for part in ("heads", "tokenizer", "ema"):
        assert not _same(r0[part], r1[part]), part
    assert r0["history"] == r1["history"]
    # one process over the same global batches ends in the same place
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _train(tmp_path, 0, 1)
    finally:
        torch.set_num_threads(threads)
    assert one["d_steps"] == r0["d_steps"]
    for part in ("heads", "tokenizer", "ema"):
        assert not _mismatches(r0[part], one[part]), (part, _mismatches(r0[part], one[part])[:5])
    # ... the gradient-free biases included, as far as any output can tell (they may differ: float noise of the
    # averaged gradients, which Adam scales up to its learning rate)
    assert torch.allclose(_logits(tmp_path, r0["heads"]), _logits(tmp_path, one["heads"]), rtol=1e-4, atol=1e-5)
    assert abs(r0["history"][-1][1] - one["history"][-1][1]) < 1e-5
    # the D iteration's augmentation: 2 ranks draw what 1 rank draws for the same positions; equal images at
    # positions i (rank 0) and i + 4 (rank 1) are not augmented alike (a shared global RNG would repeat the draws)
    assert torch.equal(torch.cat([r0["augmented"], r1["augmented"]]), _augmented(0, 1))
    assert not torch.equal(r0["augmented"], r1["augmented"])
