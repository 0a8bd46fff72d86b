import pytest
import torch
from omegaconf import OmegaConf

from bar import UserError
from bar.orchestration.config import compose
from bar.core.bits import bits_to_codes, bits_to_index, codes_to_bits, index_to_bits, latent_bits
from bar.tokenizers.tokenizer import BinaryFSQ, Tokenizer, validate_tokenizer_config


@pytest.mark.parametrize("bits", [1, 16, 64, 256])
def test_fsq_round_trip_and_straight_through(bits):
    torch.manual_seed(0)
    z = torch.randn(4, bits, 3, 3, requires_grad=True)
    codes = BinaryFSQ(bits)(z)
    assert set(codes.detach().unique().tolist()) <= {-1.0, 1.0}
    b = codes_to_bits(codes)
    assert b.dtype == torch.uint8 and set(b.unique().tolist()) <= {0, 1}
    assert torch.equal(bits_to_codes(b), codes.detach())          # bits -> codes -> bits is lossless
    assert torch.equal(codes_to_bits(bits_to_codes(b)), b)
    # straight-through: the gradient is that of tanh, not zero
    weights = torch.randn_like(z)
    (codes * weights).sum().backward()
    expected = weights * (1 - torch.tanh(z.detach()) ** 2)
    assert torch.allclose(z.grad, expected, atol=1e-6)
    assert z.grad.abs().sum() > 0


def test_index_only_where_it_fits():
    bits = torch.randint(0, 2, (5, 63), dtype=torch.uint8)
    assert torch.equal(index_to_bits(bits_to_index(bits), 63), bits)
    assert bits_to_index(torch.tensor([[1, 0, 1]])).item() == 5
    with pytest.raises(UserError, match="64 bits per token have no int64 index"):
        bits_to_index(torch.zeros(1, 64, dtype=torch.uint8))


def test_bit_budget_arithmetic():
    assert latent_bits("fsq", 16, 16, bits=16) == 4096          # released BAR-FSQ at 256px
    assert latent_bits("fsq", 32, 32, bits=10) == 10240         # 512px
    assert latent_bits("ae", 16, 16, channels=16) == 65536      # MAR's KL-16: 16 channels x 16 bits
    assert latent_bits("ae", 4, 4, channels=1) == 256


@pytest.mark.parametrize("bits", [0, 300, -1])
def test_bad_bits_are_one_line_errors(bits):
    tok = OmegaConf.create({"kind": "fsq", "bits": bits, "channels": None, "arch": "conv"})
    with pytest.raises(UserError) as err:
        validate_tokenizer_config(tok)
    assert "\n" not in str(err.value) and f"tokenizer.bits={bits}" in str(err.value)


@pytest.mark.parametrize("overrides,dim,total", [
    (["tokenizer=fsq", "tokenizer.bits=12"], 12, 16 * 12),
    (["tokenizer=ae", "tokenizer.channels=3"], 3, 16 * 16 * 3),
    (["tokenizer=ae", "tokenizer.channels=2", "tokenizer.kl=true"], 2, 16 * 16 * 2),
])
def test_conv_tokenizer_shapes(overrides, dim, total):
    cfg = compose(["profile=smoke", *overrides])
    tok = Tokenizer(cfg.tokenizer, cfg.data.in_channels, cfg.data.resolution).eval()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    tokens = tok.encode(x)
    assert tokens.shape == (3, 16, dim) and tok.grid == 4 and tok.total_bits == total
    assert tok.decode(tokens).shape == x.shape
    recon, aux = tok.train()(x)
    assert recon.shape == x.shape and aux.ndim == 0


def test_paper_vit_tokenizer_shapes_on_meta():
    cfg = compose(["profile=paper", "data.root=/nonexistent", "tokenizer.arch=vit"])
    with torch.device("meta"):
        tok = Tokenizer(cfg.tokenizer, 3, 256)
        tokens_in = torch.empty(2, 3, 256, 256)
        z = tok.encoder(tokens_in)
        assert z.shape == (2, 16, 16, 16)                        # 16x16 grid, 16 bits per token
        assert tok.decoder(z).shape == (2, 3, 256, 256)
    assert tok.total_bits == 4096
    enc = sum(p.numel() for p in tok.encoder.parameters())
    dec = sum(p.numel() for p in tok.decoder.parameters())
    assert 0.38e9 < enc < 0.45e9      # so400m-shaped encoder
    assert 0.29e9 < dec < 0.32e9      # ViT-L-shaped decoder
