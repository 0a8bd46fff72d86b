"""Tokenizers: binary FSQ (discrete, any bits per token) and autoencoders (continuous), one encoder/decoder family.

On a bits axis the only difference between a discrete and a continuous point is the quantizer:
    discrete    total_bits = h * w * bits_per_token
    continuous  total_bits = h * w * 16 * channels     (16 bits per channel, half precision)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError
from bar.core.bits import MAX_BITS_PER_TOKEN, bits_to_codes, codes_to_bits, latent_bits


# ----------------------------------------------------------------------------------------------------- config checks
def validate_tokenizer_config(tok) -> None:
    """One-line errors for a tokenizer config that cannot work, before anything is built."""
    if tok.kind == "fsq":
        if not isinstance(tok.bits, int) or not 1 <= tok.bits <= MAX_BITS_PER_TOKEN:
            raise UserError(f"tokenizer.bits={tok.bits} is out of range: binary FSQ supports 1 to "
                            f"{MAX_BITS_PER_TOKEN} bits per token")
    elif tok.kind == "ae":
        if not isinstance(tok.channels, int) or tok.channels < 1:
            raise UserError(f"tokenizer.channels={tok.channels} must be a positive integer")
    else:
        raise UserError(f"unknown tokenizer.kind {tok.kind!r}: use fsq (discrete) or ae (continuous)")
    needs = {"conv": ("width", "num_down"), "vit": ("vit",), "release": ()}
    if tok.arch not in needs:
        raise UserError(f"unknown tokenizer.arch {tok.arch!r}: use conv, vit or release")
    missing = [key for key in needs[tok.arch] if tok.get(key) is None]
    if missing:
        raise UserError(f"tokenizer.arch={tok.arch} needs tokenizer.{missing[0]} (compose tokenizer=fsq or ae, which "
                        "set it)")
    if tok.arch == "release" and tok.size not in ("full", "tiny"):
        raise UserError(f"tokenizer.size={tok.size!r}: the release's architecture comes in full or tiny")


def stride(tok) -> int:
    """Pixels per token side: 2^num_down for the conv family, the patch size otherwise."""
    return 2 ** tok.num_down if tok.arch == "conv" else tok.patch


def latent_shape(tok, resolution: int) -> tuple[str, int, int]:
    """(kind, grid side, values per token) of a tokenizer config, without building it."""
    return tok.kind, resolution // stride(tok), tok.bits if tok.kind == "fsq" else tok.channels


# ----------------------------------------------------------------------------------------------------- quantizers
class BinaryFSQ(nn.Module):
    """FSQ with two levels per channel: bound with tanh, round to {-1, +1} with a straight-through gradient.

    No codebook, no commitment or entropy loss. C = 2^bits; tokens are carried as bits, never as indices."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        bounded = torch.tanh(z)
        rounded = torch.where(bounded >= 0, 1.0, -1.0).to(bounded.dtype)
        return bounded + (rounded - bounded).detach()


class DiagonalGaussian(nn.Module):
    """KL autoencoder bottleneck: the encoder gives mean and log-variance; sample in training, mean at eval."""

    def forward(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        return z, kl


# ----------------------------------------------------------------------------------------------------- conv family
class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(min(8, cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  nn.GroupNorm(min(8, cout), cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


class ConvEncoder(nn.Module):
    """Image (B, C, H, W) -> latent (B, out_channels, H / 2^n, W / 2^n)."""

    def __init__(self, in_channels: int, width: int, num_down: int, out_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
        ch = width
        for i in range(num_down):
            nxt = width * 2 ** min(i + 1, 2)
            layers += [ResBlock(ch, nxt), nn.Conv2d(nxt, nxt, 3, stride=2, padding=1)]
            ch = nxt
        layers += [ResBlock(ch, ch), nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """Latent (B, in_channels, h, w) -> image (B, C, h * 2^n, w * 2^n), unbounded (trained towards [-1, 1])."""

    def __init__(self, in_channels: int, width: int, num_down: int, out_channels: int):
        super().__init__()
        ch = width * 2 ** min(num_down, 2)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1), ResBlock(ch, ch)]
        for i in reversed(range(num_down)):
            nxt = width * 2 ** min(i, 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, nxt, 3, padding=1),
                       ResBlock(nxt, nxt)]
            ch = nxt
        layers += [nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


# ----------------------------------------------------------------------------------------------------- ViT family
class ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x_BLD):
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(self.norm1(x_BLD)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
        x_BLD = x_BLD + self.proj(attn)
        return x_BLD + self.mlp(self.norm2(x_BLD))


class ViT(nn.Module):
    """Plain bidirectional ViT over a token grid (used at the paper's sizes: SigLIP2-so400m-shaped encoder, ViT-L
    decoder)."""

    def __init__(self, in_dim: int, width: int, depth: int, heads: int, num_tokens: int, out_dim: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.blocks = nn.ModuleList(ViTBlock(width, heads) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, out_dim)

    def forward(self, x_BLd):
        x = self.embed(x_BLd) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


class ViTEncoder(nn.Module):
    def __init__(self, in_channels, resolution, patch, width, depth, heads, out_channels):
        super().__init__()
        self.patch, self.grid = patch, resolution // patch
        self.vit = ViT(in_channels * patch * patch, width, depth, heads, self.grid ** 2, out_channels)

    def forward(self, x):
        B, C, H, W = x.shape
        p, g = self.patch, self.grid
        patches = x.view(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)
        return self.vit(patches).transpose(1, 2).reshape(B, -1, g, g)


class ViTDecoder(nn.Module):
    def __init__(self, in_channels, resolution, patch, width, depth, heads, out_channels):
        super().__init__()
        self.patch, self.grid, self.out_channels = patch, resolution // patch, out_channels
        self.vit = ViT(in_channels, width, depth, heads, self.grid ** 2, out_channels * patch * patch)

    def forward(self, z):
        B, D, g, _ = z.shape
        p, C = self.patch, self.out_channels
        pixels = self.vit(z.flatten(2).transpose(1, 2))
        return pixels.view(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, g * p, g * p)


# ----------------------------------------------------------------------------------------------------- tokenizer
class Tokenizer(nn.Module):
    """Encoder -> quantizer -> decoder. `encode` gives generator tokens (B, L, k|d); `decode` gives images in
    [-1, 1]."""

    def __init__(self, tok, in_channels: int, resolution: int):
        super().__init__()
        validate_tokenizer_config(tok)
        self.kind = tok.kind
        self.latent_dim = tok.bits if tok.kind == "fsq" else tok.channels
        kl = tok.kind == "ae" and tok.kl
        enc_out = 2 * self.latent_dim if kl else self.latent_dim
        _, self.grid, _ = latent_shape(tok, resolution)
        self.encoder: ConvEncoder | ViTEncoder
        self.decoder: ConvDecoder | ViTDecoder
        if tok.arch == "conv":
            self.encoder = ConvEncoder(in_channels, tok.width, tok.num_down, enc_out)
            self.decoder = ConvDecoder(self.latent_dim, tok.width, tok.num_down, in_channels)
        else:
            self.encoder = ViTEncoder(in_channels, resolution, tok.patch, tok.vit.enc_width, tok.vit.enc_depth,
                                      tok.vit.enc_heads, enc_out)
            self.decoder = ViTDecoder(self.latent_dim, resolution, tok.patch, tok.vit.dec_width, tok.vit.dec_depth,
                                      tok.vit.dec_heads, in_channels)
        self.quantizer = BinaryFSQ(tok.bits) if tok.kind == "fsq" else (DiagonalGaussian() if kl else nn.Identity())
        self.total_bits = latent_bits(tok.kind, self.grid, self.grid, tok.bits, tok.channels)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent -> (decoder input, auxiliary loss)."""
        out = self.quantizer(z)
        return out if isinstance(out, tuple) else (out, z.new_zeros(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, aux = self.quantize(self.encoder(x))
        return self.decoder(z), aux

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> tokens (B, h*w, k) uint8 bits for fsq, (B, h*w, d) floats for ae (raster order)."""
        z, _ = self.quantize(self.encoder(x))
        tokens = z.flatten(2).transpose(1, 2)
        return codes_to_bits(tokens) if self.kind == "fsq" else tokens

    @torch.no_grad()
    def decode(self, tokens_BLd: torch.Tensor) -> torch.Tensor:
        z = bits_to_codes(tokens_BLd) if self.kind == "fsq" else tokens_BLd.float()
        B, L, d = z.shape
        side = math.isqrt(L)
        return self.decoder(z.transpose(1, 2).reshape(B, d, side, side)).clamp(-1, 1)
