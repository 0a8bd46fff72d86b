"""Make tests/fixtures/release_tokens.pt: the release's own sampler (github.com/amazon-far/BAR at faf903f, imported
from a snapshot folder, never copied here) run at toy sizes on the CPU in fp32, with random weights, at each preset's
sampling settings from the release README; the fixture holds the weights (the release's state-dict layout, random,
rounded to fp16 values and stored in fp16, without the per-block RoPE tables, which this project recomputes) and, per
case, which weights, the labels, the seed, the settings and the release's tokens. tests/model/test_release_tokens.py
checks that this project's `generate` gives those tokens, without the release's code.

    bash benchmarks/gpu/prepare_release.sh          # once: the snapshot in benchmarks/gpu/_release/ (git-ignored)
    .venv/bin/python benchmarks/gpu/release_tokens_fixture.py [--release benchmarks/gpu/_release] [--out PATH]
                                                               [--check]

--check regenerates the cases and compares them with the committed fixture, and also samples each case with this
project's code from the same stream (release_side.project_tokens) as a second check.

Cases (toy sizes: hidden 32, 2 blocks, 2 heads, class repeat 4, 10 classes, MBM head 32 wide x 2 blocks; each
preset's own configs/generator yaml otherwise, e.g. bits per token, patch size, dropout): bar_b (4x4 grid, 16 bits,
CFG 5.0, temperature 2.5, allocation [2,2,5,7]), bar_b_nocfg (its weights at CFG 1.0), bar_l_settings (its weights
at BAR-L's CFG 5.3, temperature 3.0), bar_b2 (8x8 grid, patch 2: 16 AR steps of 64 bits, [16,16,16,16], CFG 5.5,
temperature 2.0), bar_b4 (8x8 grid, patch 4: 4 AR steps of 256 bits, [64,64,64,64], CFG 9.6, temperature 1.4),
bar_l_512 (4x4 grid, 10 bits, [2,2,2,4], CFG 4.2, temperature 2.8).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import release_side as rs  # noqa: E402

OUT = rs.ROOT / "tests" / "fixtures" / "release_tokens.pt"
TOY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, repeat_class_condition=4,
           condition_num_classes=10, width=32, num_layers=2)
# case -> (preset whose release config builds the model, image_seq_len (tokens before grouping), settings: None =
# the README's for the preset, else a preset name or a dict overriding it)
CASES = {
    "bar_b": ("bar_b", 16, None),
    "bar_b_nocfg": ("bar_b", 16, {"cfg_scale": 1.0}),
    "bar_l_settings": ("bar_b", 16, "bar_l"),
    "bar_b2": ("bar_b2", 64, None),
    "bar_b4": ("bar_b4", 64, None),
    "bar_l_512": ("bar_l_512", 16, None),
}
LABELS = torch.tensor([0, 3, 9, 5, 1, 1, 7, 2, 10, 4])     # 10 = null class: sampled unconditionally
SEED = 2026
WEIGHT_SEED = 7


def settings_of(preset: str, spec, readme: dict) -> dict:
    if spec is None:
        return dict(readme[preset])
    if isinstance(spec, str):
        return dict(readme[spec])
    return {**readme[preset], **spec}


def make(release: str | None) -> dict:
    torch.set_num_threads(1)
    readme = rs.readme_sampling(release)
    out: dict = {"release_commit": rs.RELEASE_COMMIT, "torch": torch.__version__, "labels": LABELS, "seed": SEED,
                 "weights": {}, "cases": {}}
    models = {}
    for case, (preset, seq, spec) in CASES.items():
        key = f"{preset}_{seq}"
        if key not in models:
            model, cfg, _ = rs.release_generator(release, preset, dict(TOY, image_seq_len=seq))
            rs.randomize_(model, WEIGHT_SEED)
            with torch.no_grad():              # fp16 values: the fixture stores them exactly in half the bytes
                for p in model.parameters():
                    p.copy_(p.half().float())
            models[key] = (model.eval(), cfg)
            out["weights"][key] = {k: v.detach().half() for k, v in model.state_dict().items() if ".rope." not in k}
        model, cfg = models[key]
        settings = settings_of(preset, spec, readme)
        # the release's generate maps label 10 (= num_classes) to its null row, as this project does
        tokens = rs.release_tokens(model, LABELS, settings, SEED)
        g = cfg.model.generator
        out["cases"][case] = {
            "preset": preset, "settings": settings,
            "release_generator_config": {k: (dict(v) if isinstance(v, dict) else v) for k, v in g.items()},
            "token_size": cfg.model.vq_model.token_size,
            "project_config": vars(rs.project_config(cfg)) | {"head_depth": g.mbm_head.num_layers},
            "weights": key,
            "tokens": tokens.to(torch.uint8),
        }
        print(f"{case}: {preset} grid {seq} tokens, settings {settings}: tokens {tuple(tokens.shape)}, "
              f"mean bit {tokens.float().mean():.3f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", default=None, help="the snapshot folder (default benchmarks/gpu/_release)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--check", action="store_true", help="compare with the committed fixture instead of writing")
    args = ap.parse_args(argv)
    data = make(args.release)
    for case, entry in data["cases"].items():          # this project's sampler from the same stream, here too
        seq = entry["release_generator_config"]["image_seq_len"]
        model, cfg, _ = rs.release_generator(args.release, entry["preset"], dict(TOY, image_seq_len=seq))
        weights = {k: v.float() for k, v in data["weights"][entry["weights"]].items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)   # RoPE tables: the release's own
        assert not unexpected and all(".rope." in k for k in missing), (missing, unexpected)
        twin = rs.project_twin(model.eval(), cfg)
        ours = rs.project_tokens(twin, data["labels"], entry["settings"], data["seed"])
        print(f"{case}: this project's tokens equal the release's: {bool((ours == entry['tokens'].long()).all())}")
    if args.check:
        saved = torch.load(args.out, weights_only=False)
        same = all(torch.equal(saved["cases"][c]["tokens"], e["tokens"]) for c, e in data["cases"].items())
        print(f"committed fixture {args.out}: {'same tokens' if same else 'DIFFERENT tokens'}")
        return 0 if same else 1
    torch.save(data, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
