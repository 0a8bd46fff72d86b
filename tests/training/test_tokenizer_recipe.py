"""The training-loop side of the release's tokenizer recipe (bar/tokenizer_recipe.py): encoder LR groups, crop + flip
augmentation, and the discriminator and EMA hooks inside bar.training.loop's loop, including an exact resume."""

import pytest
import torch
import torch.nn as nn

from bar.training.ema import EMA, EMAHook
from bar.tokenizers.losses.gan import DinoDiscriminator
from bar.training.discriminator import DiscriminatorTrainer
from bar.tokenizers.losses.combined import LossWeights, TokenizerLoss
from bar.training.tokenizer_hooks import CheckpointingWithExtras, DiscriminatorHook, tokenizer_param_groups
from bar.tokenizers.augment import augment, resized_shape
from bar.training.loop import Recipe, TrainHook, infinite_batches, train


class TinyTokenizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(1, 4))
        self.decoder = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def test_encoder_groups_get_the_lr_multiplier():
    model = TinyTokenizer()
    groups = tokenizer_param_groups(model, lr=1e-4, encoder_lr_mult=0.1, weight_decay=0.05)
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999))
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert by_name["encoder.0.weight"]["lr"] == pytest.approx(1e-5) and by_name["encoder.0.weight"]["lr_mult"] == 0.1
    assert by_name["encoder.0.weight"]["weight_decay"] == 0.05
    assert by_name["encoder.0.bias"]["lr"] == pytest.approx(1e-5) and by_name["encoder.0.bias"]["weight_decay"] == 0
    assert by_name["encoder.1.weight"]["weight_decay"] == 0                   # 1-dim: exempt
    assert by_name["decoder.weight"]["lr"] == pytest.approx(1e-4) and by_name["decoder.weight"]["lr_mult"] == 1.0
    assert sorted(by_name) == sorted(n for n, _ in model.named_parameters())


def test_augment_crops_and_flips_each_image():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.uint8).view(2, 3, 4, 6)
    x = images.float() / 127.5 - 1
    seen_flip = seen_plain = False
    for _ in range(20):
        out = augment(images, 4, g)
        assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
        for b in range(2):
            crops = [x[b, :, :, j:j + 4] for j in range(3)]
            plain = any(torch.equal(out[b], c) for c in crops)
            flipped = any(torch.equal(out[b], c.flip(-1)) for c in crops)
            assert plain or flipped
            seen_plain, seen_flip = seen_plain or plain, seen_flip or flipped
    assert seen_flip and seen_plain


def test_augment_resizes_the_shorter_side_first():
    assert resized_shape(8, 12, 4) == (4, 6) and resized_shape(12, 8, 4) == (6, 4)
    out = augment(torch.rand(3, 3, 8, 12) * 2 - 1, 4, torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 4, 4) and out.abs().max() <= 1


# ----------------------------------------------------------------------------------------------------- in the loop
def tiny_setup(gan_start: int, seed: int = 0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = TinyTokenizer()
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0,
                            act_layer="gelu_tanh")
    disc = DinoDiscriminator(vit, key_depths=(1,), kernel=3)
    loss = TokenizerLoss(LossWeights(l1=0.1, l2=1.0, gan=0.5, gan_start=gan_start), discriminator=disc)
    trainer = DiscriminatorTrainer(disc, start=gan_start, warmup=0, total=10)
    images = (torch.rand(64, 3, 16, 16) * 255).to(torch.uint8)
    batches = infinite_batches((images, torch.zeros(64, dtype=torch.long)), batch_size=4, seed=seed)

    def loss_fn(module, batch, step, generator):
        x = augment(batch[0], 16)
        return loss(x, module(x), step)[0]

    d_hook = DiscriminatorHook(trainer, lambda batch: augment(batch[0], 16), lambda m, x: m(x))
    ema_hook = EMAHook(EMA(model), extra_update_from=gan_start)
    return model, disc, loss_fn, batches, d_hook, ema_hook


class Snapshots(TrainHook):
    def __init__(self, module):
        self.module, self.heads = module, []

    def after_step(self, state):
        self.heads.append([p.detach().clone() for p in self.module.heads.parameters()])


def test_discriminator_trains_only_from_its_start_step():
    model, disc, loss_fn, batches, d_hook, ema_hook = tiny_setup(gan_start=3)
    initial = [p.detach().clone() for p in disc.heads.parameters()]
    snaps = Snapshots(disc)
    train(model, loss_fn, batches, Recipe(steps=5, lr=1e-3), hooks=[ema_hook, d_hook, snaps])
    for step in range(3):                                 # generator steps 0..2: D untouched
        assert all(torch.equal(a, b) for a, b in zip(initial, snaps.heads[step]))
    assert any(not torch.equal(a, b) for a, b in zip(snaps.heads[2], snaps.heads[3]))
    assert d_hook.trainer.steps == 2 and set(d_hook.last) >= {"d_loss", "logits_real", "logits_fake"}
    assert ema_hook.ema.num_updates == 3 + 2 * 2
    assert batches.pos == (5 + 2) * 4                     # one extra batch per discriminator step


class Killed(Exception):
    pass


class KillAfter(TrainHook):
    def __init__(self, step):
        self.step = step

    def after_step(self, state):
        if state.step == self.step:
            raise Killed


def test_resume_restores_ema_and_discriminator_exactly(tmp_path):
    def run(folder, kill_at=None):
        model, disc, loss_fn, batches, d_hook, ema_hook = tiny_setup(gan_start=2)
        ckpt = CheckpointingWithExtras(folder, {"ema": ema_hook, "discriminator": d_hook}, every=3)
        hooks = [ema_hook, d_hook, ckpt] + ([KillAfter(kill_at)] if kill_at else [])
        result = train(model, loss_fn, batches, Recipe(steps=5, lr=1e-3, warmup=1), hooks=hooks)
        return model, disc, ema_hook, d_hook, result

    full = run(tmp_path / "full")
    with pytest.raises(Killed):                           # killed after step 3's checkpoint
        run(tmp_path / "split", kill_at=3)
    resumed = run(tmp_path / "split")
    assert full[4].start_step == 0 and resumed[4].start_step == 3
    for a, b in zip(full[0].parameters(), resumed[0].parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(full[2].ema.shadow[n], resumed[2].ema.shadow[n]) for n in full[2].ema.shadow)
    assert full[2].ema.num_updates == resumed[2].ema.num_updates == 2 + 2 * 3
    assert all(torch.equal(a, b) for a, b in zip(full[1].heads.state_dict().values(),
                                                 resumed[1].heads.state_dict().values()))
    assert full[3].trainer.steps == resumed[3].trainer.steps == 3
