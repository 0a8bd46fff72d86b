"""Bit arithmetic of discrete tokens (CONVENTIONS.md): a token is its k bits, most significant first, never an index
unless k <= 63; the bit budget of a latent is the paper's x axis:

    discrete    total_bits = h * w * bits_per_token
    continuous  total_bits = h * w * 16 * channels     (16 bits per channel, half precision)
"""

from __future__ import annotations

import torch

from bar import UserError

MAX_BITS_PER_TOKEN = 256
MAX_INDEX_BITS = 63  # integer indices overflow int64 beyond this
BITS_PER_CONTINUOUS_CHANNEL = 16


def latent_bits(kind: str, grid_h: int, grid_w: int, bits: int | None = None, channels: int | None = None) -> int:
    """Total bits a latent of this shape carries (the paper's x axis)."""
    if kind == "fsq":
        if bits is None:
            raise UserError("tokenizer.kind=fsq needs tokenizer.bits (bits per token)")
        return grid_h * grid_w * bits
    if kind == "ae":
        if channels is None:
            raise UserError("tokenizer.kind=ae needs tokenizer.channels (latent channels)")
        return grid_h * grid_w * BITS_PER_CONTINUOUS_CHANNEL * channels
    raise UserError(f"unknown tokenizer.kind {kind!r}: use fsq (discrete) or ae (continuous)")


def codes_to_bits(codes: torch.Tensor) -> torch.Tensor:
    """{-1, +1} codes -> {0, 1} uint8 bits."""
    return (codes > 0).to(torch.uint8)


def bits_to_codes(bits: torch.Tensor) -> torch.Tensor:
    """{0, 1} bits -> {-1, +1} float codes."""
    return bits.float() * 2 - 1


def bits_to_index(bits_k: torch.Tensor) -> torch.Tensor:
    """Bits (..., k), most significant first, -> int64 index; only defined for k <= 63."""
    k = bits_k.shape[-1]
    if k > MAX_INDEX_BITS:
        raise UserError(f"{k} bits per token have no int64 index (at most {MAX_INDEX_BITS}); keep tokens as bits")
    weights = 2 ** torch.arange(k - 1, -1, -1, dtype=torch.int64, device=bits_k.device)
    return (bits_k.long() * weights).sum(-1)


def index_to_bits(index: torch.Tensor, k: int) -> torch.Tensor:
    if k > MAX_INDEX_BITS:
        raise UserError(f"{k} bits per token have no int64 index (at most {MAX_INDEX_BITS}); keep tokens as bits")
    shifts = torch.arange(k - 1, -1, -1, dtype=torch.int64, device=index.device)
    return ((index.long()[..., None] >> shifts) & 1).to(torch.uint8)
