"""The static checks `make check` runs (ruff, mypy) catch what a refactor leaves behind: a call to a name a module
no longer has fails there, not 100k steps into a job. Each check is run on a planted file that uses the real package."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent


def _check(tool: list[str], tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    return subprocess.run([*tool, str(planted)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "MYPYPATH": str(ROOT), "PYTHONPATH": str(ROOT)})


def test_mypy_fails_on_an_attribute_a_module_does_not_have(tmp_path):
    ok = _check([str(BIN / "mypy"), "--no-incremental", "--ignore-missing-imports", "--follow-imports=silent"],
                tmp_path, "from bar.core import distributed\n\ndistributed.all_reduce_gradients([])\n")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    planted = _check([str(BIN / "mypy"), "--no-incremental", "--ignore-missing-imports", "--follow-imports=silent"],
                     tmp_path, "from bar.core import distributed\n\ndistributed.all_reduce_gradient_norms([])\n")
    assert planted.returncode != 0
    assert 'Module has no attribute "all_reduce_gradient_norms"' in planted.stdout


def test_ruff_fails_on_an_undefined_name(tmp_path):
    planted = _check([str(BIN / "ruff"), "check", "--no-cache"], tmp_path,
                     "from bar.core import distributed\n\n\ndef f():\n    return distributed.rank() + undefined_name\n")
    assert planted.returncode != 0 and "F821" in planted.stdout
