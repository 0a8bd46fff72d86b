"""GPU checks of issue 22 item 9 (one H100/H200-class GPU; not a test): what the paper presets run on a cluster and
no CPU test can show. Random weights (no checkpoint is needed); each part prints one or two result lines.

    python benchmarks/gpu/cluster_checks.py PART [--tiny] [--device cuda|cpu] [--micro 32] [--steps 100]
    bash benchmarks/gpu/run_cluster_checks.sh          # every part, each with its own time limit (the device call)

PART:
  ddp_compile   BAR-B as the paper presets train it: model.compile=true, wrapped in DDP (a world-1 process group:
                NCCL on one GPU), 2 accumulation steps (DDP's no_sync on the first), bf16 autocast, --steps steps of
                micro-batch --micro, through bar.orchestration.stages.generator.train_generator, against the same
                run eager. Per-step losses (equal within bf16 noise), img/s after 10 steps, peak memory against
                bar.orchestration.memory.plan_memory for that micro-batch on this GPU, graphs compiled.
  resume        BAR-B eager training in subprocesses (checkpoint every 2 steps of 4): checkpoint write time and size;
                a run SIGKILLed after its first checkpoint, then started again (it resumes), ends with the weights of
                an uninterrupted run (bitwise on the same GPU; if not, a second uninterrupted run gives the noise).
  sample_l512   BAR-L-512 sampling as release_eval runs it (TF32, compiled decode, CFG, the 512 px tokenizer's
                decoder): the batch the sampling memory plan (plan_sampling_batch) picks for this GPU from
                generator.sample.batch_size (250), one batch of it sampled and decoded, peak memory against the plan.
  precision     1,000 BAR-B samples (release settings, compiled decode, batches of 250) at
                generator.sample.precision=tf32 and =bf16, same seeds: time of each, fraction of equal tokens.
  tokenizer     the paper-size tokenizer (the release's BAR-FSQ: SigLIP2-so400m encoder, ViT-L decoder) and every
                loss of its recipe with random frozen networks (GAN from step 10), 20 steps of batch 32 per GPU in
                bf16 through bar.training.loop.train: peak memory (memory.py plans no tokenizer memory; the line
                also gives the rule measured on CPU in benchmarks/results/tokenizer_memory.csv).

--tiny --device cpu: every part at toy sizes (fp32 on CPU, gloo), to show the script runs end to end."""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bar.core.distributed import configure_device  # noqa: E402
from bar.data.codes import CodesStore, ShardWriter  # noqa: E402
from bar.model.decoding import release_decoders  # noqa: E402
from bar.orchestration.build import build_generator, build_tokenizer, sampling_schedule, sampling_temperature  # noqa: E402,E501
from bar.orchestration.config import compose  # noqa: E402
from bar.orchestration.memory import HEADROOM, RESERVE_GB, plan_memory, plan_sampling_batch  # noqa: E402
from bar.orchestration.stages.generator import train_generator  # noqa: E402
from bar.orchestration.stages.samples import Sampler, balanced_labels, effective_precision, sample_batch  # noqa: E402,E501
from bar.training.checkpoints import CheckpointDir  # noqa: E402
from bar.training.loop import Checkpointing, TrainHook, infinite_batches, train  # noqa: E402

PARTS = ("ddp_compile", "resume", "sample_l512", "precision", "tokenizer")
# --tiny: toy generator and tokenizer sizes, 64 px (a 4x4 token grid)
TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "model.head_width=32", "model.head_depth=1",
        "model.class_repeat=2", "data.resolution=64", "tokenizer.size=tiny"]


# ----------------------------------------------------------------------------------------------------- helpers
def config(args, *overrides: str):
    """The paper profile (as a cluster job composes it) with `overrides`; at toy sizes with --tiny."""
    base = ["profile=paper", "data.root=/unused", f"device={args.device}"]
    return compose(base + (TINY if args.tiny else []) + list(overrides))


def start_device(args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here: run on the device machine, or --tiny --device cpu")
    configure_device(device)         # TF32 on, as every job
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    return device


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else math.nan


def held_gib(device: torch.device) -> float:
    return torch.cuda.memory_allocated() / 2 ** 30 if device.type == "cuda" else math.nan


def device_gib(device: torch.device) -> float:
    """What a plan may use: this GPU's memory (on CPU a nominal 80 GiB, the launcher's default)."""
    return torch.cuda.get_device_properties(device).total_memory / 2 ** 30 if device.type == "cuda" else 80.0


def free(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (fp32)"


def write_codes(root: Path, cfg, items: int, classes: int = 10) -> CodesStore:
    """A pretokenized set with something to learn: per class a random bit pattern, each bit flipped with p 0.1."""
    with torch.device("meta"):
        g = build_generator(cfg).cfg
    L, k = g.grid[0] * g.grid[1], g.token_dim
    rng = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, 2, (classes, L, k), generator=rng, dtype=torch.uint8)
    labels = torch.arange(items) % classes
    views = [pattern[labels] ^ (torch.rand(items, L, k, generator=rng) < 0.1).to(torch.uint8) for _ in range(2)]
    writer = ShardWriter(root, n_total=items, tokens=L, values_per_token=k, kind="bits")
    writer.append(views, labels)
    writer.close()
    return CodesStore(root)


def process_group(device: torch.device) -> None:
    """A world-1 process group (NCCL on a GPU, gloo on CPU): train_generator(ddp=True) then wraps the model in DDP."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if device.type == "cuda":
        torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                                         init_method=f"tcp://127.0.0.1:{port}")


class StepLosses(TrainHook):
    """Each optimizer step's loss (from the loop's running sum) and the time it ended."""

    def __init__(self):
        self.losses: list[float] = []
        self.times: list[float] = []
        self.since, self.prev = 0, 0.0      # steps and loss sum since the loop's last history entry

    def after_step(self, state) -> None:
        self.since += 1
        if state.count:                     # no history entry this step: the running sum grew by this step's loss
            self.losses.append(state.running - self.prev)
            self.prev = state.running
        else:                               # the entry is the mean of the `since` steps
            self.losses.append(state.result.history[-1][1] * self.since - self.prev)
            self.since, self.prev = 0, 0.0
        self.times.append(time.perf_counter())


# ----------------------------------------------------------------------------------------------------- a
def train_once(args, device, overrides: list[str], codes: CodesStore, folder: Path, compiled: bool) -> dict:
    cfg = config(args, *overrides, f"model.compile={str(compiled).lower()}")
    before = held_gib(device)
    with torch.device(device):
        torch.manual_seed(0)
        model = build_generator(cfg)
    with torch.device("meta"):
        plan = plan_memory(build_generator(cfg), 2 * args.micro, 1, device_gib(device),
                           2 if device.type == "cuda" else 4, micro_batch=args.micro, checkpointing=False,
                           compiled=compiled)
    losses = StepLosses()
    torch._dynamo.utils.counters.clear()
    reset_peak(device)
    start = time.perf_counter()
    train_generator(cfg, model, codes, device, folder, accum_steps=2, extra_hooks=[losses], ddp=True)
    t = losses.times
    warm = min(10, len(t) - 1)
    per_s = 2 * args.micro * (len(t) - 1 - warm) / (t[-1] - t[warm]) if len(t) - 1 > warm else math.nan
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    print(f"BAR-B{' (tiny)' if args.tiny else ''} {'compiled' if compiled else 'eager   '} + DDP (world 1) + "
          f"accum 2 x micro {args.micro}, {args.steps} steps on {gpu_name(device)}: {per_s:.1f} img/s after "
          f"{warm} steps, first step {t[0] - start:.1f} s, peak {peak_gib(device):.1f} GiB (held before "
          f"{before:.1f}) vs plan {plan.est_gb_per_gpu:.1f} GiB{f', {graphs} graphs compiled' if compiled else ''}",
          flush=True)
    weights = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
    del model
    free(device)
    return {"losses": losses.losses, "weights": weights}


def part_ddp_compile(args) -> None:
    device = start_device(args)
    process_group(device)
    overrides = ["model=bar_b", f"generator.train.steps={args.steps}", "generator.train.warmup=10",
                 f"generator.train.batch_size={2 * args.micro}", "launcher.checkpoint_every=0"]
    with tempfile.TemporaryDirectory() as tmp:
        codes = write_codes(Path(tmp) / "codes", config(args, *overrides), items=max(512, 8 * args.micro))
        runs = {c: train_once(args, device, overrides, codes, Path(tmp) / f"ckpt-{c}", c) for c in (True, False)}
    a, b = (torch.tensor(runs[c]["losses"], dtype=torch.float64) for c in (True, False))
    diff = (a - b).abs()
    w = (runs[True]["weights"] - runs[False]["weights"]).norm() / runs[False]["weights"].norm()
    limit = 0.02 if device.type == "cuda" else 1e-4
    verdict = "equal within bf16 noise" if device.type == "cuda" else "equal within fp32 reordering"
    print(f"losses compiled vs eager over {len(a)} steps: max |diff| {diff.max():.2e} (relative "
          f"{(diff / b.abs()).max():.2e}), mean {diff.mean():.2e}; first {a[0]:.4f} / {b[0]:.4f}, last 10 mean "
          f"{a[-10:].mean():.4f} / {b[-10:].mean():.4f}; final weights relative L2 diff {w:.2e} -> "
          f"{verdict if (diff / b.abs()).max() < limit else 'DIFFER'}", flush=True)
    torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------- b
class WriteTimer(TrainHook):
    """Checkpoint write times: from the end of a step (this hook runs before Checkpointing's) to `on_checkpoint`."""

    def __init__(self):
        self.start, self.seconds = 0.0, []

    def after_step(self, state) -> None:
        self.start = time.perf_counter()

    def done(self, result) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def resume_overrides(args) -> list[str]:
    return ["model=bar_b", "model.compile=false", "generator.train.steps=4", "generator.train.warmup=1",
            f"generator.train.batch_size={args.micro}", "launcher.checkpoint_every=2", "launcher.checkpoint_minutes=0"]


def child_train(args) -> None:
    """One training run of part `resume` in its own process: resumes from, and checkpoints into, args.child/ckpt."""
    device = start_device(args)
    work = Path(args.child)
    cfg = config(args, *resume_overrides(args))
    with torch.device(device):
        torch.manual_seed(0)
        model = build_generator(cfg)
    timer = WriteTimer()
    result = train_generator(cfg, model, CodesStore(work.parent / "codes"), device, work / "ckpt",
                             on_checkpoint=timer.done, extra_hooks=[timer])
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, work / "final.pt")
    (work / "run.json").write_text(json.dumps({"start_step": result.start_step, "writes_s": timer.seconds}))


def child(args, name: str, kill_after: int | None = None) -> dict:
    """Run `child_train` in a subprocess (SIGKILLed once checkpoint `kill_after` is complete, if given)."""
    work = Path(args.work) / name
    work.mkdir(exist_ok=True)
    cmd = [sys.executable, __file__, "resume", "--child", str(work), "--device", args.device,
           "--micro", str(args.micro)] + (["--tiny"] if args.tiny else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "stderr.log", "a"))
    if kill_after is None:
        if proc.wait() != 0:
            raise SystemExit(f"run {name} failed: see {work / 'stderr.log'}")
        return json.loads((work / "run.json").read_text())
    ckpt = CheckpointDir(work / "ckpt")
    while proc.poll() is None and not (kill_after in ckpt.steps() and
                                       Path(f"{ckpt.path(kill_after)}.sha256").exists()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"killed_with": ckpt.steps()}


def max_diff(a: Path, b: Path) -> float:
    x, y = torch.load(a), torch.load(b)
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def part_resume(args) -> None:
    if args.child:
        return child_train(args)
    device = start_device(args)
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        write_codes(Path(tmp) / "codes", config(args, *resume_overrides(args)), items=64)
        start = time.perf_counter()
        full = child(args, "full")
        spent = time.perf_counter() - start
        size = max(p.stat().st_size for p in (Path(tmp) / "full" / "ckpt").glob("ckpt-*.pt")) / 2 ** 30
        print(f"BAR-B{' (tiny)' if args.tiny else ''} checkpoint on {gpu_name(device)}: {size:.3f} GiB "
              f"(weights + AdamW + loop state), written in {', '.join(f'{s:.1f}' for s in full['writes_s'])} s "
              f"(uninterrupted run of 4 steps: {spent:.0f} s with start-up)", flush=True)
        killed = child(args, "cut", kill_after=2)
        resumed = child(args, "cut")
        diff = max_diff(Path(tmp) / "full" / "final.pt", Path(tmp) / "cut" / "final.pt")
        noise = ""
        if diff:
            child(args, "again")
            noise = f"; a second uninterrupted run differs by {max_diff(Path(tmp) / 'full' / 'final.pt', Path(tmp) / 'again' / 'final.pt'):.2e}"  # noqa: E501
        print(f"killed (SIGKILL) with checkpoints at steps {killed['killed_with']}, resumed from step "
              f"{resumed['start_step']}: final weights {'bitwise equal to' if diff == 0 else 'differ from'} the "
              f"uninterrupted run's (max |diff| {diff:.2e}{noise})", flush=True)


# ----------------------------------------------------------------------------------------------------- c
def part_sample_l512(args) -> None:
    device = start_device(args)
    res = 64 if args.tiny else 512
    cfg = config(args, "model=bar_l_512", "tokenizer.bits=10", f"data.resolution={res}", "stage=sample",
                 "generator.sample.precision=tf32")
    s, gpu = cfg.generator.sample, device.type == "cuda"
    with torch.device("meta"):
        plan = plan_sampling_batch(build_generator(cfg), build_tokenizer(cfg, with_encoder=False),
                                   int(s.batch_size), int(s.num_samples), 2, device_gib(device),
                                   headroom=HEADROOM if gpu else 0.0, reserve_gb=RESERVE_GB if gpu else 0.0,
                                   bytes_per_value=4, resolution=res, kv_cache=bool(s.kv_cache))
    parts = ", ".join(f"{k} {v / 2 ** 30:.1f}" for k, v in plan.parts.items())
    print(f"BAR-L-512{' (tiny)' if args.tiny else ''} sampling plan for {device_gib(device):.0f} GiB: batch "
          f"{plan.batch_size} of {plan.requested} ({'split' if plan.split else 'as asked'}), {plan.est_gb_per_gpu:.1f} "
          f"GiB ({parts} GiB)", flush=True)
    with torch.device(device):
        torch.manual_seed(0)
        model, tokenizer = build_generator(cfg).eval(), build_tokenizer(cfg, with_encoder=False).eval()
    schedule = sampling_schedule(cfg, model)
    sampler = Sampler(model, tokenizer, schedule, sampling_temperature(cfg, model, schedule), seed=int(s.seed),
                      kv_cache=bool(s.kv_cache), compile=bool(cfg.model.compile), precision="tf32", device=device)
    labels = balanced_labels(plan.batch_size, cfg.data.num_classes)
    reset_peak(device)
    start = time.perf_counter()
    _, images = sample_batch(sampler, labels, float(s.cfg_scale), 0)
    seconds = time.perf_counter() - start
    print(f"sampled and decoded {len(images)} images {tuple(images.shape[1:])} "
          f"({effective_precision('tf32', device)}, compiled: {bool(cfg.model.compile)}) in {seconds:.0f} s incl. "
          f"compile on {gpu_name(device)}: peak "
          f"{peak_gib(device):.1f} GiB vs plan {plan.est_gb_per_gpu:.1f} GiB", flush=True)


# ----------------------------------------------------------------------------------------------------- d
def sample_all(sampler: Sampler, labels: torch.Tensor, batch: int, cfg_scale: float) -> tuple[torch.Tensor, list]:
    """Every batch's tokens (no decoding) and the wall time of each batch (the first compiles)."""
    tokens, seconds = [], []
    for j, labels_B in enumerate(labels.split(batch)):
        start = time.perf_counter()
        tokens.append(sample_batch(sampler, labels_B, cfg_scale, j)[0].cpu())
        seconds.append(time.perf_counter() - start)
    release_decoders(sampler.model)
    return torch.cat(tokens), seconds


def part_precision(args) -> None:
    device = start_device(args)
    cfg = config(args, "model=bar_b")
    s = cfg.generator.sample
    n, batch = (40, 10) if args.tiny else (1000, int(s.batch_size))
    with torch.device(device):
        torch.manual_seed(0)
        model = build_generator(cfg).eval()
    schedule = sampling_schedule(cfg, model)
    labels = balanced_labels(n, cfg.data.num_classes)
    out = {}
    for precision in ("tf32", "bf16"):
        sampler = Sampler(model, None, schedule, sampling_temperature(cfg, model, schedule), seed=int(s.seed),
                          kv_cache=bool(s.kv_cache), compile=bool(cfg.model.compile), precision=precision,
                          device=device)
        out[precision] = sample_all(sampler, labels, batch, float(s.cfg_scale))
    lines = []
    for precision, (_, seconds) in out.items():
        rest = (n - batch) / sum(seconds[1:]) if len(seconds) > 1 else math.nan
        ran = effective_precision(precision, device)
        lines.append(f"{precision}{f' (runs {ran} here)' if ran != precision else ''} {sum(seconds):.0f} s (first "
                     f"batch, with compile, {seconds[0]:.0f} s; then {rest:.1f} img/s)")
    a, b = out["tf32"][0], out["bf16"][0]
    same = (a == b).flatten(1).all(1).sum().item()
    print(f"BAR-B{' (tiny)' if args.tiny else ''} {n} samples, batch {batch}, CFG {s.cfg_scale}, compiled "
          f"{bool(cfg.model.compile)} on {gpu_name(device)}: {'; '.join(lines)}", flush=True)
    print(f"bf16 vs tf32: {(a == b).float().mean().item():.4f} of token bits equal, {same}/{n} samples "
          f"identical", flush=True)


# ----------------------------------------------------------------------------------------------------- e
def cpu_rule(batch: int) -> str:
    """The tokenizer memory rule measured on CPU (benchmarks/bench_tokenizer_memory.py), bf16 activations halved."""
    path = ROOT / "benchmarks" / "results" / "tokenizer_memory.csv"
    if not path.exists():
        return "no CPU rule"
    rows = list(csv.DictReader(path.open()))
    a, b = (rows[0], rows[-1]) if len(rows) > 1 else (rows[0], rows[0])
    per_image = (float(b["activations_gib"]) - float(a["activations_gib"])) / max(1, int(b["micro_batch"]) -
                                                                                 int(a["micro_batch"]))
    fixed = float(a["resident_gib"]) + int(a["trainable_params"]) * 4 / 2 ** 30 + float(a["activations_gib"]) \
        - per_image * int(a["micro_batch"])
    return f"CPU-measured rule at batch {batch}, bf16 estimated: {fixed + per_image / 2 * batch:.1f} GiB"


def part_tokenizer(args) -> None:
    from bar.orchestration.stages.tokenizer import new_tokenizer, recipe_hooks, tokenizer_recipe, training_loss_fn
    from bar.tokenizers.losses.combined import build_tokenizer_loss

    device = start_device(args)
    batch = 2 if args.tiny else 32
    frozen_nets = ["tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0", "tokenizer.loss.gan=0"] if args.tiny else []
    cfg = config(args, f"tokenizer.train.batch_size={batch}", "tokenizer.train.steps=20", "tokenizer.train.warmup=2",
                 "tokenizer.loss.gan_start=10", "eval.rfid_every=0", *frozen_nets)
    res = int(cfg.data.resolution)
    with torch.device(device):                # initialised on the GPU: seconds, not a minute on the host
        tokenizer = new_tokenizer(cfg, device).train()
    loss = build_tokenizer_loss(cfg.tokenizer.loss, cfg.tokenizer.weights, random_init=True).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        hooks, _, _ = recipe_hooks(cfg, tokenizer, loss, device, Path(tmp))
    hooks = [h for h in hooks if not isinstance(h, Checkpointing)]    # no 10 GB checkpoint write
    images = torch.randint(0, 256, (4 * batch, 3, res, res), dtype=torch.uint8)
    recipe = tokenizer_recipe(cfg, device)
    reset_peak(device)
    start = time.perf_counter()
    result = train(tokenizer, training_loss_fn(cfg, loss, device), infinite_batches((images, images[:, 0, 0, 0]),
                                                                                   batch, seed=0), recipe, hooks=hooks)
    trainable = sum(p.numel() for p in tokenizer.parameters() if p.requires_grad)
    losses = "no frozen-network losses" if args.tiny else "GAN from step 10"
    dtype = str(recipe.autocast_dtype).replace("torch.", "") if recipe.autocast_dtype else "fp32"
    rule = "toy sizes" if args.tiny else cpu_rule(batch)
    print(f"tokenizer{' (tiny)' if args.tiny else ''} ({trainable / 1e6:.1f}M trainable, {res} px, bits "
          f"{cfg.tokenizer.bits}), 20 steps of batch {batch} ({dtype}; {losses}) "
          f"on {gpu_name(device)}: {time.perf_counter() - start:.0f} s, last loss {result.history[-1][1]:.3f}, peak "
          f"{peak_gib(device):.1f} GiB (memory.py plans no tokenizer memory; {rule})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=PARTS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (with --device cpu: the dry run)")
    ap.add_argument("--micro", type=int, default=None, help="micro-batch (ddp_compile), batch (resume)")
    ap.add_argument("--steps", type=int, default=100, help="ddp_compile's optimizer steps")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.micro is None:
        args.micro = (4 if args.tiny else 32) if args.part == "ddp_compile" else (4 if args.tiny else 16)
    globals()[f"part_{args.part}"](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
