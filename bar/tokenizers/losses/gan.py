"""GAN part of the release's tokenizer recipe: hinge losses and the DINO-ViT-S/8 discriminator (its optimizer and
step: bar.training.discriminator).

Release (modeling/modules/losses.py, modeling/modules/discriminator_dino.py, utils/train_utils.py):
- generator: g = -mean(D(x_hat)) on the raw reconstruction, weighted 0.05 * discriminator_factor 1.0, only from
  step `discriminator_start` = 100,000 on (losses.py:207-246; bar_fsq_16bits.yaml `losses`). No adaptive weight, no
  LeCam term, no gradient penalty.
- discriminator: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat'))) (losses.py:86-95, 249-286), where x_hat' is
  the reconstruction made without gradients, clamped to [-1, 1] and rounded to the 256 uint8 levels (275).
- D = frozen DINO ViT-S/8 (`dino_vit_small_patch8_224.pth`; patch 8 because the file name says so,
  discriminator_dino.py:197-198) + trainable heads (discriminator_dino.py:182-262, 281-377):
  input [-1, 1] -> ImageNet-normalised; if H and W exceed 224, with probability 1/2 one random 224 crop for the whole
  batch, else resized to 224 ('area' when shrinking, 'bicubic' otherwise); patch embedding + class token + position
  embedding; "readouts" (patch tokens + class token, as (B, C, L)) after the embedding and after blocks 2, 5, 8, 11;
  one head per readout: [SNConv1d(C, C, 1, circular) -> BatchNormLocal -> LeakyReLU(0.2)], a residual
  [SNConv1d(C, C, 9, circular) -> BatchNormLocal -> LeakyReLU(0.2)] scaled by 1/sqrt(2), SNConv1d(C, 1, 1); logits of
  all heads concatenated to (B, 5 L). SN = spectral norm (1 power iteration per forward in training mode).
  BatchNormLocal: batch statistics per group of ceil(B / 8) "virtual batches", over samples and positions, eps 1e-6,
  affine; no running statistics. The MLP uses tanh-approximated GELU; k-biases of the checkpoint are zeroed (a
  constant per query, so the attention is unchanged). The backbone is excluded from the optimizer and the checkpoint.
- optimizer (train_utils.py:220-238, 254-262, 490-498): AdamW, LR 1e-4 (`discriminator_learning_rate`), betas
  (0.9, 0.999), weight decay 0, grad-norm clip 1.0; its own cosine schedule: warmup 10k, total
  max_train_steps - discriminator_start = 100k, end 1e-5, stepped once per discriminator step.
- schedule (train_utils.py:418-420, 508-513, 636): from the start step on, the release alternates iterations: one
  batch trains the generator, the next (with the tokenizer in eval mode, no gradients) trains D; every iteration
  counts as a global step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar.tokenizers.losses.frozen import freeze, imagenet_normalize, to_rgb
from bar.tokenizers.losses.weights import load_into, load_weights

if TYPE_CHECKING:                        # timm is imported lazily (only the GAN loss needs it)
    from timm.models.vision_transformer import VisionTransformer


# ----------------------------------------------------------------------------------------------------- losses
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean(D(x_hat))."""
    return -logits_fake.mean()


def to_uint8_levels(x_pm1: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256 levels an 8-bit image can hold (D sees fakes as real images are stored)."""
    return torch.round((x_pm1.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


@contextmanager
def frozen_params(module: nn.Module):
    """Gradients flow through `module` to its input but are not kept for its parameters (the generator step)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------------------------------- heads
class BatchNormLocal(nn.Module):
    """Batch norm over "virtual batches": the batch is split into ceil(B / virtual_bs) equal groups; each group is
    normalised per channel over its samples and positions. Same in train and eval mode (no running statistics)."""

    def __init__(self, channels: int, virtual_bs: int = 8, eps: float = 1e-6):
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        B, C, L = x_BCL.shape
        groups = math.ceil(B / self.virtual_bs)
        if B % groups:
            raise ValueError(f"BatchNormLocal: batch {B} does not split into {groups} equal groups of at most "
                             f"{self.virtual_bs}")
        x = x_BCL.float().view(groups, B // groups, C, L)
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = x * self.weight.view(1, C, 1) + self.bias.view(1, C, 1)
        return x.view(B, C, L)


def sn_conv1d(cin: int, cout: int, kernel: int, circular: bool = True) -> nn.Conv1d:
    conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2, padding_mode="circular" if circular else "zeros")
    return nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


def head_block(channels: int, kernel: int, eps: float) -> nn.Sequential:
    return nn.Sequential(sn_conv1d(channels, channels, kernel), BatchNormLocal(channels, eps=eps),
                         nn.LeakyReLU(0.2))


class ScaledResidual(nn.Module):
    """(f(x) + x) / sqrt(2)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return (self.fn(x) + x) / math.sqrt(2)


def discriminator_head(channels: int, kernel: int = 9, eps: float = 1e-6) -> nn.Sequential:
    """(B, C, L) readout -> (B, 1, L) logits."""
    return nn.Sequential(head_block(channels, 1, eps), ScaledResidual(head_block(channels, kernel, eps)),
                         sn_conv1d(channels, 1, 1, circular=False))


# ----------------------------------------------------------------------------------------------------- backbone
def dino_vit_small(path=None, random_init: bool = False, patch_size: int = 8, img_size: int = 224,
                   embed_dim: int = 384, depth: int = 12, num_heads: int = 6) -> VisionTransformer:
    """Frozen DINO ViT-S (timm's VisionTransformer layout, tanh GELU as the release runs it). With a file, the patch
    size is read from its patch-embedding weights; the checkpoint's k-biases are zeroed as the release does."""
    from timm.models.vision_transformer import VisionTransformer

    state = None
    if not random_init:
        state = dict(load_weights(path, "dino_vits"))
        if "patch_embed.proj.weight" in state:
            patch_size = state["patch_embed.proj.weight"].shape[-1]
        for key, value in state.items():
            if key.endswith(".attn.qkv.bias"):
                value = value.clone()
                C = value.numel() // 3
                value[C:2 * C] = 0
                state[key] = value
    with torch.device("meta" if state is not None else "cpu"):
        vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=0,
                                act_layer="gelu_tanh")
    if state is not None:
        load_into(vit, state, "dino_vits", path)
    return freeze(vit)


class DinoDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> logits (B, (len(key_depths) + 1) * L), L = (img_size / patch)^2."""

    def __init__(self, backbone: VisionTransformer, key_depths: Sequence[int] = (2, 5, 8, 11), kernel: int = 9,
                 eps: float = 1e-6, generator: torch.Generator | None = None):
        super().__init__()
        self.backbone = freeze(backbone)
        self.img_size = backbone.patch_embed.img_size[0]
        self.key_depths = tuple(d for d in key_depths if d < len(backbone.blocks))
        C = backbone.embed_dim
        self.heads = nn.ModuleList(discriminator_head(C, kernel, eps) for _ in range(len(self.key_depths) + 1))
        self.generator = generator           # for the crop-or-resize draws (the global torch RNG when None)

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """Random 224 crop (probability 1/2, only when both sides are larger; one offset for the batch) or resize to
        224. The release draws the coin from Python's `random` and the offset from torch; both come from torch here
        (or `self.generator`), so a checkpointed torch RNG state makes them reproducible."""
        H, W, S = x.shape[-2], x.shape[-1], self.img_size
        if H > S and W > S and torch.rand((), generator=self.generator).item() <= 0.5:
            i = int(torch.randint(0, H - S + 1, (), generator=self.generator))
            j = int(torch.randint(0, W - S + 1, (), generator=self.generator))
            return x[..., i:i + S, j:j + S]
        return F.interpolate(x, size=(S, S), mode="area" if H > S else "bicubic")

    def readouts(self, x_pm1: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, L) patch tokens + class token after the embedding and after each key block."""
        vit = self.backbone
        vit.eval()
        x = self._fit(imagenet_normalize(to_rgb(x_pm1.float())))
        cls_token, pos_embed = vit.cls_token, vit.pos_embed
        assert cls_token is not None and pos_embed is not None, "the DINO backbone has a class token and positions"
        x = vit.patch_embed(x)
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
        outs = [(x[:, 1:] + x[:, :1]).transpose(1, 2)]
        for i, block in enumerate(vit.blocks):
            if i > max(self.key_depths, default=-1):
                break
            x = block(x)
            if i in self.key_depths:
                outs.append((x[:, 1:] + x[:, :1]).transpose(1, 2))
        return outs

    def forward(self, x_pm1: torch.Tensor) -> torch.Tensor:
        B = x_pm1.shape[0]
        return torch.cat([head(r).view(B, -1) for head, r in zip(self.heads, self.readouts(x_pm1))], dim=1)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"heads.{n}", p) for n, p in self.heads.named_parameters()]
