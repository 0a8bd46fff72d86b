"""Stopping cleanly on SLURM's signals (timeouts, preemption, `scontrol requeue`).

`install_stop_handlers()` (called inside SLURM jobs) turns submitit's timeout/preemption signal (SIGUSR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise) and SIGTERM (scancel, requeue, preemption) into a flag. A running training
loop checks the flag after each optimizer step, writes a checkpoint at that consistent point and then calls
`act_on_stop()`: for submitit's signal that is submitit's own handler (checkpoint the submission and requeue the job:
its checkpoint/requeue protocol), for SIGTERM a plain exit (SLURM is already requeueing or cancelling the job).
Outside a training loop the signal is acted on at once."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

log = logging.getLogger("bar")

_requested: int = 0           # signal number of a pending stop request, 0 when none
_original: dict[int, object] = {}
_training_depth = 0
_before_acting: list = []    # callbacks(signum) run before a stop is acted on (bar.orchestration.runner: tag the run)


def submitit_signal() -> signal.Signals:
    """The signal submitit sends before a time limit or on preemption (its SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask a running training loop to checkpoint and stop at the end of its current step (tests call this too)."""
    global _requested
    _requested = int(signum)


def stop_requested() -> int:
    return _requested


def clear_stop() -> None:
    global _requested
    _requested = 0


def _handler(signum, frame):
    log.warning("received %s: %s", signal.Signals(signum).name,
                "checkpointing at the end of this step" if _training_depth else "stopping now")
    request_stop(signum)
    if not _training_depth:
        act_on_stop(signum)


def install_stop_handlers(signals=None) -> None:
    """Route `signals` (default: submitit's signal and SIGTERM) through the stop flag, remembering the handlers
    already installed (submitit's)."""
    for sig in signals or (submitit_signal(), signal.SIGTERM):
        current = signal.getsignal(sig)
        if current is not _handler:
            _original[int(sig)] = current
            signal.signal(sig, _handler)


def act_on_stop(signum: int | None = None):
    """What the stop request asked for, once the state is safe on disk: submitit's requeue for its signal (it exits
    the process on rank 0), else exit. Never returns."""
    signum = int(signum or _requested or signal.SIGTERM)
    for callback in list(_before_acting):   # now: submitit's requeue makes SLURM SIGTERM this job within moments
        callback(signum)
    original = _original.get(signum)
    if signum == submitit_signal() and callable(original):
        original(signum, None)   # submitit: checkpoint the submission, requeue the job, exit
    raise SystemExit(128 + signum)


@contextmanager
def before_acting_on_stop(callback):
    """While inside, `callback(signum)` runs when a stop is acted on, before submitit's requeue or the exit."""
    _before_acting.append(callback)
    try:
        yield
    finally:
        _before_acting.remove(callback)


@contextmanager
def training_section():
    """While inside, a stop signal only sets the flag; the loop acts on it at a step boundary."""
    global _training_depth
    _training_depth += 1
    try:
        yield
    finally:
        _training_depth -= 1
