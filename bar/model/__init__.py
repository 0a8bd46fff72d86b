"""The generator: the causal AR backbone, the token heads (each owning its loss and its one sampler), the sampling
loop and the release's checkpoint key map."""
