import re

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: pytest ships tomli, the same parser
    import tomli as tomllib

import yaml
from conftest import ROOT


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted


def test_top_level_layout():
    for name in ("bar", "sweeps", "analysis", "paper_figs", "tests", "environment.yml", "README.md", "run.py"):
        assert (ROOT / name).exists(), name
