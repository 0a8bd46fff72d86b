"""Training-memory estimate and measurement for a generator (backbone + head).

    estimate_train_memory(model, batch_size, *, steps=None, bytes_per_param=4, bytes_per_act=4,
                          optimizer_states=2) -> int bytes
    train_memory_breakdown(...)  -> {"params", "grads", "optimizer", "backbone_activations", "head_activations"}
    measure_peak_train_memory(fn, device="cpu") -> int bytes
    measure_train_step(model, tokens_BLk, labels_B, lr=1e-4) -> int bytes
    per_gpu_breakdown(model, micro_batch, *, checkpointing, bytes_per_act=2, compiled=True) -> {part: bytes}
    plan_memory(model, global_batch, world_size, gpu_gb, bytes_per_act=2, ...) -> MemoryPlan
        (micro_batch, accum_steps, checkpointing, est_gb_per_gpu, feasible, reason)
    sampling_breakdown(model, tokenizer, batch, copies, ...) -> {part: bytes}   one sampling batch per GPU
    plan_sampling_batch(model, tokenizer, batch, num_samples, copies, gpu_gb, ...) -> SamplingMemory
        (batch_size that fits, requested, est_gb_per_gpu, feasible, parts)

The estimate is what one steady-state AdamW training step holds at its peak: parameters, their gradients, the AdamW
moments (two fp32 tensors per parameter) and the activations saved for backward of one batch. Activations are
counted per token position: the backbone's (a rule of thumb per transformer layer, below) and the head's
(`head_activation_bytes`, a rule per head type): for the softmax head three fp32 rows of C = 2^k values per position
(log-probabilities, their gradient and the logits' gradient are alive together in backward), which dominate
everything else at large k.
`model` may live on the meta device (`with torch.device("meta"): build_generator(...)`), so a point that would not
fit is estimated without allocating it.

The measurement (`measure_peak_train_memory`) reports the peak, above the level at entry, of bytes held by torch
tensors while `fn` runs. On CUDA it is torch.cuda.max_memory_allocated. On CPU it replays, in time order, every
allocation and free that torch's CPU allocator reports to torch.profiler (profile_memory=True; the raw allocation
events of its event tree); memory outside torch's allocator (Python objects, the interpreter, library scratch
buffers) is not seen. `measure_train_step` adds the resident
parameters and AdamW state to the measured peak of a second (steady-state) training step, which is what
`estimate_train_memory` estimates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from bar import UserError
from bar.model.generator import BARGenerator
from bar.model.heads import BitwiseHead, DiffusionHead, MBMHead, SoftmaxHead, TokenHead
from bar.model.layers import swiglu_hidden
from bar.tokenizers.release import ReleaseDecoder
from bar.tokenizers.tokenizer import ConvDecoder, ViTDecoder


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def head_activation_bytes(head: TokenHead, rows: int, bytes_per_value: int = 4) -> int:
    """Peak bytes of the head's activations and their gradients in a training step on `rows` token positions (batch
    x AR steps), counted as W-sized (or C-sized) vectors per row."""
    W = head.width
    if isinstance(head, MBMHead):      # per SwiGLU block ~7 W + 4 H (H ~ 2.7 W); ~12 W around the blocks
        H = swiglu_hidden(W, head.cfg.mlp_ratio)
        return rows * (head.cfg.depth * (7 * W + 4 * H) + 12 * W + 4 * head.cfg.fourier_freqs) * bytes_per_value
    if isinstance(head, SoftmaxHead):  # three fp32 C-sized rows (the loss upcasts), the condition and its gradient
        return rows * (3 * head.num_codes * 4 + 2 * W * bytes_per_value)
    if isinstance(head, BitwiseHead):
        return rows * (4 * 2 * head.token_dim * 4 + 2 * W * bytes_per_value)
    if isinstance(head, DiffusionHead):  # per noisy row ~10 W per block, ~10 W around them
        return rows * head.cfg.batch_mul * ((10 * head.cfg.depth + 10) * W + head.cfg.freq_dim) * bytes_per_value
    return 4 * rows * W * bytes_per_value


def backbone_activation_bytes(cfg, batch_size: int, bytes_per_act: int = 4) -> int:
    """Saved activations of BARGenerator's backbone for one batch (rule of thumb). Per layer and position: ~18 D for
    norms, modulations, q/k/v with QK-norm and RoPE, the attention output and residuals, 6 D for the per-position
    AdaLN, 4 H for the SwiGLU (H = 2/3 * 4 * D); attention weights (B * heads * S^2) only when attention dropout
    forces the unfused path. Plus ~8 D + W per position for the embeddings, final norm and condition."""
    D, S = cfg.dim, cfg.prefix + cfg.steps - 1
    H = swiglu_hidden(D, cfg.mlp_ratio)
    per_layer = batch_size * S * (24 * D + 4 * H)
    if cfg.attn_dropout > 0:
        per_layer += 2 * batch_size * cfg.heads * S * S
    return (cfg.depth * per_layer + batch_size * S * (8 * D + cfg.cond_width)) * bytes_per_act


def train_memory_breakdown(model: BARGenerator | TokenHead, batch_size: int, *, steps: int | None = None,
                           bytes_per_param: int = 4, bytes_per_act: int = 4,
                           optimizer_states: int = 2) -> dict[str, int]:
    """The parts of `estimate_train_memory`, in bytes. `model` is a BARGenerator (AR steps from its config) or a bare
    TokenHead (then `steps`, the AR steps per sample, is required)."""
    if isinstance(model, TokenHead):
        if steps is None:
            raise ValueError("a bare head needs steps= (AR steps per sample)")
        head, backbone = model, 0
    else:
        head = model.head
        steps = model.cfg.steps if steps is None else steps
        backbone = backbone_activation_bytes(model.cfg, batch_size, bytes_per_act)
    n = _param_count(model)
    return {
        "params": n * bytes_per_param,
        "grads": n * bytes_per_param,
        "optimizer": n * 4 * optimizer_states,          # AdamW moments stay fp32
        "backbone_activations": backbone,
        "head_activations": head_activation_bytes(head, batch_size * steps, bytes_per_act),
    }


def estimate_train_memory(model: BARGenerator | TokenHead, batch_size: int, *, steps: int | None = None,
                          bytes_per_param: int = 4, bytes_per_act: int = 4, optimizer_states: int = 2) -> int:
    """Peak bytes of one AdamW training step of `model` at `batch_size` (see the module docstring). Use
    bytes_per_act=2 for bf16 autocast (the softmax loss still upcasts its logits to fp32)."""
    return sum(train_memory_breakdown(model, batch_size, steps=steps, bytes_per_param=bytes_per_param,
                                      bytes_per_act=bytes_per_act, optimizer_states=optimizer_states).values())


# ---------------------------------------------------------------------------------------------------------------------
# Per-rank planning: micro-batch, gradient accumulation, activation checkpointing
# ---------------------------------------------------------------------------------------------------------------------

def checkpointed_backbone_activation_bytes(cfg, batch_size: int, bytes_per_act: int = 2,
                                           residual_bytes: int = 4) -> int:
    """Backbone activations with activation checkpointing of every block: the input of each block is saved (the
    residual stream, fp32 here even under bf16 autocast: `residual_bytes`), plus one block's activations while it is
    recomputed in backward, plus the per-position AdaLN condition, embeddings, final norm and condition (as in
    `backbone_activation_bytes`)."""
    D, S = cfg.dim, cfg.prefix + cfg.steps - 1        # positions fed in training
    rest = batch_size * S * (8 * D + cfg.cond_width) * bytes_per_act
    one_block = (backbone_activation_bytes(cfg, batch_size, bytes_per_act) - rest) // cfg.depth
    saved_inputs = cfg.depth * batch_size * S * D * residual_bytes
    return saved_inputs + one_block + rest


# Eager bf16 autocast keeps more than the rule of thumb: each linear saves the bf16 copy of its input beside the fp32
# tensor the previous op saved, and unfused elementwise ops save their own inputs. Measured on an H200 (BAR-B,
# micro-batch 128, benchmarks/gpu/bar_b_step.py): 81.7 GiB peak eager, of which 74.7 GiB activations against the rule's
# 52.6 (x1.42); compiled (torch.compile fuses and recomputes them): 49.6 GiB peak, under the rule.
EAGER_AUTOCAST_ACTIVATIONS = 1.42


def per_gpu_breakdown(model: BARGenerator, micro_batch: int, *, checkpointing: bool = False,
                      bytes_per_act: int = 2, compiled: bool = True) -> dict[str, int]:
    """Bytes one data-parallel rank holds at the peak of a training step of `micro_batch` samples (a BARGenerator,
    possibly on the meta device): fp32 parameters, fp32 gradients, AdamW's two fp32 moments, under mixed precision
    (bytes_per_act < 4) autocast's cached low-precision copy of the weights, and the activations of one micro-batch
    (backbone: all blocks' saved tensors, or with `checkpointing` only block inputs + one block; head: as
    `head_activation_bytes`, not checkpointed). Gradient accumulation adds nothing: gradients are summed in
    place. `compiled`: the step runs under torch.compile (the rule of thumb); an eager step under autocast holds
    EAGER_AUTOCAST_ACTIVATIONS times its activations."""
    parts = train_memory_breakdown(model, micro_batch, bytes_per_param=4, bytes_per_act=bytes_per_act)
    parts["autocast_weights"] = _param_count(model) * bytes_per_act if bytes_per_act < 4 else 0
    if checkpointing:
        parts["backbone_activations"] = checkpointed_backbone_activation_bytes(model.cfg, micro_batch, bytes_per_act)
    if not compiled and bytes_per_act < 4:
        for part in ("backbone_activations", "head_activations"):
            parts[part] = int(parts[part] * EAGER_AUTOCAST_ACTIVATIONS)
    return parts


# plan_memory's default margins on a GPU: a fraction of the budget for fragmentation, GiB for the CUDA context,
# kernels' workspaces and communication buffers
HEADROOM = 0.05
RESERVE_GB = 1.0


@dataclass
class MemoryPlan:
    micro_batch: int              # samples per GPU per forward/backward
    accum_steps: int              # micro-batches per optimizer step: global = micro * accum * world
    checkpointing: bool           # activation checkpointing of the backbone blocks
    est_gb_per_gpu: float         # GiB at the peak of a step, for the chosen (or, infeasible: the smallest) setting
    feasible: bool
    reason: str                   # one line
    world_size: int = 1
    global_batch: int = 0
    usable_gb: float = 0.0        # the budget after headroom

    def as_dict(self) -> dict:
        return asdict(self)


def _divisors_desc(n: int) -> list[int]:
    return sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True)


def plan_memory(model: BARGenerator, global_batch: int, world_size: int, gpu_gb: float, bytes_per_act: int = 2, *,
                headroom: float = HEADROOM, reserve_gb: float = RESERVE_GB, min_micro_batch: int = 1,
                micro_batch: int | None = None, checkpointing: bool | None = None, compiled: bool = True) -> MemoryPlan:
    """Largest micro-batch per GPU that fits `gpu_gb` GiB per GPU (less `headroom` of it for fragmentation and
    `reserve_gb` for the CUDA context, kernels' workspaces and communication buffers), with the gradient
    accumulation that keeps the global batch, and whether activation checkpointing is needed.

    The micro-batch is a divisor of the per-rank batch (global / world; so a power of two when that is one), or
    `micro_batch` when given. Without checkpointing if some micro-batch >= min_micro_batch fits (checkpointing
    recomputes the forward pass, ~1/3 more compute); else the largest micro-batch that fits with checkpointing;
    `checkpointing` True / False forces it on / off; `compiled`: whether the step runs under torch.compile
    (`per_gpu_breakdown`). Infeasible only when no allowed setting fits; the plan then reports the memory of the
    smallest one."""
    if global_batch % world_size:
        raise UserError(f"global batch {global_batch} is not divisible by {world_size} GPUs: choose a global batch "
                        f"that is a multiple of the GPU count")
    per_rank = global_batch // world_size
    if micro_batch is not None and (micro_batch < 1 or per_rank % micro_batch):
        raise UserError(f"generator.train.micro_batch_size={micro_batch} does not divide the per-GPU batch "
                        f"{per_rank} (global {global_batch} / {world_size} GPUs)")
    usable = gpu_gb * (1 - headroom) - reserve_gb
    cap = usable * 2 ** 30
    micros = [micro_batch] if micro_batch else [m for m in _divisors_desc(per_rank) if m >= min(min_micro_batch,
                                                                                                per_rank)]
    modes = [False, True] if checkpointing is None else [checkpointing]

    def est(micro: int, ckpt: bool) -> int:
        return sum(per_gpu_breakdown(model, micro, checkpointing=ckpt, bytes_per_act=bytes_per_act,
                                     compiled=compiled).values())

    for ckpt in modes:
        for micro in micros:
            nbytes = est(micro, ckpt)
            if nbytes <= cap:
                accum = per_rank // micro
                how = "with activation checkpointing" if ckpt else "no activation checkpointing"
                return MemoryPlan(micro, accum, ckpt, gib(nbytes), True,
                                  f"micro-batch {micro} x {accum} accumulation step(s) x {world_size} device(s) = "
                                  f"{global_batch}; {gib(nbytes):.3g} of {usable:.3g} GiB usable, {how}",
                                  world_size, global_batch, usable)
    smallest, ckpt = micros[-1], modes[-1]
    parts = per_gpu_breakdown(model, smallest, checkpointing=ckpt, bytes_per_act=bytes_per_act, compiled=compiled)
    static = parts["params"] + parts["grads"] + parts["optimizer"] + parts["autocast_weights"]
    nbytes = sum(parts.values())
    how = "with" if ckpt else "without"
    return MemoryPlan(smallest, per_rank // smallest, ckpt, gib(nbytes), False,
                      f"does not fit: micro-batch {smallest} {how} activation checkpointing needs {gib(nbytes):.3g} "
                      f"GiB per device ({gib(static):.3g} GiB parameters, gradients and AdamW state; "
                      f"{gib(parts['head_activations']):.3g} GiB head activations), {usable:.3g} GiB usable",
                      world_size, global_batch, usable)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling: weights, the static KV cache, one AR step, the tokenizer's decoding
# ---------------------------------------------------------------------------------------------------------------------

def kv_cache_bytes(cfg, rows: int, bytes_per_value: int) -> int:
    """The static KV cache of cached decoding (bar.model.decoding): keys and values of every layer for `rows`
    sequences (the batch, twice with CFG) at the full length P + L, in the dtype attention produces."""
    return 2 * cfg.depth * rows * (cfg.prefix + cfg.steps) * cfg.dim * bytes_per_value


def sampling_step_bytes(model: BARGenerator, rows: int, bytes_per_value: int, kv_cache: bool = True) -> int:
    """Transient activations of one AR step (no autograd): per row and position fed ~8 D + 3 H in the block that
    runs (norms, q/k/v, attention output, residual, SwiGLU's two halves and their product), fp32 attention scores
    over the sequence, and the head's sampler (its training rule: an upper bound). Without the cache every step feeds
    the whole sequence."""
    cfg = model.cfg
    S = cfg.prefix + cfg.steps
    fed = 1 if kv_cache else S
    backbone = rows * fed * (8 * cfg.dim + 3 * swiglu_hidden(cfg.dim, cfg.mlp_ratio)) * bytes_per_value
    return backbone + rows * cfg.heads * fed * S * 4 + head_activation_bytes(model.head, rows, bytes_per_value)


def decode_activation_bytes(tokenizer: nn.Module, images: int, resolution: int, bytes_per_value: int = 4) -> int:
    """Peak transient activations of decoding `images` (no autograd). A transformer decoder holds ~2 (W + hidden)
    values per token at once (the residual stream, its norm, the MLP's hidden before and after its activation); a
    conv decoder ~4 x its channels per pixel at full resolution (a ResBlock's input, two normed copies, its
    output); any decoder ~9 values per output pixel (per-token pixels, unpatchified, convolved)."""
    dec, pixels = getattr(tokenizer, "decoder", None), resolution * resolution
    per_image = 9 * pixels
    if isinstance(dec, ReleaseDecoder):
        per_image = max(per_image, 2 * (dec.width + _widest(dec.transformer)) * (dec.grid ** 2 + 1))
    elif isinstance(dec, ViTDecoder):
        per_image = max(per_image, 2 * (dec.vit.embed.out_features + _widest(dec.vit.blocks)) * dec.grid ** 2)
    elif isinstance(dec, ConvDecoder):
        last = [m for m in dec.modules() if isinstance(m, nn.Conv2d)][-1]   # the full-resolution stage's
        per_image = max(per_image, 4 * last.in_channels * pixels)
    return images * per_image * bytes_per_value


def _widest(blocks: nn.Module) -> int:
    """The hidden width of transformer blocks: their widest linear layer's output (the MLP's)."""
    return max(m.out_features for m in blocks.modules() if isinstance(m, nn.Linear))


def _count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def sampling_breakdown(model: BARGenerator, tokenizer: nn.Module | None, batch: int, copies: int, *,
                       bytes_per_value: int, resolution: int, kv_cache: bool = True,
                       training_state: bool = False) -> dict[str, int]:
    """Bytes one GPU holds while it samples and decodes one batch of `batch` images (`copies` rows each: 2 with
    CFG): fp32 weights of the generator and the tokenizer, autocast's low-precision copies of them (bytes_per_value
    < 4), with `training_state` the gradients and AdamW moments alive around a periodic gFID, the static KV cache
    (kept while the batch is decoded), and the larger of one AR step's and the decoding's activations."""
    rows, weights = batch * copies, _count(model) + _count(tokenizer)
    step = sampling_step_bytes(model, rows, bytes_per_value, kv_cache)
    decode = decode_activation_bytes(tokenizer, batch, resolution, bytes_per_value) if tokenizer is not None else 0
    return {"weights": 4 * weights, "autocast_weights": bytes_per_value * weights if bytes_per_value < 4 else 0,
            "training_state": 12 * _count(model) if training_state else 0,
            "kv_cache": kv_cache_bytes(model.cfg, rows, bytes_per_value) if kv_cache else 0,
            "activations": max(step, decode)}


@dataclass
class SamplingMemory:
    batch_size: int               # images per forward pass on one GPU: the requested batch, or the largest that fits
    requested: int                # generator.sample.batch_size
    copies: int                   # rows per image: 2 with CFG
    est_gb_per_gpu: float         # GiB at batch_size (infeasible: at batch 1)
    feasible: bool
    usable_gb: float              # the budget after headroom
    parts: dict[str, int]         # sampling_breakdown at batch_size

    @property
    def split(self) -> bool:
        return self.batch_size < self.requested


def plan_sampling_batch(model: BARGenerator, tokenizer: nn.Module | None, batch_size: int, num_samples: int,
                        copies: int, gpu_gb: float, *, headroom: float = HEADROOM, reserve_gb: float = RESERVE_GB,
                        **breakdown) -> SamplingMemory:
    """`batch_size` when it fits `gpu_gb` GiB less `headroom` and `reserve_gb` (as plan_memory); else the largest
    divisor of `num_samples` below it that fits (equal batches: one compiled shape). Infeasible only when not even
    one image fits. `breakdown`: sampling_breakdown's keyword arguments."""
    usable = gpu_gb * (1 - headroom) - reserve_gb
    smaller = [b for b in range(min(batch_size, num_samples), 0, -1) if num_samples % b == 0 and b < batch_size]
    for batch in [batch_size, *smaller]:
        parts = sampling_breakdown(model, tokenizer, batch, copies, **breakdown)
        if gib(sum(parts.values())) <= usable:
            return SamplingMemory(batch, batch_size, copies, gib(sum(parts.values())), True, usable, parts)
    parts = sampling_breakdown(model, tokenizer, 1, copies, **breakdown)
    return SamplingMemory(1, batch_size, copies, gib(sum(parts.values())), False, usable, parts)


# ---------------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------------

def measure_peak_train_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes held by torch tensors while `fn()` runs, above the level at entry (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = _allocation_events(prof)
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return peak


def _allocation_events(prof) -> list[tuple[int, int]]:
    """(time, +bytes allocated / -bytes freed) for every allocator event the profiler recorded, in time order. Reads
    the raw allocation events of the profiler's event tree; if this torch lacks that (experimental) API, falls back to
    each operator's net memory change at its start (coarser: it can miss a peak inside an autograd node)."""
    try:
        events = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
                events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
            stack.extend(node.children)
        return sorted(events)
    except AttributeError:
        return sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure_train_step(model: nn.Module, tokens_BLk: torch.Tensor, labels_B: torch.Tensor, lr: float = 1e-4,
                       step: int | None = None) -> int:
    """Peak bytes of one steady-state AdamW step of `model.training_loss(tokens, labels, step)`: one step first (so the
    optimizer state exists, gradients are then set to None), then params + AdamW state + the measured peak of a second
    step (gradients, activations, temporaries)."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()

    def one_step():
        opt.zero_grad(set_to_none=True)
        loss = model.training_loss(tokens_BLk, labels_B, step)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one_step()
    resident = _bytes(model.parameters()) + sum(_bytes(s.values()) for s in opt.state.values())
    resident += _bytes(model.buffers())
    return resident + measure_peak_train_memory(one_step, device)


def gib(n_bytes: float) -> float:
    return n_bytes / 2 ** 30


def fmt_bytes(n_bytes: float) -> str:
    if not math.isfinite(n_bytes):
        return "-"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"
