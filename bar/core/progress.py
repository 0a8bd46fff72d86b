"""Progress of long work (training, pretokenization, sampling, reconstruction): a tqdm bar with rate and ETA on a
terminal; in a log file (stderr is not a TTY: SLURM logs, `make demo > log`) one plain line per 10% instead, so logs
stay readable. Only rank 0 reports. Each line and bar starts with the label of what the process works on (the runner
sets the point's name), so the lines of points running side by side can be told apart:

    set_label("mbm-16b")
    with Progress(total, "train generator", unit="step") as bar:   # [mbm-16b] train generator: 30/300 step (10%), ...
        bar.update(1)"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from bar.core import distributed

MIN_GAP_S = 5.0   # in logs: a line per 10%, but not more often than this (the last line always)

_label: str | None = None   # what this process works on (bar.orchestration.runner: the point's name)


def set_label(label: str | None) -> None:
    """Start every later progress line and bar of this process with `[label] ` (None: no label)."""
    global _label
    _label = label or None


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", scale: float = 1.0, initial: int = 0):
        """`scale`: items per unit for the rate shown (e.g. images per step)."""
        desc = f"[{_label}] {desc}" if _label else desc
        self.total, self.desc, self.unit, self.scale = max(1, int(total)), desc, unit, scale
        self.done, self.start, self.next_line, self.last_line = initial, time.perf_counter(), 0.1, 0.0
        self.enabled = distributed.is_main()
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=self.total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                        file=sys.stderr) if self.enabled and self.tty else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (self.done >= self.total or (self.done / self.total >= self.next_line - 1e-9 and
                                                             time.perf_counter() - self.last_line >= MIN_GAP_S)):
            self._line()
            self.last_line = time.perf_counter()
            while self.next_line <= self.done / self.total:
                self.next_line += 0.1

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        per = f", {rate * self.scale:.1f} img/s" if self.scale != 1.0 else f", {rate:.1f} {self.unit}/s"
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%){per}, "
              f"ETA {_duration(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds != seconds:   # NaN
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
