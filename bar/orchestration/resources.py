"""One resource plan per point, beside its GPU memory plan (bar.orchestration.planner): the wall time of each stage
against the SLURM time chain, host memory per task and per node against `mem_gb`, the size and write time of its
training checkpoints, and the disk it fills. The sweeper makes one for every point it would run
(bar.orchestration.sweeps): the dry run prints them, and a launch refuses, in one line before anything is submitted,
points that cannot finish within the time chain or do not fit `hydra.launcher.mem_gb` (a point that cannot finish
holds its GPUs for the whole chain and ends unfinished; the fix is one setting, which the line names).

    price_points(sweep_cfg, configs, plans, world) -> [PointCost | None]   sets plan.resources of each point to run
    resource_lines(sweep_cfg, plans, labels) -> [str]                       the dry run's section
    refusal(sweep_cfg, plans, labels) -> str | None                         what a launch refuses, in one line

Wall time per stage: its GPU-hours (bar.orchestration.cost) over the point's devices (every stage is data-parallel).
    tokenizer training, pretokenization   when not in the cache yet: points sharing a tokenizer run at once and wait
                                          for it in their own jobs, so each counts it
    generator training                    (both trainings: + a checkpoint write every launcher.checkpoint_minutes;
                                          a point that resumes counts what is left after its newest checkpoint)
    sampling                              every sampling run of the point (bar.orchestration.sampling_plan)
    evaluation                            rFID's reconstructions; Inception features of every scored image
The time chain: SLURM ends a job at hydra.launcher.timeout_min and submitit requeues it up to max_num_timeout times,
the run resuming from its checkpoint, so a point has (1 + max_num_timeout) jobs. Each loses signal_delay_s (the
checkpoint is written then), launcher.start_minutes and the checkpoint's read at launcher.disk_gb_per_s. stage=all's
final sampling and evaluation hold their samples in memory: they must fit one job.

Host memory per task (one per GPU): the process (PROCESS_GIB), its data.num_workers loader workers (WORKER_GIB + two
prefetched batches each), and the larger of resuming its largest checkpoint (rank 0 holds the loaded checkpoint and
its pickle for the broadcast, the others the received bytes and the unpickled copy: 2x; saving streams, no copy:
bar.core.files) and what training's end holds (stage=all's final samples, uint8). Per node (`mem_gb` is SLURM's
--mem, per node): the tasks, plus the code store that every task reads through the page cache.
Checkpoints: fp32 weights and AdamW's two fp32 moments (the generator; 12 bytes a parameter); the tokenizer's also
the EMA copy of every parameter (frozen ones too) and weights that are not trained (its frozen SigLIP2).
Disk: the checkpoints kept (max(2, launcher.keep_checkpoints), and one being written) while a point trains; the final
generator weights; stage=sample's sample batches and their .npz; shared by the points of a tokenizer: its cache entry
(and training checkpoints while it trains) and its code store."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from bar.data.cache import entry_path, work_path
from bar.data.codes import VIEWS
from bar.orchestration.cost import PointCost, generator_flops, gpu_hours, point_cost, sampling_flops, tokenizer_flops
from bar.orchestration.data_sizes import planned_sizes
from bar.orchestration.planner import Plan
from bar.orchestration.rules import trains_tokenizer
from bar.orchestration.sampling_plan import SamplingPlan, sampling_plan
from bar.training.checkpoints import CheckpointDir

STAGES = ("tokenizer training", "pretokenization", "generator training", "sampling", "evaluation")
# A training process on the host: the imported project measured 0.83 GB RSS on CPU (0.46 GB of it private); CUDA's
# libraries and context add ~2 GB (assumed)
PROCESS_GIB = 3.0
# One loader worker: forked, its private pages grow towards the main process's private 0.46 GB as it runs (0.49 GB
# RSS measured right after the fork)
WORKER_GIB = 0.5
INCEPTION_FLOPS = 11.5e9       # Inception-v3 at 299 px, per image (5.7 GMACs)
ADAMW_BYTES, FP32 = 8, 4
GB, GIB = 1e9, 2 ** 30


@dataclass(frozen=True)
class TimeChain:
    timeout_min: float
    requeues: int              # hydra.launcher.max_num_timeout
    signal_delay_s: float

    @property
    def jobs(self) -> int:
        return 1 + self.requeues

    @property
    def hours(self) -> float:
        return self.timeout_min * self.jobs / 60

    def describe(self) -> str:
        return (f"hydra.launcher.timeout_min={self.timeout_min:g} x (1 + max_num_timeout={self.requeues}) = "
                f"{self.hours:.3g} h")


def _launcher(cfg: DictConfig):
    return cfg.hydra.launcher if "hydra" in cfg else {}


def time_chain(sweep_cfg: DictConfig) -> TimeChain | None:
    """The launcher's limit per job and its requeues (the submitit launchers); None where jobs have no limit."""
    launcher = _launcher(sweep_cfg)
    if "timeout_min" not in launcher or launcher.timeout_min is None:
        return None
    requeues = launcher.max_num_timeout if "max_num_timeout" in launcher else 0
    delay = launcher.signal_delay_s if "signal_delay_s" in launcher else 0
    return TimeChain(float(launcher.timeout_min), int(requeues or 0), float(delay or 0))


def node_memory_gib(sweep_cfg: DictConfig) -> float | None:
    """hydra.launcher.mem_gb (SLURM's --mem: per node); None when unset (the cluster's default applies)."""
    launcher = _launcher(sweep_cfg)
    value = launcher.mem_gb if "mem_gb" in launcher else None
    return float(value) if value is not None else None


@dataclass
class ResourcePlan:
    devices: int                   # processes (GPUs) the point runs on
    tasks_per_node: int
    hours: dict[str, float]        # wall hours per stage (STAGES) on `devices`
    one_job_hours: float           # of those, what must fit one job: stage=all's final sampling and evaluation
    checkpoint_gb: float           # its largest training checkpoint: the generator's, or the tokenizer's it trains
    disk_gb_per_s: float
    start_minutes: float
    workers: int                   # data.num_workers per task
    host_gib: dict[str, float]     # per task: process, loader workers, resume, samples
    page_cache_gib: float          # per node: the code store every task reads
    disk_gb: dict[str, float]      # checkpoints (while it trains), weights, samples; shared: tokenizer, codes
    tokenizer_key: str = ""

    @property
    def wall_hours(self) -> float:
        return sum(self.hours.values())

    @property
    def write_s(self) -> float:
        return self.checkpoint_gb / self.disk_gb_per_s

    @property
    def task_gib(self) -> float:
        h = self.host_gib
        return h["process"] + max(h["resume"], h["loader workers"] + h["samples"])

    @property
    def node_gib(self) -> float:
        return self.tasks_per_node * self.task_gib + self.page_cache_gib

    def job_overhead_hours(self, chain: TimeChain) -> float:
        """What each job of the chain spends not working: the signal's lead (the checkpoint is written then), its
        start-up, reading the checkpoint."""
        return chain.signal_delay_s / 3600 + self.start_minutes / 60 + self.write_s / 3600

    def work_per_job(self, chain: TimeChain) -> float:
        return chain.timeout_min / 60 - self.job_overhead_hours(chain)

    def time_problem(self, chain: TimeChain | None) -> str | None:
        """Why the point cannot finish within the chain, or None."""
        if chain is None:
            return None
        work = self.work_per_job(chain)
        if work <= 0:
            return (f"a job of timeout_min={chain.timeout_min:g} is all overhead "
                    f"({60 * self.job_overhead_hours(chain):.3g} min to start, read and write its checkpoint)")
        if self.one_job_hours > work:
            return (f"its final sampling and evaluation (~{self.one_job_hours:.3g} h, samples held in memory) do not "
                    f"fit one job ({max(work, 0):.3g} h of work in timeout_min={chain.timeout_min:g})")
        if self.wall_hours > work * chain.jobs:
            return (f"needs ~{self.wall_hours:.3g} h on {self.devices} device(s), "
                    f"{self.wall_hours - work * chain.jobs:.3g} h more than the chain's {work * chain.jobs:.3g} h "
                    "of work")
        return None

    def memory_problem(self, mem_gib: float | None) -> str | None:
        if mem_gib is None or self.node_gib <= mem_gib:
            return None
        return (f"needs ~{self.node_gib:.3g} GiB of host memory per node ({self.tasks_per_node} task(s) x "
                f"{self.task_gib:.3g} GiB + {self.page_cache_gib:.3g} GiB code store in the page cache), more than "
                f"hydra.launcher.mem_gb={mem_gib:g}")


def price_points(sweep_cfg: DictConfig, configs: list, plans: list[Plan], world: int) -> list[PointCost | None]:
    """The cost of each point to run (bar.orchestration.cost), its resource plan into plan.resources; None for the
    points skipped or infeasible. Data sizes: bar.orchestration.data_sizes (stated ones in a dry run without data)."""
    sizes: dict[tuple, tuple[int, int]] = {}
    costs: list[PointCost | None] = []
    for cfg, plan in zip(configs, plans):
        if plan.action not in ("run", "resume"):
            costs.append(None)
            continue
        images = (0, 0)                       # stage=sample reads no data
        if cfg.stage != "sample":
            d = cfg.data
            key = (d.name, str(d.get("root", "???")), str(d.val_root), d.resolution, d.train_images, d.val_images)
            images = sizes[key] = sizes[key] if key in sizes else planned_sizes(cfg)
        cost = point_cost(cfg, *images, checkpointing=bool(plan.memory and plan.memory.checkpointing))
        plan.resources = resource_plan(cfg, sweep_cfg, cost, images[0], world, _progress(cfg, plan, cost))
        costs.append(cost)
    return costs


def _checkpoint_bytes(cfg: DictConfig, tok: dict, tokenizer_cached: bool) -> tuple[float, float]:
    """(the generator's training checkpoint, the tokenizer's) in bytes; 0 for what the point does not train."""
    gen = generator_flops(cfg)["params"] * (FP32 + ADAMW_BYTES) if cfg.stage == "all" else 0.0
    trains = trains_tokenizer(cfg) and not tokenizer_cached
    tokenizer = (2 * FP32 * tok["params"] + ADAMW_BYTES * tok["trainable"]) if trains else 0.0
    return gen, tokenizer


def code_store_bytes(cfg: DictConfig, tok: dict, train_images: int) -> float:
    """The pretokenized training set: every image and its flip, packed bits or float16 latents, and a label."""
    row = math.ceil(tok["latent_dim"] / 8) if cfg.tokenizer.kind == "fsq" else 2 * tok["latent_dim"]
    return train_images * (VIEWS * tok["tokens"] * row + 8)


def _progress(cfg: DictConfig, plan: Plan, cost: PointCost) -> dict[str, float]:
    """The fraction of each training already done: its newest checkpoint's step (the tokenizer's in the cache's work
    folder; the generator's in the point's folder, unless the point starts afresh), which a resumed job continues."""
    def done(folder: Path, steps: int) -> float:
        newest = CheckpointDir(folder).steps()[-1:]
        return min(1.0, newest[0] / steps) if newest else 0.0

    tokenizer = done(work_path(cfg.paths.cache, "tokenizer", cost.tokenizer_key) / "ckpt", cfg.tokenizer.train.steps)
    generator = 0.0 if plan.fresh_start or cfg.stage != "all" else \
        done(plan.folder / "generator", cfg.generator.train.steps)
    return {"tokenizer training": tokenizer, "generator training": generator}


def resource_plan(cfg: DictConfig, sweep_cfg: DictConfig, cost: PointCost, train_images: int, world: int,
                  progress: dict[str, float] | None = None) -> ResourcePlan:
    """The point's resource plan (the module docstring) on `world` devices; `progress`: the fraction of each
    training done (its newest checkpoint's step), of which only the rest is counted."""
    tok = tokenizer_flops(cfg)
    cached = {kind: entry_path(cfg.paths.cache, kind, cost.tokenizer_key).is_dir() for kind in ("tokenizer", "codes")}
    gen_ckpt, tok_ckpt = _checkpoint_bytes(cfg, tok, cached["tokenizer"])
    launcher = _launcher(sweep_cfg)
    tasks = int(launcher.tasks_per_node) if "tasks_per_node" in launcher else world
    codes = code_store_bytes(cfg, tok, train_images) if cfg.stage == "all" else 0.0
    return ResourcePlan(
        devices=world, tasks_per_node=min(tasks, world),
        hours={stage: h * (1 - (progress or {}).get(stage, 0.0))
               for stage, h in _stage_hours(cfg, cost, tok, cached, (gen_ckpt, tok_ckpt), world).items()},
        one_job_hours=_final_hours(cfg, tok, world), checkpoint_gb=max(gen_ckpt, tok_ckpt) / GB,
        disk_gb_per_s=float(cfg.launcher.disk_gb_per_s), start_minutes=float(cfg.launcher.start_minutes),
        workers=int(cfg.data.num_workers), host_gib=_host_gib(cfg, max(gen_ckpt, tok_ckpt), world),
        page_cache_gib=codes / GIB, tokenizer_key=cost.tokenizer_key,
        disk_gb=_disk_gb(cfg, tok, (gen_ckpt, tok_ckpt), codes if not cached["codes"] else 0.0,
                         not cached["tokenizer"]))


def _stage_hours(cfg: DictConfig, cost: PointCost, tok: dict, cached: dict, checkpoints: tuple[float, float],
                 world: int) -> dict[str, float]:
    def wall(flops: float, sampling: bool = False) -> float:
        return gpu_hours(flops, cfg, sampling) / world

    def writing(nbytes: float) -> float:        # a checkpoint write every launcher.checkpoint_minutes
        minutes = float(cfg.launcher.checkpoint_minutes)
        return 1 + (nbytes / GB / float(cfg.launcher.disk_gb_per_s)) / (60 * minutes) if minutes else 1.0

    t, g = cost.tokenizer, cost.generator
    reconstructed = t.get("reconstruct", 0.0) / tok["forward"] if tok["forward"] else 0.0
    scored = reconstructed + sum(r.num_samples for r in cost.sampling)
    return {"tokenizer training": 0.0 if cached["tokenizer"] else wall(t.get("train", 0.0)) * writing(checkpoints[1]),
            "pretokenization": 0.0 if cached["codes"] else wall(t.get("pretokenize", 0.0)),
            "generator training": wall(g.get("train", 0.0)) * writing(checkpoints[0]),
            "sampling": wall(g.get("sample", 0.0), sampling=True),
            "evaluation": wall(t.get("reconstruct", 0.0) + INCEPTION_FLOPS * scored)}


def _final_hours(cfg: DictConfig, tok: dict, world: int) -> float:
    """stage=all's final sampling runs and their scoring: samples in memory, so not resumable (stage=sample writes
    each batch: resumable)."""
    if cfg.stage != "all":
        return 0.0
    final = SamplingPlan(sampling_plan(cfg).final, None)
    flops = sampling_flops(final, generator_flops(cfg), tok["decode"])
    images = sum(r.num_samples for r in final.final)
    return (gpu_hours(flops, cfg, sampling=True) + gpu_hours(INCEPTION_FLOPS * images, cfg)) / world


def _image_bytes(cfg: DictConfig) -> int:
    return int(cfg.data.resolution) ** 2 * int(cfg.data.in_channels)


def _host_gib(cfg: DictConfig, checkpoint: float, world: int) -> dict[str, float]:
    """Per task (see the module docstring)."""
    image = _image_bytes(cfg)
    batch = max(int(cfg.tokenizer.train.batch_size) // max(1, world), int(cfg.eval.batch_size))
    samples = 0.0
    if cfg.stage == "all":
        samples = sum(math.ceil(r.num_samples / world) for r in sampling_plan(cfg).final) * image
    workers = int(cfg.data.num_workers) * (WORKER_GIB + 2 * batch * image / GIB)    # each prefetches two batches
    return {"process": PROCESS_GIB, "loader workers": workers, "resume": checkpoint * (2 if world > 1 else 1) / GIB,
            "samples": samples / GIB}


def _disk_gb(cfg: DictConfig, tok: dict, checkpoints: tuple[float, float], codes: float,
             tokenizer_new: bool) -> dict[str, float]:
    """Per point (see the module docstring); `tokenizer` and `codes` are shared by the points of one tokenizer."""
    kept = max(2, int(cfg.launcher.keep_checkpoints)) + 1
    gen_ckpt, tok_ckpt = checkpoints
    samples = 0.0
    if cfg.stage == "sample":          # the batches (images and tokens) and the assembled .npz
        n = int(cfg.generator.sample.num_samples)
        token_bytes = tok["tokens"] * tok["latent_dim"] * (1 if cfg.tokenizer.kind == "fsq" else FP32)
        samples = n * (2 * _image_bytes(cfg) + token_bytes)
    entry = FP32 * tok["params"] if tokenizer_new and trains_tokenizer(cfg) else 0.0
    return {"checkpoints": kept * gen_ckpt / GB, "tokenizer checkpoints": kept * tok_ckpt / GB,
            "weights": FP32 * generator_flops(cfg)["params"] / GB if cfg.stage == "all" else 0.0,
            "samples": samples / GB, "tokenizer": entry / GB, "codes": codes / GB}


# ----------------------------------------------------------------------------------------------------- reporting
TRANSIENT = ("checkpoints", "tokenizer checkpoints")       # disk a point holds only while it trains


def _priced(plans: list[Plan], labels: list[str]) -> list[tuple[str, ResourcePlan]]:
    return [(label, plan.resources) for plan, label in zip(plans, labels) if plan.resources is not None]


def resource_lines(sweep_cfg: DictConfig, plans: list[Plan], labels: list[str]) -> list[str]:
    """The dry run's section: per point its wall hours by stage, host memory, checkpoint and disk; the time chain
    and what cannot finish within it (with the settings that fit it); host memory against mem_gb; the sweep's disk."""
    priced = _priced(plans, labels)
    if not priced:
        return []
    chain, mem = time_chain(sweep_cfg), node_memory_gib(sweep_cfg)
    lines = [f"per point on {priced[0][1].devices} device(s): wall hours = {' + '.join(STAGES)}; host memory per "
             "task / per node; largest training checkpoint, its write; disk"]
    for label, r in priced:
        lines.append(f"{label:<28} {r.wall_hours:.3g} h = {' + '.join(f'{h:.3g}' for h in r.hours.values())} | host "
                     f"{r.task_gib:.3g} / {r.node_gib:.3g} GiB | ckpt {r.checkpoint_gb:.3g} GB, {r.write_s:.2g} s | "
                     f"disk {sum(r.disk_gb.values()):.3g} GB" + _flags(r, chain, mem))
    return lines + _chain_lines(sweep_cfg, chain, priced) + _memory_lines(sweep_cfg, mem, priced) + \
        [_disk_line(sweep_cfg, priced)]


def _flags(r: ResourcePlan, chain: TimeChain | None, mem: float | None) -> str:
    flags = ""
    if chain is not None and r.time_problem(chain):
        short = r.wall_hours - r.work_per_job(chain) * chain.jobs
        flags += "; CANNOT FINISH within the time chain" + (f" ({short:.3g} h short)" if short > 0 else "")
    return flags + ("; OVER mem_gb" if r.memory_problem(mem) else "")


def _chain_lines(sweep_cfg: DictConfig, chain: TimeChain | None, priced) -> list[str]:
    if chain is None:
        return ["time chain: none (this launcher sets no time limit per job)"]
    worst = max((r for _, r in priced), key=lambda r: r.job_overhead_hours(chain))
    lines = [f"SLURM time chain: {chain.describe()} per point; a job works {60 * worst.work_per_job(chain):.0f} min "
             f"of its {chain.timeout_min:g} (signal_delay_s={chain.signal_delay_s:g}, launcher.start_minutes="
             f"{worst.start_minutes:g}, reading a {worst.checkpoint_gb:.3g} GB checkpoint)"]
    late = [(label, r) for label, r in priced if r.time_problem(chain)]
    if not late:
        return lines + [f"every point finishes within it (the longest: "
                        f"{max(r.wall_hours for _, r in priced):.3g} h)"]
    longest = max(late, key=lambda item: item[1].wall_hours)
    return lines + [f"{len(late)} of {len(priced)} point(s) cannot finish within it (a launch refuses them; the "
                    f"longest, {longest[0]}, {longest[1].time_problem(chain)}): {time_fix(sweep_cfg, chain, late)}"]


def time_fix(sweep_cfg: DictConfig, chain: TimeChain, late: list[tuple[str, ResourcePlan]]) -> str:
    """The settings that let every point of `late` finish: more requeues, longer jobs, or more GPUs."""
    plans = [r for _, r in late]
    overhead = max(r.job_overhead_hours(chain) for r in plans)
    wall, one = max(r.wall_hours for r in plans), max(r.one_job_hours for r in plans)
    work = chain.timeout_min / 60 - overhead
    fixes = [f"hydra.launcher.timeout_min={10 * math.ceil(6 * (max(wall / chain.jobs, one) + overhead))}"]
    if 0 < work and one <= work:          # requeues and GPUs help only where one job holds the final sampling
        launcher = _launcher(sweep_cfg)
        nodes = int(launcher.nodes or 1) if "nodes" in launcher else 1
        factor = wall / (work * chain.jobs)
        fixes = [f"hydra.launcher.max_num_timeout={math.ceil(wall / work) - 1}", *fixes,
                 f"~{factor:.2g}x the GPUs per point (hydra.launcher.nodes={math.ceil(nodes * factor)})"]
    return "set " + ", or ".join(fixes)


def _memory_lines(sweep_cfg: DictConfig, mem: float | None, priced) -> list[str]:
    label, r = max(priced, key=lambda item: item[1].node_gib)
    h = r.host_gib
    lines = [f"host memory: up to {r.node_gib:.3g} GiB per node ({label}: {r.tasks_per_node} task(s) x "
             f"{r.task_gib:.3g} GiB = process {h['process']:.3g} + the larger of resuming its checkpoint "
             f"{h['resume']:.3g} and {r.workers} loader worker(s) {h['loader workers']:.3g} + samples "
             f"{h['samples']:.3g}; code store {r.page_cache_gib:.3g} in the page cache), hydra.launcher.mem_gb="
             + (f"{mem:g}" if mem is not None else "unset (the cluster's default)")]
    over = [(name, plan) for name, plan in priced if plan.memory_problem(mem)]
    if over:
        lines.append(f"{len(over)} point(s) need more than mem_gb (a launch refuses them): set "
                     f"hydra.launcher.mem_gb={math.ceil(r.node_gib)} (or fewer data.num_workers)")
    launcher = _launcher(sweep_cfg)
    cpus = launcher.cpus_per_task if "cpus_per_task" in launcher else None
    if cpus is not None and r.workers + 1 > cpus:
        lines.append(f"note: hydra.launcher.cpus_per_task={cpus} for data.num_workers={r.workers} loader workers and "
                     f"the main process: workers will wait for cores (cpus_per_task={r.workers + 2} fits them)")
    return lines


def _disk_line(sweep_cfg: DictConfig, priced) -> str:
    """What the sweep leaves on disk (each tokenizer's entry and code store once), and the training checkpoints
    of the points running at once (launcher: array_parallelism) on top."""
    shared = {r.tokenizer_key: r for _, r in priced}
    tokenizers = sum(r.disk_gb["tokenizer"] + r.disk_gb["codes"] for r in shared.values())
    own = sum(r.disk_gb["weights"] + r.disk_gb["samples"] for _, r in priced)
    launcher = _launcher(sweep_cfg)
    parallel = int(launcher.array_parallelism) if "array_parallelism" in launcher else len(priced)
    running = sorted((r.disk_gb["checkpoints"] for _, r in priced), reverse=True)[:parallel]
    training = sum(running) + sum(r.disk_gb["tokenizer checkpoints"] for r in shared.values())
    return (f"disk: ~{tokenizers + own:.3g} GB kept (tokenizers and code stores {tokenizers:.3g}, generator weights "
            f"and samples {own:.3g}) + up to {training:.3g} GB of training checkpoints while {len(running)} point(s) "
            f"run at once (launcher.disk_gb_per_s={priced[0][1].disk_gb_per_s:g})")


def refusal(sweep_cfg: DictConfig, plans: list[Plan], labels: list[str]) -> str | None:
    """One line naming what a launch must not submit (points that cannot finish within the time chain, or need more
    host memory than mem_gb) and the settings that fix it; None when every point fits."""
    priced = _priced(plans, labels)
    chain, mem = time_chain(sweep_cfg), node_memory_gib(sweep_cfg)
    parts = []
    late = [(label, r) for label, r in priced if r.time_problem(chain)]
    if late and chain is not None:
        label, r = late[0]
        parts.append(f"{len(late)} of {len(priced)} point(s) cannot finish within the SLURM time chain "
                     f"({chain.describe()}): {label} {r.time_problem(chain)}: {time_fix(sweep_cfg, chain, late)}")
    over = [(label, r) for label, r in priced if r.memory_problem(mem)]
    if over:
        label, r = max(over, key=lambda item: item[1].node_gib)
        parts.append(f"{len(over)} point(s) need more host memory than mem_gb: {label} {r.memory_problem(mem)}: set "
                     f"hydra.launcher.mem_gb={math.ceil(r.node_gib)}")
    return "nothing submitted: " + "; ".join(parts) + " (dry_run=true shows each point's plan)" if parts else None
