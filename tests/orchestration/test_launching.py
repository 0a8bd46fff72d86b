"""Launching apart from running, on Hydra's public API: no module of the project reaches into Hydra's private
modules or fields, and no module-global flag switches what a function does (the launcher starts, awaits and collects
point processes; a point process runs its point). A sweep file expands without torch or the runner."""

import ast
import subprocess
import sys

from conftest import ROOT

SOURCES = [*sorted((ROOT / "bar").rglob("*.py")), *sorted((ROOT / "hydra_plugins").rglob("*.py")), ROOT / "run.py",
           *sorted((ROOT / "analysis").rglob("*.py"))]
FORBIDDEN = ("hydra._internal", "_return_value", "_start_only", "started_not_awaited")
# where a `global` statement would be a mode switch of the launch path (bar.training.signals keeps the flag that a
# signal handler sets, which is what a handler can do)
NO_GLOBALS = ("bar/orchestration", "hydra_plugins", "run.py", "analysis")


def _violations(paths, root=ROOT) -> list[str]:
    found = [f"{path.relative_to(root)}:{n + 1}: {word}" for path in paths
             for n, line in enumerate(path.read_text().splitlines()) for word in FORBIDDEN if word in line]
    return found + [f"{path.relative_to(root)}:{node.lineno}: global {', '.join(node.names)}" for path in paths
                    if str(path.relative_to(root)).startswith(NO_GLOBALS)
                    for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global)]


def test_no_private_hydra_and_no_module_global_mode_flags():
    assert not _violations(SOURCES), _violations(SOURCES)


def test_the_check_sees_a_planted_private_import_and_mode_flag(tmp_path):
    planted = tmp_path / "bar" / "orchestration" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from hydra._internal.core_plugins.basic_launcher import BasicLauncher\n"
                       "_starting = False\n\n\ndef starting():\n    global _starting\n    _starting = True\n")
    assert _violations([planted], tmp_path) == ["bar/orchestration/planted.py:1: hydra._internal",
                                                "bar/orchestration/planted.py:6: global _starting"]


def test_a_sweep_file_expands_without_torch_or_the_runner():
    code = ("import sys\n"
            "from hydra.core.override_parser.overrides_parser import OverridesParser\n"
            "from bar.orchestration.sweep_points import expand_points\n"
            "points = expand_points(OverridesParser.create(), {'head': 'mbm,softmax'},\n"
            "                       [{'tokenizer.bits': '4,8'}, {'tokenizer': 'ae', 'tokenizer.channels': '2'}],\n"
            "                       ['head=mbm', 'seed=1,2'])\n"
            "print(len(points), sorted(points[0]))\n"
            "print([m for m in ('torch', 'bar.orchestration.runner') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, modules = proc.stdout.strip().splitlines()
    assert count == "6 ['head=mbm', 'seed=1', 'tokenizer.bits=4']"     # the command line wins over the file's head
    assert modules == "[]"


def test_an_argument_for_a_swept_key_narrows_only_the_grids_that_sweep_it():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bar.orchestration.sweep_points import expand_points

    grids = [{"tokenizer": "fsq", "tokenizer.bits": "4,8,16"}, {"tokenizer": "ae", "tokenizer.channels": "1,2,4"}]
    points = expand_points(OverridesParser.create(), {}, grids, ["tokenizer.bits=8", "tokenizer.channels=2", "seed=3"])
    assert sorted(sorted(p) for p in points) == [
        ["seed=3", "tokenizer.bits=8", "tokenizer=fsq"], ["seed=3", "tokenizer.channels=2", "tokenizer=ae"]]


def test_submitit_sacct_warnings_are_said_once(caplog):
    import logging

    from bar.orchestration.submitit_logs import NOTE, quiet_sacct_polling

    quiet_sacct_polling()
    quiet_sacct_polling()                                  # idempotent: one filter
    logger = logging.getLogger("submitit")
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for call in range(1, 4):
            logger.warning(f"Call #{call} - Bypassing sacct error Command 'sacct' returned 1, status may be inaccurate.")
        logger.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == [NOTE, "another warning"]
