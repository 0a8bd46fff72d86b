"""Progress lines in logs carry the label of the point they are about: points running side by side (`make demo`:
two at once) interleave their lines on one stderr."""

import pytest

from bar.core import progress
from bar.core.progress import Progress


@pytest.fixture(autouse=True)
def _no_label():
    progress.set_label(None)
    yield
    progress.set_label(None)


def _lines(capsys, steps: int) -> list[str]:
    with Progress(steps, "train tokenizer", unit="step") as bar:   # stderr captured: not a TTY, so plain lines
        for _ in range(steps):
            bar.update(1)
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_progress_lines_start_with_the_points_label(capsys):
    progress.set_label("mbm-16b")
    lines = _lines(capsys, 8)
    assert lines and all(line.startswith("[mbm-16b] train tokenizer: ") for line in lines)
    assert lines[-1].startswith("[mbm-16b] train tokenizer: 8/8 step (100%)")


def test_two_points_lines_tell_apart(capsys):
    progress.set_label("mbm-16b")
    first = _lines(capsys, 4)
    progress.set_label("softmax-8b")          # the next point of the same process (launcher=basic, tests)
    second = _lines(capsys, 4)
    assert first[-1].startswith("[mbm-16b] ") and second[-1].startswith("[softmax-8b] train tokenizer: 4/4")


def test_without_a_label_lines_are_as_before(capsys):
    assert _lines(capsys, 2)[-1].startswith("train tokenizer: 2/2 step")
