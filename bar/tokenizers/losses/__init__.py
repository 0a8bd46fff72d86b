"""The BAR release's tokenizer losses, one module per part (reconstruction, perceptual, distillation, gram, gan),
weighted and summed by `combined.TokenizerLoss`. Frozen networks load from local files named in
`tokenizer.weights` (weights.py); the discriminator's optimizer is bar.training.discriminator."""
