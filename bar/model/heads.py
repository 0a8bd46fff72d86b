"""Token heads: turn the backbone's per-position condition z into a token (loss for training, sampler for generation).

Every head implements one interface (`TokenHead`), so the backbone, the AR sampler and the training loop never branch
on the head type:

    loss(cond_BLW, target_BLk) -> scalar                   teacher-forced, all positions in parallel
    sample(cond_BW, cfg_scale, temperature, generator=None, **schedule) -> tokens_Bk
    check_schedule(**schedule) -> None                       validate sampling options once, before any work

and, for the fast paths of bar.model.fast (the eager methods above stay the reference):

    loss_draws(rows, device, generator) -> dict              loss(..., draws=d) without randomness (compilable)
    sample_noise(B, temperature, generator, device, **schedule) -> [uniforms / normals], what `sample` draws, in order
    sample_constants(temperature, device, **schedule) -> dict  per-call tensors (temperatures, schedule tables)
    sample_static(cond_BW, cfg_scale_tensor, noise, consts, **schedule) -> tokens_Bk   fixed shapes, no host sync

CFG convention (all heads):
    cfg_scale is None  -> no guidance; cond has shape (B, W).
    cfg_scale is float -> guidance; cond has shape (2B, W): rows [:B] are conditional, rows [B:] unconditional (null
                          class), and the head combines its outputs as u + s * (c - u). The head returns B tokens.

Heads are registered in `HEADS` and built with `build_head(name, token_dim, **config)`. Each head also declares
`token_kind` ("bits" or "continuous": which input embedding the backbone needs), `schedule_options` (the keywords its
sampler takes) and `activation_bytes(rows)` (its share of a training step's memory, for bar.orchestration.memory).

    name       tokens                    options (defaults)                                        sampling options
    mbm        bits (uint8)              width 2048, depth 3, mlp_ratio, fourier_*, t_std, *_weight  allocation
    softmax    bits, k <= 63             width 2048 (one Linear(W -> 2^k), C-way cross-entropy)     -
    bitwise    bits                      width 2048 (one Linear(W -> 2k), per-bit cross-entropy)    -
    diffusion  continuous (float, d ch)  width 1024, depth 6, num_timesteps 1000, sampling_steps    steps, sampler
                                         100, sampler "ddpm", batch_mul 4, freq_dim 256

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
from bar.core.bits import MAX_INDEX_BITS, bits_to_index, index_to_bits
from bar.model.layers import (RMSNorm, SwiGLU, gumbel, gumbel_argmax, gumbel_from_uniform, init_weights, modulate,
    swiglu_hidden, uniform)

MASK = 2  # bit ids: 0, 1, MASK


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
    # what the head's tokens are: "bits" (uint8 in {0, 1}) or "continuous" (float channels); the generator builder
    # picks the backbone's input embedding from it
    token_kind: str = "bits"
    # the keyword options `sample` / `check_schedule` accept (e.g. ("allocation",) for MBM)
    schedule_options: tuple[str, ...] = ()
    # whether `loss` draws random numbers (then it takes a `generator=` keyword for them)
    random_loss: bool = False

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None, temperature: float,
               generator: torch.Generator | None = None, **schedule) -> torch.Tensor:
        raise NotImplementedError

    def check_schedule(self, **schedule) -> None:
        """Raise UserError (one line) if the sampling schedule does not fit this head."""

    def loss_draws(self, rows: int, device, generator: torch.Generator | None = None) -> dict:
        """The random draws of `loss` on `rows` token positions, drawn in the order `loss` draws them; `loss(...,
        draws=...)` uses them instead of drawing (what a compiled training step needs). Empty for heads without."""
        return {}

    # -- fast sampling path (bar.model.fast). The eager `sample` stays the reference; the static sampler must give the same
    # tokens from the same noise. `sample_noise` draws exactly what `sample` would draw (same shapes, same order, same
    # generator), `sample_constants` precomputes per-call tensors (temperatures, schedules), and `sample_static` is the
    # sampler without host synchronisation or data-dependent shapes, so that it compiles (and CUDA-graphs) whole.
    # fused_sample: the fast path compiles the backbone step and `sample_static` as one graph; False: `sample_static`
    # is a loop whose body (`step_fn`) the fast path compiles on its own (the diffusion head's 100 denoising steps).
    fused_sample: bool = True

    def sample_noise(self, batch: int, temperature: float, generator: torch.Generator | None, device,
                     **schedule) -> list[torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no fast sampling path")

    def sample_constants(self, temperature: float, device, **schedule) -> dict:
        return {}

    def sample_static(self, cond_BW: torch.Tensor, cfg_scale: torch.Tensor | None, noise: list[torch.Tensor],
                      consts: dict, **schedule) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no fast sampling path")

    def activation_bytes(self, rows: int, bytes_per_value: int = 4) -> int:
        """Rough peak bytes of this head's activations (and their gradients) for one training step on `rows` token
        positions (batch x AR steps); used by bar.orchestration.memory. The default counts a few width-sized vectors per row."""
        return 4 * rows * self.width * bytes_per_value


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
        return self.modulated(x, self.ada(F.silu(s)))

    def modulated(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """The block given its AdaLN output mod = ada(SiLU(s)) (3W)."""
        shift, scale, gate = mod.chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class AdaLNFinal(nn.Module):
    """modulate(RMSNorm(x), shift, scale), (scale, shift) = Linear(SiLU(s))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.ada = nn.Linear(width, 2 * width)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.ada(F.silu(s)))

    def modulated(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        scale, shift = mod.chunk(2, dim=-1)
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

    schedule_options = ("allocation",)
    random_loss = True

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
        return self.body(self.embed_bits(ids_Nk), cond_NW, mask_ratio_N)

    def embed_bits(self, ids_Nk: torch.Tensor) -> torch.Tensor:
        N = ids_Nk.shape[0]
        return self.in_norm(self.bit_proj(self.bit_embed(ids_Nk).reshape(N, -1)))

    def body(self, x_NW: torch.Tensor, cond_NW: torch.Tensor, mask_ratio_N: torch.Tensor) -> torch.Tensor:
        """Embedded bits (N, W) -> logits (N, k, 2); mask_ratio may be (1,), shared by every row."""
        # s = SiLU(z + t_emb); each AdaLN applies its own SiLU again before its Linear, as the release does
        s = F.silu(cond_NW + self.t_embed(mask_ratio_N).to(cond_NW.dtype))
        for block in self.blocks:
            x_NW = block(x_NW, s)
        return self.out(self.final(x_NW, s)).reshape(x_NW.shape[0], self.token_dim, 2)

    # -- training ------------------------------------------------------------------------------------------------------
    def mask_bits(self, N: int, device, generator: torch.Generator | None = None):
        """Random masks for N tokens: returns (mask_Nk bool, mask_ratio_N). At least one bit is masked per token."""
        k = self.token_dim
        t = torch.sigmoid(torch.randn(N, device=device, generator=generator) * self.cfg.t_std)
        ratio = (1.0 - t).clamp(1.0 / k, 1.0)
        n_masked = (k * ratio).round().clamp(min=1)
        rank = torch.rand(N, k, device=device, generator=generator).argsort(dim=-1).argsort(dim=-1)
        return rank < n_masked[:, None], ratio

    def loss_draws(self, rows: int, device, generator: torch.Generator | None = None) -> dict:
        # the masks themselves, not the normals/uniforms behind them: rounding k * ratio is discontinuous, and a
        # compiled sigmoid one ulp away from the eager one would flip a mask now and then
        mask, ratio = self.mask_bits(rows, device, generator)
        return {"mask": mask, "ratio": ratio}

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor,
             generator: torch.Generator | None = None, draws: dict | None = None) -> torch.Tensor:
        k, W = self.token_dim, self.width
        cond = cond_BLW.reshape(-1, W)
        bits = target_BLk.reshape(-1, k).long()
        draws = draws if draws is not None else self.loss_draws(bits.shape[0], bits.device, generator)
        mask, ratio = draws["mask"], draws["ratio"]
        logits = self.logits(torch.where(mask, MASK, bits), cond, ratio)
        ce = F.cross_entropy(logits.float().reshape(-1, 2), bits.reshape(-1), reduction="none").reshape(bits.shape)
        w = torch.where(mask, self.cfg.masked_weight, self.cfg.visible_weight)
        # sums accumulated in float64: a compiled float32 reduction over B*L*k terms drifts by ~1e-5 relative
        total = (ce * w).sum(dtype=torch.float64) / (w.sum(dtype=torch.float64) + 1e-8)
        return total.to(ce.dtype)

    # -- sampling ------------------------------------------------------------------------------------------------------
    def check_schedule(self, allocation=None, **extra) -> None:
        if extra:
            raise UserError(f"MBM head got unknown sampling options {sorted(extra)}; it takes only 'allocation'")
        self._allocation(allocation)

    def num_steps(self, allocation=None) -> int:
        """K, the unmasking steps of `allocation` (the temperature anneals over them: T, T(K-1)/K, ..., T/K)."""
        return len(self._allocation(allocation))

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

    def sample_noise(self, batch, temperature, generator, device, allocation=None) -> list[torch.Tensor]:
        """`sample` draws, per unmasking step, uniforms for the bits' Gumbel noise (B, k, 2) and, except at the last
        step, for the confidences (B, k)."""
        K, k = len(self._allocation(allocation)), self.token_dim
        noise = []
        for step in range(K):
            noise.append(uniform((batch, k, 2), generator, device))
            if step < K - 1:
                noise.append(uniform((batch, k), generator, device))
        return noise

    def sample_constants(self, temperature, device, allocation=None) -> dict:
        alloc = self._allocation(allocation)
        K, k = len(alloc), self.token_dim
        revealed = [sum(alloc[:step]) for step in range(K)]
        # computed in double on the host and rounded once, as `sample`'s Python floats are
        return {"tau": torch.tensor([temperature * (1.0 - step / K) for step in range(K)], device=device),
                "ratio": torch.tensor([1.0 - r / k for r in revealed], device=device)}

    def sample_static(self, cond_BW, cfg_scale, noise, consts, allocation=None) -> torch.Tensor:
        """`sample` with fixed shapes and no host synchronisation: the allocation fixes how many bits stay masked
        after each step (topk of that size). The conditioning of every unmasking step is known up front (the mask
        ratios are fixed by the allocation), so each AdaLN layer's modulation is computed for all K steps in one
        matmul (K x the rows: better use of the matmul than K thin ones); the bit embedding is computed once for
        both CFG halves."""
        alloc = self._allocation(allocation)
        k, dev, K = self.token_dim, cond_BW.device, len(alloc)
        N = cond_BW.shape[0]
        B = N // 2 if cfg_scale is not None else N
        s = F.silu(cond_BW[None] + self.t_embed(consts["ratio"]).to(cond_BW.dtype)[:, None])      # (K, N, W)
        silu_s = F.silu(s.reshape(K * N, -1))
        mods = [layer.ada(silu_s).reshape(K, N, -1) for layer in (*self.blocks, self.final)]
        ids = torch.full((B, k), MASK, dtype=torch.long, device=dev)
        draws = iter(noise)
        revealed = 0
        for step, n in enumerate(alloc):
            tau = consts["tau"][step]
            x = self.embed_bits(ids)
            x = x if cfg_scale is None else torch.cat([x, x])
            for block, mod in zip(self.blocks, mods):
                x = block.modulated(x, mod[step])
            x = self.final.modulated(x, mods[-1][step])
            logits = guide(self.out(x).reshape(N, k, 2).float(), cfg_scale)                      # (B, k, 2)
            choice = (logits + tau * gumbel_from_uniform(next(draws))).argmax(-1)
            chosen = logits.gather(-1, choice[..., None]).squeeze(-1)
            is_masked = ids == MASK
            new_ids = torch.where(is_masked, choice, ids)
            revealed += n
            if revealed == k:
                ids = new_ids
                break
            conf = chosen + tau * gumbel_from_uniform(next(draws))
            conf = torch.where(is_masked, conf, torch.full_like(conf, float("inf")))
            remask = conf.topk(k - revealed, dim=-1, largest=False).indices
            ids = new_ids.scatter(1, remask, MASK)
        return ids.to(torch.uint8)

    def activation_bytes(self, rows: int, bytes_per_value: int = 4) -> int:
        # per row: ~19 W-sized saved tensors per SwiGLU block (norm, modulation, 3W AdaLN, 2H + H hidden, gated
        # residual; H ~ 2.7 W), ~12 W for the input embedding, Fourier MLP, condition and final layer
        W, H = self.width, swiglu_hidden(self.width, self.cfg.mlp_ratio)
        per_row = self.cfg.depth * (7 * W + 4 * H) + 12 * W + 4 * self.cfg.fourier_freqs
        return rows * per_row * bytes_per_value


# ---------------------------------------------------------------------------------------------------------------------
# Baselines the paper compares: linear softmax over C = 2^k codes, independent per-bit logits, MAR's diffusion head
# ---------------------------------------------------------------------------------------------------------------------

def guide(out_B2: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
    """The CFG combination every head uses: rows [:B] conditional, [B:] unconditional -> u + s * (c - u)."""
    if cfg_scale is None:
        return out_B2
    B = out_B2.shape[0] // 2
    c, u = out_B2[:B], out_B2[B:]
    return u + cfg_scale * (c - u)


def _no_schedule(head_name: str, extra: dict) -> None:
    if extra:
        raise UserError(f"{head_name} head takes no sampling options, got {sorted(extra)}")


class OneShotSampling:
    """Fast-path sampling of the heads that draw a token in one shot, argmax(guided logits + tau * Gumbel) (softmax,
    per-bit): one uniform draw of the logits' shape when tau > 0, as `gumbel_argmax` draws it."""

    def _noise_shape(self, batch: int) -> tuple[int, ...]:
        raise NotImplementedError

    def sample_noise(self, batch, temperature, generator, device, **schedule) -> list[torch.Tensor]:
        self.check_schedule(**schedule)
        return [uniform(self._noise_shape(batch), generator, device)] if temperature > 0 else []

    def sample_constants(self, temperature, device, **schedule) -> dict:
        return {"tau": torch.tensor(float(temperature), device=device)}

    def _static_argmax(self, logits: torch.Tensor, noise: list[torch.Tensor], consts: dict) -> torch.Tensor:
        if noise:
            logits = logits + consts["tau"] * gumbel_from_uniform(noise[0])
        return logits.argmax(-1)


@dataclass
class SoftmaxConfig:
    width: int = 2048            # W: condition width; the head is one Linear(W -> C = 2^k)


class SoftmaxHead(OneShotSampling, TokenHead):
    """Linear softmax over all C = 2^k codes of one AR step (the paper's linear-softmax baseline).

    Tokens are bits; the class of a token is its integer index, most significant bit first (bar.tokenizers.tokenizer
    .bits_to_index). Parameters, logits and compute are O(C): the head runs out of memory long before k reaches the
    int64 limit of 63 bits. Sampling draws argmax(l + tau * Gumbel), i.e. a sample of softmax(l / tau) (tau = 0:
    argmax), with CFG on the logits."""

    def __init__(self, token_dim: int, cfg: SoftmaxConfig | None = None):
        super().__init__()
        cfg = cfg or SoftmaxConfig()
        if token_dim > MAX_INDEX_BITS:
            raise UserError(f"softmax head over {token_dim} bits needs 2^{token_dim} classes and int64 indices "
                            f"(at most {MAX_INDEX_BITS} bits); use head=mbm or head=bitwise")
        self.cfg = cfg
        self.token_dim = token_dim
        self.width = cfg.width
        self.num_codes = 2 ** token_dim
        self.out = nn.Linear(cfg.width, self.num_codes)
        self.apply(init_weights)

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor) -> torch.Tensor:
        index_N = bits_to_index(target_BLk.reshape(-1, self.token_dim))
        logits_NC = self.out(cond_BLW.reshape(-1, self.width))
        return F.cross_entropy(logits_NC.float(), index_N)

    def check_schedule(self, **extra) -> None:
        _no_schedule("softmax", extra)

    @torch.no_grad()
    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, **schedule) -> torch.Tensor:
        """Returns uint8 bits (B, k)."""
        self.check_schedule(**schedule)
        logits_BC = guide(self.out(cond_BW).float(), cfg_scale)
        return index_to_bits(gumbel_argmax(logits_BC, temperature, generator), self.token_dim)

    def _noise_shape(self, batch):
        return batch, self.num_codes

    def sample_static(self, cond_BW, cfg_scale, noise, consts, **schedule) -> torch.Tensor:
        logits_BC = guide(self.out(cond_BW).float(), cfg_scale)
        return index_to_bits(self._static_argmax(logits_BC, noise, consts), self.token_dim)

    def activation_bytes(self, rows: int, bytes_per_value: int = 4) -> int:
        # backward holds the log-probabilities, their gradient and the logits' gradient together: three fp32 C-sized
        # rows (the loss upcasts to fp32), plus the condition and its gradient
        return rows * (3 * self.num_codes * 4 + 2 * self.width * bytes_per_value)


@dataclass
class BitwiseConfig:
    width: int = 2048            # W: condition width; the head is one Linear(W -> 2k)


class BitwiseHead(OneShotSampling, TokenHead):
    """Independent per-bit head (Infinity-style): one Linear gives two logits per bit, trained with a 2-class
    cross-entropy on every bit and sampled bit by bit independently (temperature and CFG on the logits). O(k)."""

    def __init__(self, token_dim: int, cfg: BitwiseConfig | None = None):
        super().__init__()
        cfg = cfg or BitwiseConfig()
        self.cfg = cfg
        self.token_dim = token_dim
        self.width = cfg.width
        self.out = nn.Linear(cfg.width, 2 * token_dim)     # bit-major, as the MBM head's output
        self.apply(init_weights)

    def logits(self, cond_NW: torch.Tensor) -> torch.Tensor:
        return self.out(cond_NW).reshape(cond_NW.shape[0], self.token_dim, 2)

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor) -> torch.Tensor:
        logits_Nk2 = self.logits(cond_BLW.reshape(-1, self.width))
        return F.cross_entropy(logits_Nk2.float().reshape(-1, 2), target_BLk.reshape(-1).long())

    def check_schedule(self, **extra) -> None:
        _no_schedule("bitwise", extra)

    @torch.no_grad()
    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, **schedule) -> torch.Tensor:
        """Returns uint8 bits (B, k)."""
        self.check_schedule(**schedule)
        logits_Bk2 = guide(self.logits(cond_BW).float(), cfg_scale)
        return gumbel_argmax(logits_Bk2, temperature, generator).to(torch.uint8)

    def _noise_shape(self, batch):
        return batch, self.token_dim, 2

    def sample_static(self, cond_BW, cfg_scale, noise, consts, **schedule) -> torch.Tensor:
        logits_Bk2 = guide(self.logits(cond_BW).float(), cfg_scale)
        return self._static_argmax(logits_Bk2, noise, consts).to(torch.uint8)

    def activation_bytes(self, rows: int, bytes_per_value: int = 4) -> int:
        return rows * (4 * 2 * self.token_dim * 4 + 2 * self.width * bytes_per_value)


# -- diffusion head (continuous tokens) --------------------------------------------------------------------------------

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


class MLPAdaLNBlock(nn.Module):
    """MAR's residual block: x + gate * MLP(modulate(LayerNorm(x), shift, scale)), MLP = Linear-SiLU-Linear at width
    W, (shift, scale, gate) = Linear(SiLU(y))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(F.silu(y)).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


@dataclass
class DiffusionConfig:
    width: int = 1024            # W: condition width and the MLP's width (MAR-B 1024, MAR-L 1280, MAR-H 1536)
    depth: int = 6               # residual AdaLN blocks (MAR-B 6, MAR-L 8, MAR-H 12)
    num_timesteps: int = 1000    # training timesteps T (cosine schedule)
    sampling_steps: int = 100    # default respaced steps per token at sampling
    sampler: str = "ddpm"        # "ddpm": ancestral on the respaced chain (MAR); "ddim": deterministic, eta = 0
    batch_mul: int = 4           # noise draws per token per training step (MAR's diffusion_batch_mul)
    freq_dim: int = 256          # sinusoidal timestep features before the timestep MLP
    x0_clip: float | None = 10.0  # sampling: clamp the predicted clean token to +-x0_clip. Near t = T, alpha_bar is
                                  # ~1e-9 and x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) multiplies any error in eps by
                                  # ~1e4; an under-trained head then samples tokens of size ~1e3 (seen at the tiny
                                  # profile). Latents are ~unit scale, so a well-trained head never reaches the clamp.


SAMPLERS = ("ddpm", "ddim")


class DiffusionHead(TokenHead):
    """MAR-style diffusion head for continuous tokens (d channels per AR step).

    Network: eps_hat = MLP(x_t | y), y = z + TimestepMLP(sinusoid(t)); Linear(d -> W), `depth` residual AdaLN blocks
    (LayerNorm, Linear-SiLU-Linear, AdaLN-Zero), final AdaLN layer, Linear(W -> d) (zero-initialised). Training: cosine
    schedule over T = 1000 steps, t uniform, epsilon-prediction MSE, each token repeated `batch_mul` times with
    fresh noise. Sampling: a chain of `steps` timesteps respaced evenly over [0, T-1]; "ddpm" draws
    x_{s-1} ~ N(posterior mean, posterior variance) of the respaced chain with the noise scaled by `temperature`
    (MAR's temperature); "ddim" is deterministic (eta = 0) and scales the initial noise by `temperature` instead.
    CFG combines the predicted noise, eps = u + s * (c - u), with both halves at the same x_t.
    Differences from MAR: the variance is fixed to the posterior variance (MAR learns it with an extra VLB term), and
    the condition enters at width W directly (MAR has its own Linear from the backbone width; here the backbone's
    output projection already gives width W)."""

    token_kind = "continuous"
    token_dim_name = "channels"
    schedule_options = ("steps", "sampler")
    fused_sample = False          # 100 denoising steps: the fast path compiles one step (`denoise_step`), not the loop
    random_loss = True

    def __init__(self, token_dim: int, cfg: DiffusionConfig | None = None):
        super().__init__()
        cfg = cfg or DiffusionConfig()
        if cfg.sampler not in SAMPLERS:
            raise UserError(f"diffusion sampler {cfg.sampler!r} must be one of {list(SAMPLERS)}")
        if cfg.num_timesteps < 2 or cfg.batch_mul < 1:
            raise UserError(f"diffusion head needs num_timesteps >= 2 and batch_mul >= 1, got {cfg.num_timesteps} "
                            f"and {cfg.batch_mul}")
        self.cfg = cfg
        self.token_dim = d = token_dim
        self.width = W = cfg.width
        self.in_proj = nn.Linear(d, W)
        self.t_mlp = nn.Sequential(nn.Linear(cfg.freq_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList(MLPAdaLNBlock(W) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(W, 2 * W)
        self.out = nn.Linear(W, d)
        self.register_buffer("alphas_cumprod", cosine_schedule(cfg.num_timesteps).float(), persistent=False)
        self._chains: dict[int, list[tuple[int, float, float]]] = {}
        self.apply(init_weights)
        for m in [*(b.ada for b in self.blocks), self.final_ada, self.out]:   # AdaLN-Zero, zero output
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.check_schedule(steps=cfg.sampling_steps)

    # -- network -------------------------------------------------------------------------------------------------------
    def eps(self, x_Nd: torch.Tensor, t_N: torch.Tensor, cond_NW: torch.Tensor) -> torch.Tensor:
        """Predicted noise (N, d) for noisy tokens x_t at timesteps t (training indices, 0 .. T-1)."""
        x = self.in_proj(x_Nd.to(self.in_proj.weight.dtype))
        t_emb = self.t_mlp(timestep_features(t_N, self.cfg.freq_dim).to(self.in_proj.weight.dtype))
        y = cond_NW + t_emb.to(cond_NW.dtype)
        for block in self.blocks:
            x = block(x, y)
        shift, scale = self.final_ada(F.silu(y)).chunk(2, dim=-1)
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
    def check_schedule(self, steps=None, sampler=None, **extra) -> None:
        if extra:
            raise UserError(f"diffusion head got unknown sampling options {sorted(extra)}; it takes 'steps', 'sampler'")
        T = self.cfg.num_timesteps
        if steps is not None and (int(steps) != steps or not 1 <= steps <= T):
            raise UserError(f"diffusion sampling steps {steps} must be an integer in [1, {T}]")
        if sampler is not None and sampler not in SAMPLERS:
            raise UserError(f"diffusion sampler {sampler!r} must be one of {list(SAMPLERS)}")

    def chain(self, steps: int) -> list[tuple[int, float, float]]:
        """The respaced chain, last step first: (training timestep t, alpha_bar_t, alpha_bar of the previous chain
        step, 1.0 before the first)."""
        if steps not in self._chains:
            ab = self.alphas_cumprod.double().cpu()
            ts = respaced_timesteps(self.cfg.num_timesteps, steps)
            prev = [1.0] + [float(ab[t]) for t in ts[:-1]]
            self._chains[steps] = [(t, float(ab[t]), p) for t, p in zip(ts, prev)][::-1]
        return self._chains[steps]

    @torch.no_grad()
    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, steps: int | None = None,
               sampler: str | None = None) -> torch.Tensor:
        """Denoise one token per row from Gaussian noise. Returns float32 tokens (B, d)."""
        self.check_schedule(steps=steps, sampler=sampler)
        steps = int(steps or self.cfg.sampling_steps)
        sampler = sampler or self.cfg.sampler
        dev = cond_BW.device
        B = cond_BW.shape[0] // 2 if cfg_scale is not None else cond_BW.shape[0]
        x = torch.randn(B, self.token_dim, device=dev, generator=generator)
        if sampler == "ddim":
            x = x * temperature
        for i, (t, ab, ab_prev) in enumerate(self.chain(steps)):
            inp = x if cfg_scale is None else torch.cat([x, x])
            t_N = torch.full((inp.shape[0],), t, device=dev, dtype=torch.long)
            eps = guide(self.eps(inp, t_N, cond_BW).float(), cfg_scale)
            x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            if self.cfg.x0_clip is not None:
                x0 = x0.clamp(-self.cfg.x0_clip, self.cfg.x0_clip)
            if sampler == "ddim":
                x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
                continue
            beta = 1 - ab / ab_prev                   # the respaced chain's own beta
            mean = (beta * math.sqrt(ab_prev) / (1 - ab)) * x0 + ((1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)) * x
            if ab_prev < 1.0:                         # no noise on the last step
                var = beta * (1 - ab_prev) / (1 - ab)
                noise = torch.randn(x.shape, device=dev, generator=generator)
                x = mean + math.sqrt(var) * temperature * noise
            else:
                x = mean
        return x

    def _resolve(self, steps, sampler):
        self.check_schedule(steps=steps, sampler=sampler)
        return int(steps or self.cfg.sampling_steps), sampler or self.cfg.sampler

    def sample_noise(self, batch, temperature, generator, device, steps=None, sampler=None) -> list[torch.Tensor]:
        """`sample` draws the starting noise (B, d) and, for "ddpm", the noise of every step but the last."""
        steps, sampler = self._resolve(steps, sampler)
        noise = [torch.randn(batch, self.token_dim, device=device, generator=generator)]
        if sampler == "ddpm":
            noise += [torch.randn(batch, self.token_dim, device=device, generator=generator)
                      for _, _, ab_prev in self.chain(steps) if ab_prev < 1.0]
        return noise

    def sample_constants(self, temperature, device, steps=None, sampler=None) -> dict:
        """Per chain step: the training timestep and the update's coefficients (double on the host, rounded once, as
        `sample`'s Python floats): x0 = (x - c0 eps) / c1; ddim: x = c2 x0 + c3 eps; ddpm: x = c2 x0 + c3 x + c4 noise
        (c4 = 0 on the last step, which draws no noise)."""
        steps, sampler = self._resolve(steps, sampler)
        rows, ts = [], []
        for t, ab, ab_prev in self.chain(steps):
            c0, c1 = math.sqrt(1 - ab), math.sqrt(ab)
            if sampler == "ddim":
                rows.append([c0, c1, math.sqrt(ab_prev), math.sqrt(1 - ab_prev), 0.0])
            else:
                beta = 1 - ab / ab_prev
                c4 = math.sqrt(beta * (1 - ab_prev) / (1 - ab)) * temperature if ab_prev < 1.0 else 0.0
                rows.append([c0, c1, beta * math.sqrt(ab_prev) / (1 - ab),
                             (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab), c4])
            ts.append(t)
        return {"coef": torch.tensor(rows, device=device), "t": torch.tensor(ts, device=device),
                "temperature": torch.tensor(float(temperature), device=device)}

    def denoise_step(self, x_Bd, cond_BW, cfg_scale, t, coef, noise_Bd, sampler: str = "ddpm") -> torch.Tensor:
        """One chain step of `sample` with tensors for the step's timestep (0-d), coefficients (5,) and noise (zeros
        on the last ddpm step): fixed shapes, no host synchronisation."""
        inp = x_Bd if cfg_scale is None else torch.cat([x_Bd, x_Bd])
        eps = guide(self.eps(inp, t.reshape(1), cond_BW).float(), cfg_scale)
        x0 = (x_Bd - coef[0] * eps) / coef[1]
        if self.cfg.x0_clip is not None:
            x0 = x0.clamp(-self.cfg.x0_clip, self.cfg.x0_clip)
        if sampler == "ddim":
            return coef[2] * x0 + coef[3] * eps
        return coef[2] * x0 + coef[3] * x_Bd + coef[4] * noise_Bd

    def sample_static(self, cond_BW, cfg_scale, noise, consts, steps=None, sampler=None,
                      step_fn=None) -> torch.Tensor:
        """`sample` as a loop of `denoise_step` (or `step_fn`, its compiled form) over the chain."""
        steps, sampler = self._resolve(steps, sampler)
        step_fn = step_fn or self.denoise_step
        x = noise[0]
        if sampler == "ddim":
            x = x * consts["temperature"]
        later = iter(noise[1:])
        coef, ts = consts["coef"], consts["t"]
        for i, (_, _, ab_prev) in enumerate(self.chain(steps)):
            step_noise = next(later) if sampler == "ddpm" and ab_prev < 1.0 else torch.zeros_like(x)
            x = step_fn(x, cond_BW, cfg_scale, ts[i], coef[i], step_noise, sampler)
        return x

    def activation_bytes(self, rows: int, bytes_per_value: int = 4) -> int:
        # per noisy row: ~10 W-sized saved tensors per block (norm, modulation, 3W AdaLN, 2 hidden, gated residual),
        # ~10 W for the input, timestep MLP, condition copy and final layer
        W = self.width
        per_row = (10 * self.cfg.depth + 10) * W + self.cfg.freq_dim
        return rows * self.cfg.batch_mul * per_row * bytes_per_value


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------

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
