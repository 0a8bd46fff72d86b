"""AR sampling loop for BARGenerator: raster order, KV cache (or a cache-free path for testing), batched CFG.

    generate(model, labels_B, cfg_scale=1.0, temperature=1.0, kv_cache=True, generator=None, fast=False,
             compile=False, **schedule)
        -> tokens (B, h*w, k) in raster order, ungrouped (uint8 bits for bit heads)

fast=True decodes through bar.model.fast: a static preallocated KV cache and a decode step with fixed shapes and no host
synchronisation (backbone one position + the head's sampler); compile=True (implies fast) compiles that step
(torch.compile default mode on CPU, CUDA graphs on GPU; a string names the mode). Same tokens as the eager path from
the same generator. kv_cache=False is the cache-free reference and cannot be combined with fast.

CFG: when cfg_scale != 1 the batch is doubled, [labels; null class], and the head receives conditions (2B, W) with the
unconditional half second and the scale s_i = 1 + (cfg_scale - 1) * i / L for AR step i of L (a linear ramp from 1).
`schedule` is passed to the head (e.g. allocation=[2, 2, 5, 7] for the MBM head) and validated before any work.
Randomness comes only from `generator` (the head's Gumbel noise), so the same seed gives the same tokens with and
without the KV cache.
"""

from __future__ import annotations

import torch

from bar import UserError
from bar.model.fast import fast_generate


def cfg_scale_at(i: int, num_steps: int, cfg_scale: float) -> float:
    """Guidance scale at AR step i of num_steps: 1 + (g - 1) * i / L."""
    return 1.0 + (cfg_scale - 1.0) * i / num_steps


@torch.no_grad()
def generate(model, labels_B: torch.Tensor, cfg_scale: float = 1.0, temperature: float = 1.0,
             kv_cache: bool = True, generator: torch.Generator | None = None, fast: bool = False,
             compile: bool | str = False, **schedule) -> torch.Tensor:
    model.head.check_schedule(**schedule)
    fast = fast or bool(compile)
    if fast and not kv_cache:
        raise UserError("fast sampling decodes with a static KV cache; kv_cache=False is the eager reference only")
    labels_B = torch.as_tensor(labels_B).long()
    if labels_B.ndim != 1 or labels_B.numel() == 0:
        raise UserError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels_B.shape)}")
    if labels_B.min() < 0 or labels_B.max() > model.null_class:
        raise UserError(f"labels must lie in [0, {model.null_class}] ({model.null_class} = null class)")
    device = next(model.parameters()).device
    labels_B = labels_B.to(device)
    if fast:
        L = model.cfg.steps
        scales = [cfg_scale_at(i, L, cfg_scale) for i in range(L)] if cfg_scale != 1.0 else None
        was_training = model.training
        model.eval()
        try:
            steps = fast_generate(model, labels_B, scales, temperature, generator, compile=compile, **schedule)
        finally:
            model.train(was_training)
        return model.ungroup(steps)
    L, K = model.cfg.steps, model.cfg.step_dim
    use_cfg = cfg_scale != 1.0
    labels = torch.cat([labels_B, torch.full_like(labels_B, model.null_class)]) if use_cfg else labels_B
    orders = torch.arange(L, device=device).expand(labels.shape[0], L)
    cache = model.new_cache(labels.shape[0]) if kv_cache else None

    was_training = model.training
    model.eval()
    try:
        fed = None                       # (B', i, K) steps fed so far (cache-free path)
        steps = []
        cond = model.conditions(labels.new_zeros(labels.shape[0], 0, K), labels, orders, cache=cache)[:, -1]
        for i in range(L):
            scale = cfg_scale_at(i, L, cfg_scale) if use_cfg else None
            tok = model.head.sample(cond, cfg_scale=scale, temperature=temperature, generator=generator, **schedule)
            steps.append(tok)
            if i == L - 1:
                break
            tok_in = (torch.cat([tok, tok]) if use_cfg else tok)[:, None]
            if cache is not None:
                cond = model.conditions(tok_in, labels, orders, start=cache.length, cache=cache)[:, -1]
            else:
                fed = tok_in if fed is None else torch.cat([fed, tok_in], dim=1)
                cond = model.conditions(fed, labels, orders)[:, -1]
    finally:
        model.train(was_training)
    return model.ungroup(torch.stack(steps, dim=1))
