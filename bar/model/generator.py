"""BAR's causal AR backbone (after the official release, itself derived from RAR), readable top to bottom.

Sequence (S positions, P = 1 + class_repeat prefix positions):

    s:      0      1 .. class_repeat        P .. P+n-1
    input:  [cls]  [class emb] x repeat     image-token steps in the order `orders` (raster at sampling)

Each position adds a learned absolute position embedding (image positions: the embedding of the grid cell of the token
it holds) and a learned *target-aware* position embedding (the grid cell of the token it must predict next). Every
block is AdaLN-Zero modulated by c_s = class embedding + a learned per-sequence-index embedding. Attention uses 2D RoPE
over the (grouped) latent grid; the first half of the query heads rotate with the current cell, the second half with
the target cell (target-aware RoPE); keys rotate with the current cell; prefix positions are not rotated.
Position P-1 predicts the first image step, position P+i predicts step i+1; the final RMSNorm + Linear(D -> W) gives
the per-step condition z that the head (bar.model.heads) turns into a token.

Tokens: discrete tokens are bits (B, L, k) in raster order (CONVENTIONS.md); with grouping p, p x p neighbouring tokens
form one AR step of k*p*p bits (`group_tokens` / `ungroup_tokens`). The input embedding is a module of its own
(`BitEmbedding`: one small embedding per bit in {0, 1, MASK}, concatenated, Linear to D; or `ContinuousEmbedding`:
Linear over d channels) so a continuous head can reuse the backbone.

Entry points:
    order_probability(step, start, end) -> float
    group_tokens(x_BHWk, p) -> x_BLK;  ungroup_tokens(x_BLK, p, grid) -> x_BHWk   (ungrouping needs the grid)
    BARGenerator(GeneratorConfig, head).training_loss(tokens_BLk, labels_B, step=None) -> scalar
        tokens in raster order (uint8/float bits, or floats for continuous tokens); step=None means raster order
        (no random orders), e.g. for a validation loss. Label dropout applies in train mode only.
        training_loss = loss_from_draws(tokens, labels, training_draws(B, step)): every random draw is made first,
        so the loss computation itself is deterministic and compiles as one graph (bar.training.loop compiles it).
    BARGenerator.conditions(steps_BnK, labels_B, orders_BL, cache=None) -> cond: the backbone over the prefix and
        the fed steps, all at once (training, and the cache-free sampling reference); with a cache, it also writes
        their keys/values into it (the prefill). group(tokens_BLk) / ungroup(steps_BLK): raster tokens <-> AR steps.
    BARGenerator.new_static_cache(batch) / decode(step_BK, labels_B, pos, cache) -> cond_BW: cached decoding
        (bar.model.decoding): a preallocated cache written in place at a tensor position, attention over the whole
        buffer under a position mask, so every step has the same shapes and no host synchronisation.
Label `num_classes` is the null (unconditional) class. Sizes and the training and sampling settings of each preset
are bar/conf/model/<preset>.yaml, built by bar.orchestration.build; the release's checkpoints load through
bar.model.release_keys.

Where this differs from the release (behaviour is the same unless noted): embedding tables hold only the rows the
release reads (see bar.model.release_keys); the training pass feeds L-1 image steps instead of L and drops nothing (the
release's last position is discarded anyway); attention dropout is applied when
configured (the release defines it but never applies it, so the bar_l presets set it to 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bar import UserError
from bar.model.heads import TokenHead
from bar.model.layers import RMSNorm, SwiGLU, init_weights, modulate, swiglu_hidden, zero_init

# ---------------------------------------------------------------------------------------------------------------------
# Token grouping and order schedule
# ---------------------------------------------------------------------------------------------------------------------

def group_tokens(x_BHWk: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H, W, k) -> (B, (H/p)*(W/p), p*p*k): each p x p block of tokens becomes one AR step (blocks in raster
    order; inside a block tokens in raster order, then their k channels)."""
    B, H, W, k = x_BHWk.shape
    if H % p or W % p:
        raise UserError(f"grid {H}x{W} is not divisible by patch size {p}")
    x = x_BHWk.reshape(B, H // p, p, W // p, p, k).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // p) * (W // p), p * p * k)


def ungroup_tokens(x_BLK: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `group_tokens`: (B, (H/p)*(W/p), p*p*k) -> (B, H, W, k)."""
    H, W = grid
    B, L, K = x_BLK.shape
    k = K // (p * p)
    x = x_BLK.reshape(B, H // p, W // p, p, p, k).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, k)


def order_probability(step: int, start: int, end: int) -> float:
    """Probability of a random (vs raster) token order at training step `step`: 1 before `start`, linear to 0 at
    `end`, 0 afterwards."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - start) / (end - start)


def sample_orders(batch: int, length: int, p_random: float, device=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) permutations: each row is random with probability p_random, else raster (0, 1, ..., L-1)."""
    raster = torch.arange(length, device=device).expand(batch, length)
    if p_random <= 0:
        return raster.clone()
    random = torch.rand(batch, length, device=device, generator=generator).argsort(dim=-1)
    use_random = torch.rand(batch, 1, device=device, generator=generator) < p_random
    return torch.where(use_random, random, raster)


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class GeneratorConfig:
    dim: int = 768                           # D
    depth: int = 24
    heads: int = 12
    mlp_ratio: float = 4.0                   # SwiGLU hidden = 2/3 * 4 * D
    dropout: float = 0.0                     # after attention/MLP projections (MLP: on the SwiGLU hidden)
    attn_dropout: float = 0.0                # on attention weights
    num_classes: int = 1000                  # label num_classes is the null class
    class_repeat: int = 32                   # class token repeated this many times after the cls token
    grid: tuple[int, int] = (16, 16)         # latent token grid (h, w), before grouping
    patch_size: int = 1                      # p: p x p tokens per AR step
    token_kind: str = "bits"                 # "bits" (per-bit embedding) or "continuous" (Linear over channels)
    token_dim: int = 16                      # k bits (or d channels) per token, before grouping
    cond_width: int = 2048                   # W: width of the condition handed to the head
    label_dropout: float = 0.1               # training: label -> null class with this probability
    order_anneal: tuple[int, int] = (125_000, 187_500)   # random-order probability 1 -> 0 between these steps
    rope_theta: float = 10_000.0
    checkpoint_blocks: bool = False          # activation checkpointing of every block in training (less memory)

    @property
    def step_grid(self) -> tuple[int, int]:
        return self.grid[0] // self.patch_size, self.grid[1] // self.patch_size

    @property
    def steps(self) -> int:           # L: AR steps
        return self.step_grid[0] * self.step_grid[1]

    @property
    def step_dim(self) -> int:        # K: bits (channels) per AR step
        return self.token_dim * self.patch_size ** 2

    @property
    def prefix(self) -> int:          # P: cls + repeated class tokens
        return 1 + self.class_repeat

    def validate(self) -> None:
        h, w = self.grid
        p = self.patch_size
        if p < 1 or h % p or w % p:
            raise UserError(f"grid {h}x{w} is not divisible by patch size {p}")
        if self.dim % self.heads:
            raise UserError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.heads % 2:
            raise UserError(f"heads {self.heads} must be even (target-aware RoPE uses half of the query heads)")
        if (self.dim // self.heads) % 4:
            raise UserError(f"head dim {self.dim // self.heads} must be divisible by 4 for 2D RoPE")
        if self.token_kind not in ("bits", "continuous"):
            raise UserError(f"token_kind {self.token_kind!r} must be 'bits' or 'continuous'")
        if self.steps < 2:
            raise UserError(f"grid {h}x{w} with patch size {p} gives {self.steps} AR step; need at least 2")


# ---------------------------------------------------------------------------------------------------------------------
# Input embeddings (swappable)
# ---------------------------------------------------------------------------------------------------------------------

class BitEmbedding(nn.Module):
    """K bits in {0, 1, MASK=2} -> D: each bit its own ceil(D/K)-sized embedding, concatenated, Linear to D."""

    def __init__(self, K: int, dim: int):
        super().__init__()
        e = math.ceil(dim / K)
        self.embed = nn.Embedding(3, e)
        self.proj = nn.Linear(e * K, dim)

    def forward(self, bits_BnK: torch.Tensor) -> torch.Tensor:
        B, n, K = bits_BnK.shape
        return self.proj(self.embed(bits_BnK.long()).reshape(B, n, -1))


class ContinuousEmbedding(nn.Module):
    """K continuous channels -> D."""

    def __init__(self, K: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(K, dim)

    def forward(self, z_BnK: torch.Tensor) -> torch.Tensor:
        return self.proj(z_BnK.to(self.proj.weight.dtype))


# ---------------------------------------------------------------------------------------------------------------------
# 2D RoPE
# ---------------------------------------------------------------------------------------------------------------------

def rope_tables(grid: tuple[int, int], head_dim: int, prefix: int, theta: float = 10_000.0):
    """cos, sin tables (prefix + h*w, head_dim). Rows < prefix are the identity rotation; row prefix + r*w + c rotates
    the first half of the head dims by the row r and the second half by the column c; dims rotate in adjacent pairs."""
    h, w = grid
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(0, 2 * quarter, 2).float() / (2 * quarter))      # (head_dim/4,)
    rows = torch.arange(h).float()[:, None] * freqs                                       # (h, hd/4)
    cols = torch.arange(w).float()[:, None] * freqs                                       # (w, hd/4)
    ang = torch.cat([rows[:, None, :].expand(h, w, quarter), cols[None, :, :].expand(h, w, quarter)], dim=-1)
    ang = ang.repeat_interleave(2, dim=-1).reshape(h * w, head_dim)
    cos = torch.cat([torch.ones(prefix, head_dim), ang.cos()])
    sin = torch.cat([torch.zeros(prefix, head_dim), ang.sin()])
    return cos, sin


def apply_rope(x_BHSd: torch.Tensor, cos_BSd: torch.Tensor, sin_BSd: torch.Tensor) -> torch.Tensor:
    xf = x_BHSd.float()
    pairs = xf.reshape(*xf.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(xf.shape)
    return (xf * cos_BSd[:, None] + rotated * sin_BSd[:, None]).to(x_BHSd.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------------------------------

class StaticKVCache(nn.Module):
    """Keys/values of every layer preallocated at their final size, (B, H, max_len, hd) per layer, written in place at
    a position (which may be a tensor) and read whole under a mask: every decode step has the same shapes and no
    host-side bookkeeping, so it can be compiled and captured in a CUDA graph (bar.model.decoding)."""

    slots: torch.Tensor                       # buffer (max_len,): 0 .. max_len - 1

    def __init__(self, depth: int, batch: int, heads: int, max_len: int, head_dim: int, dtype=torch.float32,
                 device=None):
        super().__init__()
        self.depth, self.max_len = depth, max_len
        for layer in range(depth):
            self.register_buffer(f"k{layer}", torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device),
                                 persistent=False)
            self.register_buffer(f"v{layer}", torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device),
                                 persistent=False)
        self.register_buffer("slots", torch.arange(max_len, device=device), persistent=False)

    def buffers_kv(self):
        return [getattr(self, f"{kv}{layer}") for layer in range(self.depth) for kv in "kv"]

    def reset(self) -> None:
        for buf in self.buffers_kv():
            buf.zero_()

    def copy_prefix(self, source: StaticKVCache, rows_B: torch.Tensor, length: int) -> None:
        """Positions [0, length) of every row from row rows_B[row] of `source` (a prefix computed once per label)."""
        for mine, theirs in zip(self.buffers_kv(), source.buffers_kv()):
            mine[:, :, :length] = theirs[rows_B, :, :length]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos):
        """Write S keys/values at positions pos .. pos+S-1 (pos: int or 0-d long tensor). Returns the whole buffers and
        the boolean mask (S, max_len) of the keys each new query sees (key slot <= query position)."""
        S = k.shape[2]
        idx = self.slots[:S] + pos
        k_all, v_all = getattr(self, f"k{layer}"), getattr(self, f"v{layer}")
        k_all.index_copy_(2, idx, k.to(k_all.dtype))
        v_all.index_copy_(2, idx, v.to(v_all.dtype))
        return k_all, v_all, self.slots[None, :] <= idx[:, None]


# ---------------------------------------------------------------------------------------------------------------------
# Transformer block
# ---------------------------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)           # qkv bias
        self.q_norm = RMSNorm(self.head_dim)         # QK-norm
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.drop = nn.Dropout(dropout)

    def forward(self, x_BSD, rope_here, rope_target, cache: StaticKVCache | None = None, layer: int = 0, pos=0):
        """Causal self-attention over positions pos .. pos+S-1. With a cache, their keys/values are written into it;
        one position (a decode step) attends to the whole cache under its position mask, several (the prefill, from
        position 0) attend causally among themselves, as without a cache."""
        B, S, D = x_BSD.shape
        H, hd = self.heads, self.head_dim
        q, k, v = self.qkv(x_BSD).reshape(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)      # each (B, H, S, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        q = torch.cat([apply_rope(q[:, : H // 2], *rope_here), apply_rope(q[:, H // 2:], *rope_target)], dim=1)
        k = apply_rope(k, *rope_here)
        mask = None
        if cache is not None:
            k_all, v_all, mask_all = cache.update(layer, k, v, pos)
            if S == 1:                  # whole static buffers, masked: the same shapes at every position
                k, v, mask = k_all, v_all, mask_all
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and S > 1,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(out.transpose(1, 2).reshape(B, S, D)))


class Block(nn.Module):
    """Pre-norm AdaLN-Zero block: x += gate_a * Attn(mod(norm1(x))); x += gate_m * SwiGLU(mod(norm2(x)))."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        D = cfg.dim
        self.norm1 = RMSNorm(D)
        self.attn = Attention(D, cfg.heads, cfg.attn_dropout, cfg.dropout)
        self.norm2 = RMSNorm(D)
        self.mlp = SwiGLU(D, swiglu_hidden(D, cfg.mlp_ratio), cfg.dropout)
        self.ada = nn.Linear(D, 6 * D)

    def forward(self, x, c, rope_here, rope_target, cache=None, layer=0, pos=0):
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + g_a * self.attn(modulate(self.norm1(x), sh_a, sc_a), rope_here, rope_target, cache, layer, pos)
        return x + g_m * self.mlp(modulate(self.norm2(x), sh_m, sc_m))


# ---------------------------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------------------------

class BARGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, head: TokenHead):
        super().__init__()
        cfg.validate()
        if head.token_dim != cfg.step_dim:
            raise UserError(f"head predicts {head.token_dim} values per step, the backbone has {cfg.step_dim}")
        self.cfg = cfg
        D, P, L, K = cfg.dim, cfg.prefix, cfg.steps, cfg.step_dim
        S = P + L                                             # embedding rows: prefix + every grid cell
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, D)          # last row: null class
        self.token_embed = BitEmbedding(K, D) if cfg.token_kind == "bits" else ContinuousEmbedding(K, D)
        self.pos_embed = nn.Parameter(torch.zeros(S, D))                  # where a position is
        self.target_pos_embed = nn.Parameter(torch.zeros(S, D))           # what a position predicts next
        self.ada_pos_embed = nn.Parameter(torch.zeros(S, D))              # per-sequence-index AdaLN embedding
        blocks = [Block(cfg) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(D)
        self.cond_proj = nn.Linear(D, head.width)
        self.head = head
        cos, sin = rope_tables(cfg.step_grid, D // cfg.heads, P, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        for child in self.children():                         # the head initialises itself
            if child is not head:
                child.apply(init_weights)
        for p in (self.cls_token, self.pos_embed, self.target_pos_embed, self.ada_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        zero_init(*(block.ada for block in blocks))

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    # -- tokens --------------------------------------------------------------------------------------------------------
    def group(self, tokens_BLk: torch.Tensor) -> torch.Tensor:
        """Raster tokens (B, h*w, k) -> AR steps (B, L, K)."""
        h, w = self.cfg.grid
        B, n, k = tokens_BLk.shape
        if n != h * w or k != self.cfg.token_dim:
            raise UserError(f"tokens of shape {tuple(tokens_BLk.shape)} do not fit grid {h}x{w} with "
                            f"{self.cfg.token_dim} values per token")
        return group_tokens(tokens_BLk.reshape(B, h, w, k), self.cfg.patch_size)

    def ungroup(self, steps_BLK: torch.Tensor) -> torch.Tensor:
        """AR steps (B, L, K) -> raster tokens (B, h*w, k)."""
        x = ungroup_tokens(steps_BLK, self.cfg.patch_size, self.cfg.grid)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    # -- backbone ------------------------------------------------------------------------------------------------------
    def new_static_cache(self, batch: int, dtype: torch.dtype | None = None, device=None,
                         length: int | None = None) -> StaticKVCache:
        """A preallocated cache of `length` positions (default: the whole sequence, P + L) for cached decoding
        (bar.model.decoding): `dtype` is what attention produces (the autocast dtype under autocast, else the
        weights' dtype)."""
        cfg, ref = self.cfg, self.pos_embed
        return StaticKVCache(cfg.depth, batch, cfg.heads, length or cfg.prefix + cfg.steps, cfg.dim // cfg.heads,
                             dtype or ref.dtype, device or ref.device)

    def conditions(self, steps_BnK: torch.Tensor, labels_B: torch.Tensor, orders_BL: torch.Tensor,
                   cache: StaticKVCache | None = None) -> torch.Tensor:
        """The backbone on the prefix plus image steps steps_BnK (n >= 0 steps; orders[:, :n] say which grid cells
        they are), all positions at once: returns (B, n + 1, W), row j conditioning the prediction of step
        orders[:, j]. With a cache, the positions' keys/values are also written into it (the prefill of decoding)."""
        cfg, P = self.cfg, self.cfg.prefix
        B, n = steps_BnK.shape[:2]
        L = orders_BL.shape[1]
        if n >= L:
            raise ValueError(f"feeding {n} steps leaves nothing to predict (sequence has {L} steps)")

        # which grid cell each position holds / predicts (embedding rows; rows < P are the prefix itself)
        s = torch.arange(P + n, device=orders_BL.device)
        img = (s - P).clamp(min=0).expand(B, -1)
        here = torch.where(s < P, s, P + orders_BL.gather(1, img))
        target = P + orders_BL.gather(1, (s - P + 1).clamp(min=0).expand(B, -1))

        cls_emb = self.class_embed(labels_B)                                   # (B, D)
        x = self.token_embed(steps_BnK) if n else cls_emb.new_zeros(B, 0, cfg.dim)
        prefix = torch.cat([self.cls_token.expand(B, 1, -1).to(cls_emb.dtype),
                            cls_emb[:, None].expand(B, cfg.class_repeat, -1)], dim=1)
        x = torch.cat([prefix, x], dim=1) + self.pos_embed[here] + self.target_pos_embed[target]
        c = cls_emb[:, None] + self.ada_pos_embed[: P + n][None]
        x = self._blocks(x, c, here, target, cache, 0)
        return self.cond_proj(self.norm(x[:, P - 1:]))                        # positions that predict a step

    def _blocks(self, x_BSD, c_BSD, here_BS, target_BS, cache, pos):
        """The transformer blocks over positions whose grid cells (embedding rows) are `here` and whose next targets
        are `target`; `pos` is the first position's index in the cache."""
        rope_here = (self.rope_cos[here_BS], self.rope_sin[here_BS])
        rope_target = (self.rope_cos[target_BS], self.rope_sin[target_BS])
        for layer, block in enumerate(self.blocks):
            if self.cfg.checkpoint_blocks and self.training and cache is None:   # recompute in backward: less memory
                x_BSD = checkpoint(block, x_BSD, c_BSD, rope_here, rope_target, use_reentrant=False)
            else:
                x_BSD = block(x_BSD, c_BSD, rope_here, rope_target, cache, layer, pos)
        return x_BSD

    def decode(self, steps_BK: torch.Tensor, labels_B: torch.Tensor, pos: torch.Tensor,
               cache: StaticKVCache) -> torch.Tensor:
        """One step of cached decoding (raster order, as sampling uses): feed AR step pos - P, held at sequence
        position `pos` (0-d long tensor, P <= pos < P + L - 1), through the static cache and return the condition
        (B, W) for step pos - P + 1. Same shapes at every position, no host synchronisation: compilable as a whole.
        The cache must hold positions < pos (`conditions(..., cache=cache)` fills the prefix)."""
        here = pos.reshape(1, 1)                         # raster: position P + i holds cell i and predicts cell i + 1
        target = here + 1
        x = self.token_embed(steps_BK[:, None]) + self.pos_embed[here] + self.target_pos_embed[target]
        c = self.class_embed(labels_B)[:, None] + self.ada_pos_embed[here]
        x = self._blocks(x, c, here, target, cache, pos)
        return self.cond_proj(self.norm(x))[:, -1]

    # -- training ------------------------------------------------------------------------------------------------------
    def drop_labels(self, labels_B: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training or self.cfg.label_dropout <= 0:
            return labels_B
        return self._apply_drop(labels_B, self._draw_drop(labels_B.shape[0], labels_B.device, generator))

    def _draw_drop(self, batch: int, device, generator=None) -> torch.Tensor:
        return torch.rand(batch, device=device, generator=generator) < self.cfg.label_dropout

    def _apply_drop(self, labels_B: torch.Tensor, drop_B: torch.Tensor) -> torch.Tensor:
        return torch.where(drop_B, torch.full_like(labels_B, self.null_class), labels_B)

    def training_draws(self, batch: int, step: int | None = None, device=None,
                       generator: torch.Generator | None = None) -> dict:
        """Every random draw of one `training_loss`, made up front in the order the loss uses them: the label-dropout
        mask (train mode only), the AR orders (random with probability order_probability(step, ...), raster when
        step is None) and the head's draws. Keeping them out of the loss computation makes that computation
        deterministic: it compiles as one graph with no recompile per step (bar.training.loop) and gives the same loss
        compiled as eager from the same draws."""
        device = device if device is not None else self.pos_embed.device
        draws: dict[str, torch.Tensor | dict] = {}
        if self.training and self.cfg.label_dropout > 0:
            draws["drop"] = self._draw_drop(batch, device, generator)
        p_random = 0.0 if step is None else order_probability(step, *self.cfg.order_anneal)
        draws["orders"] = sample_orders(batch, self.cfg.steps, p_random, device, generator)
        draws["head"] = self.head.loss_draws(batch * self.cfg.steps, device, generator)
        return draws

    def training_loss(self, tokens_BLk: torch.Tensor, labels_B: torch.Tensor, step: int | None = None,
                      generator: torch.Generator | None = None, draws: dict | None = None) -> torch.Tensor:
        """Teacher-forced loss over all AR steps: groups tokens, drops labels (train mode), orders the steps randomly
        with probability order_probability(step, *cfg.order_anneal) (raster when step is None), runs the backbone
        once and the head on every step in parallel. Label dropout, orders and the head's own randomness (MBM masks,
        diffusion noise) draw from `generator` (the global RNG when None); `draws` (from `training_draws`) replaces
        them."""
        if draws is None:
            draws = self.training_draws(tokens_BLk.shape[0], step, tokens_BLk.device, generator)
        return self.loss_from_draws(tokens_BLk, labels_B, draws)

    def loss_from_draws(self, tokens_BLk: torch.Tensor, labels_B: torch.Tensor, draws: dict) -> torch.Tensor:
        """`training_loss` given its random draws: no randomness, no data-dependent shapes (what a compiled training
        step runs)."""
        x = self.group(tokens_BLk)
        labels = labels_B.long()
        if "drop" in draws:
            labels = self._apply_drop(labels, draws["drop"])
        orders = draws["orders"]
        x = x.gather(1, orders[..., None].expand_as(x))                        # steps in the order they are fed
        cond = self.conditions(x[:, :-1], labels, orders)                      # (B, L, W)
        head_draws = draws["head"]                                             # heads without draws take none
        return self.head.loss(cond, x, draws=head_draws) if head_draws else self.head.loss(cond, x)

    def forward(self, tokens_BLk: torch.Tensor, labels_B: torch.Tensor, step: int | None = None,
                generator: torch.Generator | None = None, draws: dict | None = None) -> torch.Tensor:
        """The training loss (what DistributedDataParallel and torch.compile wrap)."""
        return self.training_loss(tokens_BLk, labels_B, step, generator, draws)
