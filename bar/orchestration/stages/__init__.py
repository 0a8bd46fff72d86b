"""The stages of one sweep point, each a function with plain inputs and outputs (no MLflow, no Hydra globals):
`tokenizer` (train or reuse, reconstruct, rFID) and `generator` (codes, training, sampling, gFID).
bar.orchestration.runner calls them in order and logs what they return."""
