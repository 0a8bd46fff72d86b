"""The tokenizer recipe as the training loop runs it: the encoder's learning rate at 0.1x in the optimizer's groups,
SigLIP2 initialised from a release-format checkpoint, the continuous twin of BAR-FSQ, the EMA copy is what is kept."""

import torch

from bar.orchestration.build import build_tokenizer
from bar.orchestration.config import compose
from bar.tokenizers.release import ReleaseTokenizer
from bar.orchestration.stages.tokenizer import new_tokenizer, tokenizer_recipe
from bar.training.loop import TrainHook, train
from release_files import release_state_dict

PAPER_TINY = ["profile=paper", "data.root=/unused", "device=cpu", "tokenizer.size=tiny", "tokenizer.loss.perceptual=0",
              "tokenizer.loss.gram=0", "tokenizer.loss.gan=0"]


class LearningRates(TrainHook):
    def __init__(self):
        self.seen = []

    def after_step(self, state):
        self.seen.append([(g.get("lr_mult", 1.0), g["lr"]) for g in state.optimizer.param_groups])


def test_the_encoder_trains_at_a_tenth_of_the_learning_rate():
    cfg = compose([*PAPER_TINY, "tokenizer.train.warmup=2", "tokenizer.train.steps=4"])
    tokenizer = new_tokenizer(cfg, torch.device("cpu"))
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    hook = LearningRates()
    train(tokenizer, lambda module, batch, step, g: module(batch[0])[0].pow(2).mean(),
          iter([(images, torch.zeros(2))] * 4), tokenizer_recipe(cfg, torch.device("cpu")), hooks=[hook])
    for groups in hook.seen[1:]:
        encoder = [lr for mult, lr in groups if mult == 0.1]
        others = [lr for mult, lr in groups if mult == 1.0]
        assert encoder and others and all(abs(e - 0.1 * others[0]) < 1e-12 for e in encoder)
    trainable = {n for n, p in tokenizer.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.siglip.") for n in trainable)          # the SigLIP2 tower stays frozen
    assert any(n.startswith("encoder.trainable_encoder.") for n in trainable)


def test_siglip2_initialisation_comes_from_a_release_checkpoint(tmp_path):
    state = release_state_dict(bits=16, res=256, seed=3)
    torch.save(state, tmp_path / "bar_fsq_16bits.bin")
    cfg = compose([*PAPER_TINY, f"tokenizer.weights.siglip2={tmp_path / 'bar_fsq_16bits.bin'}"])
    tokenizer = new_tokenizer(cfg, torch.device("cpu"))
    for key, value in state.items():
        if key.startswith("encoder.siglip.encoder."):
            suffix = key[len("encoder.siglip.encoder."):]
            assert torch.equal(tokenizer.encoder.siglip.encoder.state_dict()[suffix], value)
            assert torch.equal(tokenizer.encoder.trainable_encoder.state_dict()[suffix], value)   # copied


def test_the_continuous_twin_has_the_same_encoder_and_decoder():
    cfg = compose([*PAPER_TINY, "tokenizer=ae", "tokenizer.channels=4", "tokenizer.arch=release", "tokenizer.patch=16",
                   "tokenizer.width=null", "tokenizer.num_down=null", "tokenizer.vit=null"])
    twin = build_tokenizer(cfg)
    fsq = ReleaseTokenizer(16, 256, "tiny")
    assert isinstance(twin, ReleaseTokenizer) and twin.kind == "ae" and twin.total_bits == 16 * 16 * 16 * 4
    shared = {k: v.shape for k, v in twin.state_dict().items() if not k.startswith("quantize.")}
    assert shared == {k: v.shape for k, v in fsq.state_dict().items() if not k.startswith("quantize.")}
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    z = twin.encode(x)
    assert z.shape == (2, 256, 4) and z.dtype == torch.float32
    assert twin.decode(z).shape == (2, 3, 256, 256)
    recon, aux = twin(x)
    assert recon.shape == x.shape and float(aux) == 0.0
