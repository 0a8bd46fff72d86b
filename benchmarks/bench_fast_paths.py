"""Fast-path benchmark (not a test): eager vs compiled training, cached vs compiled sampling, side by side in one run.

    python benchmarks/bench_fast_paths.py [--grids 4,8,16] [--threads 2] [--repeats 3] [--sections train,sample]
                                          [--out benchmarks/results/fast_paths.csv]
    python benchmarks/bench_fast_paths.py --scale tiny          # the `make demo` tiny profile (1 thread)
    python benchmarks/bench_fast_paths.py --scale bar_b         # GPU only: BAR-B, bf16, batch 128 train / 256 sample
    python benchmarks/bench_fast_paths.py --scale bar_b4        # GPU only: BAR-B/4

Rows per grid and section:
  train   eager    `model.training_loss` + backward + AdamW step
          compiled `torch.compile(model, fullgraph=True)` on draws made eagerly (as bar.training.loop runs it) +
                   backward + AdamW step
  sample  cached   `generate(..., kv_cache=True)`  static KV cache, uncompiled (CFG)
          compiled `generate(..., compile=True)`   static KV cache, compiled decode step (CUDA graphs on GPU)
img/s is batch / median wall seconds of `--repeats` timed calls, the paths interleaved in each repetition so that
load from other processes hits them alike (speedup: median vs the section's first path's median; speedup_min: best
call vs its best call, the least disturbed; cpu_seconds: process CPU time per call, the robust figure at 1 thread);
compile_s = first call - median call (compile time is not throughput); peak_mem = peak bytes of tensors allocated
during one call, above the level at its start (CPU: profiler allocation events; GPU: max_memory_allocated).
same_tokens: train, the compiled loss equals the eager one from the same draws; sample, the path's tokens equal the
cache-free reference's (`kv_cache=False`, one untimed call) from the same seed.

Scales: default is the issue's CPU model (hidden 256, depth 4, 4 heads, 16 bits/token, MBM head 512 x 3, 10
classes, class repeat 32, CFG 3.0, temperature 1.0, allocation [4,4,4,4]; batch 64 train / 16 sample at 4x4, 16 / 16
at 8x8 and 16x16). tiny: dim 128, depth 2, 4 heads, head 128 x 2, class repeat 8, 4x4, batch 32 train / 250 sample,
1 thread. bar_b / bar_b4: the release's sizes and sampling settings (D 768, depth 24, 12 heads, MBM 2048 x 3, class
repeat 32, 1000 classes, 16x16 grid, 16 bits; bar_b: CFG 5.0, tau 2.5, allocation [2,2,5,7]; bar_b4: patch 4, CFG
9.6, tau 1.4, allocation [64,64,64,64]), bf16 autocast, batch 128 train (the release's per-GPU batch; eager at 256
ran out of an H200's 139 GiB) / 256 sample; they need CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.model.generator import BARGenerator, GeneratorConfig  # noqa: E402
from bar.model.heads import build_head  # noqa: E402
from bar.orchestration.memory import fmt_bytes, measure_peak_train_memory  # noqa: E402
from bar.model.sampling import generate  # noqa: E402

FIELDS = ["scale", "grid", "section", "path", "batch", "img_per_s", "seconds", "min_seconds", "cpu_seconds",
          "speedup", "speedup_min", "compile_s", "compile_cpu_s", "peak_mem_bytes", "same_tokens", "threads", "clock", "device",
          "loadavg"]


@dataclass
class Scale:
    dim: int
    depth: int
    heads: int
    head_width: int
    head_depth: int
    class_repeat: int
    num_classes: int
    cfg_scale: float
    temperature: float
    allocation: list[int]
    grids: dict[int, tuple[int, int]]          # grid side -> (train batch, sample batch)
    patch_size: int = 1
    bits: int = 16
    threads: int | None = None
    gpu: bool = False
    extra: dict = field(default_factory=dict)


SCALES = {
    "small": Scale(256, 4, 4, 512, 3, 32, 10, 3.0, 1.0, [4, 4, 4, 4], {4: (64, 16), 8: (16, 16), 16: (16, 16)}),
    "tiny": Scale(128, 2, 4, 128, 2, 8, 10, 3.0, 1.0, [4, 4, 4, 4], {4: (32, 250)}, threads=1),
    "bar_b": Scale(768, 24, 12, 2048, 3, 32, 1000, 5.0, 2.5, [2, 2, 5, 7], {16: (128, 256)}, gpu=True),
    "bar_b4": Scale(768, 24, 12, 2048, 3, 32, 1000, 9.6, 1.4, [64, 64, 64, 64], {16: (128, 256)}, patch_size=4,
                    gpu=True),
}


def build(sc: Scale, side: int, device) -> BARGenerator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(dim=sc.dim, depth=sc.depth, heads=sc.heads, num_classes=sc.num_classes,
                          class_repeat=sc.class_repeat, grid=(side, side), patch_size=sc.patch_size,
                          token_dim=sc.bits, cond_width=sc.head_width)
    model = BARGenerator(cfg, build_head("mbm", cfg.step_dim, width=sc.head_width, depth=sc.head_depth))
    with torch.no_grad():                    # AdaLN-Zero leaves the untrained model constant: give it some signal
        for p in model.parameters():
            if p.ndim == 2 and not p.any():
                p.normal_(std=0.02)
    return model.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = "wall"     # --clock: "wall" seconds, or "cpu" (process CPU seconds: robust to other processes' load at 1 thread)


def timed(fn, device, cpu: list | None = None) -> tuple[float, object]:
    """Wall seconds of fn() (its process CPU seconds appended to `cpu`)."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start, out


def summary(wall: list[float], cpu: list[float], first: tuple[float, float], compiled: bool) -> dict:
    """seconds / min_seconds on CLOCK; compile_s: first call - median call on the wall clock; compile_cpu_s: the same
    in process CPU seconds (all of the compile's work only when compiling in-process: TORCHINDUCTOR_COMPILE_THREADS=1)."""
    times = cpu if CLOCK == "cpu" else wall
    return dict(seconds=statistics.median(times), min_seconds=min(times), cpu_seconds=statistics.median(cpu),
                compile_s=max(0.0, first[0] - statistics.median(wall)) if compiled else "",
                compile_cpu_s=max(0.0, first[1] - statistics.median(cpu)) if compiled else "")


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return ""


def bench_train(sc: Scale, side: int, batch: int, device, repeats: int, autocast) -> list[dict]:
    model = build(sc, side, device).train()
    L = side * side
    g = torch.Generator(device=device).manual_seed(1)
    tokens = torch.randint(0, 2, (batch, L, sc.bits), dtype=torch.uint8, device=device, generator=g)
    labels = torch.randint(0, sc.num_classes, (batch,), device=device, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    compiled = torch.compile(model, fullgraph=True)
    paths = {"eager": lambda: model.training_loss(tokens, labels, step=0),
             "compiled": lambda: compiled(tokens, labels, draws=model.training_draws(batch, 0, device))}

    def step(loss_fn):
        with autocast():
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    first = {}
    for name, fn in paths.items():                                                     # warm-up / compile
        first_cpu = []
        first[name] = (timed(lambda: step(fn), device, first_cpu)[0], first_cpu[0])
    wall, cpu = {name: [] for name in paths}, {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            wall[name].append(timed(lambda: step(fn), device, cpu[name])[0])
    # the same loss from the same draws (the model has no dropout)
    draws = model.training_draws(batch, 0, device)
    with autocast():
        same = torch.allclose(model.loss_from_draws(tokens, labels, draws).float(),
                              compiled(tokens, labels, draws=draws).float(), atol=1e-5, rtol=1e-5)
    rows = []
    for name, fn in paths.items():
        stats = summary(wall[name], cpu[name], first[name], name != "eager")
        peak = measure_peak_train_memory(lambda: step(fn), device)
        rows.append(dict(section="train", path=name, batch=batch, img_per_s=batch / stats["seconds"], **stats,
                         peak_mem_bytes=peak,
                         same_tokens=same if name != "eager" else ""))
    return rows


def bench_sample(sc: Scale, side: int, batch: int, device, repeats: int, autocast, compile_mode) -> list[dict]:
    model = build(sc, side, device).eval()
    labels = torch.arange(batch, device=device) % sc.num_classes
    kw = dict(cfg_scale=sc.cfg_scale, temperature=sc.temperature, allocation=sc.allocation)
    paths = {"cached": dict(), "compiled": dict(compile=compile_mode)}

    def run(opts):
        with autocast():
            return generate(model, labels, generator=torch.Generator(device=device).manual_seed(0), **kw, **opts)

    reference = run(dict(kv_cache=False))
    first, outs = {}, {}
    for name, opts in paths.items():
        first_cpu = []
        wall_s, outs[name] = timed(lambda: run(opts), device, first_cpu)
        first[name] = (wall_s, first_cpu[0])
    wall, cpu = {name: [] for name in paths}, {name: [] for name in paths}
    for _ in range(repeats):
        for name, opts in paths.items():
            wall[name].append(timed(lambda: run(opts), device, cpu[name])[0])
    rows = []
    for name, opts in paths.items():
        stats = summary(wall[name], cpu[name], first[name], name == "compiled")
        peak = measure_peak_train_memory(lambda: run(opts), device)
        rows.append(dict(section="sample", path=name, batch=batch, img_per_s=batch / stats["seconds"], **stats,
                         peak_mem_bytes=peak,
                         same_tokens=torch.equal(outs[name], reference)))
    return rows


def profile_tables(sc: Scale, side: int, train_b: int, sample_b: int, device, autocast, compile_mode,
                   top: int = 15) -> str:
    """torch.profiler tables (top ops by self time, op calls) of one sampling call per AR step and one training step,
    eager vs compiled: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = []

    def record(title, fn, per):
        fn()                                                         # warm (compiles)
        with profile(activities=acts) as prof:
            fn()
            sync(device)
        ka = prof.key_averages()
        calls = sum(e.count for e in ka)
        self_ms = sum(e.self_cpu_time_total for e in ka) / 1e3
        mm = sum(e.self_cpu_time_total for e in ka if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e3
        lines.append(f"== {title}: {calls / per:.0f} operator calls and {self_ms / per:.1f} ms self CPU per "
                     f"{'AR step' if per > 1 else 'step'}; matmuls (mm/addmm/bmm) {100 * mm / self_ms:.0f}% of it")
        lines.append(ka.table(sort_by=sort, row_limit=top, max_name_column_width=50))

    model = build(sc, side, device).eval()
    labels = torch.arange(sample_b, device=device) % sc.num_classes
    kw = dict(cfg_scale=sc.cfg_scale, temperature=sc.temperature, allocation=sc.allocation)
    L = model.cfg.steps
    for name, opts in (("cached", {}), ("compiled", {"compile": compile_mode})):
        def run(opts=opts):
            with autocast():
                generate(model, labels, generator=torch.Generator(device=device).manual_seed(0), **kw, **opts)
        record(f"sample {name}, {side}x{side}, batch {sample_b} (per AR step, {L} steps)", run, L)
    model = build(sc, side, device).train()
    tokens = torch.randint(0, 2, (train_b, side * side, sc.bits), dtype=torch.uint8, device=device)
    tlabels = torch.randint(0, sc.num_classes, (train_b,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    compiled = torch.compile(model, fullgraph=True)
    for name, fn in (("eager", lambda: model.training_loss(tokens, tlabels, 0)),
                     ("compiled", lambda: compiled(tokens, tlabels, draws=model.training_draws(train_b, 0, device)))):
        def step(fn=fn):
            with autocast():
                loss = fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        record(f"train {name}, {side}x{side}, batch {train_b} (one AdamW step)", step, 1)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small", choices=sorted(SCALES))
    ap.add_argument("--grids", default=None, help="comma-separated grid sides (default: the scale's)")
    ap.add_argument("--sections", default="train,sample")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the scale's, else 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="time on the wall clock, or in process CPU seconds (use with --threads 1 on a shared "
                         "machine: other processes' load then does not count)")
    ap.add_argument("--batch", type=int, default=None, help="override the train and sample batch")
    ap.add_argument("--compile-mode", default="true",
                    help="compile= for the compiled sampling path: true (default mode on CPU, CUDA graphs on GPU) or "
                         "a torch.compile mode")
    ap.add_argument("--out", default=None, help="CSV (default: benchmarks/results/fast_paths[_<scale>].csv)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing: profiler tables (eager vs compiled) per grid, written beside the CSV "
                         "as fast_paths[_<scale>]_profile.txt")
    args = ap.parse_args(argv)
    sc = SCALES[args.scale]
    global CLOCK
    CLOCK = args.clock
    if args.clock == "cpu" and sc.gpu:
        raise SystemExit("--clock cpu measures CPU work; GPU runs need the wall clock")
    if sc.gpu and not torch.cuda.is_available():
        print(f"--scale {args.scale} is a GPU benchmark (bf16 autocast, batch 128 / 256) and needs CUDA; this machine "
              f"has none. Run it on a GPU machine, or use --scale small / tiny on CPU.", file=sys.stderr)
        return 2
    device = torch.device("cuda" if sc.gpu else "cpu")
    threads = args.threads or sc.threads or 2
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    compile_mode = True if args.compile_mode == "true" else args.compile_mode
    sides = [int(s) for s in args.grids.split(",")] if args.grids else sorted(sc.grids)
    sections = args.sections.split(",")
    name = f"fast_paths{'' if args.scale == 'small' else '_' + args.scale}.csv"
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / name
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{threads}"
    print(f"scale {args.scale}: dim {sc.dim}, depth {sc.depth}, head {sc.head_width} x {sc.head_depth}, "
          f"allocation {sc.allocation}, CFG {sc.cfg_scale}; {dev_name}; {args.repeats} interleaved repeats; "
          f"{args.clock} clock", flush=True)
    if args.profile:
        text = []
        for side in sides:
            train_b, sample_b = sc.grids.get(side, (16, 16))
            text.append(profile_tables(sc, side, args.batch or train_b, args.batch or sample_b, device, autocast,
                                       compile_mode))
            print(text[-1], flush=True)
        prof_out = out.with_name(out.stem + "_profile.txt")
        prof_out.parent.mkdir(parents=True, exist_ok=True)
        prof_out.write_text(f"# {dev_name}, scale {args.scale}\n" + "\n".join(text) + "\n")
        print(f"wrote {prof_out}")
        return 0
    rows = []
    for side in sides:
        train_b, sample_b = sc.grids.get(side, (16, 16))
        if args.batch:
            train_b = sample_b = args.batch
        for section in sections:
            load0 = loadavg()
            if section == "train":
                got = bench_train(sc, side, train_b, device, args.repeats, autocast)
            elif section == "sample":
                got = bench_sample(sc, side, sample_b, device, args.repeats, autocast, compile_mode)
            else:
                raise SystemExit(f"unknown section {section!r}: train or sample")
            base = got[0]
            for r in got:
                r.update(scale=args.scale, grid=f"{side}x{side}", threads=threads, clock=args.clock, device=dev_name,
                         speedup=r["img_per_s"] / base["img_per_s"],
                         speedup_min=base["min_seconds"] / r["min_seconds"], loadavg=f"{load0}-{loadavg()}")
                rows.append(r)
                print(fmt_row(r), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in
                             ((k, r.get(k, "")) for k in FIELDS)})
    print(f"wrote {out}")
    return 0


def fmt_row(r: dict) -> str:
    comp = f"compile {r['compile_s']:.0f}s ({r['compile_cpu_s']:.0f} cpu)" if r["compile_s"] != "" else ""
    same = "" if r["same_tokens"] == "" else ("same" if r["same_tokens"] else "DIFFERS")
    return (f"  {r['grid']:>5s} {r['section']:6s} {r['path']:8s} batch {r['batch']:3d}: {r['img_per_s']:8.2f} img/s "
            f"({r['speedup']:.2f}x median, {r['speedup_min']:.2f}x best)  peak {fmt_bytes(r['peak_mem_bytes']):>9s}  "
            f"{comp:22s} {same}  [load {r['loadavg']}]")


if __name__ == "__main__":
    raise SystemExit(main())
