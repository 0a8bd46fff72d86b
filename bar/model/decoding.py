"""Cached decoding for bar.model.sampling.generate: a static KV cache and one step per AR step with fixed shapes and
no host synchronisation, optionally compiled (CUDA graphs on GPUs).

    decoder_for(model, batch, use_cfg, temperature, schedule, compile=False) -> Decoder   (kept on the model)
    Decoder.sample_steps(model, labels_B, scales_L, generator) -> steps (B, L, K) in AR order
    release_decoders(model)                   free the decoders (KV caches, compiled steps) kept on the model

The KV cache is preallocated at its final length and written in place at a tensor position (`StaticKVCache`);
attention reads the whole buffer under a position mask, so every AR step has the same shapes. One step = the backbone
on one position (`BARGenerator.decode`) + the head's sampler (`TokenHead.sample_with_noise`), compiled as one graph.
The head's random draws (`TokenHead.draw_noise`) are made ahead of each step from the generator and passed in, so the
compiled graph holds no RNG and the tokens are the cache-free reference's (bar.model.sampling). The prefix (cls +
class tokens) and the first token run uncompiled, once per call. Heads with `fused_sample = False` (the diffusion
head's 100-step loop) have the backbone step and their loop body (`step_fn`) compiled apart.

compile=True uses torch.compile's default mode on CPU and "reduce-overhead" (CUDA graphs) on CUDA; a string picks
the mode; a dict gives torch.compile's arguments. A decoder is built per (batch, CFG on/off, temperature, schedule,
device, dtype, compile) and kept on the model (the MAX_DECODERS most recent) for the next call with the same
settings; torch.compile specialises on shapes, so a new batch size compiles again (a last, smaller batch costs one
more compile). Parameters stay inputs of the compiled graphs (no freezing), so a model that keeps training samples
correctly without recompiling.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

from bar import UserError

MAX_DECODERS = 2   # per model: each holds a KV cache (and, compiled, its own graphs)


def _fused_step(model, cache, labels, tok_BK, pos, cfg_scale, noise, consts, schedule):
    """Feed AR step pos - P, sample step pos - P + 1: the backbone on one position and the head's whole sampler."""
    tok_in = tok_BK if cfg_scale is None else torch.cat([tok_BK, tok_BK])
    cond = model.decode(tok_in, labels, pos, cache)
    return model.head.sample_with_noise(cond, cfg_scale, noise, consts, **schedule)


def _backbone_step(model, cache, labels, tok_BK, pos, use_cfg: bool):
    tok_in = torch.cat([tok_BK, tok_BK]) if use_cfg else tok_BK
    return model.decode(tok_in, labels, pos, cache)


def compile_options(compile, device: torch.device) -> dict | None:
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


class Decoder:
    """Decoding state for one model and one (rows, CFG on/off, temperature, schedule, device, dtype): the static KV
    cache, the head's per-call constants and the step functions (compiled or not)."""

    def __init__(self, model, batch: int, use_cfg: bool, temperature: float, schedule: dict, compile=False,
                 device=None, dtype=None):
        head = model.head
        self.batch, self.use_cfg, self.temperature, self.schedule = batch, use_cfg, temperature, dict(schedule)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.device, self.compile_kwargs = device, compile_options(compile, device)
        self.cache = model.new_static_cache(2 * batch if use_cfg else batch, dtype, device)
        self.consts = head.sampling_constants(temperature, device, **schedule)
        P, L = model.cfg.prefix, model.cfg.steps
        self.positions = torch.arange(P, P + L, device=device)           # sequence position of AR step i
        self.fused = head.fused_sample
        # fused: _fused_step's signature, else _backbone_step's; either may be wrapped by torch.compile/_GraphCall
        self.step: Callable[..., torch.Tensor] = _fused_step if self.fused else _backbone_step
        self.head_step: Callable[..., torch.Tensor] | None = None if self.fused else head.denoise_step
        if self.compile_kwargs is not None:
            self._compile(self.compile_kwargs)

    def _compile(self, kwargs: dict) -> None:
        self.step = torch.compile(_own_copy(self.step), **kwargs)
        if self.head_step is not None:
            self.head_step = torch.compile(_own_copy(self.head_step), **kwargs)
        if _uses_cuda_graphs(kwargs, self.device):
            for buf in self.cache.buffers_kv():
                torch._dynamo.mark_static_address(buf)
            self.step = _GraphCall(self.step)
            if self.head_step is not None:
                self.head_step = _GraphCall(self.head_step)

    def prefill(self, model, labels: torch.Tensor) -> torch.Tensor:
        """Reset the cache, fill the prefix (cls + class tokens) and return the condition of the first step. The
        prefix sees only itself and its label, so it runs once per distinct label (the null class of the CFG half,
        repeated classes) and is copied to the rows that share it."""
        P, L, K = model.cfg.prefix, model.cfg.steps, model.cfg.step_dim
        uniq, inverse = torch.unique(labels, return_inverse=True)
        prefix = model.new_static_cache(uniq.shape[0], self.cache.k0.dtype, self.device, length=P)
        orders = torch.arange(L, device=labels.device).expand(uniq.shape[0], L)
        cond = model.conditions(uniq.new_zeros(uniq.shape[0], 0, K), uniq, orders, cache=prefix)[:, -1]
        self.cache.reset()
        self.cache.copy_prefix(prefix, inverse, P)
        return cond[inverse]

    def _sample_head(self, model, cond, scale, noise):
        extra = {} if self.fused else {"step_fn": self.head_step}
        return model.head.sample_with_noise(cond, scale, noise, self.consts, **extra, **self.schedule)

    @torch.no_grad()
    def sample_steps(self, model, labels_B: torch.Tensor, scales_L: torch.Tensor | None,
                       generator: torch.Generator | None) -> torch.Tensor:
        """Steps (B, L, K) in AR order; scales_L: the CFG scale of each AR step (None: no CFG)."""
        head, B, L = model.head, labels_B.shape[0], model.cfg.steps
        assert (scales_L is not None) == self.use_cfg, "decoder_for(use_cfg=...) must match scales_L"
        labels = torch.cat([labels_B, torch.full_like(labels_B, model.null_class)]) if self.use_cfg else labels_B

        def noise():
            return head.draw_noise(B, self.temperature, generator, self.device, **self.schedule)

        tok = self._sample_head(model, self.prefill(model, labels), None if scales_L is None else scales_L[0], noise())
        toks = [tok]
        for i in range(1, L):
            scale = None if scales_L is None else scales_L[i]
            if self.fused:
                tok = self.step(model, self.cache, labels, tok, self.positions[i - 1], scale, noise(), self.consts,
                                self.schedule)
            else:
                cond = self.step(model, self.cache, labels, tok, self.positions[i - 1], self.use_cfg)
                tok = self._sample_head(model, cond, scale, noise())
            toks.append(tok)
        return torch.stack(toks, dim=1)


def decoder_for(model, batch: int, use_cfg: bool, temperature: float, schedule: dict, compile=False) -> Decoder:
    """The model's decoder for these settings, built on first use and kept on the model for the next call (the
    MAX_DECODERS most recently used; `release_decoders(model)` frees them)."""
    device = next(model.parameters()).device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else \
        next(model.parameters()).dtype
    store = model.__dict__.setdefault("_decoders", {})
    key = (repr(compile_options(compile, device)), batch, use_cfg, float(temperature),
           repr(sorted(schedule.items())), str(device), dtype)
    dec = store.pop(key, None)
    if dec is None:
        while len(store) >= MAX_DECODERS:
            store.pop(next(iter(store)))
        dec = Decoder(model, batch, use_cfg, temperature, schedule, compile, device, dtype)
    store[key] = dec                                  # most recently used last
    return dec


def release_decoders(model) -> None:
    """Free the model's decoders (their KV caches and compiled steps)."""
    model.__dict__.pop("_decoders", None)
