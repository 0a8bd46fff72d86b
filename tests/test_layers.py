"""The package's structure, checked: layers without cycles (import-linter, also run by `make test`), a planted
violation caught, no imports hidden inside functions, functions short enough to read."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_layers_contract_is_kept():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_build(tmp_path):
    shutil.copytree(ROOT / "bar", tmp_path / "bar", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    with open(tmp_path / "bar" / "layers.py", "a") as handle:
        handle.write("\nimport bar.orchestration.runner  # planted violation\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "bar.model.layers is not allowed to import bar.orchestration.runner" in proc.stdout


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


def test_every_function_in_bar_is_under_60_lines():
    long = [f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path in sorted((ROOT / "bar").rglob("*.py")) for fn in _functions(path)
            if fn.end_lineno - fn.lineno + 1 >= 60]
    assert not long, long
