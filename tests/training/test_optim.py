"""Weight-decay groups: the decayed set of BAR-B is the release's (its rule applied to its own parameter names)."""

import math

import pytest
import torch

from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import build_head
from bar.model.release_keys import map_official_key
from bar.training.optim import decay_report, decay_split, param_groups, release_name, release_no_decay

D, DEPTH, HEADS, K, W, HEAD_DEPTH, N, REPEAT, L = 768, 24, 12, 16, 2048, 3, 1000, 32, 256


def bar_b(head="mbm", k=K, **head_cfg):
    cfg = GeneratorConfig(dim=D, depth=DEPTH, heads=HEADS, num_classes=N, class_repeat=REPEAT, grid=(16, 16),
                          patch_size=1, token_dim=k, cond_width=W,
                          token_kind="continuous" if head == "diffusion" else "bits")
    with torch.device("meta"):
        return BARGenerator(cfg, build_head(head, k, width=W, **head_cfg))


def release_parameters():
    """(name, shape, requires_grad) of every parameter of the release's BAR-B generator, as modeling/generator.py
    and modeling/mbm_head.py declare them (the RoPE tables are buffers there, so they are not listed)."""
    e, he = math.ceil(D / K), math.ceil(W / K)
    hid, hhid = int(2 / 3 * int(4 * D)), int(2 / 3 * int(4 * W))
    ps = [("cls_token", (1, 1, D)), ("pos_embed", (1, L + 128, D)), ("target_aware_pos_embed", (1, L + 128, D)),
          ("norm.weight", (D,)), ("lm_head.input_embed.weight", (3, he)), ("lm_head.input_proj.weight", (W, he * K)),
          ("lm_head.input_proj.bias", (W,)), ("lm_head.ln_pre.weight", (W,))]
    for i in range(DEPTH):
        b = f"blocks.{i}."
        ps += [(b + "norm1.weight", (D,)), (b + "attn.qkv.weight", (3 * D, D)), (b + "attn.qkv.bias", (3 * D,)),
               (b + "attn.q_norm.weight", (D // HEADS,)), (b + "attn.k_norm.weight", (D // HEADS,)),
               (b + "attn.proj.weight", (D, D)), (b + "attn.proj.bias", (D,)), (b + "norm2.weight", (D,)),
               (b + "mlp.w12.weight", (2 * hid, D)), (b + "mlp.w12.bias", (2 * hid,)),
               (b + "mlp.w3.weight", (D, hid)), (b + "mlp.w3.bias", (D,)),
               (b + "adaLN_modulation.1.weight", (6 * D, D)), (b + "adaLN_modulation.1.bias", (6 * D,))]
    for j in range(HEAD_DEPTH):
        b = f"lm_head.transformer.{j}."
        ps += [(b + "in_ln.weight", (W,)), (b + "mlp.w12.weight", (2 * hhid, W)), (b + "mlp.w12.bias", (2 * hhid,)),
               (b + "mlp.w3.weight", (W, hhid)), (b + "mlp.w3.bias", (W,)),
               (b + "adaLN_modulation.1.weight", (3 * W, W)), (b + "adaLN_modulation.1.bias", (3 * W,))]
    ps += [("lm_head.output_embed.weight", (2 * K, W)), ("lm_head.output_embed.bias", (2 * K,)),
           ("lm_head.t_embedder.mlp.0.weight", (W, 512)), ("lm_head.t_embedder.mlp.0.bias", (W,)),
           ("lm_head.t_embedder.mlp.2.weight", (W, W)), ("lm_head.t_embedder.mlp.2.bias", (W,)),
           ("lm_head.adaln_before_head.norm_final.weight", (W,)),
           ("lm_head.adaln_before_head.adaLN_modulation.1.weight", (2 * W, W)),
           ("lm_head.adaln_before_head.adaLN_modulation.1.bias", (2 * W,)),
           ("latent_condition_proj.weight", (W, D)), ("latent_condition_proj.bias", (W,)),
           ("embeddings.weight", (2 + 1 + N + 1, D)), ("input_embeddings.weight", (3, e)),
           ("input_merge.weight", (D, e * K)), ("input_merge.bias", (D,)), ("timesteps_embeddings", (1, L + 100, D))]
    out = [(n, s, True) for n, s in ps]
    return out + [("lm_head.t_embedder.W", (256,), False)]     # frozen Parameter (requires_grad=False)


def test_release_rule_on_release_names():
    assert release_no_decay("blocks.0.adaLN_modulation.1.weight", 2)          # `ln` in adaLN
    assert release_no_decay("lm_head.output_embed.weight", 2)                # `embed`
    assert release_no_decay("lm_head.t_embedder.mlp.2.weight", 2)
    assert release_no_decay("blocks.0.attn.qkv.bias", 1) and release_no_decay("cls_token", 1)
    assert not release_no_decay("input_merge.weight", 2)                     # decays in the release
    assert not release_no_decay("latent_condition_proj.weight", 2)
    assert not release_no_decay("cls_token", 3)                              # 3-dim, no matching substring
    assert not release_no_decay("lm_head.transformer.0.mlp.w12.weight", 2)


def test_release_name_inverts_official_mapping():
    model = bar_b()
    for name, _ in model.named_parameters():
        assert map_official_key(release_name(name)) == name, name


def test_decayed_set_is_the_releases():
    model = bar_b()
    release = release_parameters()
    ours = dict(model.named_parameters())
    trainable = [(n, s) for n, s, grad in release if grad]
    mapped = {map_official_key(n): (n, s) for n, s in trainable}
    assert set(mapped) == set(ours)                              # every trainable release parameter is one of ours
    expected_decayed = {o for o, (n, s) in mapped.items() if not release_no_decay(n, len(s))}
    decayed, exempt = decay_split(model)
    assert set(decayed) == expected_decayed
    assert set(exempt) == set(ours) - expected_decayed
    # our tensors have the release's dimensionality wherever the rule looks at it (the position tables are 3-dim
    # there, 2-dim here: both >= 2, and exempt by name anyway)
    for o, (n, s) in mapped.items():
        assert (len(s) < 2) == (ours[o].ndim < 2), n

    report = decay_report(model)
    total = sum(p.numel() for p in ours.values())
    assert report["decayed"] + report["exempt"] == total == 415_122_222
    # the release's tables hold rows that are never read (bar.model.release_keys): 3 x 95 + ... rows more, all exempt
    release_exempt = sum(math.prod(s) for n, s, grad in release if grad and release_no_decay(n, len(s)))
    release_decayed = sum(math.prod(s) for n, s, grad in release if grad and not release_no_decay(n, len(s)))
    assert release_decayed == report["decayed"]
    assert release_exempt - report["exempt"] == 2 * 95 * D + 67 * D + 3 * D
    print(f"\nBAR-B: {total:,} parameters, {report['exempt']:,} exempt from weight decay "
          f"({report['exempt_tensors']} tensors), {report['decayed']:,} decayed ({report['decayed_tensors']} tensors); "
          f"release (with its unread table rows): {release_exempt:,} exempt of "
          f"{release_exempt + release_decayed + 256:,}")
    assert 137e6 < report["exempt"] < 139e6


def test_param_groups_build_adamw():
    torch.manual_seed(0)
    cfg = GeneratorConfig(dim=32, depth=2, heads=2, num_classes=4, class_repeat=2, grid=(4, 4), token_dim=8,
                          cond_width=48)
    model = BARGenerator(cfg, build_head("mbm", 8, width=48, depth=1))
    model.head.bit_proj.weight.requires_grad_(False)
    groups = param_groups(model, 0.03)
    assert [g["weight_decay"] for g in groups] == [0.03, 0.0]
    assert "head.bit_proj.weight" not in groups[0]["names"] + groups[1]["names"]    # frozen: in no group
    assert "blocks.0.ada.weight" in groups[1]["names"] and "blocks.0.attn.qkv.weight" in groups[0]["names"]
    assert "token_embed.proj.weight" in groups[0]["names"] and "head.out.weight" in groups[1]["names"]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    model.training_loss(torch.randint(0, 2, (2, 16, 8)), torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(before, model.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("head", ["softmax", "bitwise", "diffusion"])
def test_other_heads_by_role(head):
    model = bar_b(head, k=8 if head == "softmax" else 16)
    decayed, exempt = decay_split(model)
    exempt = set(exempt)
    assert "head.out.weight" in exempt                               # output layer, as lm_head.output_embed
    assert {n for n in exempt if ".ada." in n or "final_ada" in n} == \
        {n for n, _ in model.named_parameters() if ".ada." in n or "final_ada" in n}
    if head == "diffusion":
        assert "head.t_mlp.0.weight" in exempt and "head.in_proj.weight" in decayed
        assert "head.blocks.0.mlp.0.weight" in decayed and "head.blocks.0.norm.weight" in exempt
        assert "token_embed.proj.weight" in decayed                  # continuous input layer, as input_merge
