"""This project's generator against the authors' release (github.com/amazon-far/BAR at faf903f), same device, same
run, same weights, same settings: training img/s and peak memory, sampling img/s, tokens compared, FLOPs and MFU.

    bash benchmarks/gpu/prepare_release.sh           # once: benchmarks/gpu/_release/ (git-ignored): snapshot + einops
    python benchmarks/gpu/speed_vs_release.py [--release benchmarks/gpu/_release] [--budget-s 420] [--parts P,...]
        [--csv PATH] [--peak-tflops T] [--sample-batch 250] [--train-steps 10] [--project-eager]
    python benchmarks/gpu/speed_vs_release.py --device cpu --small      # the whole script at toy sizes (CPU, ~1 min)
    bash benchmarks/gpu/run_speed_vs_release.sh      # on the GPU machine (README "Speed": the device command)

The release's modules are imported at run time from the snapshot (benchmarks/gpu/release_side.py; none of its code is
in this repository). For each preset (BAR-B, BAR-B/4, BAR-L) the release's generator is built from its own
configs/generator yaml, every parameter is made random (seeded), and this project's generator gets the same weights
through bar.model.release_keys.load_official (and must export the release's key set through to_release_state_dict).

Parts, most useful first; each prints as it ends. A part starts only if its estimate fits the time left of
--budget-s (the rest are listed as skipped; name them with --parts for another run):
  flops               FLOPs per image of each preset, analytic (counted below), with and without CFG, sampling and
                      training; beside them what torch.utils.flop_counter counts on the meta device for this project's
                      code (and the release's training step), which includes work the analytic count leaves out.
  equal               tokens of the two codes in fp32 (TF32 off), eager, from one seed: the release's
                      `generate(kv_cache=True)` and this project's `generate` (static KV cache) with the release's
                      random stream (release_side.project_tokens explains the alignment). Expected: equal.
  sample:PRESET:PREC  sampling at the release_eval settings (the release README's CFG, temperature, allocation =
                      bar/conf/model/PRESET.yaml; batch --sample-batch, 250 = profile=paper's
                      generator.sample.batch_size), PREC tf32 (fp32 weights and activations, TF32 matmuls: the
                      release's sample_imagenet.py) or bf16 (autocast). The release: eager, as sample_imagenet.py
                      runs it (one small warm-up call first). This project: as its presets sample (model.compile: true:
                      the static-cache decode step compiled, CUDA graphs on GPUs; the first call compiles, the next
                      is timed; --repeats N: N timed calls of each code, the fastest counts). img/s, speedup,
                      achieved TFLOP/s and MFU (analytic FLOPs with CFG), peak memory above the weights, share of
                      bits equal between the two codes (same seed and stream; equal only in strict fp32).
  train:PRESET        training steps at the release's per-GPU batch (training.per_gpu_batch_size: BAR-B 128, BAR-L 64),
                      bf16 autocast, TF32, AdamW (the release's decay groups, lr 4e-4, betas (0.9, 0.96), wd 0.03),
                      grad clip 1.0, random orders (step 0), label dropout 0.1. The release: torch.compile(model) as
                      its train_bar.py (compile_model: true), orders and label dropout drawn outside it as its loop
                      does; this project: as bar.training.loop (torch.compile(model), draws made eagerly). Warm-up
                      (compile) steps, then --train-steps timed steps: img/s, MFU, peak memory.

FLOPs (analytic; a multiply-add is 2 FLOPs; matmuls only, per image). Backbone, per row: P + L - 1 positions (the
prefix and every AR step but the last, which is never fed), each with per block AdaLN Linear(D, 6D), qkv, proj, SwiGLU
(hidden 2/3 * 4D), causal attention 4 * keys * D (keys = position + 1), the input Linear for image steps, and
cond_proj Linear(D, W) at the L positions that predict a step. MBM head, per evaluation: input Linear, its blocks
(AdaLN Linear(W, 3W), SwiGLU hidden 2/3 * 4W), final AdaLN Linear(W, 2W), output Linear(W, 2k). Sampling: L AR steps x
K unmasking steps of the head; with CFG everything runs on two rows per image (class and null), so CFG doubles it.
The mask-ratio MLP is left out of sampling (a function of the unmasking step only, not of the image) and counted in
training (one ratio per token). Training = 3 x forward (backward 2x), the head once per token. MFU = analytic FLOPs x
img/s / peak; peak: --peak-tflops or detected (H100 SXM / H200: 989.4 TFLOP/s dense bf16; TF32 half of it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import release_side as rs  # noqa: E402

from bar.model.decoding import release_decoders  # noqa: E402
from bar.model.generator import BARGenerator  # noqa: E402
from bar.model.heads import build_head  # noqa: E402
from bar.model.layers import swiglu_hidden  # noqa: E402
from bar.training.optim import param_groups, release_no_decay  # noqa: E402

PRESETS = ("bar_b", "bar_b4", "bar_l")
NAMES = {"bar_b": "BAR-B", "bar_b4": "BAR-B/4", "bar_l": "BAR-L"}
# toy sizes for --small (the preset's yaml otherwise: bits per token, patch size, dropout, sampling settings)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, repeat_class_condition=8,
             condition_num_classes=10, width=64, num_layers=2)
SMALL_SEQ = {"bar_b": 16, "bar_b4": 64, "bar_l": 16}        # tokens before grouping: 4x4, 8x8 (patch 4: 4 steps)
# dense bf16 peak, TFLOP/s, by device name (first match)
PEAKS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("A100", 312.0)]
# part -> estimated seconds on one H100/H200 with a cold Inductor cache (guesses until measured; --small: /20)
ESTIMATES = {"flops": 15, "equal": 45, "sample:bar_b:bf16": 80, "sample:bar_b4:bf16": 60, "train:bar_b": 170,
             "sample:bar_b:tf32": 90, "sample:bar_l:bf16": 130, "sample:bar_b4:tf32": 60, "train:bar_l": 230,
             "sample:bar_l:tf32": 160}
DEFAULT_PARTS = list(ESTIMATES)
EQUAL_BATCH = {"bar_b": 8, "bar_b4": 8, "bar_l": 4}
SEED = 0
WEIGHT_SEED = 1234
GIB = 2 ** 30


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------------

def analytic_flops(pc, width: int, head_depth: int, passes: int) -> dict:
    """FLOPs per image (module docstring): sample_cfg, sample_nocfg, train, and the parts of one row's sampling."""
    D, K, P, L, depth = pc.dim, pc.step_dim, pc.prefix, pc.steps, pc.depth
    H, Hh, W = swiglu_hidden(D, pc.mlp_ratio), swiglu_hidden(width, 4.0), width
    S = P + L - 1                                                    # positions of one row
    per_position = depth * (2 * D * 6 * D + 2 * D * 3 * D + 2 * D * D + 2 * D * 2 * H + 2 * H * D)
    attention = depth * 4 * D * S * (S + 1) // 2
    token_in = (L - 1) * 2 * (math.ceil(D / K) * K) * D
    backbone = S * per_position + attention + token_in + L * 2 * D * W
    head_eval = (2 * (math.ceil(W / K) * K) * W + head_depth * (2 * W * 3 * W + 2 * W * 2 * Hh + 2 * Hh * W)
                 + 2 * W * 2 * W + 2 * W * 2 * K)
    t_embed = 2 * (2 * 256 * W + W * W)
    head_sample = L * passes * head_eval
    return {"backbone_row": backbone, "head_row": head_sample, "sample_nocfg": backbone + head_sample,
            "sample_cfg": 2 * (backbone + head_sample), "train": 3 * (backbone + L * (head_eval + t_embed))}


def counted_project_flops(pc, width, head_depth, settings) -> dict:
    """torch.utils.flop_counter on the meta device, this project's code, per image: a training step (forward and
    backward, batch 2) and sampling with CFG (the prefill, the first head sample, then (L - 1) x one decode step of
    the static cache (attention over all P + L cache slots) + one head sample)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    with meta:
        model = BARGenerator(pc, build_head("mbm", pc.step_dim, width=width, depth=head_depth))
    out = {}
    B = 2
    model.train()
    tokens = torch.zeros(B, pc.grid[0] * pc.grid[1], pc.token_dim, dtype=torch.uint8, device=meta)
    labels = torch.zeros(B, dtype=torch.long, device=meta)
    with FlopCounterMode(display=False) as fc:
        model.training_loss(tokens, labels, step=0).backward()
    out["train"] = fc.get_total_flops() / B
    model.eval()
    alloc, P, L, K = list(settings["allocation"]), pc.prefix, pc.steps, pc.step_dim
    rows = 2 * B
    labels = torch.zeros(rows, dtype=torch.long, device=meta)
    with torch.no_grad():
        cache = model.new_static_cache(rows, torch.float32, meta)
        consts = model.head.sampling_constants(1.0, meta, allocation=alloc)
        scale = torch.tensor(2.0, device=meta)
        with FlopCounterMode(display=False) as fc:
            cond = model.conditions(torch.zeros(rows, 0, K, dtype=torch.long, device=meta), labels,
                                    torch.arange(L, device=meta).expand(rows, L), cache=cache)[:, -1]
            tok = model.head.sample_with_noise(cond, scale, model.head.draw_noise(B, 1.0, None, meta, allocation=alloc),
                                               consts, allocation=alloc)
        first = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            cond = model.decode(torch.cat([tok, tok]), labels, torch.tensor(P, device=meta), cache)
            model.head.sample_with_noise(cond, scale, model.head.draw_noise(B, 1.0, None, meta, allocation=alloc),
                                         consts, allocation=alloc)
        step = fc.get_total_flops()
    out["sample_cfg"] = (first + (L - 1) * step) / B
    return out


def counted_release_train_flops(snapshot, preset, small) -> float | None:
    """torch.utils.flop_counter on the meta device, the release's training forward + backward, per image (batch 2;
    it feeds all L image steps and drops the last position's output). None if the release's code does not run on
    the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        model, cfg, _ = rs.release_generator(snapshot, preset, small, device="meta")
        g = cfg.model.generator
        B = 2
        ids = torch.zeros(B, int(g.image_seq_len), cfg.model.vq_model.token_size, dtype=torch.long, device="meta")
        cond = torch.full((B,), 3, dtype=torch.long, device="meta")
        orders = torch.arange(model.image_seq_len, device="meta").expand(B, -1)
        with FlopCounterMode(display=False) as fc:
            model(ids, cond, orders=orders).backward()
        return fc.get_total_flops() / B
    except Exception as exc:  # noqa: BLE001 - an optional cross-check
        log(f"  (release training FLOPs on meta not counted: {type(exc).__name__}: {str(exc)[:120]})")
        return None


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.small = args.small
        self.cuda = self.device.type == "cuda"
        self.compile = {"auto": self.cuda, "on": True, "off": False}[args.compile]
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.readme = rs.readme_sampling(args.release)
        self.pair_key = None
        self.pair = None
        self.peak = self._peak()
        self.sample_batch = args.sample_batch or (8 if self.small else 250)
        self.scale = 1 / 20 if self.small else 1.0

    # -- bookkeeping --------------------------------------------------------------------------------------------------
    def _peak(self) -> float | None:
        if self.args.peak_tflops:
            return self.args.peak_tflops * 1e12
        if not self.cuda:
            return None
        name = torch.cuda.get_device_name(self.device)
        for key, tflops in PEAKS:
            if key in name:
                return tflops * 1e12
        return None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn):
        """(seconds, result, (peak bytes, bytes allocated at the start) on CUDA, else None)."""
        self.sync()
        base = 0
        if self.cuda:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        seconds = time.perf_counter() - t0
        mem = (torch.cuda.max_memory_allocated(self.device), base) if self.cuda else None
        return seconds, out, mem

    def best(self, fn):
        """`timed` over --repeats calls: the fastest call's seconds, the last result, the highest peak."""
        runs = [self.timed(fn) for _ in range(self.args.repeats)]
        mems = [m for _, _, m in runs if m is not None]
        return min(t for t, _, _ in runs), runs[-1][1], max(mems) if mems else None

    def record(self, **row) -> None:
        self.rows.append(row)

    def free(self) -> None:
        torch._dynamo.reset()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def rate(self, flops_per_s: float) -> str:
        return f"{flops_per_s / 1e9:7.2f} GFLOP/s" if self.small else f"{flops_per_s / 1e12:7.1f} TFLOP/s"

    def mfu(self, flops_per_s: float, precision: str) -> str:
        if self.peak is None:
            return "MFU -"
        s = f"MFU {100 * flops_per_s / self.peak:.1f}% of bf16 peak"
        if precision == "tf32":
            s += f" ({200 * flops_per_s / self.peak:.1f}% of TF32 peak)"
        return s

    # -- models -------------------------------------------------------------------------------------------------------
    def small_sizes(self, preset: str) -> dict | None:
        return dict(SMALL, image_seq_len=SMALL_SEQ[preset]) if self.small else None

    def settings(self, preset: str) -> dict:
        return self.readme[preset]

    def build(self, preset: str):
        """(release model, this project's twin, release config, release yaml), same random weights, eval mode."""
        rel, cfg, raw = rs.release_generator(self.args.release, preset, self.small_sizes(preset), device=self.device)
        rs.randomize_(rel, WEIGHT_SEED)
        twin = rs.project_twin(rel, cfg)
        return rel.eval(), twin.eval(), cfg, raw

    def get_pair(self, preset: str):
        if self.pair_key != preset:
            self.pair = None
            self.free()
            self.pair = self.build(preset)
            self.pair_key = preset
        return self.pair

    def drop_pair(self) -> None:
        self.pair, self.pair_key = None, None
        self.free()

    def labels(self, n: int, num_classes: int) -> torch.Tensor:
        return (torch.arange(n, device=self.device) * 7) % num_classes        # balanced-ish, as the eval protocol

    @staticmethod
    def precision_ctx(precision: str, device):
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def set_tf32(on: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on

    # -- parts --------------------------------------------------------------------------------------------------------
    def header(self) -> None:
        a = self.args
        dev = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        log(f"speed_vs_release: torch {torch.__version__} on {dev}; release {rs.snapshot_dir(a.release)} "
            f"(commit {rs.RELEASE_COMMIT[:7]}); {'toy sizes (--small)' if self.small else 'full sizes'}; "
            f"compile {'on' if self.compile else 'off'}; budget {a.budget_s:.0f} s")
        log(f"peak: {self.peak / 1e12:.1f} TFLOP/s dense bf16" if self.peak else "peak: unknown (MFU not shown)")
        for preset in PRESETS:
            mine = rs.project_preset(preset)
            pm, ps = mine["model"], mine["generator"]["sample"]
            rel = rs.release_yaml(a.release, preset)["model"]["generator"]
            readme = self.readme[preset]
            ours = (ps["cfg_scale"], ps["temperature"], list(ps["allocation_shape"]))
            theirs = (readme["cfg_scale"], readme["temperature"], readme["allocation"])
            sizes_ours = (pm["dim"], pm["depth"], pm["heads"], pm["patch_size"], pm["class_repeat"], pm["dropout"],
                          pm["head_width"], pm["head_depth"])
            sizes_rel = (rel["hidden_size"], rel["num_hidden_layers"], rel["num_attention_heads"],
                         rel.get("patch_size", 1), rel["repeat_class_condition"], rel.get("dropout", 0.0),
                         rel["mbm_head"]["width"], rel["mbm_head"]["num_layers"])
            log(f"  {NAMES[preset]:8s} release README settings CFG {theirs[0]}, temperature {theirs[1]}, allocation "
                f"{theirs[2]} ({'=' if ours == theirs else 'DIFFER from'} bar/conf/model/{preset}.yaml); sizes "
                f"{'=' if sizes_ours == sizes_rel else 'DIFFER:'} release yaml"
                + ("" if sizes_ours == sizes_rel else f" ours {sizes_ours} release {sizes_rel}"))

    def part_flops(self) -> None:
        unit, g = ("MFLOP", 1e6) if self.small else ("GFLOP", 1e9)
        log(f"{'preset':8s} {'sample/img CFG':>15s} {'no CFG':>10s} {'train/img':>10s}   flop_counter (meta): "
            f"{'ours sample CFG':>15s} {'ours train':>10s} {'release train':>13s}   ({unit} per image)")
        for preset in PRESETS:
            _, cfg, _ = rs.release_generator(self.args.release, preset, self.small_sizes(preset), device="meta")
            pc = rs.project_config(cfg)
            head_depth = cfg.model.generator.mbm_head.num_layers
            settings = self.settings(preset)
            a = analytic_flops(pc, pc.cond_width, head_depth, len(settings["allocation"]))
            c = counted_project_flops(pc, pc.cond_width, head_depth, settings)
            r = counted_release_train_flops(self.args.release, preset, self.small_sizes(preset))
            self.flops[preset] = a
            log(f"{NAMES[preset]:8s} {a['sample_cfg'] / g:15.1f} {a['sample_nocfg'] / g:10.1f} {a['train'] / g:10.1f}"
                f"   {'':20s} {c['sample_cfg'] / g:15.1f} {c['train'] / g:10.1f} "
                f"{(r / g if r else float('nan')):13.1f}   (one sampling row: backbone "
                f"{a['backbone_row'] / g:.1f}, MBM head {a['head_row'] / g:.1f})")
            self.record(part="flops", preset=preset, code="-", analytic_sample_cfg=a["sample_cfg"],
                        analytic_sample_nocfg=a["sample_nocfg"], analytic_train=a["train"],
                        counted_sample_cfg=c["sample_cfg"], counted_train=c["train"], counted_release_train=r)

    def part_equal(self) -> None:
        self.set_tf32(False)
        for preset in PRESETS:
            rel, twin, cfg, _ = self.get_pair(preset)
            B = EQUAL_BATCH[preset]
            labels = self.labels(B, cfg.model.generator.condition_num_classes)
            settings = self.settings(preset)
            t_rel, theirs, _ = self.timed(lambda r=rel, y=labels, s=settings: rs.release_tokens(r, y, s, SEED))
            t_our, ours, _ = self.timed(lambda m=twin, y=labels, s=settings: rs.project_tokens(m, y, s, SEED))
            same = ours == theirs
            k = cfg.model.vq_model.token_size
            by_step = twin.group(same.reshape(B, -1, k).to(torch.uint8)).bool()     # (B, AR steps, bits per step)
            parted = (~by_step.all(-1)).any(0).nonzero()
            first = int(parted[0]) if len(parted) else None
            verdict = "EQUAL" if bool(same.all()) else "DIFFER"
            log(f"  {NAMES[preset]:8s} fp32 (TF32 off), batch {B}: tokens {verdict}: {same.float().mean():.4f} of bits,"
                f" {int(same.all(1).sum())}/{B} samples identical, first differing AR step "
                f"{first if first is not None else '-'} (release {t_rel:.1f} s, ours eager {t_our:.1f} s)")
            self.record(part="equal", preset=preset, code="both", batch=B, bits_equal=same.float().mean().item(),
                        samples_identical=int(same.all(1).sum()), first_differing_step=first)
            release_decoders(twin)
        self.set_tf32(True)

    def part_sample(self, preset: str, precision: str) -> None:
        rel, twin, cfg, _ = self.get_pair(preset)
        self.set_tf32(True)
        torch.backends.cudnn.benchmark = True
        B = self.sample_batch
        labels = self.labels(B, cfg.model.generator.condition_num_classes)
        settings = self.settings(preset)
        ctx = lambda: self.precision_ctx(precision, self.device)   # noqa: E731
        flops = self.flops.get(preset) or self._flops_of(cfg, settings)
        weights = sum(t.numel() * t.element_size() for m in (rel, twin)
                      for t in [*m.parameters(), *m.buffers()])               # both models stay resident

        def release_call(lab):
            with ctx():
                return rs.release_tokens(rel, lab, settings, SEED)

        def project_call(compile_):
            with ctx():
                return rs.project_tokens(twin, labels, settings, SEED, compile=compile_)

        warm, _, _ = self.timed(lambda: release_call(labels[:2]))
        t_rel, theirs, m_rel = self.best(lambda: release_call(labels))
        results = {"release (eager)": (t_rel, theirs, m_rel, None)}
        release_decoders(twin)                   # its memory is the next calls' own
        if self.args.project_eager and self.compile:
            self.timed(lambda: project_call(False))                         # builds its decoder
            t, out, m = self.best(lambda: project_call(False))
            results["ours (static cache, eager)"] = (t, out, m, None)
            release_decoders(twin)
        first, _, _ = self.timed(lambda: project_call(self.compile))
        t_our, ours, m_our = self.best(lambda: project_call(self.compile))
        label = "ours (compiled, CUDA graphs)" if self.compile and self.cuda else \
            ("ours (compiled)" if self.compile else "ours (static cache, eager)")
        results[label] = (t_our, ours, m_our, first - t_our)
        log(f"  {NAMES[preset]} sampling, {precision}, batch {B}, CFG {settings['cfg_scale']}, temperature "
            f"{settings['temperature']}, allocation {settings['allocation']} ({flops['sample_cfg'] / 1e9:.3f} "
            f"GFLOP/img with CFG); release warm-up call (batch 2) {warm:.1f} s")
        for name, (t, out, mem, compile_s) in results.items():
            ips = B / t
            same = (out == theirs).float().mean().item()
            over = mem[0] - weights if mem is not None else None     # includes a decoder's cache kept on the model
            mem_s = f"peak {over / GIB:.2f} GiB over the weights" if over is not None else "peak -"
            comp = "" if compile_s is None else \
                f", first call {compile_s + t:.0f} s" + (" (compile)" if self.compile else "")
            log(f"    {name:30s} {ips:9.2f} img/s ({ips / (B / t_rel):5.2f}x release)  "
                f"{self.rate(ips * flops['sample_cfg'])}  {self.mfu(ips * flops['sample_cfg'], precision)}"
                f"  {mem_s}  bits equal to release {same:.3f}{comp}")
            self.record(part=f"sample:{preset}:{precision}", preset=preset, code=name, batch=B, img_per_s=ips,
                        speedup=ips / (B / t_rel), tflops=ips * flops["sample_cfg"] / 1e12,
                        mfu=(ips * flops["sample_cfg"] / self.peak) if self.peak else None,
                        peak_mem_over_weights_bytes=over, bits_equal_release=same,
                        compile_s=compile_s)
        release_decoders(twin)

    def _flops_of(self, cfg, settings) -> dict:
        pc = rs.project_config(cfg)
        return analytic_flops(pc, pc.cond_width, cfg.model.generator.mbm_head.num_layers,
                              len(settings["allocation"]))

    def part_train(self, preset: str) -> None:
        self.drop_pair()
        rel, twin, cfg, raw = self.build(preset)
        self.set_tf32(True)
        torch.backends.cudnn.benchmark = True
        g = cfg.model.generator
        B = self.args.train_batch or (8 if self.small else int(raw["training"]["per_gpu_batch_size"]))
        steps, warmup = self.args.train_steps or (2 if self.small else 10), 2
        gen = torch.Generator(device=self.device).manual_seed(SEED)
        n_tok, k = int(g.image_seq_len), cfg.model.vq_model.token_size
        bits = torch.randint(0, 2, (B, n_tok, k), device=self.device, generator=gen)
        labels = torch.randint(0, g.condition_num_classes, (B,), device=self.device, generator=gen)
        flops = self.flops.get(preset) or self._flops_of(cfg, self.settings(preset))
        opt_kw = dict(lr=4e-4, betas=(0.9, 0.96))
        bf16 = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)   # noqa: E731
        log(f"  {NAMES[preset]} training, batch {B} (the release's per_gpu_batch_size), bf16 autocast + TF32, "
            f"{'compiled' if self.compile else 'eager'}, {warmup} warm-up + {steps} timed steps "
            f"({flops['train'] / 1e9:.3f} GFLOP/img)")

        def release_setup():
            named = [(n, p) for n, p in rel.named_parameters() if p.requires_grad]
            groups = [{"params": [p for n, p in named if not release_no_decay(n, p.ndim)], "weight_decay": 0.03},
                      {"params": [p for n, p in named if release_no_decay(n, p.ndim)], "weight_decay": 0.0}]
            opt = torch.optim.AdamW(groups, **opt_kw)
            fwd = torch.compile(rel) if self.compile else rel
            ids = bits.long()

            def step():
                orders = rel.sample_orders(ids, random_ratio=1.0)          # as its loop: outside the compiled model
                condition = rel.preprocess_condition(labels, cond_drop_prob=g.class_label_dropout)
                with bf16():
                    loss = fwd(ids, condition, orders=orders)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(rel.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
            return rel, opt, step

        def project_setup():
            opt = torch.optim.AdamW(param_groups(twin, 0.03), **opt_kw)
            fwd = torch.compile(twin) if self.compile else twin
            tokens = bits.to(torch.uint8)

            def step():
                draws = twin.training_draws(B, 0, self.device)             # as bar.training.loop: made eagerly
                with bf16():
                    loss = fwd(tokens, labels, draws=draws)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
            return twin, opt, step

        base = None
        for name, setup in (("release (torch.compile)" if self.compile else "release (eager)", release_setup),
                            ("ours (torch.compile)" if self.compile else "ours (eager)", project_setup)):
            model, _, step = setup()
            model.train()
            first, loss, _ = self.timed(step)
            for _ in range(warmup - 1):
                self.timed(step)
            t, _, mem = self.timed(lambda fn=step: [fn() for _ in range(steps)])
            ips = B * steps / t
            base = base or ips
            mem_s = f"peak {mem[0] / GIB:.1f} GiB (both models' weights included)" if mem is not None \
                else "peak -"
            log(f"    {name:30s} {ips:9.2f} img/s ({ips / base:5.2f}x release)  {self.rate(ips * flops['train'])}  "
                f"{self.mfu(ips * flops['train'], 'bf16')}  {mem_s}  first step {first:.0f} s, "
                f"loss {loss.item():.3f}")
            self.record(part=f"train:{preset}", preset=preset, code=name, batch=B, img_per_s=ips, speedup=ips / base,
                        tflops=ips * flops["train"] / 1e12,
                        mfu=(ips * flops["train"] / self.peak) if self.peak else None,
                        peak_mem_bytes=mem[0] if mem is not None else None,
                        compile_s=first)
            model.zero_grad(set_to_none=True)
            model.eval()
            model = step = None                  # the compiled module and the optimizer state go with `step`
            self.free()

    # -- driver -------------------------------------------------------------------------------------------------------
    def write_csv(self) -> None:
        if not self.args.csv or not self.rows:
            return
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        Path(self.args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(self.args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)

    def acceptance(self) -> None:
        """The issue's GPU acceptance checks, from what this run measured (at full size only)."""
        def row(part, mine):
            for r in self.rows:
                if r["part"] == part and r.get("code", "").startswith("ours" if mine else "release"):
                    if mine and "eager" in r["code"] and self.compile:
                        continue
                    return r
            return None

        def pct(x):
            return f"{100 * x:.1f}%" if x is not None else "-"

        log("acceptance (issue; measured in this run" + (", toy sizes: not meaningful)" if self.small else ")"))
        ours, rel = row("sample:bar_b:bf16", True), row("sample:bar_b:bf16", False)
        rel32 = row("sample:bar_b:tf32", False)
        if ours and rel:
            vs32 = f", {ours['img_per_s'] / rel32['img_per_s']:.2f}x the release in tf32" if rel32 else ""
            ok = ours["img_per_s"] >= 4 * rel["img_per_s"] and (ours["mfu"] or 0) >= 0.25
            log(f"  BAR-B sampling bf16: {ours['img_per_s']:.1f} img/s = {ours['speedup']:.2f}x the release in bf16"
                f"{vs32} (need >= 4x), MFU {pct(ours['mfu'])} (need >= 25%): {'PASS' if ok else 'FAIL'}")
        else:
            log("  BAR-B sampling bf16: not measured")
        b4 = row("sample:bar_b4:bf16", True)
        if b4:
            log(f"  BAR-B/4 sampling bf16: {b4['img_per_s']:.1f} img/s (need > 445.48, the paper's): "
                f"{'PASS' if b4['img_per_s'] > 445.48 else 'FAIL'}")
        else:
            log("  BAR-B/4 sampling: not measured")
        ours, rel = row("train:bar_b", True), row("train:bar_b", False)
        if ours and rel:
            ok = (ours["mfu"] or 0) >= 0.5 and ours["img_per_s"] >= rel["img_per_s"]
            log(f"  BAR-B training batch {ours['batch']}: {ours['img_per_s']:.1f} img/s, MFU {pct(ours['mfu'])} "
                f"(need >= 50%), {ours['speedup']:.2f}x the release (need >= 1): {'PASS' if ok else 'FAIL'}")
        else:
            log("  BAR-B training: not measured")

    def run(self, parts: list[str]) -> int:
        self.flops: dict = {}
        self.header()
        skipped, failed = [], []
        for part in parts:
            estimate = ESTIMATES.get(part, 120) * self.scale
            left = self.args.budget_s - self.elapsed()
            if estimate > left:
                log(f"== {part}: SKIPPED (estimate {estimate:.0f} s, {left:.0f} s of the budget left)")
                skipped.append(part)
                continue
            log(f"== {part} (estimate {estimate:.0f} s; at {self.elapsed():.0f} s)")
            t0 = time.perf_counter()
            try:
                kind, *rest = part.split(":")
                if kind == "flops":
                    self.part_flops()
                elif kind == "equal":
                    self.part_equal()
                elif kind == "sample":
                    self.part_sample(rest[0], rest[1])
                elif kind == "train":
                    self.part_train(rest[0])
                else:
                    raise ValueError(f"unknown part {part!r}")
            except Exception as exc:  # noqa: BLE001 - one failing part must not lose the others' numbers
                failed.append(part)
                log(f"   FAILED: {type(exc).__name__}: {str(exc)[:400]}")
                self.drop_pair()
            if part.startswith("train:"):
                self.free()                      # its models went with part_train's frame
            log(f"-- {part}: {time.perf_counter() - t0:.0f} s")
            self.write_csv()                     # after every part: a run cut short keeps what it measured
        self.acceptance()
        log(f"done in {self.elapsed():.0f} s; skipped {skipped or 'none'}; failed {failed or 'none'}")
        return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", default=None, help="snapshot folder (default benchmarks/gpu/_release)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="toy sizes (for a CPU check of the script)")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, from {DEFAULT_PARTS}")
    ap.add_argument("--budget-s", type=float, default=None, help="start no part past this (default 420; --small 240)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by device name)")
    ap.add_argument("--sample-batch", type=int, default=None, help="default 250 (--small 8)")
    ap.add_argument("--train-batch", type=int, default=None, help="default the release's per-GPU batch (--small 8)")
    ap.add_argument("--train-steps", type=int, default=None, help="timed steps (default 10; --small 2)")
    ap.add_argument("--project-eager", action="store_true", help="also time this project's uncompiled sampler")
    ap.add_argument("--repeats", type=int, default=1, help="timed sampling calls per code (the fastest counts)")
    ap.add_argument("--csv", default=os.path.join(os.environ["OUT"], "speed_vs_release.csv") if os.environ.get("OUT")
                    else None)
    args = ap.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 240.0 if args.small else 420.0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu --small for the CPU check)", file=sys.stderr)
        return 2
    if not args.device.startswith("cuda"):
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    return Bench(args).run(parts)


if __name__ == "__main__":
    raise SystemExit(main())
