"""Where outputs live: the one place that decides it, for bar/ and analysis/ alike.

    outputs_dir()          BAR_OUTPUTS (made absolute) or <project>/outputs
    default_tracking_uri() MLFLOW_TRACKING_URI, or an absolute sqlite file in outputs_dir()

The composed config reads both through the resolvers `${bar_outputs:}` and `${bar_tracking_uri:}`
(bar.orchestration.resolvers), so `BAR_OUTPUTS=X make demo` and `make figures` agree on the store."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def outputs_dir() -> Path:
    """Absolute outputs folder: BAR_OUTPUTS if set (relative to the current directory), else <project>/outputs."""
    chosen = os.environ.get("BAR_OUTPUTS") or str(PROJECT_ROOT / "outputs")
    return Path(chosen).expanduser().resolve()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{outputs_dir()}/mlflow.db"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an sqlite tracking URI, None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
