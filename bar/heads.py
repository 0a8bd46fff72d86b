"""Token heads: turn the backbone's per-position condition z into a token (loss for training, sampler for generation).

Every head implements one interface (`TokenHead`), so the backbone, the AR sampler and the training loop never branch
on the head type:

    loss(cond_BLW, target_BLk) -> scalar                   teacher-forced, all positions in parallel
    sample(cond_BW, cfg_scale, temperature, generator=None, **schedule) -> tokens_Bk
    check_schedule(**schedule) -> None                       validate sampling options once, before any work

CFG convention (all heads):
    cfg_scale is None  -> no guidance; cond has shape (B, W).
    cfg_scale is float -> guidance; cond has shape (2B, W): rows [:B] are conditional, rows [B:] unconditional (null
                          class), and the head combines its outputs as u + s * (c - u). The head returns B tokens.

Heads are registered in `HEADS` and built with `build_head(name, token_dim, **config)`; a later head (softmax, per-bit,
diffusion) only needs a class here and an entry in `HEADS`.

The MBM head (`MBMHead`) follows the BAR release's masked-bit-modeling head (see shared/design/bar-method.md):
per-bit {0, 1, MASK} embedding -> Linear -> RMSNorm; condition s = SiLU(z + t_emb(mask ratio)); residual AdaLN-Zero
SwiGLU blocks; final AdaLN layer; Linear(W -> 2k) = two logits per bit. Bits are revealed over K steps from an
`allocation` with Gumbel sampling and confidence-based re-masking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError

MASK = 2  # bit ids: 0, 1, MASK


# ---------------------------------------------------------------------------------------------------------------------
# Shared building blocks (also used by bar.generator)
# ---------------------------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMSNorm with a learned gain, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    """Hidden width of a SwiGLU MLP with the parameter count of a GELU MLP of ratio `mlp_ratio`: 2/3 * ratio * dim."""
    return int(2 / 3 * int(dim * mlp_ratio))


class SwiGLU(nn.Module):
    """out = w3(dropout(silu(a) * b)) with [a, b] = w12(x)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(a) * b))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) Linear/Embedding weights, zero biases, unit norm gains."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)


def gumbel(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


# ---------------------------------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------------------------------

class TokenHead(nn.Module):
    """Base class of all heads. Subclasses set `width` (W, the condition width the backbone must produce) and
    `token_dim` (k: bits per AR step, or channels), and implement `loss`, `sample`, `check_schedule`."""

    width: int
    token_dim: int
    # how a schedule error names token_dim; the generator builder sets it when tokens are grouped
    token_dim_name: str = "bits_per_token"

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None, temperature: float,
               generator: torch.Generator | None = None, **schedule) -> torch.Tensor:
        raise NotImplementedError

    def check_schedule(self, **schedule) -> None:
        """Raise UserError (one line) if the sampling schedule does not fit this head."""


# ---------------------------------------------------------------------------------------------------------------------
# MBM head
# ---------------------------------------------------------------------------------------------------------------------

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

    def __init__(self, width: int, num_freqs: int = 256, scale: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_freqs) * scale)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        angles = t_N.float()[:, None] * self.freqs[None, :].float() * (2 * math.pi)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.mlp[0].weight.dtype))


class AdaLNResBlock(nn.Module):
    """x + gate * SwiGLU(modulate(RMSNorm(x), shift, scale)), (shift, scale, gate) = Linear(SiLU(s))."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.mlp = SwiGLU(width, hidden)
        self.ada = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(F.silu(s)).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class AdaLNFinal(nn.Module):
    """modulate(RMSNorm(x), shift, scale), (scale, shift) = Linear(SiLU(s))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.ada = nn.Linear(width, 2 * width)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada(F.silu(s)).chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale)


def _fmt(allocation) -> str:
    return "[" + ",".join(str(a) for a in allocation) + "]"


def even_allocation(k: int, steps: int = 4) -> list[int]:
    """k bits over `steps` unmasking steps, as even as possible, non-decreasing (remainder goes to the last steps)."""
    steps = max(1, min(steps, k))
    base, rem = divmod(k, steps)
    return [base] * (steps - rem) + [base + 1] * rem


class MBMHead(TokenHead):
    """Masked bit modeling over the k bits of one AR step; an MLP over the whole bit vector (no attention)."""

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
        self.blocks = nn.ModuleList(AdaLNResBlock(W, swiglu_hidden(W, cfg.mlp_ratio)) for _ in range(cfg.depth))
        self.final = AdaLNFinal(W)
        self.out = nn.Linear(W, 2 * k)                     # bit-major: [bit0 logit0, bit0 logit1, bit1 logit0, ...]
        self.apply(init_weights)
        for m in [*(b.ada for b in self.blocks), self.final.ada]:   # AdaLN-Zero
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- network -------------------------------------------------------------------------------------------------------
    def logits(self, ids_Nk: torch.Tensor, cond_NW: torch.Tensor, mask_ratio_N: torch.Tensor) -> torch.Tensor:
        """Bit ids in {0, 1, MASK} (N, k), conditions (N, W), mask ratios (N,) -> logits (N, k, 2)."""
        N, k = ids_Nk.shape
        x = self.in_norm(self.bit_proj(self.bit_embed(ids_Nk).reshape(N, -1)))
        # s = SiLU(z + t_emb); each AdaLN applies its own SiLU again before its Linear, as the release does
        s = F.silu(cond_NW + self.t_embed(mask_ratio_N).to(cond_NW.dtype))
        for block in self.blocks:
            x = block(x, s)
        return self.out(self.final(x, s)).reshape(N, k, 2)

    # -- training ------------------------------------------------------------------------------------------------------
    def mask_bits(self, N: int, device, generator: torch.Generator | None = None):
        """Random masks for N tokens: returns (mask_Nk bool, mask_ratio_N). At least one bit is masked per token."""
        k = self.token_dim
        t = torch.sigmoid(torch.randn(N, device=device, generator=generator) * self.cfg.t_std)
        ratio = (1.0 - t).clamp(1.0 / k, 1.0)
        n_masked = (k * ratio).round().clamp(min=1)
        rank = torch.rand(N, k, device=device, generator=generator).argsort(dim=-1).argsort(dim=-1)
        return rank < n_masked[:, None], ratio

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        k, W = self.token_dim, self.width
        cond = cond_BLW.reshape(-1, W)
        bits = target_BLk.reshape(-1, k).long()
        mask, ratio = self.mask_bits(bits.shape[0], bits.device, generator)
        logits = self.logits(torch.where(mask, MASK, bits), cond, ratio)
        ce = F.cross_entropy(logits.float().reshape(-1, 2), bits.reshape(-1), reduction="none").reshape(bits.shape)
        w = torch.where(mask, self.cfg.masked_weight, self.cfg.visible_weight)
        return (ce * w).sum() / (w.sum() + 1e-8)

    # -- sampling ------------------------------------------------------------------------------------------------------
    def check_schedule(self, allocation=None, **extra) -> None:
        if extra:
            raise UserError(f"MBM head got unknown sampling options {sorted(extra)}; it takes only 'allocation'")
        self._allocation(allocation)

    def _allocation(self, allocation) -> list[int]:
        k = self.token_dim
        if allocation is None:
            return even_allocation(k, 4)
        alloc = list(allocation)
        if not alloc or any(int(a) != a or a < 1 for a in alloc):
            raise UserError(f"allocation {_fmt(alloc)} must be a non-empty list of positive integers")
        alloc = [int(a) for a in alloc]
        if sum(alloc) != k:
            raise UserError(f"allocation {_fmt(alloc)} sums to {sum(alloc)}, {self.token_dim_name} is {k}")
        if any(b < a for a, b in zip(alloc, alloc[1:])):
            raise UserError(f"allocation {_fmt(alloc)} must be non-decreasing")
        return alloc

    @torch.no_grad()
    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, allocation=None) -> torch.Tensor:
        """Reveal the k bits of one token in len(allocation) steps. Returns uint8 bits (B, k)."""
        alloc = self._allocation(allocation)
        k, K, dev = self.token_dim, len(alloc), cond_BW.device
        B = cond_BW.shape[0] // 2 if cfg_scale is not None else cond_BW.shape[0]
        ids = torch.full((B, k), MASK, dtype=torch.long, device=dev)
        revealed = 0
        for step, n in enumerate(alloc):
            tau = temperature * (1.0 - step / K)
            ratio = torch.full((cond_BW.shape[0],), 1.0 - revealed / k, device=dev)
            inp = ids if cfg_scale is None else torch.cat([ids, ids])
            logits = self.logits(inp, cond_BW, ratio).float()                      # (B or 2B, k, 2)
            if cfg_scale is not None:
                l_c, l_u = logits[:B], logits[B:]
                logits = l_u + cfg_scale * (l_c - l_u)
            choice = (logits + tau * gumbel(logits.shape, generator, dev)).argmax(-1)   # (B, k)
            chosen = logits.gather(-1, choice[..., None]).squeeze(-1)
            is_masked = ids == MASK
            new_ids = torch.where(is_masked, choice, ids)
            revealed += n
            if revealed == k:
                ids = new_ids
                break
            # keep the (k - revealed) least confident of the still-masked bits masked; revealed bits never re-mask
            conf = chosen + tau * gumbel(chosen.shape, generator, dev)
            conf = torch.where(is_masked, conf, torch.full_like(conf, float("inf")))
            remask = conf.argsort(dim=-1)[:, : k - revealed]
            ids = new_ids.scatter(1, remask, MASK)
        return ids.to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------

HEADS: dict[str, tuple[type[TokenHead], type]] = {
    "mbm": (MBMHead, MBMConfig),
}


def build_head(name: str, token_dim: int, **config) -> TokenHead:
    """Build head `name` for tokens of `token_dim` (bits per AR step, or channels); `config` overrides its defaults."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    cls, cfg_cls = HEADS[name]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UserError(f"head {name!r} has no option(s) {unknown}; it takes {sorted(known)}")
    return cls(token_dim, cfg_cls(**config))
