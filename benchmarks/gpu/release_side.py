"""The authors' release (github.com/amazon-far/BAR, commit faf903f) run beside this project, for benchmarks and for
making test fixtures. Nothing of the release is copied here: its modules are imported at run time from a snapshot
folder the caller names (benchmarks/gpu/prepare_release.sh puts one in benchmarks/gpu/_release/, git-ignored).

    import_release(snapshot) -> the release's generator class `BAR` (modeling/generator.py)
    release_yaml(snapshot, preset) -> configs/generator/<preset's file>.yaml as nested dicts
    readme_sampling(snapshot) -> {preset: {"cfg_scale", "temperature", "allocation"}} from the README's commands
    release_generator(snapshot, preset, small=None) -> (release model, its config, release yaml)
    randomize_(model, seed) -> every parameter of the model random (seeded, device independent)
    project_twin(release_model, cfg) -> this project's BARGenerator holding the same weights, loaded through
                                        bar.model.release_keys.load_official
    release_tokens(model, labels, settings, seed) / project_tokens(model, labels, settings, seed, ...)
        -> (B, h*w*k) int64 bits of each code from the same seed (see `project_tokens` for the stream alignment)

Importing the release: modeling/__init__.py and modeling/modules/__init__.py pull in the tokenizer and the losses
(transformers, torchvision, timm), which the generator does not use. `import_release` registers the two packages with
their folders but without running their __init__ files, then imports modeling/modules/base_model.py, blocks.py,
rope.py, mbm_head.py and generator.py as the release has them. blocks.py imports `timm.layers.Mlp` (used only
without SwiGLU) and `transformers.AutoModel` (used only by the tokenizer's encoder) at its top: where those packages
are not installed (the GPU machine's image) a placeholder module stands in that raises if either name is used.
The release needs einops (and numpy): on the GPU machine the einops wheel from _release/wheels goes on sys.path.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bar.model.generator import BARGenerator, GeneratorConfig, rope_tables  # noqa: E402
from bar.model.heads import build_head  # noqa: E402
from bar.model.release_keys import load_official, to_release_state_dict  # noqa: E402
from bar.model.sampling import generate  # noqa: E402

ADALN_GAIN = 1.0          # std x sqrt(fan_in) of the random AdaLN weights (`randomize_`)
RELEASE_COMMIT = "faf903f6e5593f39ab9d6da5c762ffb57a989a34"
DEFAULT_DIR = Path(__file__).resolve().parent / "_release"
PRESET_FILES = {"bar_b": "bar_b.yaml", "bar_b2": "bar_b_patch2.yaml", "bar_b4": "bar_b_patch4.yaml",
                "bar_l": "bar_l.yaml", "bar_l_512": "bar_l_res512.yaml"}


# ---------------------------------------------------------------------------------------------------------------------
# Finding and importing the release
# ---------------------------------------------------------------------------------------------------------------------

def snapshot_dir(path: str | Path | None = None) -> Path:
    """The release snapshot: `path` (a folder holding modeling/generator.py, or _release/ holding BAR/)."""
    base = Path(path) if path else DEFAULT_DIR
    for cand in (base, base / "BAR"):
        if (cand / "modeling" / "generator.py").is_file():
            return cand.resolve()
    raise SystemExit(f"error: no release snapshot at {base} (expected modeling/generator.py there or under BAR/); "
                     f"run `bash benchmarks/gpu/prepare_release.sh` first")


def _add_wheels(snapshot: Path) -> None:
    """Put the wheels next to the snapshot (_release/wheels/*.whl, pure Python: einops) on sys.path when their
    package is not installed."""
    for wheel in sorted(snapshot.parent.glob("wheels/*.whl")):
        name = wheel.name.split("-")[0]
        if importlib.util.find_spec(name) is None and str(wheel) not in sys.path:
            sys.path.append(str(wheel))


def _placeholder(name: str, attrs: list[str]) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []                          # a package, so that `name.sub` resolves

    def make(attr):
        class Unavailable:
            def __init__(self, *a, **k):
                raise RuntimeError(f"{name}.{attr} is a placeholder (package not installed): the release's "
                                   f"generator should not use it")
        Unavailable.__name__ = attr
        return Unavailable

    for attr in attrs:
        setattr(mod, attr, make(attr))
    return mod


def import_release(snapshot: str | Path | None = None):
    """The release's generator class BAR, imported from the snapshot (see the module docstring)."""
    snap = snapshot_dir(snapshot)
    _add_wheels(snap)
    if "modeling" in sys.modules:
        mod = sys.modules["modeling"]
        if Path(mod.__path__[0]).resolve() != (snap / "modeling").resolve():
            raise RuntimeError(f"a different `modeling` package is already imported: {mod.__path__}")
        return sys.modules["modeling.generator"].BAR
    for name, attrs in (("timm", []), ("timm.layers", ["Mlp"]), ("transformers", ["AutoModel"])):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _placeholder(name, attrs)
    for pkg in ("modeling", "modeling.modules"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(snap / pkg.replace(".", "/"))]
        mod.__package__ = pkg
        sys.modules[pkg] = mod
    sys.modules["modeling.modules"].BaseModel = importlib.import_module("modeling.modules.base_model").BaseModel
    sys.modules["modeling"].modules = sys.modules["modeling.modules"]
    return importlib.import_module("modeling.generator").BAR


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------

def _scalar(text: str):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(t) for t in text[1:-1].split(",") if t.strip()]
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip("'\"")


def load_yaml(path: Path) -> dict:
    """The simple YAML of the release's and this project's config files (nested mappings, scalars, inline lists):
    PyYAML when installed, else a small reader of that subset (the GPU machine's image may lack PyYAML)."""
    text = Path(path).read_text()
    try:
        import yaml
        return yaml.safe_load(text)
    except ImportError:
        pass
    root: dict = {}
    stack = [(-1, root)]
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw) if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key] = _scalar(value)
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


class Node(dict):
    """A dict read like an OmegaConf node (attribute access and .get): what the release's BAR(config) reads."""

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return Node(value) if isinstance(value, dict) and not isinstance(value, Node) else value


def release_yaml(snapshot: str | Path | None, preset: str) -> dict:
    return load_yaml(snapshot_dir(snapshot) / "configs" / "generator" / PRESET_FILES[preset])


def readme_sampling(snapshot: str | Path | None = None) -> dict:
    """The sampling settings of the README's `sample_imagenet.py` command of each preset (what made the paper's table):
    {preset: {"cfg_scale", "temperature", "allocation"}}."""
    text = (snapshot_dir(snapshot) / "README.md").read_text()
    by_file = {f: p for p, f in PRESET_FILES.items()}
    out = {}
    for block in text.split("sample_imagenet.py")[1:]:
        m = re.search(r"config=configs/generator/(\S+\.yaml)", block)
        g = re.search(r"guidance_scale=([\d.]+)", block)
        t = re.search(r"randomize_temperature=([\d.]+)", block)
        a = re.search(r"tokens_allocation=\[([\d, ]+)\]", block)
        if m and g and t and a and m[1] in by_file:
            out[by_file[m[1]]] = {"cfg_scale": float(g[1]), "temperature": float(t[1]),
                                  "allocation": [int(x) for x in a[1].split(",")]}
    return out


def project_preset(preset: str) -> dict:
    """bar/conf/model/<preset>.yaml of this project (sizes and sampling settings)."""
    return load_yaml(ROOT / "bar" / "conf" / "model" / f"{preset}.yaml")


def project_sampling(preset: str, bits_per_step: int) -> dict:
    """This project's sampling settings of a preset: CFG, temperature (the start of the MBM anneal, as the release),
    allocation (the preset's shape; it must already sum to the bits per step at the preset's own size)."""
    s = project_preset(preset)["generator"]["sample"]
    alloc = list(s["allocation_shape"])
    if sum(alloc) != bits_per_step:
        raise ValueError(f"{preset}: allocation {alloc} does not sum to {bits_per_step} bits per step")
    return {"cfg_scale": float(s["cfg_scale"]), "temperature": float(s["temperature"]), "allocation": alloc}


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------

def release_generator(snapshot, preset: str, small: dict | None = None, device="cpu"):
    """The release's BAR for `preset`, built from its own configs/generator yaml (values overridden by `small`:
    hidden_size, num_hidden_layers, num_attention_heads, image_seq_len, repeat_class_condition, condition_num_classes,
    width / num_layers of the MBM head). Returns (model on device, its config Node, the yaml)."""
    BAR = import_release(snapshot)
    raw = release_yaml(snapshot, preset)
    gen = dict(raw["model"]["generator"])
    gen["mbm_head"] = dict(gen["mbm_head"])
    for key, value in (small or {}).items():
        if key in ("width", "num_layers"):
            gen["mbm_head"][key] = value
        else:
            gen[key] = value
    cfg = Node(model=Node(generator=Node(gen), vq_model=Node(raw["model"]["vq_model"])))
    cfg["model"]["generator"]["mbm_head"] = Node(gen["mbm_head"])
    with torch.device(device):              # built (and initialised) on the device: no host copy at 1.1B
        model = BAR(cfg)
    return model.to(device), cfg, raw       # .to: torch.normal(mean, std, size) ignores the device context


def project_config(cfg) -> GeneratorConfig:
    """This project's GeneratorConfig for a release config: the same sizes. attn_dropout is 0 as in the project's
    presets (the release defines attention dropout but never applies it); label dropout as configured."""
    g = cfg.model.generator
    side = math.isqrt(int(g.image_seq_len))
    return GeneratorConfig(dim=g.hidden_size, depth=g.num_hidden_layers, heads=g.num_attention_heads, mlp_ratio=4.0,
                           dropout=float(g.get("dropout", 0.0)), attn_dropout=0.0,
                           num_classes=g.condition_num_classes, class_repeat=g.get("repeat_class_condition", 32),
                           grid=(side, side), patch_size=g.get("patch_size", 1), token_kind="bits",
                           token_dim=cfg.model.vq_model.token_size, cond_width=g.mbm_head.get("width", 2048),
                           label_dropout=float(g.get("class_label_dropout", 0.1)))


def project_twin(release_model, cfg, device=None) -> BARGenerator:
    """This project's generator with the release model's weights (its state dict through load_official, strict),
    on the release model's device. Checks that the project's export (to_release_state_dict) has the release's keys."""
    pc = project_config(cfg)
    head_layers = cfg.model.generator.mbm_head.get("num_layers", 3)
    device = device or next(release_model.parameters()).device
    with torch.device("meta"):              # no init work: every parameter is loaded below
        twin = BARGenerator(pc, build_head("mbm", pc.step_dim, width=pc.cond_width, depth=head_layers))
    twin = twin.to_empty(device=device)
    twin.rope_cos, twin.rope_sin = [t.to(device) for t in rope_tables(pc.step_grid, pc.dim // pc.heads, pc.prefix,
                                                                       pc.rope_theta)]
    rel_sd = release_model.state_dict()
    load_official(twin, rel_sd)
    exported = set(to_release_state_dict(twin))
    if exported != set(rel_sd):
        raise RuntimeError(f"to_release_state_dict keys differ from the release's: only ours "
                           f"{sorted(exported - set(rel_sd))[:5]}, only the release's "
                           f"{sorted(set(rel_sd) - exported)[:5]}")
    return twin


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, drawn from `seed` on the parameters' device: Linear weights N(0, 1/fan_in), the AdaLN
    modulations too (zero at init; open gates let every block and the class condition shape the logits: at the
    fixture's toy sizes another label changes ~30% of the sampled bits), biases N(0, 0.02^2), norm gains
    1 + N(0, 0.1^2), embeddings and position tables N(0, 0.5^2), the Fourier frequencies N(0, 1). Buffers (RoPE
    tables, causal mask) are kept. The weights differ between devices (each draws from its own generator)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    gains = {f"{m_name}.weight" if m_name else "weight" for m_name, m in model.named_modules()
             if "Norm" in type(m).__name__}
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
        if name in gains:
            r = 1 + 0.1 * r
        elif name.endswith("t_embedder.W"):
            pass
        elif p.ndim == 2 and isinstance(_owner(model, name), torch.nn.Linear):
            r = r * ((ADALN_GAIN if "adaLN" in name else 1.0) / math.sqrt(p.shape[1]))
        elif name.endswith("bias"):
            r = r * 0.02
        else:
            r = r * 0.5
        p.copy_(r.to(p.dtype))
    return model


def _owner(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name.rpartition(".")[0]) if "." in name else model


# ---------------------------------------------------------------------------------------------------------------------
# Sampling both codes from one seed
# ---------------------------------------------------------------------------------------------------------------------

def release_tokens(model, labels: torch.Tensor, settings: dict, seed: int) -> torch.Tensor:
    """The release's `BAR.generate` (KV cache, raster order), its random numbers from the global RNG seeded `seed`
    (as sample_imagenet.py seeds it): (B, h*w*k) int64 bits."""
    torch.manual_seed(seed)
    model.eval()
    return model.generate(condition=labels.long(), guidance_scale=settings["cfg_scale"],
                          randomize_temperature=settings["temperature"], tokens_allocation=list(settings["allocation"]),
                          kv_cache=True)


def project_tokens(model, labels: torch.Tensor, settings: dict, seed: int, **kwargs) -> torch.Tensor:
    """This project's `generate` from the same random stream as `release_tokens(seed)`: (B, h*w*k) int64 bits.

    The release draws, from the default generator of the labels' device: first B uniforms in
    `preprocess_condition` (the label-dropout mask, p = 0 at sampling), then per AR step and per unmasking step the
    uniforms of the Gumbel noise on the (B, k, 2) guided logits and, except at the last unmasking step, of the
    Gumbel noise on the (B, k) confidences; nothing else. This project's MBM head draws the same shapes in the same
    order (MBMHead.draw_noise) with torch.rand from the generator it is given. So a generator seeded `seed`, advanced
    by the release's B label-dropout uniforms, gives the release's stream (on the CPU and on CUDA alike, as the same
    kernel makes the same draws on either)."""
    device = labels.device
    g = torch.Generator(device=device).manual_seed(seed)
    torch.rand(labels.shape[0], generator=g, device=device)          # the release's label-dropout draw
    out = generate(model, labels, cfg_scale=settings["cfg_scale"], temperature=settings["temperature"],
                   generator=g, allocation=list(settings["allocation"]), **kwargs)
    return out.reshape(out.shape[0], -1).long()
