"""BAR reproduction harness: binary-FSQ tokenizers, AR generators with masked bit modeling, sweeps, evaluation.

Packages, lowest first (each imports only from the ones below it; .importlinter checks it):
    core           shared plumbing: paths, bit conventions, collectives over ranks, checksummed files, progress
    data           datasets, loaders, the packed-bit code store, the content-addressed cache
    model          the AR backbone, the token heads (one sampler each), the sampling loop, the release's key map
    tokenizers     binary FSQ and autoencoders, the release's BAR-FSQ, their losses and augmentation
    eval           FID / IS / precision-recall (torch-fidelity and the ADM protocol), feature networks
    training       one training loop, optimizer groups, EMA, checkpoints, stop signals
    orchestration  config schema, planning, the runner and its stages, sweeps, MLflow tracking, cost and memory
"""

from bar.core.paths import PROJECT_ROOT


class UserError(ValueError):
    """A mistake in the user's config or input: reported as one line, never as a traceback."""


__all__ = ["PROJECT_ROOT", "UserError"]
