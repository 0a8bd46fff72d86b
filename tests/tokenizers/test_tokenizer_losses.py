"""The release's tokenizer losses (bar/losses/): each part against a direct computation on fixed tensors, the
weighted total, the GAN start step and the discriminator's own step, and the weight-file checks. Tiny random
networks only; nothing is downloaded."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bar import UserError
from bar.tokenizers.losses.distillation import FeatureProjector, distillation_loss
from bar.tokenizers.losses.frozen import IMAGENET_MEAN, IMAGENET_STD, vgg16_features
from bar.tokenizers.losses.gan import BatchNormLocal, DinoDiscriminator, hinge_d_loss, hinge_g_loss, to_uint8_levels
from bar.training.discriminator import DiscriminatorTrainer, release_cosine_lr
from bar.tokenizers.losses.gram import GramLoss, gram_matrix
from bar.tokenizers.losses.perceptual import LPIPS, FeatureTaps, LogitsDistance, PerceptualLoss
from bar.tokenizers.losses.combined import (RELEASE_WEIGHTS, LossWeights, TokenizerLoss, build_tokenizer_loss,
    needed_weight_keys)
from bar.tokenizers.losses.reconstruction import l1_loss, l2_loss
from bar.tokenizers.losses.weights import check_weight_files, default_lpips_path


def imagenet(x_pm1):
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x_pm1 + 1) / 2 - mean) / std


def tiny_vit(img=16, patch=8, dim=16, depth=3):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=2, num_classes=0,
                             act_layer="gelu_tanh")


def tiny_discriminator():
    return DinoDiscriminator(tiny_vit(), key_depths=(0, 2), kernel=3)


# ----------------------------------------------------------------------------------------------------- parts
def test_l1_l2_on_fixed_tensors():
    x = torch.zeros(1, 1, 1, 2)
    y = torch.tensor([[[[0.5, -1.5]]]])
    assert l1_loss(x, y).item() == pytest.approx((0.5 + 1.5) / 2)
    assert l2_loss(x, y).item() == pytest.approx((0.25 + 2.25) / 2)


def test_gram_matrix_normalised_by_c_h_w():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)          # C = 2 channels, H*W = 2 positions
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / (2 * 1 * 2)
    assert torch.allclose(gram_matrix(f)[0], expected)


def test_gram_loss_counts_relu_outputs_twice_as_the_release():
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1),
                          nn.ReLU())
    x, y = torch.rand(2, 3, 12, 12) * 2 - 1, torch.rand(2, 3, 12, 12) * 2 - 1
    loss = GramLoss(stack, size=8)(x, y)

    def term(a, b):
        return (gram_matrix(a) - gram_matrix(b)).pow(2).mean()

    xs = [imagenet(F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)) for t in (x, y)]
    outs = []
    for t in xs:
        r1 = F.relu(stack[0](t))
        p = F.max_pool2d(r1, 2)
        r2 = F.relu(stack[3](p))
        outs.append((r1, p, r2))
    (r1x, px, r2x), (r1y, py, r2y) = outs
    expected = 2 * term(r1x, r1y) + term(px, py) + 2 * term(r2x, r2y)
    assert torch.allclose(loss, expected, rtol=1e-5)

    # the release's own loop (in-place ReLUs overwrite the recorded conv outputs) gives the same number
    inplace = nn.Sequential(*[nn.ReLU(inplace=True) if isinstance(m, nn.ReLU) else m for m in stack])
    release = 0.0
    with torch.no_grad():
        lx, ly, a, b = [], [], xs[0].clone(), xs[1].clone()
        for layer in inplace:
            a, b = layer(a), layer(b)
            lx.append(a)
            ly.append(b)
        for fa, fb in zip(lx, ly):
            release += term(fa, fb)
    assert torch.allclose(loss.detach(), release, rtol=1e-5)


def test_distillation_mse_and_no_gradient_to_the_frozen_target():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    loss = distillation_loss(pred, target)
    assert loss.item() == pytest.approx((0 + 4 + 9 + 16) / 4)
    loss.backward()
    assert target.grad is None and pred.grad is not None
    assert FeatureProjector(8, target_width=6, hidden=10)(torch.zeros(1, 3, 8)).shape == (1, 3, 6)


def test_hinge_losses_on_fixed_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    assert hinge_g_loss(fake).item() == pytest.approx(0.5 / 3)


def test_fakes_rounded_to_uint8_levels():
    x = torch.tensor([0.999, -2.0, 0.0, 0.5])
    expected = torch.tensor([255.0, 0.0, 128.0, 191.0]) / 127.5 - 1       # round((x + 1) * 127.5), half to even
    assert torch.allclose(to_uint8_levels(x), expected)


def test_lpips_is_a_normalised_feature_distance():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1, stride=2),
                           nn.ReLU())
    model = LPIPS(FeatureTaps(layers, (2, 4)), channels=(4, 5))
    with torch.no_grad():
        model.lins[0].weight.copy_(torch.arange(1.0, 5.0).view(1, 4, 1, 1) / 10)
        model.lins[1].weight.copy_(torch.arange(1.0, 6.0).view(1, 5, 1, 1) / 10)
    x, y = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    xs, ys = (x - shift) / scale, (y - shift) / scale
    fx1, fy1 = layers[1](layers[0](xs)), layers[1](layers[0](ys))
    fx2, fy2 = layers[3](layers[2](fx1)), layers[3](layers[2](fy1))
    expected = torch.zeros(2)
    for a, b, w in ((fx1, fy1, torch.arange(1.0, 5.0) / 10), (fx2, fy2, torch.arange(1.0, 6.0) / 10)):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        expected += ((na - nb).pow(2) * w.view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    assert torch.allclose(model(x, y).view(2), expected, rtol=1e-5)


def test_lpips_matches_the_lpips_package_with_the_same_vgg(tmp_path, monkeypatch):
    """Full-size VGG16 (random weights, written as a torchvision file) and the package's linear layers: our LPIPS
    equals lpips.LPIPS(net='vgg') with the same VGG16 on 32 x 32 images."""
    import copy
    from types import SimpleNamespace

    import lpips

    torch.manual_seed(0)
    features = vgg16_features(random_init=True)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    ours = LPIPS.from_files(path, default_lpips_path())
    # the package builds torchvision's whole VGG16 (a 120M-weight classifier it drops): hand it our stack instead
    monkeypatch.setattr(lpips.pretrained_networks.tv, "vgg16",
                        lambda **kwargs: SimpleNamespace(features=copy.deepcopy(features)))
    ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x, y), ref(x, y), rtol=1e-4, atol=1e-6)


def test_logits_distance_resizes_normalises_and_takes_the_mse():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1

    def feats(t):
        return net(imagenet(F.interpolate(t, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)))

    assert torch.allclose(LogitsDistance(net, size=8)(x, y), F.mse_loss(feats(x), feats(y)))


class Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = torch.as_tensor(value)

    def forward(self, x, y):
        return self.value + 0 * y.sum()


def test_perceptual_mix_is_the_release_weighted_average():
    x = torch.zeros(2, 3, 4, 4)
    p = PerceptualLoss(Const(torch.tensor([0.2, 0.4]).view(2, 1, 1, 1)), Const(2.0), 1.0, 0.1)
    assert p(x, x).item() == pytest.approx((1.0 * 0.3 + 0.1 * 2.0) / 1.1)


# ----------------------------------------------------------------------------------------------------- discriminator
def test_batchnorm_local_normalises_each_virtual_batch():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5) * 3 + torch.arange(16.0).view(16, 1, 1)
    out = BatchNormLocal(3, virtual_bs=8)(x).view(2, 8, 3, 5)
    assert torch.allclose(out.mean(dim=(1, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(out.var(dim=(1, 3), unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_discriminator_readouts_and_logit_shape():
    D = tiny_discriminator()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    logits = D(x)
    assert logits.shape == (4, 3 * 4)                     # 3 heads (embedding, blocks 0 and 2) x (16 / 8)^2 tokens
    vit = D.backbone
    h = torch.cat([vit.cls_token.expand(4, -1, -1), vit.patch_embed(imagenet(x))], 1) + vit.pos_embed
    for block in vit.blocks:
        h = block(h)
    assert torch.allclose(D.readouts(x)[-1], (h[:, 1:] + h[:, :1]).transpose(1, 2), atol=1e-5)
    assert sum(p.numel() for p in D.backbone.parameters() if p.requires_grad) == 0


def test_gan_term_zero_before_start_and_discriminator_untouched_by_generator_step():
    D = tiny_discriminator()
    loss = TokenizerLoss(LossWeights(l2=1.0, gan=0.5, gan_start=3), discriminator=D)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    recon = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    heads0 = {k: v.clone() for k, v in D.heads.state_dict().items()}

    total, parts = loss(x, recon, step=2)
    assert parts["gan"].item() == 0.0 and total.item() == pytest.approx(parts["l2"].item())
    assert all(torch.equal(v, D.heads.state_dict()[k]) for k, v in heads0.items())   # D not even run

    total, parts = loss(x, recon, step=3)
    assert parts["gan"].item() != 0.0
    total.backward()
    assert recon.grad is not None
    assert all(p.grad is None for p in D.heads.parameters())
    assert all(p.requires_grad for p in D.heads.parameters())                      # restored after the G pass


def test_discriminator_trainer_updates_only_when_stepped():
    D = tiny_discriminator()
    trainer = DiscriminatorTrainer(D, start=3, warmup=0, total=10)
    assert not trainer.active(2) and trainer.active(3)
    before = [p.detach().clone() for p in trainer.params]
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    stats = trainer.step(x, x + 0.3)
    assert trainer.steps == 1 and set(stats) == {"d_loss", "logits_real", "logits_fake", "d_lr"}
    assert stats["d_lr"] == pytest.approx(1e-4)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params))
    assert all(p.requires_grad is False for p in D.backbone.parameters())


def test_release_cosine_schedule():
    assert release_cosine_lr(0, 1e-4, 10, 100, 1e-5) == 0.0
    assert release_cosine_lr(5, 1e-4, 10, 100, 1e-5) == pytest.approx(5e-5)
    assert release_cosine_lr(10, 1e-4, 10, 100, 1e-5) == pytest.approx(1e-4)
    assert release_cosine_lr(55, 1e-4, 10, 100, 1e-5) == pytest.approx(1e-5 + 9e-5 * 0.5)
    assert release_cosine_lr(100, 1e-4, 10, 100, 1e-5) == pytest.approx(1e-5)


# ----------------------------------------------------------------------------------------------------- total
class MeanDisc(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.w * x.flatten(1)


def test_weighted_total_equals_the_release_sum():
    torch.manual_seed(0)
    w = LossWeights(l1=0.1, l2=1.0, perceptual=1.1, distillation=0.7, gram=10.0, gan=0.05, gan_start=5)
    loss = TokenizerLoss(w, perceptual=Const(0.3), gram=Const(0.02), discriminator=MeanDisc())
    x, y = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    pred, target = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    total, parts = loss(x, y, step=7, distill_pred=pred, distill_target=target)
    expected = (0.1 * (x - y).abs().mean() + 1.0 * (x - y).pow(2).mean() + 1.1 * 0.3
                + 0.7 * (pred - target).pow(2).mean() + 10.0 * 0.02 + 0.05 * -(2.0 * y).mean())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["gram"].item() == pytest.approx(0.02) and parts["perceptual"].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="distill_pred"):
        loss(x, y, step=7)


# ----------------------------------------------------------------------------------------------------- config, files
def test_release_weights_and_needed_files():
    assert RELEASE_WEIGHTS == LossWeights(l1=0.1, l2=1.0, perceptual=1.1, lpips=1.0, convnext=0.1,
                                          distillation=0.7, gram=10.0, gan=0.05, gan_start=100_000)
    assert needed_weight_keys(RELEASE_WEIGHTS) == ["vgg16", "lpips", "convnext_s", "dino_vits"]
    assert needed_weight_keys(LossWeights(l1=0.1, l2=1.0)) == []
    assert needed_weight_keys(LossWeights(gram=1.0)) == ["vgg16"]


def test_loss_weights_from_a_config_node():
    w = LossWeights.from_node({"l1": 0.1, "l2": 1.0, "kl": 0.0, "gan": 0.05, "gan_start": 100000})
    assert (w.l1, w.l2, w.gan, w.gan_start, w.perceptual) == (0.1, 1.0, 0.05, 100000, 0.0)
    with pytest.raises(UserError, match=r"tokenizer\.loss\.percetual: unknown loss weight"):
        LossWeights.from_node({"percetual": 1.1})
    with pytest.raises(UserError, match="must be >= 0"):
        LossWeights.from_node({"l1": -1})


def test_missing_weight_file_fails_in_one_line_naming_key_and_file(tmp_path):
    missing = tmp_path / "convnext_small.pth"
    with pytest.raises(UserError) as err:
        check_weight_files({"convnext_s": str(missing)}, ["convnext_s"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"tokenizer weight files missing: tokenizer.weights.convnext_s={missing} (no such file")
    assert "convnext_small-0c510722.pth" in message and "tokenizer.weights.KEY=PATH" in message

    with pytest.raises(UserError, match=r"^tokenizer weight files missing: tokenizer\.weights\.dino_vits \(unset") \
            as err:
        check_weight_files({}, ["dino_vits"])
    assert "\n" not in str(err.value)
    assert check_weight_files({}, ["lpips"]) == {"lpips": default_lpips_path()}    # the package's own file


def test_build_checks_files_before_building(tmp_path):
    with pytest.raises(UserError, match=r"^tokenizer weight files missing: tokenizer\.weights\.vgg16 \(unset"):
        build_tokenizer_loss(RELEASE_WEIGHTS, {})
    bad = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match=r"^tokenizer\.weights\.vgg16: .* does not fit") as err:
        build_tokenizer_loss({"gram": 10.0}, {"vgg16": str(bad)})
    assert "\n" not in str(err.value)


def test_pixel_only_recipe_needs_no_files():
    loss = build_tokenizer_loss({"l1": 0.1, "l2": 1.0}, None)
    x = torch.zeros(1, 3, 4, 4)
    total, parts = loss(x, x + 1, step=0)
    assert total.item() == pytest.approx(0.1 + 1.0) and math.isclose(parts["gan"].item(), 0.0)


def test_dino_backbone_from_a_file_zeroes_k_biases_and_keeps_the_logits(tmp_path):
    from bar.tokenizers.losses.gan import dino_vit_small

    vit = tiny_vit()
    with torch.no_grad():
        for block in vit.blocks:
            block.attn.qkv.bias.normal_()
    path = tmp_path / "dino_vit_small_patch8_224.pth"
    torch.save(vit.state_dict(), path)
    loaded = dino_vit_small(path, img_size=16, embed_dim=16, depth=3, num_heads=2)
    assert loaded.patch_embed.proj.kernel_size == (8, 8)                     # patch size read from the file
    bias = loaded.blocks[0].attn.qkv.bias
    assert torch.all(bias[16:32] == 0) and torch.equal(bias[:16], vit.blocks[0].attn.qkv.bias[:16])
    torch.manual_seed(1)
    a = DinoDiscriminator(vit, key_depths=(0, 2), kernel=3)
    torch.manual_seed(1)
    b = DinoDiscriminator(loaded, key_depths=(0, 2), kernel=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)            # a k-bias does not change attention
