"""What the MLflow UI shows about a sweep, so that a browser opened after `make demo` answers what each experiment is:

- the experiment's description (tag `mlflow.note.content`): the latest launch's headline numbers, the paper figure or
  table the sweep reproduces and how (`hydra.sweeper.paper` and `hydra.sweeper.description` of sweeps/<name>.yaml,
  their one home), the sweep file, the command that runs it and the one that redraws its figures, and a link to a
  runs-table view with the headline columns (the UI's default view shows no metric);
- each launch's (parent run's) description: its command line and its points, with their numbers as they end;
- the launch's own metrics `best_gfid` / `best_rfid` (the lowest over its finished points, those finished by earlier
  launches included), so the collapsed launch row has a number;
- its figures under `figures/`: when the sweep ends, analysis/make_figures.py draws them (a process of its own: the
  driver never imports analysis) and logs them to the launch.

The texts are built here from the config and plain rows; bar.orchestration.tracking writes them. Nothing here may fail
a sweep: a store or drawing problem is one warning line."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import tempfile
from typing import Mapping, Sequence

from omegaconf import DictConfig

from bar import PROJECT_ROOT
from bar.core.vocabulary import FINISHED
from bar.orchestration import tracking
from bar.orchestration.planner import Plan


HEADLINES = {"gfid": "gFID", "rfid": "rFID"}   # a launch's headline metrics (lowest is best), in this order
VIEW_KEY = "headline"                          # the shared runs-table view the experiment's description links to
FIGURES_TIMEOUT_S = 600


# ----------------------------------------------------------------------------------------------------- texts
def command_line(cfg: DictConfig) -> str:
    """The command that launched this sweep, as the user would type it again."""
    overrides = [*cfg.hydra.overrides.task, *cfg.hydra.overrides.hydra]
    return " ".join(["python run.py -m", *(shlex.quote(o) for o in overrides)])


def sweep_file(cfg: DictConfig) -> str | None:
    """The sweep's file (`sweeps/<name>.yaml`), None for a sweep given on the command line alone."""
    name = cfg.hydra.runtime.choices.get("sweep")
    return f"sweeps/{name}.yaml" if name else None


def best_metrics(results: Sequence[Mapping]) -> dict[str, float]:
    """{"best_gfid": ..., "best_rfid": ...}: the lowest value over the finished points, for each headline metric
    some point has."""
    best = {}
    for key in HEADLINES:
        values = [r["metrics"][key] for r in results if r["status"] == FINISHED and _finite(r["metrics"].get(key))]
        if values:
            best[f"best_{key}"] = min(values)
    return best


def headline_keys(cfg: DictConfig) -> tuple[str, ...]:
    """The headline metrics the sweep's points log: rFID (tokenizers only), gFID (sampling only), or both."""
    return ("rfid",) if cfg.stage == "tokenizer" else ("gfid",) if cfg.stage == "sample" else tuple(HEADLINES)


def headline(results: Sequence[Mapping], keys: Sequence[str] = tuple(HEADLINES)) -> str:
    """'best gFID 7.13 (mbm-16b), best rFID 2.5 (fsq-16b)', or '' when no point has a number yet."""
    parts = []
    for key in keys:
        label = HEADLINES[key]
        scored = [r for r in results if r["status"] == FINISHED and _finite(r["metrics"].get(key))]
        if scored:
            top = min(scored, key=lambda r: r["metrics"][key])
            parts.append(f"best {label} {top['metrics'][key]:.4g} ({top['name']})")
    return ", ".join(parts)


def experiment_note(cfg: DictConfig, experiment_id: str, results: Sequence[Mapping] = ()) -> str:
    """The experiment's description (markdown). Its first line is what the UI shows collapsed: the latest launch's
    best gFID (tokenizer sweeps: rFID), then the paper figure or table."""
    sweeper, name, keys = cfg.hydra.sweeper, cfg.experiment, headline_keys(cfg)
    numbers, lead = headline(results, keys), next((h for h in (headline(results, [k]) for k in keys) if h), "")
    first = (f"{lead} · " if lead else "") + f"**{sweeper.get('paper') or 'Sweep ' + name}**"
    file = sweep_file(cfg)
    about = str(sweeper.get("description") or "").strip()
    bullets = [f"- sweep file: `{file}`; run it: `python run.py -m sweep={cfg.hydra.runtime.choices.sweep}`" if file
               else "- no sweep file: the points were given on the command line",
               f"- the latest launch: `{command_line(cfg)}`" + (f", {numbers}" if numbers else ""),
               f"- redraw its figures: `python analysis/make_figures.py --sweep {name}` (into `paper_figs/{name}/`; "
               "each launch also carries them under `figures/`)",
               f"- [the runs with their headline columns](#/experiments/{experiment_id}/runs?viewStateShareKey="
               f"{VIEW_KEY}) (each launch's own `best_gfid` / `best_rfid`; expand a launch for its points)"]
    return "\n".join([first, "", *([about, ""] if about else []), *bullets])


def launch_note(cfg: DictConfig, results: Sequence[Mapping], to_run: Sequence[str], state: str) -> str:
    """A launch's description (markdown): its command line, where it stands (`state`), its headline numbers and one
    row per point: those it runs (`to_run`, by name, until their runs exist) and those earlier launches finished."""
    keys, rows, seen = headline_keys(cfg), [], set()
    for r in results:
        seen.add(r["name"])
        status = f"{r['status']} (earlier launch)" if r["earlier"] else r["status"]
        rows.append(f"| {r['name']} | {status} | " + " | ".join(_number(r["metrics"].get(k)) for k in keys) + " |")
    rows += [f"| {name} | waiting |" + " |" * len(keys) for name in to_run if name not in seen]
    numbers = headline(results, keys)
    return "\n".join([f"`{command_line(cfg)}`", "",
                      f"**{state}** · profile {cfg.profile.name}" + (f" · {numbers}" if numbers else ""), "",
                      "| point | status | " + " | ".join(HEADLINES[k] for k in keys) + " |",
                      "|---|---|" + "---|" * len(keys), *rows])


def headline_view(cfg: DictConfig) -> str:
    """The runs-table view (JSON, as the MLflow UI shares views) that shows the headline columns: each launch's best
    numbers, each point's status and numbers."""
    keys = headline_keys(cfg)
    columns = [*(f"metrics.`best_{k}`" for k in keys), *(f"metrics.`{k}`" for k in keys), "tags.`status`"]
    return json.dumps({"selectedColumns": columns})


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _number(value) -> str:
    return f"{value:.4g}" if _finite(value) else ""


# ----------------------------------------------------------------------------------------------------- the store
class LaunchNotes:
    """Keeps a launch's descriptions and headline metrics up to date in the store: `update` after each batch,
    `finish` when the launch ends, then `draw_figures`."""

    def __init__(self, cfg: DictConfig, parent_run_id: str, labels: Sequence[str], plans: Sequence[Plan]):
        """`labels`, `plans`: the sweep's points, those this launch runs and those it skips as done."""
        self.cfg, self.uri, self.parent = cfg, cfg.tracking.uri, parent_run_id
        self.to_run = [label for label, plan in zip(labels, plans) if plan.action != "skip"]
        self.earlier = [plan.run_id for plan in plans if plan.action == "skip" and plan.run_id]
        self.resumed = {plan.run_id for plan in plans if plan.action == "resume" and plan.run_id}   # stay under
        self.experiment_id: str | None = None                                                     # their first launch

    def update(self, counts: Mapping[str, int], state: str = "running") -> None:
        parts = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        done = f"{sum(counts.values())} of {len(self.to_run)} points done" + (f" ({parts})" if parts else "")
        earlier = f"; {len(self.earlier)} done by earlier launches" if self.earlier else ""
        self._write(f"{state}: {done}{earlier}")

    def finish(self, counts: Mapping[str, int], interrupted: bool) -> None:
        self.update(counts, "interrupted" if interrupted else "failed" if counts.get("failed") else "finished")

    def _write(self, state: str) -> None:
        try:
            results = tracking.launch_results(self.uri, self.parent, [*self.earlier, *self.resumed])
            for r in results:
                r["earlier"] = r["earlier"] and r["run_id"] not in self.resumed
            if self.experiment_id is None:
                self.experiment_id = tracking.experiment_id(tracking.client_for(self.uri), self.cfg.experiment,
                                                            self.uri)
            tracking.describe_run(self.uri, self.parent, launch_note(self.cfg, results, self.to_run, state),
                                  best_metrics(results))
            tracking.describe_experiment(self.uri, self.cfg.experiment,
                                         experiment_note(self.cfg, self.experiment_id, results),
                                         {VIEW_KEY: headline_view(self.cfg)})
        except Exception as err:   # the launch's runs are what matters; its description is a convenience
            print(f"warning: sweep {self.cfg.experiment}: the launch's description in MLflow was not updated "
                  f"({type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''})",
                  file=sys.stderr)

    def draw_figures(self, counts: Mapping[str, int]) -> bool:
        """The figures of a sweep from a sweep file (`tracking.figures=false`: none) that finished points, drawn by
        analysis/make_figures.py into a scratch folder and logged to this launch under `figures/` (make_figures logs
        to the sweep's latest launch). A failure is one line; False then."""
        name = self.cfg.experiment
        if not (self.cfg.tracking.get("figures", True) and counts.get("finished") and sweep_file(self.cfg)):
            return False
        with tempfile.TemporaryDirectory(prefix="bar-figures-") as out:
            cmd = [sys.executable, str(PROJECT_ROOT / "analysis" / "make_figures.py"), "--sweep", name,
                   "--tracking-uri", self.uri, "--format", "png", "--out", out]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FIGURES_TIMEOUT_S, check=False)
                why = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["exit code"])[-1]
            except (OSError, subprocess.TimeoutExpired) as err:
                why = f"{type(err).__name__}: {err}"
        if why:
            print(f"sweep {name}: figures not drawn onto the launch ({why}); draw them with "
                  f"`python analysis/make_figures.py --sweep {name}`", file=sys.stderr)
            return False
        print(f"sweep {name}: figures logged to the launch under figures/ (paper_figs/: "
              f"python analysis/make_figures.py --sweep {name})", file=sys.stderr)
        return True
