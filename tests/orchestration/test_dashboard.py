"""Dashboard: `mlflow server` on a test store, checked through its REST API and in a headless browser.

Marked `dashboard` (deselected by `make test`). The browser test needs /usr/bin/chromium
(`apt-get install -y --no-install-recommends chromium fonts-dejavu-core`) and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.dashboard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900", "--virtual-time-budget=15000"]


def _store_builder():
    """tests/analysis/test_analysis.py's build_store, loaded by path (works whether or not tests/ is a package)."""
    spec = importlib.util.spec_from_file_location("_analysis_store", ROOT / "tests" / "analysis" / "test_analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _describe_codebook_scaling(uri: str) -> None:
    """What the sweep driver writes as a launch of sweeps/codebook_scaling.yaml ends (bar.orchestration.sweep_notes):
    the experiment's description, the launch's description and best_gfid, the headline view."""
    from analysis.runs import latest_parent_run
    from bar.orchestration.config import compose
    from bar.orchestration.planner import Plan
    from bar.orchestration.sweep_notes import LaunchNotes

    cfg = compose(["sweep=codebook_scaling", "profile=smoke", f"tracking.uri={uri}"], hydra_node=True)
    names = [f"{head}-{bits}b" for head in ("mbm", "softmax", "bitwise") for bits in (8, 16, 24)]
    plans = [Plan(name=name, signature="0" * 12, folder=Path("."), action="run") for name in names]
    LaunchNotes(cfg, latest_parent_run("codebook_scaling", uri), names, plans).finish(
        {"finished": 8, "infeasible": 1, "failed": 0}, interrupted=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    uri = _store_builder()(root / "store")
    _describe_codebook_scaling(uri)
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if _get(f"{base}/health", timeout=2).strip() == b"OK":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health within 90 s")
            time.sleep(0.5)
        yield {"base": base, "root": root, "uri": uri}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its workers), nothing else
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def _experiments(base: str) -> dict[str, str]:
    found = _post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    return {e["name"]: e["experiment_id"] for e in found}


def _points(base: str, experiment_id: str, extra: str = "") -> list[dict]:
    flt = "tags.role = 'point'" + (f" and {extra}" if extra else "")
    return _post(f"{base}/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [experiment_id], "filter": flt, "max_results": 200}).get("runs", [])


def test_rest_api_experiments_runs_metrics_artifacts(server):
    base = server["base"]
    exps = _experiments(base)
    assert {"bits_vs_rfid", "codebook_scaling", "patch_size"} <= set(exps)

    runs = _points(base, exps["codebook_scaling"])
    assert len(runs) == 9
    tags = {r["info"]["run_name"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    assert tags["softmax-24b"]["status"] == "infeasible" and tags["mbm-8b"]["status"] == "finished"
    assert all(t["sweep"] == "codebook_scaling" and "mlflow.parentRunId" in t for t in tags.values())

    (fsq,) = _points(base, exps["bits_vs_rfid"], "attributes.run_name = 'fsq-16b' and tags.status = 'finished'")
    metrics = {m["key"]: m["value"] for m in fsq["data"]["metrics"]}
    params = {p["key"]: p["value"] for p in fsq["data"]["params"]}
    assert metrics["rfid"] == 2.5 and metrics["total_bits"] == 256
    assert params["tokenizer.kind"] == "fsq" and params["tokenizer.bits"] == "16"  # params are strings
    run_id = fsq["info"]["run_id"]
    hist = json.loads(_get(f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=train_loss"))
    assert [m["value"] for m in sorted(hist["metrics"], key=lambda m: m["step"])] == [3.0, 2.0, 1.5, 1.2]

    listed = json.loads(_get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}"))
    assert {f["path"] for f in listed["files"]} == {"config.yaml", "recon_grid.png"}
    query = urllib.parse.urlencode({"path": "config.yaml", "run_uuid": run_id})
    assert b"kind: fsq" in _get(f"{base}/get-artifact?{query}")


def test_experiment_and_launch_described(server):
    """The experiment says which paper figure it reproduces; its launch has its headline number as its own metric."""
    base = server["base"]
    exp_id = _experiments(base)["codebook_scaling"]
    exp = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}"))["experiment"]
    tags = {t["key"]: t["value"] for t in exp["tags"]}
    assert tags["mlflow.note.content"].startswith("best gFID 7 (mbm-24b) · **Paper figure: codebook scaling")
    (launch,) = _post(f"{base}/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [exp_id], "filter": "tags.role = 'parent'"})["runs"]
    assert {m["key"]: m["value"] for m in launch["data"]["metrics"]}["best_gfid"] == 7.0


def test_figures_logged_to_parent_visible(server):
    """make_figures logs into the store the server reads; the parent run lists them under figures/."""
    from analysis.make_figures import main
    from analysis.runs import latest_parent_run

    assert main(["--tracking-uri", server["uri"], "--sweep", "codebook_scaling", "--format", "png",
                 "--out", str(server["root"] / "figs")]) == 0
    parent = latest_parent_run("codebook_scaling", server["uri"])
    query = urllib.parse.urlencode({"run_id": parent, "path": "figures"})
    listed = json.loads(_get(f"{server['base']}/api/2.0/mlflow/artifacts/list?{query}"))
    names = {f["path"] for f in listed["files"]}
    assert "figures/codebook_scaling.png" in names and "figures/REPORT.md" in names


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_browser_renders_runs(server, tmp_path):
    exp_id = _experiments(server["base"])["bits_vs_rfid"]
    url = f"{server['base']}/#/experiments/{exp_id}/runs"
    flags = BROWSER_FLAGS
    shot = tmp_path / "experiment.png"
    subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 20_000, "no (or a blank) screenshot"
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 900)
        colours = im.convert("RGB").resize((350, 225)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "screenshot is nearly uniform: page did not render"
    # the rendered DOM lists the runs (the parent launch runs are the top-level rows)
    dom = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert "launch-" in dom and "matching runs" in dom
    keep = os.environ.get("BAR_DASHBOARD_SCREENSHOT")  # optional: keep the screenshot to look at
    if keep:
        shutil.copy(shot, keep)


def _page_text(url: str, profile: Path) -> str:
    """The text the browser renders at `url` (its DOM once the app has loaded, tags and scripts removed)."""
    dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_browser_shows_what_the_sweep_reproduces_and_its_gfid(server, tmp_path):
    """Opened on the experiment, the page shows (no click) the description: the latest launch's best gFID and the
    paper figure first (the line the collapsed description shows), then the sweep file and the commands; its link
    opens the runs table with each launch's best_gfid as a column of the collapsed launch row."""
    exp_id = _experiments(server["base"])["codebook_scaling"]
    page = _page_text(f"{server['base']}/#/experiments/{exp_id}/runs", tmp_path / "profile-experiment")
    assert "best gFID 7 (mbm-24b) · Paper figure: codebook scaling, gFID vs log2 C per head" in page
    assert "sweeps/codebook_scaling.yaml" in page and "python analysis/make_figures.py --sweep codebook_scaling" in page
    view = _page_text(f"{server['base']}/#/experiments/{exp_id}/runs?viewStateShareKey=headline",
                      tmp_path / "profile-view")
    assert "shared view" in view and "launch-" in view
    header = view[view.index("Run Name"):]
    assert "best_gfid" in header and re.search(r"launch-\S+ .{0,60}? 7 - ", header), header[:400]   # its row: 7
