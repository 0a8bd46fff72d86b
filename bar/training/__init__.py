"""Training: one loop for every model, optimizer groups, EMA, checkpoints, stop signals, the tokenizer recipe's
hooks."""
