"""Token heads: turn the backbone's per-position condition z into a token, with a loss for training and one sampler
for generation. Every head implements `TokenHead` (base.py), so the backbone, the AR sampler and the training loop
never branch on the head type. Heads are registered in `HEADS` and built with `build_head(name, token_dim, **config)`.

    name       tokens                    options (defaults)                                        sampling options
    mbm        bits (uint8)              width 2048, depth 3, mlp_ratio, fourier_*, t_std, *_weight  allocation
    softmax    bits, k <= 63             width 2048 (one Linear(W -> 2^k), C-way cross-entropy)     -
    bitwise    bits                      width 2048 (one Linear(W -> 2k), per-bit cross-entropy)    -
    diffusion  continuous (float, d ch)  width 1024, depth 6, num_timesteps 1000, sampling_steps    steps, sampler
                                         100, sampler "ddpm", batch_mul 4, freq_dim 256
"""

from __future__ import annotations

from dataclasses import fields

from bar import UserError
from bar.model.heads.base import TokenHead, guide
from bar.model.heads.diffusion import (SAMPLERS, DiffusionConfig, DiffusionHead, cosine_alpha_bar, cosine_schedule,
    respaced_timesteps, timestep_features)
from bar.model.heads.discrete import BitwiseConfig, BitwiseHead, LinearHead, SoftmaxConfig, SoftmaxHead
from bar.model.heads.mbm import MASK, MBMConfig, MBMHead, even_allocation

HEADS: dict[str, tuple[type[TokenHead], type]] = {
    "mbm": (MBMHead, MBMConfig),
    "softmax": (SoftmaxHead, SoftmaxConfig),
    "bitwise": (BitwiseHead, BitwiseConfig),
    "diffusion": (DiffusionHead, DiffusionConfig),
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


__all__ = ["HEADS", "MASK", "SAMPLERS", "BitwiseConfig", "BitwiseHead", "DiffusionConfig", "DiffusionHead",
           "LinearHead", "MBMConfig", "MBMHead", "SoftmaxConfig", "SoftmaxHead", "TokenHead", "build_head",
           "cosine_alpha_bar", "cosine_schedule", "even_allocation", "guide", "respaced_timesteps", "timestep_features"]
