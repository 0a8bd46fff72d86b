"""Fast paths: static-cache decoding that compiles whole (and CUDA-graphs on GPUs), and a compiled training step.
The eager paths (`bar.model.sampling.generate(..., fast=False)`, `BARGenerator.training_loss`) stay the reference; the
fast ones give the same tokens from the same seed and the same loss from the same draws (tests/test_fast_paths.py).

    bar.model.sampling.generate(model, labels_B, ..., fast=True, compile=False | True | "<torch.compile mode>" | {kwargs})
    release_decoders(model)                   free the decoders (KV caches, compiled steps) kept on the model
    compile_training(model, generator=None, **compile_kwargs) -> loss_fn(tokens_BLk, labels_B, step=None) -> loss

Decoding (`FastDecoder`): the KV cache is preallocated at its final length and written in place at a tensor position
(`StaticKVCache`); attention reads the whole buffer under a position mask, so every AR step has the same shapes. One
step = the backbone on one position (`BARGenerator.decode`) + the head's sampler (`TokenHead.sample_static`: for
MBM the K unmasking steps, with topk sizes fixed by the allocation) with no host synchronisation, compiled as one
graph. The random draws the eager head would make are drawn ahead of each step with the same shapes in the same
order from the same generator (`TokenHead.sample_noise`) and passed in, so the compiled graph holds no RNG and the
tokens match the eager path's. The prefix (cls + class tokens) and the first token run uncompiled, once per call.
The diffusion head's sampler is a 100-step loop: its step (`DiffusionHead.denoise_step`) is compiled on its own.

compile=True uses torch.compile's default mode on CPU and "reduce-overhead" (CUDA graphs) on CUDA; a string picks
the mode. A decoder is built per (batch, CFG on/off, temperature, schedule, device, dtype) and kept on the model
(the MAX_DECODERS most recent) for the next call with the same settings; torch.compile specialises on shapes, so a
new batch size compiles again (a last, smaller batch costs one more compile). Parameters stay inputs of the compiled
graphs (no freezing), so a model that keeps training samples correctly without recompiling.

Training: `training_loss` draws its randomness first (`BARGenerator.training_draws`: label dropout, orders from
the annealed probability, the head's masks/noise) and computes the loss from the draws (`loss_from_draws`), which
has no randomness, no data-dependent shapes and no dependence on the step number: it compiles as one graph
(fullgraph) and does not recompile as the order-annealing probability changes.
"""

from __future__ import annotations

import types
from typing import Callable

import torch

from bar import UserError
from bar.model.heads import TokenHead


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------

def _fused_step(model, cache, labels, tok_BK, pos, cfg_scale, noise, consts, schedule):
    """Feed AR step pos - P, sample step pos - P + 1: the backbone on one position and the head's whole sampler."""
    tok_in = tok_BK if cfg_scale is None else torch.cat([tok_BK, tok_BK])
    cond = model.decode(tok_in, labels, pos, cache)
    return model.head.sample_static(cond, cfg_scale, noise, consts, **schedule)


def _backbone_step(model, cache, labels, tok_BK, pos, use_cfg: bool):
    tok_in = torch.cat([tok_BK, tok_BK]) if use_cfg else tok_BK
    return model.decode(tok_in, labels, pos, cache)


def _compile_kwargs(compile, device: torch.device) -> dict | None:
    """compile= of `generate` -> torch.compile keyword arguments (None: do not compile). True: the default mode on
    CPU, "reduce-overhead" (CUDA graphs) on CUDA; a string: that mode; a dict: torch.compile's keyword arguments."""
    if compile is False or compile is None:
        return None
    if compile is True:
        kwargs = {"mode": "reduce-overhead"} if device.type == "cuda" else {}
    elif isinstance(compile, str):
        kwargs = {} if compile == "default" else {"mode": compile}
    elif isinstance(compile, dict):
        kwargs = dict(compile)
    else:
        raise UserError(f"compile={compile!r}: use True/False, a torch.compile mode or a dict of its arguments")
    return {"fullgraph": True, "dynamic": False, **kwargs}


def _uses_cuda_graphs(kwargs: dict, device: torch.device) -> bool:
    mode = kwargs.get("mode") or ""
    return device.type == "cuda" and ("reduce-overhead" in mode or mode == "max-autotune" or
                                      bool((kwargs.get("options") or {}).get("triton.cudagraphs")))


def _own_copy(fn):
    """`fn` with a code object of its own. torch.compile keeps compiled graphs per code object (up to a recompile
    limit, then silently runs eagerly); a copy per decoder keeps each decoder's graphs apart and frees them with it."""
    if isinstance(fn, types.MethodType):
        return types.MethodType(_own_copy(fn.__func__), fn.__self__)
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class _GraphCall:
    """Call a compiled function whose outputs live in a CUDA graph's memory: mark a new step first and clone the
    outputs before the next replay can overwrite them."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        torch.compiler.cudagraph_mark_step_begin()
        return self.fn(*args).clone()


class FastDecoder:
    """Decoding state for one model and one (rows, CFG on/off, temperature, schedule, device, dtype): the static KV
    cache, the per-call constants (CFG scale per AR step, positions, the head's temperatures / schedule tables) and
    the step functions (compiled or not)."""

    def __init__(self, model, batch: int, use_cfg: bool, temperature: float, schedule: dict, compile=False,
                 device=None, dtype=None):
        head = model.head
        if type(head).sample_static is TokenHead.sample_static:
            raise UserError(f"head {type(head).__name__} has no fast sampling path; use fast=False")
        self.batch, self.use_cfg, self.temperature, self.schedule = batch, use_cfg, temperature, dict(schedule)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.device, self.compile_kwargs = device, _compile_kwargs(compile, device)
        rows = 2 * batch if use_cfg else batch
        self.cache = model.new_static_cache(rows, dtype, device)
        self.consts = head.sample_constants(temperature, device, **schedule)
        P, L = model.cfg.prefix, model.cfg.steps
        self.positions = torch.arange(P, P + L, device=device)           # sequence position of AR step i
        self.fused = head.fused_sample
        step = _fused_step if self.fused else _backbone_step
        self.denoise = head.denoise_step if not self.fused else None
        if self.compile_kwargs is not None:
            step = torch.compile(_own_copy(step), **self.compile_kwargs)
            if self.denoise is not None:
                self.denoise = torch.compile(_own_copy(self.denoise), **self.compile_kwargs)
            if _uses_cuda_graphs(self.compile_kwargs, device):
                for buf in self.cache.buffers_kv():
                    torch._dynamo.mark_static_address(buf)
                step = _GraphCall(step)
                if self.denoise is not None:
                    self.denoise = _GraphCall(self.denoise)
        self.step = step

    def prefill(self, model, labels: torch.Tensor) -> torch.Tensor:
        """Reset the cache, fill the prefix (cls + class tokens) and return the condition of the first step. The
        prefix sees only itself and its label, so it runs once per distinct label (the null class of the CFG half,
        repeated classes) and is copied to the rows that share it."""
        P, L, K = model.cfg.prefix, model.cfg.steps, model.cfg.step_dim
        uniq, inverse = torch.unique(labels, return_inverse=True)
        kv = model.new_cache()
        orders = torch.arange(L, device=labels.device).expand(uniq.shape[0], L)
        cond = model.conditions(uniq.new_zeros(uniq.shape[0], 0, K), uniq, orders, cache=kv)[:, -1]
        self.cache.reset()
        for layer in range(model.cfg.depth):
            getattr(self.cache, f"k{layer}")[:, :, :P] = kv.k[layer][inverse, :, :P]
            getattr(self.cache, f"v{layer}")[:, :, :P] = kv.v[layer][inverse, :, :P]
        self.cache.length = P
        return cond[inverse]

    @torch.no_grad()
    def generate(self, model, labels_B: torch.Tensor, cfg_scales: list[float] | None,
                 generator: torch.Generator | None):
        """Steps (B, L, K) in AR order. labels_B already validated and on the device."""
        head, cfg, dev = model.head, model.cfg, self.device
        B, L = labels_B.shape[0], cfg.steps
        labels = torch.cat([labels_B, torch.full_like(labels_B, model.null_class)]) if self.use_cfg else labels_B
        # CFG scale per AR step (computed by the caller in double, as the eager loop does), rounded once
        scales = torch.tensor(cfg_scales, device=dev) if self.use_cfg else None
        cond = self.prefill(model, labels)

        def noise():
            return head.sample_noise(B, self.temperature, generator, dev, **self.schedule)

        def sample_head(cond, scale):
            if self.fused:
                return head.sample_static(cond, scale, noise(), self.consts, **self.schedule)
            return head.sample_static(cond, scale, noise(), self.consts, step_fn=self.denoise, **self.schedule)

        tok = sample_head(cond, scales[0] if self.use_cfg else None)
        toks = [tok]
        for i in range(1, L):
            scale = scales[i] if self.use_cfg else None
            if self.fused:
                tok = self.step(model, self.cache, labels, tok, self.positions[i - 1], scale, noise(), self.consts,
                                self.schedule)
            else:
                cond = self.step(model, self.cache, labels, tok, self.positions[i - 1], self.use_cfg)
                tok = sample_head(cond, scale)
            toks.append(tok)
        return torch.stack(toks, dim=1)


MAX_DECODERS = 2   # per model: each holds a KV cache as large as the eager one (and, compiled, its own graphs)


def decoder_for(model, batch: int, use_cfg: bool, temperature: float, schedule: dict, compile=False) -> FastDecoder:
    """The model's decoder for these settings, built on first use and kept on the model for the next call (the
    MAX_DECODERS most recently used; `release_decoders(model)` frees them)."""
    device = next(model.parameters()).device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else \
        next(model.parameters()).dtype
    store = model.__dict__.setdefault("_fast_decoders", {})
    key = (repr(_compile_kwargs(compile, device)), batch, use_cfg, float(temperature),
           repr(sorted(schedule.items())), str(device), dtype)
    dec = store.pop(key, None)
    if dec is None:
        while len(store) >= MAX_DECODERS:
            store.pop(next(iter(store)))
        dec = FastDecoder(model, batch, use_cfg, temperature, schedule, compile, device, dtype)
    store[key] = dec                                  # most recently used last
    return dec


def release_decoders(model) -> None:
    """Free the model's fast decoders (their KV caches and compiled steps)."""
    model.__dict__.pop("_fast_decoders", None)


def fast_generate(model, labels_B: torch.Tensor, cfg_scales: list[float] | None, temperature: float,
                  generator: torch.Generator | None, compile=False, **schedule) -> torch.Tensor:
    """Steps (B, L, K) in AR order through the static decoder (see module doc); called by bar.model.sampling.generate with
    the guidance scale of every AR step (None: no CFG)."""
    dec = decoder_for(model, labels_B.shape[0], cfg_scales is not None, temperature, schedule, compile)
    return dec.generate(model, labels_B, cfg_scales, generator)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------

def compile_training(model, generator: torch.Generator | None = None, **compile_kwargs) -> Callable:
    """A compiled training loss: `loss_fn(tokens_BLk, labels_B, step=None)` equals `model.training_loss(tokens,
    labels, step)` (same draws from the same RNG state), with `model.loss_from_draws` compiled (fullgraph by
    default). The random draws (`model.training_draws`) run eagerly before the graph, so the order-annealing step
    never recompiles it. compile_kwargs go to torch.compile (e.g. mode="max-autotune"). Recompiles on a new batch
    shape and on train/eval switches."""
    compile_kwargs.setdefault("fullgraph", True)
    compiled = torch.compile(model.loss_from_draws, **compile_kwargs)

    def loss_fn(tokens_BLk: torch.Tensor, labels_B: torch.Tensor, step: int | None = None) -> torch.Tensor:
        draws = model.training_draws(tokens_BLk.shape[0], step, tokens_BLk.device, generator)
        return compiled(tokens_BLk, labels_B, draws)

    loss_fn.compiled = compiled
    return loss_fn
