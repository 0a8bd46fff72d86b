"""The release's BAR-FSQ tokenizer: its state dict layout (written here from the release's code, at a small size),
strict loading, the quantizer's arithmetic, patch ordering, determinism, and the full-size parameter count."""

import math

import pytest
import torch

from bar import UserError
from bar.tokenizers.release import (FULL, TINY, ReleaseTokenizer, Unpatchify, load_release_checkpoint,
    parameter_count, patchify, release_to_uint8)

from release_files import BITS, RES, release_layout, release_state_dict


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    sd = release_state_dict()
    return load_release_checkpoint(ReleaseTokenizer(BITS, RES, TINY), sd), sd


def test_state_dict_is_the_release_layout_key_for_key():
    model = ReleaseTokenizer(BITS, RES, TINY)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == release_layout(BITS, RES)
    assert model.grid == 16 and model.latent_dim == BITS and model.total_bits == 16 * 16 * 16 and model.kind == "fsq"


def test_load_uses_every_key(loaded):
    model, sd = loaded
    ours = model.state_dict()
    assert set(ours) == set(sd)
    for key, value in sd.items():
        assert torch.equal(ours[key], value), key
    assert not model.training


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module.", "_orig_mod.module."])
def test_compile_and_ddp_prefixes_are_stripped(prefix):
    model = load_release_checkpoint(ReleaseTokenizer(BITS, RES, TINY), release_state_dict(prefix=prefix))
    assert torch.equal(model.decoder.class_embedding, release_state_dict()["decoder.class_embedding"])


def test_checkpoint_with_one_name_of_the_shared_frozen_modules_loads():
    sd = {k: v for k, v in release_state_dict().items() if not k.startswith("encoder.frozen_")}
    model = load_release_checkpoint(ReleaseTokenizer(BITS, RES, TINY), sd)
    assert torch.equal(model.encoder.frozen_post_layernorm.weight, sd["encoder.siglip.post_layernorm.weight"])


def one_line_error(sd, bits=BITS, res=RES) -> str:
    with pytest.raises(UserError) as err:
        load_release_checkpoint(ReleaseTokenizer(bits, res, TINY), sd)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_key_is_named():
    sd = release_state_dict()
    del sd["decoder.transformer.1.mlp.fc2.bias"]
    assert "missing key 'decoder.transformer.1.mlp.fc2.bias'" in one_line_error(sd)


def test_unexpected_key_is_named():
    sd = release_state_dict()
    sd["decoder.extra.weight"] = torch.zeros(3)
    assert "unexpected key 'decoder.extra.weight'" in one_line_error(sd)


def test_wrong_shape_is_named():
    sd = release_state_dict()
    sd["decoder.ln_post.weight"] = torch.zeros(65)
    msg = one_line_error(sd)
    assert "'decoder.ln_post.weight'" in msg and "(65,)" in msg and "(64,)" in msg


def test_wrong_bits_and_resolution_say_so():
    assert "bits per token differ" in one_line_error(release_state_dict(bits=10))
    assert "resolution differs" in one_line_error(release_state_dict(), res=512)


def test_shared_names_with_different_values_are_an_error():
    sd = release_state_dict()
    sd["encoder.frozen_post_layernorm.weight"] = sd["encoder.frozen_post_layernorm.weight"] + 1
    assert "same frozen SigLIP weight" in one_line_error(sd)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ReleaseTokenizer.from_checkpoint(tmp_path / "bar_fsq_16bits.bin", size=TINY)


def test_from_checkpoint_reads_bits_and_resolution(tmp_path):
    path = tmp_path / "bar_fsq_10bits_res512.bin"
    torch.save(release_state_dict(bits=10, res=512), path)
    model = ReleaseTokenizer.from_checkpoint(path, size=TINY, with_encoder=False)
    assert (model.bits, model.resolution, model.grid, model.total_bits) == (10, 512, 32, 10240)
    assert model.encoder is None and all(not k.startswith("encoder.") for k in model.state_dict())
    bits = torch.randint(0, 2, (1, 32 * 32, 10), dtype=torch.uint8)
    assert model.decode(bits).shape == (1, 3, 512, 512)
    with pytest.raises(UserError, match="with_encoder=False"):
        model.encode(torch.zeros(1, 3, 512, 512))


def test_quantizer_is_the_release_arithmetic(loaded):
    model, _ = loaded
    z = torch.linspace(-8, 8, 4001).reshape(1, -1, 1).expand(1, -1, BITS)
    # the release's FSQ.quantize / codes_to_indices_per_level, restated: levels 2, eps 1e-3
    levels = torch.tensor([2] * BITS)
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = (offset / half_l).atanh()
    q = torch.round(torch.tanh(z + shift) * half_l - offset)
    codes = (q / (levels // 2)) * 2 + 1
    expected = torch.clamp(torch.round((codes + 1) / 2).long(), 0, 1)
    bits = model.quantize.to_bits(z)
    assert bits.dtype == torch.uint8 and torch.equal(bits.long(), expected)
    threshold = math.atanh(0.5 / 0.5005)                              # ~3.80: bit 1 iff z >= -3.80, not z >= 0
    far = (z + threshold).abs() > 1e-3
    assert torch.equal(bits[far].bool(), (z >= -threshold)[far])


def test_patch_orders():
    g, p = 3, 4
    x = torch.randn(2, 3, g * p, g * p)
    patches = patchify(x, p)
    for b in range(2):
        for h in range(g):
            for w in range(g):
                for r in range(p):
                    for c in range(p):
                        for ch in range(3):
                            # naflex: patch (h, w) in raster order, flattened as (row, col, channel)
                            assert patches[b, h * g + w, (r * p + c) * 3 + ch] == x[b, ch, h * p + r, w * p + c]
    src = torch.arange(p * p * 3 * g * g, dtype=torch.float32).reshape(1, p * p * 3, g, g)
    out = Unpatchify(p)(src)
    for h in range(g):
        for w in range(g):
            for r in range(p):
                for c in range(p):
                    for ch in range(3):   # 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
                        assert out[0, ch, h * p + r, w * p + c] == src[0, (r * p + c) * 3 + ch, h, w]
    assert out.shape == (1, 3, g * p, g * p)


def test_decode_is_deterministic_and_batch_independent(loaded):
    model, _ = loaded
    bits = torch.randint(0, 2, (3, 256, BITS), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    a, b = model.decode(bits), model.decode(bits)
    assert torch.equal(a, b)
    assert a.shape == (3, 3, RES, RES) and a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1
    for i in range(3):
        assert torch.allclose(model.decode(bits[i:i + 1])[0], a[i], atol=1e-5)
    assert torch.equal(model.decode(bits.float()), a) and torch.equal(model.decode(bits.bool()), a)
    u8 = release_to_uint8(a)
    assert u8.dtype == torch.uint8 and torch.equal(u8, ((a + 1) / 2 * 255).to(torch.uint8))


def test_encode_decode_round_trip_shapes(loaded):
    model, _ = loaded
    images = torch.randint(0, 256, (2, 3, RES, RES), dtype=torch.uint8)
    bits = model.encode(images)
    assert bits.shape == (2, 256, BITS) and bits.dtype == torch.uint8 and bits.max() <= 1
    assert torch.equal(bits, model.encode(images.float() / 127.5 - 1))
    assert model.reconstruct(images).shape == (2, 3, RES, RES)
    with pytest.raises(UserError, match="decodes tokens of shape"):
        model.decode(bits[:, :, :8])
    with pytest.raises(UserError, match="encodes"):
        model.encode(images[:, :, :128])


def test_full_size_parameter_count():
    """SigLIP2-so400m/16 (frozen tower with head, trainable copy) + ViT-L decoder + projector + FSQ, at 256 px."""
    E, M, D, P, k, L = 1152, 4304, 1024, 2048, 16, 27
    layer = 4 * (E * E + E) + 4 * E + (E * M + M) + (M * E + E)
    head = E + 3 * E * E + 3 * E + E * E + E + 2 * E + (E * M + M) + (M * E + E)
    siglip = (768 * E + E) + 256 * E + L * layer + 2 * E + head
    block = 4 * D + 3 * D * D + 3 * D + D * D + D + (D * 4 * D + 4 * D) + (4 * D * D + D)
    decoder = D + 257 * D + 2 * D + 24 * block + 2 * D + (D * 768 + 768) + (81 + 3)
    projector = (D * P + P) + (P * P + P) + (P * E + E)
    quantize = (E * k + k) + (k * D + D)
    counts = parameter_count(16, 256, FULL)
    print("\nrelease tokenizer parameters (256 px, 16 bits):", counts)
    assert counts == {"siglip_frozen": siglip, "encoder_trainable": L * layer + 2 * E, "quantize": quantize,
                      "decoder": decoder, "clip_projector": projector,
                      "total": siglip + L * layer + 2 * E + quantize + decoder + projector}
    assert counts["total"] == 1_151_413_780
