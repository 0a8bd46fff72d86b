"""Tokenizers: binary FSQ and continuous autoencoders (conv / ViT), the release's BAR-FSQ, their training losses and
augmentation."""
