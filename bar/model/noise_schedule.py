"""The Gaussian diffusion process the continuous baseline's head (bar.model.heads.diffusion) trains and samples with,
as MAR sets it up: the cosine noise schedule (Nichol & Dhariwal), its respacing for sampling, sinusoidal timestep
features."""

from __future__ import annotations

import math

import torch


def cosine_alpha_bar(u: torch.Tensor | float, s: float = 0.008):
    """Continuous cosine schedule (Nichol & Dhariwal): alpha_bar(u) = cos(((u + s) / (1 + s)) * pi / 2)^2, u in [0, 1]
    (normalised so that alpha_bar(0) = 1)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    f = lambda v: torch.cos((v + s) / (1 + s) * math.pi / 2) ** 2   # noqa: E731
    return f(u) / f(torch.zeros((), dtype=torch.float64))


def cosine_schedule(num_timesteps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar_t for the discrete steps t = 0 .. T-1 (float64): beta_t = min(1 - abar((t+1)/T) / abar(t/T),
    max_beta), alpha_bar_t = prod_{i<=t} (1 - beta_i). Decreasing from ~1 (t = 0) to ~0 (t = T-1)."""
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    ab = cosine_alpha_bar(u)
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` training timesteps spread evenly over [0, T-1], both ends included (as MAR's respacing "100")."""
    if steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (steps - 1)
    return sorted({int(round(i * stride)) for i in range(steps)})


def timestep_features(t_N: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: [cos(t f_i), sin(t f_i)], f_i geometric in
    [1/max_period, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_N.device) / half)
    angles = t_N.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)
