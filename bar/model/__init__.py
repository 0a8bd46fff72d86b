"""The generator: the causal AR backbone (generator.py), the token heads (heads/: each owning its loss and its one
sampler), the sampling loop (sampling.py) with its cached decoder (decoding.py), and the release's checkpoint key map
(release_keys.py)."""
