"""Building blocks shared by the generator backbone and the token heads: RMSNorm, SwiGLU, AdaLN modulation, weight
init, Gumbel noise. Pure tensor code; no project imports."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def zero_init(*linears: nn.Linear) -> None:
    """Zero weights and biases: AdaLN-Zero modulations (each residual branch starts as the identity), zero outputs."""
    for m in linears:
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)


def uniform(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """The one uniform draw behind every Gumbel sample: the heads' `draw_noise` makes these ahead of a (compiled)
    sampling step, so the cached and cache-free sampling paths see identical noise."""
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
