"""BAR reproduction harness: binary-FSQ tokenizers, AR generators with masked bit modeling, sweeps, evaluation."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class UserError(ValueError):
    """A mistake in the user's config or input: reported as one line, never as a traceback."""
