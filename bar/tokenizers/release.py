"""The official release's BAR-FSQ tokenizer, rebuilt so that its checkpoints load key for key.

    ReleaseTokenizer(bits, resolution, size=FULL)     the release's BAR_FSQ at any size (tests use TINY)
    load_release_checkpoint(model, path_or_state)     strict loading: every key used, none left, shapes checked
    ReleaseTokenizer.from_checkpoint(path)            bits and resolution read off the checkpoint's shapes
    release_to_uint8(images)                          the release's float -> uint8 conversion (truncating)

Checkpoints: `bar_fsq_16bits.bin`, `bar_fsq_16bits_ft.bin` (256 px, 16 bits; the _ft one is what BAR-B / BAR-L
sample with) and `bar_fsq_10bits_res512.bin` (512 px, 10 bits): plain `torch.save`d state dicts of the release's
`BAR_FSQ` module (modeling/tokenizer.py), possibly with `_orig_mod.` / `module.` prefixes, which are stripped.

The model, in the order the release runs it (modeling/modules/blocks.py, modeling/quantizer.py):
  encode  pixels in [-1, 1] (the release's Normalize(0.5, 0.5)) -> 16x16 patches flattened as (row, col, channel)
          -> SigLIP2 naflex patch embedding + its 16x16 position table resized to the grid -> the *trainable* copy
          of the SigLIP2-so400m encoder layers -> trainable post layernorm -> in_proj Linear(1152 -> bits)
          -> binary FSQ: q = round(tanh(z + shift) * 0.5005 - 0.5) in {-1, 0}, code = 2q + 1 in {-1, +1},
          bit = (code + 1) / 2. shift = atanh(0.5 / 0.5005) ~ 3.8, so a bit is 1 where z >= -3.8, not where z >= 0.
  decode  bits {0, 1} -> codes {-1, +1} -> out_proj Linear(bits -> 1024) -> [class token; tokens] + position
          table -> ln_pre -> 24 pre-norm ViT-L blocks (LayerNorm, qkv with bias, GELU MLP x4) -> drop the class
          token -> ln_post -> (B, 1024, g, g) -> 1x1 conv to 16*16*3 channels ordered (row, col, channel) per
          token -> pixels (B, 3, 16g, 16g) -> 3x3 conv_out. The output is unbounded; the release clamps
          (x + 1) / 2 to [0, 1] and truncates x * 255 to uint8 (sample_imagenet.py).
The frozen SigLIP copy (`encoder.siglip.*`, also reachable as `encoder.frozen_encoder` /
`encoder.frozen_post_layernorm`, the same modules under two names, so their keys appear twice in the state dict), its
attention-pooling head and the `decoder.clip_projector` (decoder layer 2 -> 2048 -> 2048 -> 1152, the SigLIP-feature
prediction) only matter in training; they are kept so that the state dict is the release's, key for key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError
from bar.core.bits import BITS_PER_CONTINUOUS_CHANNEL, bits_to_codes, codes_to_bits

PATCH = 16


@dataclass(frozen=True)
class ReleaseSize:
    """Widths and depths; FULL is the release (SigLIP2-so400m/16 encoder, ViT-L decoder). The key names do not depend
    on it, so a small size has the release's structure at a fraction of the cost."""
    enc_width: int = 1152
    enc_depth: int = 27
    enc_heads: int = 16
    enc_mlp: int = 4304
    enc_pos_grid: int = 16        # SigLIP2 naflex: a 16x16 position table (num_patches = 256), resized to the grid
    dec_width: int = 1024
    dec_depth: int = 24
    dec_heads: int = 16
    dec_mlp_ratio: float = 4.0
    projector_width: int = 2048
    align_layer: int = 2          # decoder layer whose output the projector reads (clip_align_layer_id)


FULL = ReleaseSize()
TINY = ReleaseSize(enc_width=64, enc_depth=2, enc_heads=4, enc_mlp=128, enc_pos_grid=16, dec_width=64, dec_depth=2,
                   dec_heads=4, projector_width=96, align_layer=1)
SIZES = {"full": FULL, "tiny": TINY}

# name -> (bits per token, resolution) of the released tokenizer checkpoints
RELEASE_CHECKPOINTS = {
    "bar_fsq_16bits": (16, 256),
    "bar_fsq_16bits_ft": (16, 256),
    "bar_fsq_10bits_res512": (10, 512),
}


# ----------------------------------------------------------------------------------------------------- encoder
def siglip_config(size: ReleaseSize):
    """A SigLIP2 vision config written here (no hub download), so400m/16 at FULL."""
    from transformers import Siglip2VisionConfig

    return Siglip2VisionConfig(hidden_size=size.enc_width, intermediate_size=size.enc_mlp,
                               num_hidden_layers=size.enc_depth, num_attention_heads=size.enc_heads, num_channels=3,
                               patch_size=PATCH, num_patches=size.enc_pos_grid ** 2, hidden_act="gelu_pytorch_tanh",
                               layer_norm_eps=1e-6, attention_dropout=0.0, vision_use_head=True,
                               # accepted by PretrainedConfig's **kwargs, which transformers 5's typed __init__ hides
                               attn_implementation="sdpa")  # type: ignore[call-arg]


class SiglipTower(nn.Module):
    """The release's `encoder.siglip` (SigLIP2's vision_model): embeddings, encoder layers, post layernorm, pooling
    head.

    Built from transformers' SigLIP2 parts, so the key names are SigLIP2's in transformers 4.x and 5.x alike."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.siglip2.modeling_siglip2 import (Siglip2Encoder, Siglip2MultiheadAttentionPoolingHead,
                                                                  Siglip2VisionEmbeddings)

        self.embeddings = Siglip2VisionEmbeddings(config)
        self.encoder = Siglip2Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = Siglip2MultiheadAttentionPoolingHead(config)


def run_layers(layers: nn.ModuleList, x_BLD: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x_BLD = layer(x_BLD, attention_mask=None)
        if isinstance(x_BLD, tuple):      # transformers 4.x layers return a tuple
            x_BLD = x_BLD[0]
    return x_BLD


def patchify(x_BCHW: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, g*p, g*p) -> (B, g*g, p*p*C): raster order of patches, each flattened as (row, col, channel) (naflex)."""
    B, C, H, W = x_BCHW.shape
    return x_BCHW.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), -1)


class ReleaseEncoder(nn.Module):
    """The release's SigLIP2Encoder: frozen SigLIP tower plus a trainable copy of its layers and post layernorm.

    The patch embedding (frozen) is shared by both paths; `forward` runs the trainable path (what tokenizes),
    `frozen_features` the frozen one (the distillation target of training)."""

    def __init__(self, size: ReleaseSize, grid: int):
        super().__init__()
        self.grid, self.width = grid, size.enc_width
        self.siglip = SiglipTower(siglip_config(size))
        self.frozen_encoder = self.siglip.encoder                 # same module, second name (as in the release)
        self.trainable_encoder = copy.deepcopy(self.siglip.encoder)
        self.frozen_post_layernorm = self.siglip.post_layernorm   # same module, second name
        self.trainable_post_layernorm = copy.deepcopy(self.siglip.post_layernorm)

    def embed(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        B, g = x_B3HW.shape[0], self.grid
        shapes = torch.tensor([[g, g]], dtype=torch.long, device=x_B3HW.device).expand(B, 2)
        return self.siglip.embeddings(pixel_values=patchify(x_B3HW, PATCH), spatial_shapes=shapes)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        return self.trainable_post_layernorm(run_layers(self.trainable_encoder.layers, self.embed(x_B3HW)))

    def frozen_features(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        return self.frozen_post_layernorm(run_layers(self.frozen_encoder.layers, self.embed(x_B3HW)))


# ----------------------------------------------------------------------------------------------------- quantizer
class ReleaseFSQ(nn.Module):
    """The release's `quantize`: in_proj to `bits` channels, binary FSQ, out_proj to the decoder width."""

    EPS = 1e-3

    def __init__(self, enc_width: int, bits: int, dec_width: int, out_in: int | None = None):
        """`out_in`: out_proj's input width when it differs from in_proj's output (a KL bottleneck: mean and
        log-variance in, a sample out)."""
        super().__init__()
        self.bits = bits
        self.in_proj = nn.Linear(enc_width, bits)
        self.out_proj = nn.Linear(out_in or bits, dec_width)

    def bound(self, z_BLk: torch.Tensor) -> torch.Tensor:
        """The release's FSQ bound for 2 levels (fp32): tanh(z + shift) * half_l - offset, in (-1, 0)."""
        z = z_BLk.float()
        half_l = torch.tensor(1 * (1 + self.EPS) / 2, dtype=torch.float32)    # (levels - 1)(1 + eps) / 2, levels = 2
        offset = torch.tensor(0.5, dtype=torch.float32)
        shift = (offset / half_l).atanh()
        return torch.tanh(z + shift.to(z.device)) * half_l.to(z.device) - offset.to(z.device)

    def to_bits(self, z_BLk: torch.Tensor) -> torch.Tensor:
        """in_proj output -> uint8 bits, with the release's arithmetic: bound, round, map {-1, 0} -> {-1, +1}."""
        return codes_to_bits(torch.round(self.bound(z_BLk)) * 2 + 1)

    def straight_through(self, z_BLk: torch.Tensor) -> torch.Tensor:
        """Training: the same codes in {-1, +1}, with the gradient of the bound (round is the identity backward)."""
        bounded = self.bound(z_BLk)
        return (bounded + (torch.round(bounded) - bounded).detach()) * 2 + 1

    def codes(self, bits_BLk: torch.Tensor) -> torch.Tensor:
        """bits {0, 1} -> decoder input (B, L, dec_width)."""
        return self.out_proj(bits_to_codes(bits_BLk).to(self.out_proj.weight.dtype))


# ----------------------------------------------------------------------------------------------------- decoder
class DecoderAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))


class DecoderMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class DecoderBlock(nn.Module):
    """Pre-norm ViT block with LayerNorm (eps 1e-5), qkv bias and an exact-GELU MLP (the release's Block)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = DecoderAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = DecoderMLP(width, int(width * mlp_ratio))

    def forward(self, x_BLD):
        x_BLD = x_BLD + self.attn(self.norm1(x_BLD))
        return x_BLD + self.mlp(self.norm2(x_BLD))


class Unpatchify(nn.Module):
    """(B, p*p*3, g, g), channels ordered (row, col, channel) -> (B, 3, g*p, g*p)."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x):
        B, _, g, _ = x.shape
        p = self.patch
        return x.view(B, p, p, 3, g, g).permute(0, 3, 4, 1, 5, 2).reshape(B, 3, g * p, g * p)


class ReleaseDecoder(nn.Module):
    """The release's SigLIP2Decoder: ViT over [class token; tokens] -> per-token pixels -> 3x3 conv."""

    def __init__(self, size: ReleaseSize, grid: int):
        super().__init__()
        W = size.dec_width
        self.grid, self.width, self.align_layer = grid, W, size.align_layer
        self.class_embedding = nn.Parameter(W ** -0.5 * torch.randn(1, W))
        self.positional_embedding = nn.Parameter(W ** -0.5 * torch.randn(grid * grid + 1, W))
        self.ln_pre = nn.LayerNorm(W)
        self.transformer = nn.ModuleList(DecoderBlock(W, size.dec_heads, size.dec_mlp_ratio)
                                         for _ in range(size.dec_depth))
        self.ln_post = nn.LayerNorm(W)
        self.ffn = nn.Sequential(nn.Conv2d(W, PATCH * PATCH * 3, 1), Unpatchify(PATCH))
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        P = size.projector_width
        self.clip_projector = nn.Sequential(nn.Linear(W, P), nn.SiLU(), nn.Linear(P, P), nn.SiLU(),
                                            nn.Linear(P, size.enc_width))

    def forward(self, x_BLD: torch.Tensor, predict_features: bool = False):
        """Decoder input (B, g*g, W) -> unbounded pixels (B, 3, H, W) [, predicted SigLIP features (B, g*g, enc)]."""
        B, L, _ = x_BLD.shape
        x = torch.cat([self.class_embedding.to(x_BLD.dtype).expand(B, 1, -1), x_BLD], dim=1)
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        features = None
        for i, block in enumerate(self.transformer):
            x = block(x)
            if predict_features and i == self.align_layer:
                features = self.clip_projector(x)[:, 1:]
        x = self.ln_post(x[:, 1:])
        x = x.transpose(1, 2).reshape(B, self.width, self.grid, self.grid)
        pixels = self.conv_out(self.ffn(x.contiguous()))
        return (pixels, features) if predict_features else pixels


# ----------------------------------------------------------------------------------------------------- tokenizer
class ReleaseTokenizer(nn.Module):
    """BAR-FSQ as released. `encode` gives the generator's tokens (B, L, k) uint8 bits in raster order; `decode` gives
    images (B, 3, H, W) float in [-1, 1] (the contract of bar.tokenizers.tokenizer.Tokenizer).

    with_encoder=False builds the decoder side only (sampling needs nothing else; saves ~840M parameters); loading
    still checks the checkpoint against the release's whole layout."""

    kind = "fsq"

    def __init__(self, bits: int | None = 16, resolution: int = 256, size: ReleaseSize | str = FULL,
                 with_encoder: bool = True, channels: int | None = None, kl: bool = False):
        """`channels` instead of `bits`: the continuous twin (same encoder and decoder, a continuous bottleneck of
        `channels` per token, optionally KL-regularised), for comparing like with like on the bits axis."""
        super().__init__()
        size = SIZES[size] if isinstance(size, str) else size
        self.kind = "ae" if channels is not None else "fsq"
        width = channels if self.kind == "ae" else bits
        if not isinstance(width, int) or width < 1:
            raise UserError(f"release tokenizer {'channels' if channels else 'bits'}={width!r} must be a positive "
                            "integer")
        if resolution % PATCH:
            raise UserError(f"release tokenizer resolution {resolution} is not a multiple of the patch size {PATCH}")
        self.size, self.bits, self.resolution, self.with_encoder = size, bits, resolution, with_encoder
        self.grid = resolution // PATCH
        self.latent_dim, self.kl = width, kl
        self.in_channels = 3
        self.total_bits = self.grid * self.grid * (width if self.kind == "fsq" else BITS_PER_CONTINUOUS_CHANNEL * width)
        # construction order of the release's BAR_FSQ: decoder, encoder, quantize
        self.decoder = ReleaseDecoder(size, self.grid)
        self.encoder = ReleaseEncoder(size, self.grid) if with_encoder else None
        self.quantize = ReleaseFSQ(size.enc_width, width * (2 if kl else 1), size.dec_width, out_in=width)
        if self.encoder is not None:   # the SigLIP tower (and the patch embedding both paths share) stays frozen
            self.encoder.siglip.requires_grad_(False)

    def _need_encoder(self, what: str) -> ReleaseEncoder:
        """The encoder, or a one-line UserError for a decoder-only model (with_encoder=False)."""
        if self.encoder is None:
            raise UserError(f"this release tokenizer was built with with_encoder=False: it cannot {what}")
        return self.encoder

    def _latent(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: decoder input (straight-through FSQ codes, or the continuous latent) and the KL term."""
        z = self.quantize.in_proj(self._need_encoder("train")(x_B3HW))
        if self.kind == "fsq":
            return self.quantize.straight_through(z), z.new_zeros(())
        if not self.kl:
            return z, z.new_zeros(())
        mean, logvar = z.float().chunk(2, dim=-1)
        logvar = logvar.clamp(-30, 20)
        sample = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        return sample, 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2)).mean()

    def forward(self, x_B3HW: torch.Tensor, with_features: bool = False):
        """Training: images in [-1, 1] -> (reconstruction, auxiliary KL loss); with_features also gives the decoder's
        projected features and the frozen SigLIP2 features they are distilled towards."""
        latent, aux = self._latent(x_B3HW)
        out = self.decoder(self.quantize.out_proj(latent.to(self.quantize.out_proj.weight.dtype)),
                           predict_features=with_features)
        if not with_features:
            return out, aux
        with torch.no_grad():
            target = self._need_encoder("give SigLIP2 features").frozen_features(x_B3HW)
        return out[0], aux, out[1], target

    def init_siglip(self, path_or_state) -> None:
        """SigLIP2 weights from a release tokenizer checkpoint: its frozen copy (`encoder.siglip.*`) into both the
        frozen tower and the trainable copy, as the release initialises the trainable encoder."""
        state = clean_state_dict(read_state_dict(path_or_state))
        tower = {k[len("encoder.siglip."):]: v for k, v in state.items() if k.startswith("encoder.siglip.")}
        if not tower:
            raise UserError(f"{describe(path_or_state)} has no encoder.siglip.* weights to initialise SigLIP2 from")
        encoder = self._need_encoder("initialise SigLIP2")
        encoder.siglip.load_state_dict(tower, strict=True)
        encoder.trainable_encoder.load_state_dict(encoder.siglip.encoder.state_dict())
        encoder.trainable_post_layernorm.load_state_dict(encoder.siglip.post_layernorm.state_dict())

    @classmethod
    def from_checkpoint(cls, path_or_state, size: ReleaseSize | str = FULL, with_encoder: bool = True):
        """Build at the checkpoint's bits and resolution (read off its shapes), then load it strictly."""
        state = clean_state_dict(read_state_dict(path_or_state))
        for key in ("quantize.in_proj.weight", "decoder.positional_embedding"):
            if key not in state:
                raise UserError(f"{describe(path_or_state)} is not a release BAR-FSQ checkpoint: no key {key!r}")
        bits = state["quantize.in_proj.weight"].shape[0]
        grid = math.isqrt(state["decoder.positional_embedding"].shape[0] - 1)
        model = cls(bits, grid * PATCH, size, with_encoder)
        return load_release_checkpoint(model, state, _name=describe(path_or_state))

    @property
    def device(self) -> torch.device:
        return self.quantize.in_proj.weight.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), float in [-1, 1] or uint8 in [0, 255] -> bits (B, grid*grid, bits) uint8."""
        if self.encoder is None:
            raise UserError("this release tokenizer was built with with_encoder=False: it can decode, not encode")
        if self.kind == "ae":
            x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
            z = self.quantize.in_proj(self.encoder(x.to(self.device)))
            return z.chunk(2, dim=-1)[0] if self.kl else z
        if images.dim() != 4 or images.shape[1:] != (3, self.resolution, self.resolution):
            raise UserError(f"release tokenizer encodes (B, 3, {self.resolution}, {self.resolution}) images, "
                            f"got {tuple(images.shape)}")
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        weight = self.quantize.in_proj.weight
        return self.quantize.to_bits(self.quantize.in_proj(self.encoder(x.to(weight.device, weight.dtype))))

    @torch.no_grad()
    def decode(self, bits_BLk: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Bits (B, grid*grid, bits) in {0, 1} -> images (B, 3, H, W) float, clamped to [-1, 1] unless clamp=False."""
        L, k = self.grid * self.grid, self.latent_dim
        if bits_BLk.dim() != 3 or bits_BLk.shape[1:] != (L, k):
            raise UserError(f"release tokenizer decodes tokens of shape (B, {L}, {k}), got {tuple(bits_BLk.shape)}")
        if self.kind == "ae":
            z = bits_BLk.to(self.device, self.quantize.out_proj.weight.dtype)
            images = self.decoder(self.quantize.out_proj(z))
            return images.clamp(-1, 1) if clamp else images
        images = self.decoder(self.quantize.codes(bits_BLk.to(self.device)))
        return images.clamp(-1, 1) if clamp else images

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


def release_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 NCHW the way the release writes samples: clamp((x + 1) / 2) * 255, truncated
    (sample_imagenet.py). bar.tokenizers.tokenizer.float_to_images rounds instead (differs by at most one level)."""
    return (((images.float() + 1) / 2).clamp(0, 1) * 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------- loading
# The release registers the frozen SigLIP modules under two names; a checkpoint carries both (torch.save keeps
# shared modules under every name), but a deduplicating writer may drop one. Either name fills both.
_ALIASES = (("encoder.frozen_encoder.", "encoder.siglip.encoder."),
            ("encoder.frozen_post_layernorm.", "encoder.siglip.post_layernorm."))


def describe(path_or_state) -> str:
    return f"checkpoint {str(path_or_state)!r}" if isinstance(path_or_state, (str, Path)) else "state dict"


def read_state_dict(path_or_state) -> dict:
    if isinstance(path_or_state, (str, Path)):
        path = Path(path_or_state).expanduser()
        if not path.is_file():
            raise UserError(f"release tokenizer checkpoint {str(path)!r} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = path_or_state
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{describe(path_or_state)} does not hold a state dict")
    return state


def clean_state_dict(state: dict) -> dict:
    """Strip torch.compile's `_orig_mod.` and DDP's `module.` prefixes (the release's loader removes
    `_orig_mod.module.`)."""
    out = {}
    for key, value in state.items():
        key = key.replace("_orig_mod.module.", "")
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def release_layout(bits: int, resolution: int, size: ReleaseSize) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release's BAR_FSQ state dict at these settings (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = ReleaseTokenizer(bits, resolution, size, with_encoder=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _alias(key: str) -> str | None:
    for a, b in _ALIASES:
        if key.startswith(a):
            return b + key[len(a):]
        if key.startswith(b):
            return a + key[len(b):]
    return None


def check_release_state_dict(state: dict, bits: int, resolution: int, size: ReleaseSize, name: str = "state dict"
                             ) -> dict:
    """Cleaned, alias-completed state dict, or a one-line UserError naming the first unexpected, missing or
    mis-shaped key (with the count of the others)."""
    state = clean_state_dict(state)
    layout = release_layout(bits, resolution, size)
    for key in list(state):
        other = _alias(key)
        if other is None:
            continue
        if other not in state:
            state[other] = state[key]
        elif state[other].shape == state[key].shape and not torch.equal(state[other], state[key]):
            raise UserError(f"release tokenizer {name}: {key!r} and {other!r} name the same frozen SigLIP weight "
                            f"but hold different values")
    problems = []
    unexpected = [k for k in state if k not in layout]
    missing = [k for k in layout if k not in state]
    wrong = [k for k in layout if k in state and tuple(state[k].shape) != layout[k]]
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r}"
                        + (f" (+{len(unexpected) - 1} more)" * (len(unexpected) > 1)))
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" * (len(missing) > 1)))
    if wrong:
        k = wrong[0]
        hint = {"quantize.in_proj.weight": " (bits per token differ)", "quantize.out_proj.weight": " (bits differ)",
                "decoder.positional_embedding": " (resolution differs)"}.get(k, "")
        problems.append(f"key {k!r} has shape {tuple(state[k].shape)}, the model expects {layout[k]}{hint}"
                        + (f" (+{len(wrong) - 1} more mis-shaped)" * (len(wrong) > 1)))
    if problems:
        raise UserError(f"release tokenizer {name} does not fit bits={bits}, resolution={resolution}: "
                        + "; ".join(problems))
    return state


def load_release_checkpoint(model: ReleaseTokenizer, path_or_state, _name: str | None = None) -> ReleaseTokenizer:
    """Load a release BAR-FSQ checkpoint (path to the .bin or a state dict) into `model`, strictly; eval mode."""
    name = _name or describe(path_or_state)
    if model.bits is None:
        raise UserError(f"release checkpoint {name} is a BAR-FSQ tokenizer; this model has no bits (channels twin)")
    state = check_release_state_dict(read_state_dict(path_or_state), model.bits, model.resolution, model.size, name)
    if model.encoder is None:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def parameter_count(bits: int = 16, resolution: int = 256, size: ReleaseSize = FULL) -> dict[str, int]:
    """Unique parameters per part (meta device), the frozen SigLIP tower counted once."""
    with torch.device("meta"):
        model = ReleaseTokenizer(bits, resolution, size)
    count = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
    enc = model.encoder
    assert enc is not None                                   # built with its encoder above
    out = {"siglip_frozen": count(enc.siglip), "encoder_trainable": count(enc.trainable_encoder)
           + count(enc.trainable_post_layernorm), "quantize": count(model.quantize),
           "decoder": count(model.decoder) - count(model.decoder.clip_projector),
           "clip_projector": count(model.decoder.clip_projector)}
    out["total"] = count(model)
    return out
