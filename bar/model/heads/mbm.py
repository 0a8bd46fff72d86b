"""The masked-bit-modeling (MBM) head of BAR, as the official release builds it (github.com/amazon-far/BAR,
modeling/mbm_head.py; the method: README.md). Per-bit {0, 1, MASK} embedding -> Linear -> RMSNorm; condition
s = SiLU(z + t_emb(mask ratio)); residual AdaLN-Zero SwiGLU blocks; final AdaLN layer; Linear(W -> 2k) = two logits
per bit. Sampling reveals the k bits over K steps of an `allocation`, with Gumbel sampling and confidence re-masking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError
from bar.model.heads.base import AdaLNBlock, TokenHead, guide
from bar.model.layers import (RMSNorm, SwiGLU, gumbel_from_uniform, init_weights, modulate, swiglu_hidden, uniform,
                              zero_init)

MASK = 2  # bit ids: 0, 1, MASK


@dataclass
class MBMConfig:
    width: int = 2048            # W: condition width and the head's hidden width
    depth: int = 3               # residual AdaLN blocks
    mlp_ratio: float = 4.0       # SwiGLU hidden = 2/3 * ratio * W (5461 at W=2048)
    fourier_freqs: int = 256     # Gaussian-Fourier frequencies of the mask-ratio embedding
    fourier_scale: float = 1.0
    t_std: float = 0.8           # t ~ sigmoid(N(0, t_std^2)), mask ratio = clamp(1 - t, 1/k, 1)
    masked_weight: float = 1.0   # loss weight of masked bits
    visible_weight: float = 0.1  # loss weight of visible bits


class FourierEmbedding(nn.Module):
    """Gaussian-Fourier features of a scalar in [0, 1] (fixed random frequencies) followed by an MLP."""

    freqs: torch.Tensor          # buffer (num_freqs,): the fixed random frequencies

    def __init__(self, width: int, num_freqs: int = 256, scale: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_freqs) * scale)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        angles = t_N.float()[:, None] * self.freqs[None, :].float() * (2 * math.pi)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class AdaLNFinal(nn.Module):
    """modulate(RMSNorm(x), shift, scale), given its modulation (scale, shift) = ada(SiLU(s))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.ada = nn.Linear(width, 2 * width)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        scale, shift = mod.chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale)


def even_allocation(k: int, steps: int = 4) -> list[int]:
    """k bits over `steps` unmasking steps, as even as possible, non-decreasing (remainder goes to the last steps)."""
    steps = max(1, min(steps, k))
    base, rem = divmod(k, steps)
    return [base] * (steps - rem) + [base + 1] * rem


class MBMHead(TokenHead):
    """Masked bit modeling over the k bits of one AR step; an MLP over the whole bit vector (no attention)."""

    schedule_options = ("allocation",)

    def __init__(self, token_dim: int, cfg: MBMConfig | None = None):
        super().__init__()
        cfg = cfg or MBMConfig()
        self.cfg = cfg
        self.token_dim = k = token_dim
        self.width = W = cfg.width
        e = math.ceil(W / k)
        self.bit_embed = nn.Embedding(3, e)               # {0, 1, MASK}, each bit its own small vector
        self.bit_proj = nn.Linear(e * k, W)
        self.in_norm = RMSNorm(W)
        self.t_embed = FourierEmbedding(W, cfg.fourier_freqs, cfg.fourier_scale)
        blocks = [AdaLNBlock(RMSNorm(W), SwiGLU(W, swiglu_hidden(W, cfg.mlp_ratio)), W) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.final = AdaLNFinal(W)
        self.out = nn.Linear(W, 2 * k)                     # bit-major: [bit0 logit0, bit0 logit1, bit1 logit0, ...]
        self.apply(init_weights)
        zero_init(*(b.ada for b in blocks), self.final.ada)

    # -- network -------------------------------------------------------------------------------------------------------
    def logits(self, ids_Nk: torch.Tensor, cond_NW: torch.Tensor, mask_ratio_N: torch.Tensor) -> torch.Tensor:
        """Bit ids in {0, 1, MASK} (N, k), conditions (N, W), mask ratios (N,) -> logits (N, k, 2)."""
        # s = SiLU(z + t_emb); each AdaLN applies its own SiLU again before its Linear, as the release does
        s_NW = F.silu(cond_NW + self.t_embed(mask_ratio_N).to(cond_NW.dtype))
        return self.network(self.embed_bits(ids_Nk), self.modulations(s_NW))

    def embed_bits(self, ids_Nk: torch.Tensor) -> torch.Tensor:
        N = ids_Nk.shape[0]
        return self.in_norm(self.bit_proj(self.bit_embed(ids_Nk).reshape(N, -1)))

    def modulations(self, s: torch.Tensor) -> list[torch.Tensor]:
        """ada(SiLU(s)) of every block, then of the final layer, for conditions s of any leading shape (..., W): one
        matmul per layer."""
        silu_s = F.silu(s.reshape(-1, s.shape[-1]))
        return [layer.ada(silu_s).reshape(*s.shape[:-1], -1) for layer in (*self.blocks, self.final)]

    def network(self, x_NW: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
        """Embedded bits (N, W) and the layers' modulations -> logits (N, k, 2)."""
        for block, mod in zip(self.blocks, mods):
            x_NW = block(x_NW, mod)
        return self.out(self.final(x_NW, mods[-1])).reshape(x_NW.shape[0], self.token_dim, 2)

    # -- training ------------------------------------------------------------------------------------------------------
    def loss_draws(self, rows: int, device, generator: torch.Generator | None = None) -> dict:
        """Random masks of `rows` tokens: "mask" (rows, k) bool, at least one bit masked per token, and "ratio"
        (rows,), the mask ratio clamp(1 - sigmoid(N(0, t_std^2)), 1/k, 1). The masks themselves, not the draws behind
        them: rounding k * ratio is discontinuous, and a compiled sigmoid one ulp off would flip a mask now and then."""
        k = self.token_dim
        t = torch.sigmoid(torch.randn(rows, device=device, generator=generator) * self.cfg.t_std)
        ratio = (1.0 - t).clamp(1.0 / k, 1.0)
        n_masked = (k * ratio).round().clamp(min=1)
        rank = torch.rand(rows, k, device=device, generator=generator).argsort(dim=-1).argsort(dim=-1)
        return {"mask": rank < n_masked[:, None], "ratio": ratio}

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor,
             generator: torch.Generator | None = None, draws: dict | None = None) -> torch.Tensor:
        k, W = self.token_dim, self.width
        cond = cond_BLW.reshape(-1, W)
        bits = target_BLk.reshape(-1, k).long()
        draws = draws if draws is not None else self.loss_draws(bits.shape[0], bits.device, generator)
        mask, ratio = draws["mask"], draws["ratio"]
        logits = self.logits(torch.where(mask, MASK, bits), cond, ratio)
        ce = F.cross_entropy(logits.float().reshape(-1, 2), bits.reshape(-1), reduction="none").reshape(bits.shape)
        w = torch.where(mask, self.cfg.masked_weight, self.cfg.visible_weight)
        # sums accumulated in float64: a compiled float32 reduction over B*L*k terms drifts by ~1e-5 relative
        total = (ce * w).sum(dtype=torch.float64) / (w.sum(dtype=torch.float64) + 1e-8)
        return total.to(ce.dtype)

    # -- sampling ------------------------------------------------------------------------------------------------------
    def check_schedule(self, **schedule) -> None:
        self._allocation(**schedule)

    def sampling_passes(self, **schedule) -> int:
        """K, the unmasking steps of `allocation` (the temperature anneals over them: T, T(K-1)/K, ..., T/K)."""
        return len(self._allocation(**schedule))

    def _allocation(self, allocation=None, **extra) -> list[int]:
        """The validated allocation (default: k bits in 4 even steps)."""
        if extra:
            raise UserError(f"MBM head got unknown sampling options {sorted(extra)}; it takes only 'allocation'")
        k = self.token_dim
        if allocation is None:
            return even_allocation(k, 4)
        alloc = list(allocation)
        shown = "[" + ",".join(str(a) for a in alloc) + "]"
        if not alloc or any(int(a) != a or a < 1 for a in alloc):
            raise UserError(f"allocation {shown} must be a non-empty list of positive integers")
        alloc = [int(a) for a in alloc]
        if sum(alloc) != k:
            raise UserError(f"allocation {shown} sums to {sum(alloc)}, {self.token_dim_name} is {k}")
        if any(b < a for a, b in zip(alloc, alloc[1:])):
            raise UserError(f"allocation {shown} must be non-decreasing")
        return alloc

    def draw_noise(self, batch: int, temperature: float, generator: torch.Generator | None, device,
                   **schedule) -> list[torch.Tensor]:
        """Per unmasking step, uniforms for the bits' Gumbel noise (B, k, 2) and, except at the last step, for the
        confidences (B, k)."""
        K, k = len(self._allocation(**schedule)), self.token_dim
        shapes = [(batch, k, 2), (batch, k)] * K
        return [uniform(shape, generator, device) for shape in shapes[:-1]]

    def sampling_constants(self, temperature: float, device, **schedule) -> dict:
        """Per unmasking step, computed in double and rounded once: temperature T (1 - step / K), mask ratio."""
        alloc = self._allocation(**schedule)
        K, k = len(alloc), self.token_dim
        return {"tau": torch.tensor([temperature * (1.0 - step / K) for step in range(K)], device=device),
                "ratio": torch.tensor([1.0 - sum(alloc[:step]) / k for step in range(K)], device=device)}

    def sample_with_noise(self, cond_BW: torch.Tensor, cfg_scale: torch.Tensor | None, noise: list[torch.Tensor],
                          consts: dict, **schedule) -> torch.Tensor:
        """Reveal the k bits of one token in K = len(allocation) steps; uint8 bits (B, k). Each step samples every
        masked bit (Gumbel-argmax of the guided logits at the step's temperature), then re-masks the (k - revealed)
        least confident of them (revealed bits never re-mask). Each step's mask ratio is known up front, so every
        AdaLN modulation of all K steps comes from one matmul per layer."""
        alloc = self._allocation(**schedule)
        k, N = self.token_dim, cond_BW.shape[0]
        B = N // 2 if cfg_scale is not None else N
        s_KNW = F.silu(cond_BW[None] + self.t_embed(consts["ratio"]).to(cond_BW.dtype)[:, None])
        mods = self.modulations(s_KNW)
        ids = torch.full((B, k), MASK, dtype=torch.long, device=cond_BW.device)
        draws = iter(noise)
        revealed = 0
        for step, n in enumerate(alloc):
            tau = consts["tau"][step]
            x = self.embed_bits(ids)
            x = x if cfg_scale is None else torch.cat([x, x])
            logits = guide(self.network(x, [mod[step] for mod in mods]).float(), cfg_scale)       # (B, k, 2)
            choice = (logits + tau * gumbel_from_uniform(next(draws))).argmax(-1)
            chosen = logits.gather(-1, choice[..., None]).squeeze(-1)
            is_masked = ids == MASK
            new_ids = torch.where(is_masked, choice, ids)
            revealed += n
            if revealed == k:
                ids = new_ids
                break
            conf = chosen + tau * gumbel_from_uniform(next(draws))
            conf = torch.where(is_masked, conf, torch.full_like(conf, float("inf")))
            remask = conf.topk(k - revealed, dim=-1, largest=False).indices
            ids = new_ids.scatter(1, remask, MASK)
        return ids.to(torch.uint8)
