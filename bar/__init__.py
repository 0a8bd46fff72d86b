"""BAR reproduction harness: binary-FSQ tokenizers, AR generators with masked bit modeling, sweeps, evaluation."""

from bar.paths import PROJECT_ROOT, register_resolvers


class UserError(ValueError):
    """A mistake in the user's config or input: reported as one line, never as a traceback."""


# Jobs started by submitit compose their config before any project code runs; importing the package (which
# unpickling the task function does) is what makes the config's resolvers available there.
register_resolvers()

__all__ = ["PROJECT_ROOT", "UserError"]
