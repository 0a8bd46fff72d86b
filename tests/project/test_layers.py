"""The package's structure, checked: the import contracts of .importlinter (layers; no config or tracking stack
below orchestration; analysis away from the sweep driver; `make check` runs lint-imports on the tree), each shown to
bite by a planted violation; no imports hidden inside functions; functions short enough to read."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")
# Optional heavy dependencies, imported where they are needed (each only by the data or model that uses it).
LAZY_IMPORTS = {"sklearn.datasets",                       # the digits data set
                "transformers", "transformers.models.siglip2.modeling_siglip2",   # the release tokenizer's SigLIP2
                "timm.models.vision_transformer",          # the GAN discriminator's DINO ViT-S
                "lpips"}                                   # the file of LPIPS's linear layers it ships


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def _plant(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """A copy of bar/ and analysis/ with `line` appended to `module` (a path relative to the root), linted."""
    for package in ("bar", "analysis"):
        shutil.copytree(ROOT / package, tmp_path / package, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    with open(tmp_path / module, "a") as handle:
        handle.write(f"\n{line}  # planted violation\n")
    return _lint(tmp_path)


LAYERS = "bar is layered: orchestration > training > eval | model | tokenizers > data > core"
NO_CONFIG = "core, data, model, tokenizers, eval and training import no hydra, omegaconf or mlflow"
ANALYSIS = "analysis imports neither the sweep driver nor the runner nor its stages"


@pytest.mark.parametrize("module,line,chain,contract", [
    ("bar/model/layers.py", "import bar.orchestration.runner", "bar.model.layers -> bar.orchestration.runner", LAYERS),
    ("bar/data/loader.py", "import bar.training.loop", "bar.data.loader -> bar.training.loop", LAYERS),
    ("bar/model/layers.py", "import hydra", "bar.model.layers -> hydra", NO_CONFIG),
    ("bar/eval/adm.py", "import mlflow", "bar.eval.adm -> mlflow", NO_CONFIG),
    ("analysis/figures.py", "import bar.orchestration.sweeps", "analysis.figures -> bar.orchestration.sweeps",
     ANALYSIS),
], ids=["layer-order", "data-above-training", "hydra-in-model", "mlflow-in-eval", "sweeps-in-analysis"])
def test_a_planted_violation_breaks_its_contract(tmp_path, module, line, chain, contract):
    proc = _plant(tmp_path, module, line)
    report = re.sub(r"\s+", " ", proc.stdout)
    assert proc.returncode != 0
    assert f"{contract} BROKEN" in report and chain in report, proc.stdout[-3000:]


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_import_inside_a_function_but_optional_heavy_ones():
    hidden = []
    for path in sorted((ROOT / "bar").rglob("*.py")):
        for fn in _functions(path):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                hidden += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n not in LAZY_IMPORTS]
    assert not hidden, hidden


def test_every_function_in_bar_and_analysis_is_under_60_lines():
    paths = [path for package in ("bar", "analysis") for path in sorted((ROOT / package).rglob("*.py"))]
    assert any(path.parent.name == "analysis" for path in paths)
    long = [f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path in paths for fn in _functions(path) if fn.end_lineno - fn.lineno + 1 >= 60]
    assert not long, long
