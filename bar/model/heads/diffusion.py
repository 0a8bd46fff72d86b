"""MAR's diffusion head for continuous tokens (the paper's continuous baseline): cosine noise schedule, epsilon
prediction, DDPM or DDIM sampling on a respaced chain."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError
from bar.model.heads.base import AdaLNBlock, TokenHead, guide
from bar.model.layers import init_weights, modulate, zero_init
from bar.model.noise_schedule import cosine_schedule, respaced_timesteps, timestep_features


def mar_block(width: int) -> AdaLNBlock:
    """MAR's residual block: LayerNorm, MLP = Linear-SiLU-Linear at width W."""
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
    return AdaLNBlock(nn.LayerNorm(width, eps=1e-6), mlp, width)


@dataclass
class DiffusionConfig:
    width: int = 1024            # W: condition width and the MLP's width (MAR-B 1024, MAR-L 1280, MAR-H 1536)
    depth: int = 6               # residual AdaLN blocks (MAR-B 6, MAR-L 8, MAR-H 12)
    num_timesteps: int = 1000    # training timesteps T (cosine schedule)
    sampling_steps: int = 100    # default respaced steps per token at sampling
    sampler: str = "ddpm"        # "ddpm": ancestral on the respaced chain (MAR); "ddim": deterministic, eta = 0
    batch_mul: int = 4           # noise draws per token per training step (MAR's diffusion_batch_mul)
    freq_dim: int = 256          # sinusoidal timestep features before the timestep MLP
    x0_clip: float | None = 10.0  # sampling clamps the predicted clean token: near t = T, x0 = (x - sqrt(1 - ab) eps) /
                                  # sqrt(ab) multiplies eps's error by ~1e4 (unit-scale latents never reach 10)


SAMPLERS = ("ddpm", "ddim")


class DiffusionHead(TokenHead):
    """MAR-style diffusion head for continuous tokens (d channels per AR step).

    Network: eps_hat = MLP(x_t | y), y = z + TimestepMLP(sinusoid(t)); Linear(d -> W), `depth` residual AdaLN blocks
    (LayerNorm, Linear-SiLU-Linear, AdaLN-Zero), final AdaLN layer, Linear(W -> d) (zero-initialised). Training: cosine
    schedule over T = 1000 steps, t uniform, epsilon-prediction MSE, each token repeated `batch_mul` times with
    fresh noise. Sampling: DDPM or DDIM on `steps` timesteps respaced evenly over [0, T-1] (`sampling_constants`),
    CFG on the predicted noise with both halves at the same x_t. Differences from MAR: the variance is fixed to the
    posterior variance (MAR learns it with an extra VLB term), and the condition enters at width W directly (the
    backbone's output projection already gives width W; MAR has a Linear of its own)."""

    token_kind = "continuous"
    token_dim_name = "channels"
    schedule_options = ("steps", "sampler")
    fused_sample = False          # 100 denoising steps: the decoder compiles one step (`denoise_step`), not the loop
    alphas_cumprod: torch.Tensor  # buffer (T,)

    def __init__(self, token_dim: int, cfg: DiffusionConfig | None = None):
        super().__init__()
        cfg = cfg or DiffusionConfig()
        if cfg.num_timesteps < 2 or cfg.batch_mul < 1:
            raise UserError(f"diffusion head needs num_timesteps >= 2 and batch_mul >= 1, got {cfg.num_timesteps} "
                            f"and {cfg.batch_mul}")
        self.cfg = cfg
        self.token_dim = d = token_dim
        self.width = W = cfg.width
        self.in_proj = nn.Linear(d, W)
        self.t_mlp = nn.Sequential(nn.Linear(cfg.freq_dim, W), nn.SiLU(), nn.Linear(W, W))
        blocks = [mar_block(W) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(W, 2 * W)
        self.out = nn.Linear(W, d)
        self.register_buffer("alphas_cumprod", cosine_schedule(cfg.num_timesteps).float(), persistent=False)
        self.apply(init_weights)
        zero_init(*(b.ada for b in blocks), self.final_ada, self.out)
        self.check_schedule(steps=cfg.sampling_steps, sampler=cfg.sampler)

    # -- network -------------------------------------------------------------------------------------------------------
    def eps(self, x_Nd: torch.Tensor, t_N: torch.Tensor, cond_NW: torch.Tensor) -> torch.Tensor:
        """Predicted noise (N, d) for noisy tokens x_t at timesteps t (training indices, 0 .. T-1)."""
        x = self.in_proj(x_Nd.to(self.in_proj.weight.dtype))
        t_emb = self.t_mlp(timestep_features(t_N, self.cfg.freq_dim).to(self.in_proj.weight.dtype))
        y = cond_NW + t_emb.to(cond_NW.dtype)
        silu_y = F.silu(y)
        for block in cast("Iterable[AdaLNBlock]", self.blocks):  # nn.ModuleList iterates as plain Modules
            x = block(x, block.ada(silu_y))
        shift, scale = self.final_ada(silu_y).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(x), shift, scale))

    # -- training ------------------------------------------------------------------------------------------------------
    def loss_draws(self, rows: int, device, generator: torch.Generator | None = None) -> dict:
        n = rows * self.cfg.batch_mul
        return {"t": torch.randint(0, self.cfg.num_timesteps, (n,), device=device, generator=generator),
                "noise": torch.randn((n, self.token_dim), device=device, generator=generator)}

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor,
             generator: torch.Generator | None = None, draws: dict | None = None) -> torch.Tensor:
        d, W, m = self.token_dim, self.width, self.cfg.batch_mul
        x0 = target_BLk.reshape(-1, d).float().repeat(m, 1)
        cond = cond_BLW.reshape(-1, W).repeat(m, 1)
        if draws is None:
            draws = self.loss_draws(cond_BLW.reshape(-1, W).shape[0], x0.device, generator)
        t, noise = draws["t"], draws["noise"]
        ab = self.alphas_cumprod[t][:, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return F.mse_loss(self.eps(x_t, t, cond).float(), noise)

    # -- sampling ------------------------------------------------------------------------------------------------------
    def check_schedule(self, **schedule) -> None:
        self._schedule(**schedule)

    def sampling_passes(self, **schedule) -> int:
        return self._schedule(**schedule)[0]

    def _schedule(self, steps=None, sampler=None, **extra) -> tuple[int, str]:
        """(steps, sampler), validated, the config's defaults filling what is None."""
        if extra:
            raise UserError(f"diffusion head got unknown sampling options {sorted(extra)}; it takes 'steps', 'sampler'")
        T = self.cfg.num_timesteps
        if steps is not None and (int(steps) != steps or not 1 <= steps <= T):
            raise UserError(f"diffusion sampling steps {steps} must be an integer in [1, {T}]")
        if sampler is not None and sampler not in SAMPLERS:
            raise UserError(f"diffusion sampler {sampler!r} must be one of {list(SAMPLERS)}")
        return int(steps or self.cfg.sampling_steps), sampler or self.cfg.sampler

    def draw_noise(self, batch: int, temperature: float, generator: torch.Generator | None, device,
                   **schedule) -> list[torch.Tensor]:
        """The starting noise (B, d) and, for "ddpm", the noise of every chain step but the last."""
        steps, sampler = self._schedule(**schedule)
        later = steps - 1 if sampler == "ddpm" else 0
        return [torch.randn(batch, self.token_dim, device=device, generator=generator) for _ in range(1 + later)]

    def sampling_constants(self, temperature: float, device, **schedule) -> dict:
        """The chain, last timestep first: training timesteps `t` and coefficients `coef` (steps, 6), in double and
        rounded once: x0 = (x - c0 eps) / c1, x <- c2 x0 + c3 x + c4 eps + c5 noise. "ddpm": the respaced chain's
        posterior, its noise scaled by the temperature (MAR's); "ddim": deterministic (eta = 0), its initial noise
        scaled by the temperature (`start`)."""
        steps, sampler = self._schedule(**schedule)
        ab_all = self.alphas_cumprod.double().cpu()
        ts = respaced_timesteps(self.cfg.num_timesteps, steps)
        previous = [1.0] + [float(ab_all[t]) for t in ts[:-1]]
        rows = []
        for t, ab_prev in reversed(list(zip(ts, previous))):
            ab = float(ab_all[t])
            c0, c1 = math.sqrt(1 - ab), math.sqrt(ab)
            if sampler == "ddim":
                rows.append([c0, c1, math.sqrt(ab_prev), 0.0, math.sqrt(1 - ab_prev), 0.0])
                continue
            beta = 1 - ab / ab_prev                   # the respaced chain's own beta
            c5 = math.sqrt(beta * (1 - ab_prev) / (1 - ab)) * temperature if ab_prev < 1.0 else 0.0
            rows.append([c0, c1, beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab),
                         0.0, c5])
        return {"coef": torch.tensor(rows, device=device), "t": torch.tensor(ts[::-1], device=device),
                "start": torch.tensor(float(temperature) if sampler == "ddim" else 1.0, device=device)}

    def denoise_step(self, x_Bd, cond_BW, cfg_scale, t, coef, noise_Bd) -> torch.Tensor:
        """One chain step at training timestep t (0-d) with coefficients coef (6,) (see `sampling_constants`); CFG
        guides the predicted noise, both halves at the same x_t. Fixed shapes, no host synchronisation."""
        inp = x_Bd if cfg_scale is None else torch.cat([x_Bd, x_Bd])
        eps = guide(self.eps(inp, t.reshape(1), cond_BW).float(), cfg_scale)
        x0 = (x_Bd - coef[0] * eps) / coef[1]
        if self.cfg.x0_clip is not None:
            x0 = x0.clamp(-self.cfg.x0_clip, self.cfg.x0_clip)
        return coef[2] * x0 + coef[3] * x_Bd + coef[4] * eps + coef[5] * noise_Bd

    def sample_with_noise(self, cond_BW, cfg_scale, noise, consts, step_fn=None, **schedule) -> torch.Tensor:
        """float32 tokens (B, d): `denoise_step` (or `step_fn`, its compiled form) along the chain."""
        step_fn = step_fn or self.denoise_step
        x = noise[0] * consts["start"]
        coef, ts = consts["coef"], consts["t"]
        silent = torch.zeros_like(x)                 # the noise of the steps that draw none
        for i in range(ts.shape[0]):
            x = step_fn(x, cond_BW, cfg_scale, ts[i], coef[i], noise[1 + i] if 1 + i < len(noise) else silent)
        return x
