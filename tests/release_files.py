"""Stand-ins for the release's BAR-FSQ tokenizer files: its state dict layout (written here from the release's code,
at a small size) filled with seeded random tensors. Shared by the tests that load release files."""

import torch

from bar.tokenizers.release import TINY

BITS, RES = 16, 256


def release_layout(bits: int, res: int, s=TINY) -> dict[str, tuple]:
    """Key -> shape of the release's BAR_FSQ state dict, from modeling/tokenizer.py, modeling/modules/blocks.py
    (SigLIP2Encoder, SigLIP2Decoder, Block with timm Mlp), modeling/quantizer.py and transformers' SigLIP2 vision
    model (embeddings, encoder.layers, post_layernorm, head)."""
    g, E, D, P, M = res // 16, s.enc_width, s.dec_width, s.projector_width, s.enc_mlp
    out = {"decoder.class_embedding": (1, D), "decoder.positional_embedding": (g * g + 1, D),
           "decoder.ln_pre.weight": (D,), "decoder.ln_pre.bias": (D,),
           "decoder.ln_post.weight": (D,), "decoder.ln_post.bias": (D,),
           "decoder.ffn.0.weight": (768, D, 1, 1), "decoder.ffn.0.bias": (768,),
           "decoder.conv_out.weight": (3, 3, 3, 3), "decoder.conv_out.bias": (3,),
           "decoder.clip_projector.0.weight": (P, D), "decoder.clip_projector.0.bias": (P,),
           "decoder.clip_projector.2.weight": (P, P), "decoder.clip_projector.2.bias": (P,),
           "decoder.clip_projector.4.weight": (E, P), "decoder.clip_projector.4.bias": (E,),
           "quantize.in_proj.weight": (bits, E), "quantize.in_proj.bias": (bits,),
           "quantize.out_proj.weight": (D, bits), "quantize.out_proj.bias": (D,)}
    for i in range(s.dec_depth):
        b = f"decoder.transformer.{i}."
        H = int(D * s.dec_mlp_ratio)
        out.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "norm2.weight": (D,), b + "norm2.bias": (D,),
                    b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                    b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                    b + "mlp.fc1.weight": (H, D), b + "mlp.fc1.bias": (H,),
                    b + "mlp.fc2.weight": (D, H), b + "mlp.fc2.bias": (D,)})
    sig = "encoder.siglip."
    out.update({sig + "embeddings.patch_embedding.weight": (E, 768), sig + "embeddings.patch_embedding.bias": (E,),
                sig + "embeddings.position_embedding.weight": (s.enc_pos_grid ** 2, E),
                sig + "head.probe": (1, 1, E), sig + "head.attention.in_proj_weight": (3 * E, E),
                sig + "head.attention.in_proj_bias": (3 * E,), sig + "head.attention.out_proj.weight": (E, E),
                sig + "head.attention.out_proj.bias": (E,), sig + "head.layernorm.weight": (E,),
                sig + "head.layernorm.bias": (E,), sig + "head.mlp.fc1.weight": (M, E), sig + "head.mlp.fc1.bias": (M,),
                sig + "head.mlp.fc2.weight": (E, M), sig + "head.mlp.fc2.bias": (E,)})
    for ln in ("encoder.siglip.post_layernorm.", "encoder.frozen_post_layernorm.",
               "encoder.trainable_post_layernorm."):
        out.update({ln + "weight": (E,), ln + "bias": (E,)})
    for stack in ("encoder.siglip.encoder.", "encoder.frozen_encoder.", "encoder.trainable_encoder."):
        for i in range(s.enc_depth):
            b = f"{stack}layers.{i}."
            out.update({b + "layer_norm1.weight": (E,), b + "layer_norm1.bias": (E,),
                        b + "layer_norm2.weight": (E,), b + "layer_norm2.bias": (E,),
                        b + "mlp.fc1.weight": (M, E), b + "mlp.fc1.bias": (M,),
                        b + "mlp.fc2.weight": (E, M), b + "mlp.fc2.bias": (E,)})
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out.update({b + f"self_attn.{proj}.weight": (E, E), b + f"self_attn.{proj}.bias": (E,)})
    return out


def release_state_dict(bits=BITS, res=RES, prefix="", seed=0) -> dict:
    """Random tensors in the release's layout; the frozen SigLIP modules' two names share one tensor (as torch.save
    of the release's module stores them)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in release_layout(bits, res).items():
        twin = key.replace("encoder.frozen_encoder.", "encoder.siglip.encoder.").replace(
            "encoder.frozen_post_layernorm.", "encoder.siglip.post_layernorm.")
        sd[key] = sd[twin] if twin != key and twin in sd else torch.randn(shape, generator=gen) * 0.05
    return {prefix + k: v for k, v in sd.items()}


def standin(shapes: dict[str, tuple]) -> dict:
    """Zeros of these shapes, each tensor one stored value (stride 0): a file of full-size shapes that is tiny on
    disk, for checks that read keys and shapes only (validation, the dry run)."""
    return {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}


def write_release_standins(folder) -> list[str]:
    """Full-size stand-ins of every file `sweep=release_eval` reads (bar/conf/release/README.md): each preset's
    generator in the release's layout (its RoPE tables computed: the key map compares them), the three BAR-FSQ
    tokenizers, Inception weights and two-image reference batches. Returns the overrides that point at them."""
    import numpy as np

    from bar.model.generator import rope_tables
    from bar.model.release_keys import to_release_state_dict
    from bar.orchestration.build import build_generator
    from bar.orchestration.config import compose
    from bar.orchestration.input_files import inception_layout
    from bar.tokenizers.release import SIZES

    overrides = []
    for preset, extra in (("bar_b", []), ("bar_b2", []), ("bar_b4", []), ("bar_l", []),
                          ("bar_l_512", ["tokenizer.bits=10", "data.resolution=512"])):
        with torch.device("meta"):
            model = build_generator(compose(["profile=paper", "data.root=/unused", f"model={preset}", *extra]))
        c = model.cfg
        cos, sin = rope_tables(c.step_grid, c.dim // c.heads, c.prefix, c.rope_theta)
        layout = {k: v.shape for k, v in to_release_state_dict(model).items()}
        state = {k: cos if k.endswith("freqs_cos") else sin if k.endswith("freqs_sin") else v
                 for k, v in standin(layout).items()}
        torch.save(state, folder / f"{preset}.bin")
        overrides.append(f"release.generators.{preset}={folder / f'{preset}.bin'}")
    for name, bits, res in (("bar_fsq_16bits", 16, 256), ("bar_fsq_16bits_ft", 16, 256),
                            ("bar_fsq_10bits_res512", 10, 512)):
        torch.save(standin(release_layout(bits, res, SIZES["full"])), folder / f"{name}.bin")
        overrides.append(f"release.tokenizers.{name}={folder / f'{name}.bin'}")
    torch.save(standin(inception_layout()), folder / "inception.pth")
    for res in (256, 512):
        np.savez(folder / f"VIRTUAL_imagenet{res}.npz", arr_0=np.zeros((2, res, res, 3), np.uint8))
        overrides.append(f"release.references.imagenet{res}={folder / f'VIRTUAL_imagenet{res}.npz'}")
    return overrides + [f"eval.inception_weights={folder / 'inception.pth'}"]


def write_frozen_weights(folder) -> list[str]:
    """Randomly initialised files, in the real files' formats, of every frozen network the paper's tokenizer recipe
    reads (README, 'Training the paper's tokenizer'): torchvision's VGG16 (its `features.*` random, its classifier a
    stride-0 stand-in: only the features are read) and ConvNeXt-S, DINO ViT-S/8 (timm's keys, non-zero k-biases) and
    a release BAR-FSQ file (tiny) whose SigLIP2 starts the encoder; LPIPS keeps the lpips package's own file. Returns
    the overrides that point at them."""
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models import convnext_small, vgg16

    torch.manual_seed(0)
    with torch.device("meta"):
        classifier = vgg16(weights=None).classifier.state_dict()
    from bar.tokenizers.losses.frozen import vgg16_features
    features = vgg16_features(random_init=True).state_dict()
    torch.save({**{f"features.{k}": v for k, v in features.items()},
                **standin({f"classifier.{k}": v.shape for k, v in classifier.items()})}, folder / "vgg16.pth")
    torch.save(convnext_small(weights=None).state_dict(), folder / "convnext_small.pth")
    vit = VisionTransformer(img_size=224, patch_size=8, embed_dim=384, depth=12, num_heads=6, num_classes=0)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("attn.qkv.bias"):
                p.normal_()                                      # DINO's k-biases are not zero (the loader zeroes)
    torch.save(vit.state_dict(), folder / "dino_vits8.pth")
    torch.save(release_state_dict(bits=16, res=256, seed=1), folder / "bar_fsq_16bits.bin")
    return [f"tokenizer.weights.vgg16={folder / 'vgg16.pth'}",
            f"tokenizer.weights.convnext_s={folder / 'convnext_small.pth'}",
            f"tokenizer.weights.dino_vits={folder / 'dino_vits8.pth'}",
            f"tokenizer.weights.siglip2={folder / 'bar_fsq_16bits.bin'}"]
