"""AR sampling for BARGenerator: raster order, batched CFG, the head's one sampler at every step.

    generate(model, labels_B, cfg_scale=1.0, temperature=1.0, generator=None, kv_cache=True, compile=False,
             **schedule) -> tokens (B, h*w, k) in raster order, ungrouped (uint8 bits for bit heads)

kv_cache=True decodes through the static KV cache (bar.model.decoding), compiled when `compile` says so (True:
torch.compile's default mode on CPU, CUDA graphs on GPUs; a string names the mode). kv_cache=False is the cache-free
reference: the backbone recomputes the whole prefix at every AR step (`BARGenerator.conditions`, as in training).
Both sample the head with the same noise draws in the same order from `generator`, so the same seed gives the same
tokens (floats of a continuous head: equal to rounding).

CFG: when cfg_scale != 1 the batch is doubled, [labels; null class], and the head receives conditions (2B, W) with the
unconditional half second and the scale s_i = 1 + (cfg_scale - 1) * i / L for AR step i of L (a linear ramp from 1).
`schedule` is passed to the head (e.g. allocation=[2, 2, 5, 7] for the MBM head) and validated before any work.
"""

from __future__ import annotations

import torch

from bar import UserError
from bar.model.decoding import decoder_for


def cfg_scale_at(i: int, num_steps: int, cfg_scale: float) -> float:
    """Guidance scale at AR step i of num_steps: 1 + (g - 1) * i / L."""
    return 1.0 + (cfg_scale - 1.0) * i / num_steps


def cfg_scales(num_steps: int, cfg_scale: float, device) -> torch.Tensor | None:
    """The guidance scale of every AR step (computed in double, rounded once); None without CFG."""
    if cfg_scale == 1.0:
        return None
    return torch.tensor([cfg_scale_at(i, num_steps, cfg_scale) for i in range(num_steps)], device=device)


def _checked_labels(model, labels_B) -> torch.Tensor:
    labels_B = torch.as_tensor(labels_B).long()
    if labels_B.ndim != 1 or labels_B.numel() == 0:
        raise UserError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels_B.shape)}")
    if labels_B.min() < 0 or labels_B.max() > model.null_class:
        raise UserError(f"labels must lie in [0, {model.null_class}] ({model.null_class} = null class)")
    return labels_B.to(next(model.parameters()).device)


def reference_steps(model, labels_B: torch.Tensor, scales_L: torch.Tensor | None, temperature: float,
                    generator: torch.Generator | None, **schedule) -> torch.Tensor:
    """Steps (B, L, K) in AR order without a cache: every AR step runs the backbone over the prefix and all steps fed
    so far, then the head's sampler on the last condition, with the decoder's noise draws in the decoder's order."""
    head, L, device = model.head, model.cfg.steps, labels_B.device
    B = labels_B.shape[0]
    labels = labels_B if scales_L is None else torch.cat([labels_B, torch.full_like(labels_B, model.null_class)])
    orders = torch.arange(L, device=device).expand(labels.shape[0], L)
    consts = head.sampling_constants(temperature, device, **schedule)
    fed = labels.new_zeros(labels.shape[0], 0, model.cfg.step_dim)
    toks = []
    for i in range(L):
        cond = model.conditions(fed, labels, orders)[:, -1]
        noise = head.draw_noise(B, temperature, generator, device, **schedule)
        scale = None if scales_L is None else scales_L[i]
        toks.append(head.sample_with_noise(cond, scale, noise, consts, **schedule))
        tok_in = toks[-1] if scales_L is None else torch.cat([toks[-1], toks[-1]])
        fed = torch.cat([fed.to(tok_in.dtype), tok_in[:, None]], dim=1)
    return torch.stack(toks, dim=1)


@torch.no_grad()
def generate(model, labels_B: torch.Tensor, cfg_scale: float = 1.0, temperature: float = 1.0,
             generator: torch.Generator | None = None, kv_cache: bool = True, compile: bool | str | dict = False,
             **schedule) -> torch.Tensor:
    """Tokens (B, h*w, k) for class labels_B (see the module docstring); the model is in eval mode meanwhile."""
    model.head.check_schedule(**schedule)
    if compile and not kv_cache:
        raise UserError("compile= compiles the cached decoder; kv_cache=False is the uncompiled reference")
    labels_B = _checked_labels(model, labels_B)
    scales = cfg_scales(model.cfg.steps, cfg_scale, labels_B.device)
    was_training = model.training
    model.eval()
    try:
        if kv_cache:
            decoder = decoder_for(model, labels_B.shape[0], scales is not None, temperature, schedule, compile)
            steps = decoder.sample_steps(model, labels_B, scales, generator)
        else:
            steps = reference_steps(model, labels_B, scales, temperature, generator, **schedule)
    finally:
        model.train(was_training)
    return model.ungroup(steps)
