"""submitit's status polling, said once: on a cluster without SLURM accounting every poll logs "Bypassing sacct
error ... status may be inaccurate" (through each of its handlers and Hydra's) and falls back to squeue, which works.
The first such warning becomes one plain line; the repeats are dropped."""

from __future__ import annotations

import logging

NOTE = "SLURM accounting (sacct) is not available here: job states come from squeue (said once)"


class SacctOnce(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = NOTE, ()
        return True


def quiet_sacct_polling() -> None:
    """Install the filter on submitit's logger (idempotent)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, SacctOnce) for f in logger.filters):
        logger.addFilter(SacctOnce())
