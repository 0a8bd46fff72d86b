"""A training run's checkpoints: `folder/ckpt-<step>.pt`, plain torch files with their SHA-256 beside them in
`ckpt-<step>.pt.sha256` (bar.core.files: atomic, streamed to disk, verified on load), the newest few kept, a
corrupt newest one set aside for its predecessor. A write that fails (a full disk) raises and leaves the folder as it
was: the last complete checkpoint is still the newest. When to write one is bar.training.loop.Checkpointing's."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bar.core.files import CorruptCheckpoint, checksum_path, is_temporary, load_verified, save_atomic

log = logging.getLogger("bar")

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


class CheckpointDir:
    """`folder/ckpt-<step>.pt`, newest last; keeps the `keep` newest (at least 2, so a corrupt last one has a
    predecessor)."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(2, int(keep))

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def path(self, step: int) -> Path:
        return self.folder / f"ckpt-{step:09d}.pt"

    def save(self, state: dict, step: int) -> Path:
        path = save_atomic(state, self.path(step))
        for old in self.steps()[:-self.keep]:
            self._remove(old)
        return path

    def _remove(self, step: int) -> None:
        self.path(step).unlink(missing_ok=True)
        checksum_path(self.path(step)).unlink(missing_ok=True)

    def load_latest(self, map_location="cpu") -> dict | None:
        """The newest checkpoint that verifies; corrupt ones are reported, renamed aside and skipped. Temp files of
        writes that never finished (a killed job, a full disk) are removed: one job at a time uses the folder."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if is_temporary(path):
                    path.unlink(missing_ok=True)
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return load_verified(path, map_location)
            except (CorruptCheckpoint, OSError, EOFError, RuntimeError) as err:
                log.warning("checkpoint %s is unusable (%s): falling back to the previous one", path, err)
                try:
                    path.rename(path.with_suffix(".corrupt"))
                    checksum_path(path).rename(checksum_path(path.with_suffix(".corrupt")))
                except OSError:
                    pass
        return None

    def clear(self) -> None:
        for step in self.steps():
            self._remove(step)
        for orphan in self.folder.glob("ckpt-*.pt.sha256") if self.folder.is_dir() else ():
            orphan.unlink(missing_ok=True)       # of a write killed between its two renames
