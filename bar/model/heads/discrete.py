"""The paper's two discrete baselines, each one Linear from the condition to logits (a softmax over all C = 2^k codes
of a token; independent per-bit logits), sampled in one shot: argmax(guided logits + tau * Gumbel)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError
from bar.core.bits import MAX_INDEX_BITS, bits_to_index, index_to_bits
from bar.model.heads.base import TokenHead, guide
from bar.model.layers import gumbel_from_uniform, init_weights, uniform


class LinearHead(TokenHead):
    """One Linear(W -> logits of `logits_shape`, classes last), trained with cross-entropy on every class axis;
    subclasses say how tokens map to classes (`to_classes`) and back (`to_tokens`)."""

    name: str

    def __init__(self, token_dim: int, width: int, logits_shape: tuple[int, ...]):
        super().__init__()
        self.token_dim, self.width, self.logits_shape = token_dim, width, logits_shape
        self.out = nn.Linear(width, math.prod(logits_shape))
        self.apply(init_weights)

    def logits(self, cond_NW: torch.Tensor) -> torch.Tensor:
        return self.out(cond_NW).reshape(cond_NW.shape[0], *self.logits_shape)

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor, generator: torch.Generator | None = None,
             draws: dict | None = None) -> torch.Tensor:
        logits = self.logits(cond_BLW.reshape(-1, self.width)).float()
        return F.cross_entropy(logits.reshape(-1, self.logits_shape[-1]), self.to_classes(target_BLk))

    def to_classes(self, tokens_BLk: torch.Tensor) -> torch.Tensor:
        """Tokens (..., k) -> the class of every class axis, flattened (the cross-entropy's targets)."""
        raise NotImplementedError

    def to_tokens(self, chosen: torch.Tensor) -> torch.Tensor:
        """The chosen classes (B, *logits_shape[:-1]) -> uint8 bits (B, k)."""
        raise NotImplementedError

    def check_schedule(self, **schedule) -> None:
        if schedule:
            raise UserError(f"{self.name} head takes no sampling options, got {sorted(schedule)}")

    def draw_noise(self, batch, temperature, generator, device, **schedule) -> list[torch.Tensor]:
        """One uniform per logit when tau > 0 (none at tau = 0: argmax)."""
        self.check_schedule(**schedule)
        return [uniform((batch, *self.logits_shape), generator, device)] if temperature > 0 else []

    def sample_with_noise(self, cond_BW, cfg_scale, noise, consts, **schedule) -> torch.Tensor:
        """uint8 bits (B, k): a sample of softmax(guided logits / tau) per class axis (tau = 0: argmax)."""
        logits = guide(self.logits(cond_BW).float(), cfg_scale)
        if noise:
            logits = logits + consts["tau"] * gumbel_from_uniform(noise[0])
        return self.to_tokens(logits.argmax(-1))


@dataclass
class SoftmaxConfig:
    width: int = 2048            # W: condition width; the head is one Linear(W -> C = 2^k)


class SoftmaxHead(LinearHead):
    """Linear softmax over all C = 2^k codes of one AR step (the paper's linear-softmax baseline): the class of a token
    is its integer index, most significant bit first (bar.core.bits.bits_to_index). Parameters, logits and compute
    are O(C): the head runs out of memory long before k reaches the int64 limit of 63 bits."""

    name = "softmax"

    def __init__(self, token_dim: int, cfg: SoftmaxConfig | None = None):
        cfg = cfg or SoftmaxConfig()
        if token_dim > MAX_INDEX_BITS:
            raise UserError(f"softmax head over {token_dim} bits needs 2^{token_dim} classes and int64 indices "
                            f"(at most {MAX_INDEX_BITS} bits); use head=mbm or head=bitwise")
        super().__init__(token_dim, cfg.width, (2 ** token_dim,))
        self.cfg, self.num_codes = cfg, 2 ** token_dim

    def to_classes(self, tokens_BLk: torch.Tensor) -> torch.Tensor:
        return bits_to_index(tokens_BLk.reshape(-1, self.token_dim))

    def to_tokens(self, index_B: torch.Tensor) -> torch.Tensor:
        return index_to_bits(index_B, self.token_dim)


@dataclass
class BitwiseConfig:
    width: int = 2048            # W: condition width; the head is one Linear(W -> 2k)


class BitwiseHead(LinearHead):
    """Independent per-bit head (Infinity-style): two logits per bit (bit-major, as the MBM head's output), trained
    with a 2-class cross-entropy on every bit and sampled bit by bit independently. O(k)."""

    name = "bitwise"

    def __init__(self, token_dim: int, cfg: BitwiseConfig | None = None):
        cfg = cfg or BitwiseConfig()
        super().__init__(token_dim, cfg.width, (token_dim, 2))
        self.cfg = cfg

    def to_classes(self, tokens_BLk: torch.Tensor) -> torch.Tensor:
        return tokens_BLk.reshape(-1).long()

    def to_tokens(self, choice_Bk: torch.Tensor) -> torch.Tensor:
        return choice_Bk.to(torch.uint8)
