"""The BAR release's tokenizer losses, one module per part (reconstruction, perceptual, distillation, gram, gan),
combined by `recipe.TokenizerLoss`. Frozen networks load from local files named in `tokenizer.weights` (weights.py).

    from bar.losses import RELEASE_WEIGHTS, TokenizerLoss, build_tokenizer_loss, DiscriminatorTrainer
"""

from bar.losses.gan import DinoDiscriminator, DiscriminatorTrainer, hinge_d_loss, hinge_g_loss
from bar.losses.recipe import RELEASE_WEIGHTS, LossWeights, TokenizerLoss, build_tokenizer_loss, needed_weight_keys
from bar.losses.weights import WEIGHT_FILES, check_weight_files

__all__ = ["DinoDiscriminator", "DiscriminatorTrainer", "LossWeights", "RELEASE_WEIGHTS", "TokenizerLoss",
           "WEIGHT_FILES", "build_tokenizer_loss", "check_weight_files", "hinge_d_loss", "hinge_g_loss",
           "needed_weight_keys"]
