"""Loading the official release's generator state dict (its key names and shapes, at small sizes)."""

import math

import pytest
import torch

from bar import UserError
from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import build_head
from bar.model.release_keys import convert_official_state_dict, load_official, map_official_key
from bar.model.sampling import generate

D, DEPTH, HEADS, K, GRID, W, HEAD_DEPTH, N, REPEAT = 32, 2, 2, 8, (4, 4), 48, 2, 7, 32
L = GRID[0] * GRID[1]
P = 1 + REPEAT



def release_rope(side, head_dim, prefix, theta=10000.0):
    """The release's 2D RoPE table as its code builds it: per-axis 'lang' frequencies over head_dim/2, each repeated
    twice, row axis then column axis, prefix rows unrotated."""
    dim = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
    f = torch.einsum("t,f->tf", torch.arange(side).float(), freqs).repeat_interleave(2, dim=-1)    # (side, dim)
    table = torch.cat([f[:, None, :].expand(side, side, dim), f[None, :, :].expand(side, side, dim)], dim=-1)
    table = table.reshape(side * side, head_dim)
    return (torch.cat([torch.ones(prefix, head_dim), table.cos()]),
            torch.cat([torch.zeros(prefix, head_dim), table.sin()]))


def release_shapes():
    """Key -> shape of the release's generator state dict (modeling/generator.py + mbm_head.py)."""
    hd, e, he = D // HEADS, math.ceil(D / K), math.ceil(W / K)
    hid, hhid = int(2 / 3 * int(4 * D)), int(2 / 3 * int(4 * W))
    s = {
        "cls_token": (1, 1, D), "pos_embed": (1, L + 128, D), "target_aware_pos_embed": (1, L + 128, D),
        "timesteps_embeddings": (1, L + 100, D), "embeddings.weight": (2 + 1 + N + 1, D),
        "input_embeddings.weight": (3, e), "input_merge.weight": (D, e * K), "input_merge.bias": (D,),
        "norm.weight": (D,), "latent_condition_proj.weight": (W, D), "latent_condition_proj.bias": (W,),
        "lm_head.input_embed.weight": (3, he), "lm_head.input_proj.weight": (W, he * K),
        "lm_head.input_proj.bias": (W,), "lm_head.ln_pre.weight": (W,), "lm_head.output_embed.weight": (2 * K, W),
        "lm_head.output_embed.bias": (2 * K,), "lm_head.t_embedder.W": (256,),
        "lm_head.t_embedder.mlp.0.weight": (W, 512), "lm_head.t_embedder.mlp.0.bias": (W,),
        "lm_head.t_embedder.mlp.2.weight": (W, W), "lm_head.t_embedder.mlp.2.bias": (W,),
        "lm_head.adaln_before_head.norm_final.weight": (W,),
        "lm_head.adaln_before_head.adaLN_modulation.1.weight": (2 * W, W),
        "lm_head.adaln_before_head.adaLN_modulation.1.bias": (2 * W,),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        s.update({
            b + "norm1.weight": (D,), b + "norm2.weight": (D,),
            b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
            b + "attn.q_norm.weight": (hd,), b + "attn.k_norm.weight": (hd,),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
            b + "mlp.w12.weight": (2 * hid, D), b + "mlp.w12.bias": (2 * hid,),
            b + "mlp.w3.weight": (D, hid), b + "mlp.w3.bias": (D,),
            b + "adaLN_modulation.1.weight": (6 * D, D), b + "adaLN_modulation.1.bias": (6 * D,),
            b + "attn.rope.freqs_cos": (P + L, hd), b + "attn.rope.freqs_sin": (P + L, hd),
        })
    for j in range(HEAD_DEPTH):
        b = f"lm_head.transformer.{j}."
        s.update({
            b + "in_ln.weight": (W,), b + "mlp.w12.weight": (2 * hhid, W), b + "mlp.w12.bias": (2 * hhid,),
            b + "mlp.w3.weight": (W, hhid), b + "mlp.w3.bias": (W,),
            b + "adaLN_modulation.1.weight": (3 * W, W), b + "adaLN_modulation.1.bias": (3 * W,),
        })
    return s


def release_state_dict(prefix=""):
    g = torch.Generator().manual_seed(0)
    cos, sin = release_rope(GRID[0], D // HEADS, P)
    sd = {}
    for key, shape in release_shapes().items():
        if key.endswith("freqs_cos"):
            sd[prefix + key] = cos.clone()
        elif key.endswith("freqs_sin"):
            sd[prefix + key] = sin.clone()
        else:
            sd[prefix + key] = torch.randn(shape, generator=g) * 0.05
    return sd


def our_model():
    cfg = GeneratorConfig(dim=D, depth=DEPTH, heads=HEADS, num_classes=N, class_repeat=REPEAT, grid=GRID,
                          token_dim=K, cond_width=W, label_dropout=0.0)
    return BARGenerator(cfg, build_head("mbm", K, width=W, depth=HEAD_DEPTH))


def test_every_release_key_maps_and_fills_the_model():
    sd = release_state_dict()
    model = our_model()
    mapped = {k: map_official_key(k) for k in sd}
    assert all(v is None for k, v in mapped.items() if ".rope." in k)
    targets = [v for v in mapped.values() if v is not None]
    assert len(targets) == len(set(targets))
    assert set(targets) == set(model.state_dict())
    load_official(model, sd)
    # values land where they belong
    assert torch.equal(model.class_embed.weight, sd["embeddings.weight"][3:])
    assert torch.equal(model.pos_embed, sd["pos_embed"][0, : P + L])
    assert torch.equal(model.target_pos_embed, sd["target_aware_pos_embed"][0, : P + L])
    assert torch.equal(model.ada_pos_embed, sd["timesteps_embeddings"][0, : P + L])
    assert torch.equal(model.blocks[1].ada.weight, sd["blocks.1.adaLN_modulation.1.weight"])
    assert torch.equal(model.head.final.ada.bias, sd["lm_head.adaln_before_head.adaLN_modulation.1.bias"])
    assert torch.equal(model.head.t_embed.freqs, sd["lm_head.t_embedder.W"])
    # outputs are finite
    model.eval()
    loss = model.training_loss(torch.randint(0, 2, (2, L, K)), torch.tensor([0, N]))
    assert torch.isfinite(loss)
    out = generate(model, torch.tensor([1, 2, 3]), cfg_scale=2.0, temperature=1.0, allocation=[2, 2, 4],
                   generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, L, K)


def test_compile_and_ddp_prefixes_are_stripped():
    model = our_model()
    load_official(model, release_state_dict(prefix="_orig_mod."))
    load_official(model, release_state_dict(prefix="module."))


def test_release_head_layout_bit_major_logits():
    model = our_model()
    sd = release_state_dict()
    load_official(model, sd)
    x = torch.randn(5, W)
    # logits[:, bit, c] is output row 2 * bit + c of the release's Linear(W -> 2k)
    w, b = sd["lm_head.output_embed.weight"], sd["lm_head.output_embed.bias"]
    feats = model.head.final(x, model.head.final.ada(torch.nn.functional.silu(x)))
    ours = model.head.out(feats).reshape(5, K, 2)
    assert torch.allclose(ours[:, 3, 1], feats @ w[7] + b[7], atol=1e-5)


def test_unknown_missing_and_mismatched_keys_are_errors():
    model = our_model()
    sd = release_state_dict()
    sd["blocks.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="do not map"):
        load_official(model, sd)
    sd = release_state_dict()
    del sd["lm_head.ln_pre.weight"]
    with pytest.raises(UserError, match="left unfilled"):
        load_official(model, sd)
    sd = release_state_dict()
    sd["embeddings.weight"] = torch.zeros(2 + 1 + N + 2, D)
    with pytest.raises(UserError, match="num_classes"):
        load_official(model, sd)
    sd = release_state_dict()
    sd["blocks.0.attn.rope.freqs_sin"] = sd["blocks.0.attn.rope.freqs_sin"] * 2
    with pytest.raises(UserError, match="RoPE"):
        load_official(model, sd)
    with pytest.raises(KeyError):
        map_official_key("something.else")
    sd = release_state_dict()
    sd["lm_head.output_embed.weight"] = torch.zeros(2 * K + 2, W)
    with pytest.raises(UserError, match="shape"):
        convert_official_state_dict(sd, model)
