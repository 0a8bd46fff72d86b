"""The typed schema of the whole configuration, registered with Hydra's ConfigStore.

Values live in the YAML files of bar/conf/ (one file per data set, tokenizer kind, model preset, profile, ...); this
module says which keys exist and their types, so a misspelled key or a value of the wrong type fails at composition
with one line naming it, and holds the defaults that every option of a group shares (e.g. the launcher's). Fields
without a default (MISSING) must be set by a config file.

Head options are the heads' own config dataclasses (bar.model.heads.HEADS), so a head option has exactly one default
and one type, in the model code; each head's config file extends its schema (`/schema/head/<name>`)."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from bar.model.heads import HEADS


@dataclass
class PathsConf:
    outputs: str = "${bar_outputs:}"       # BAR_OUTPUTS or <project>/outputs (bar.core.paths)
    cache: str = "${paths.outputs}/cache"


@dataclass
class DataConf:
    name: str = MISSING                    # digits | photo_crops | imagefolder
    root: Optional[str] = None
    val_root: Optional[str] = None
    resolution: int = MISSING
    in_channels: int = MISSING
    num_classes: int = MISSING
    val_size: Optional[int] = None
    split_seed: int = 0
    train_size: Optional[int] = None       # photo_crops: training crops (val_size: validation crops)
    crop_size: Optional[int] = None        # photo_crops: crop side in photo pixels, area-downsampled to resolution
    hflip: bool = False                    # photo_crops: mirror a seeded half of the crops
    num_workers: int = 0                   # DataLoader worker processes decoding images (not a result: config.py)
    train_images: Optional[int] = None     # imagefolder: images in data.root / data.val_root, for a dry run on a
    val_images: Optional[int] = None       # machine without the folders (the folders' counts win where present)


@dataclass
class ViTSizes:
    enc_width: int = MISSING
    enc_depth: int = MISSING
    enc_heads: int = MISSING
    dec_width: int = MISSING
    dec_depth: int = MISSING
    dec_heads: int = MISSING


@dataclass
class TokenizerLoss:
    """The weight of each loss part (bar/losses/; 0 is off). The release's: L1 0.1, L2 1.0, perceptual 1.1 (LPIPS 1.0 :
    ConvNeXt-S 0.1), distillation 0.7, Gram 10, GAN 0.05 from step 100k (the paper profile sets them)."""
    l1: float = MISSING
    l2: float = MISSING
    kl: float = MISSING                    # continuous twin with tokenizer.kl=true
    perceptual: float = 0.0
    lpips: float = 1.0                     # the perceptual part's mix: (lpips * LPIPS + convnext * ConvNeXt) / sum
    convnext: float = 0.1
    distillation: float = 0.0              # SigLIP-feature MSE against the frozen encoder (arch release)
    gram: float = 0.0
    gan: float = 0.0
    gan_start: int = 0                     # generator step from which the GAN term and the discriminator are on


@dataclass
class TokenizerWeights:
    """Local weight files of the frozen networks the losses use (nothing is downloaded): torchvision's VGG16
    (LPIPS, Gram), the lpips package's linear layers (null: the file it ships), torchvision's ConvNeXt-S, DINO ViT-S/8;
    siglip2: a release tokenizer checkpoint whose frozen SigLIP2 copy initialises the encoder (arch release)."""
    vgg16: Optional[str] = None
    lpips: Optional[str] = None
    convnext_s: Optional[str] = None
    dino_vits: Optional[str] = None
    siglip2: Optional[str] = None


@dataclass
class DiscriminatorConf:
    """The GAN discriminator's own optimizer (the release's: AdamW 1e-4, cosine over 100k steps to 1e-5)."""
    lr: float = 1.0e-4
    min_lr: float = 1.0e-5
    warmup: int = 10_000
    total: int = 100_000
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: Optional[float] = 1.0


@dataclass
class TokenizerTrain:
    steps: int = MISSING                   # generator (tokenizer) optimizer steps
    batch_size: int = MISSING
    lr: float = MISSING
    min_lr: float = MISSING
    warmup: int = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    bf16: bool = True                      # autocast on GPUs; CPU runs stay fp32
    schedule_steps: Optional[int] = None   # the cosine's horizon (null: steps); the release's is 200k iterations
    grad_clip: Optional[float] = None
    encoder_lr_mult: float = 1.0           # the encoder's learning rate x this (the release's: 0.1)
    ema: Optional[float] = None            # EMA decay of the weights (the release's 0.999); the EMA copy is kept
    augment: bool = False                  # the release's random crop + horizontal flip


@dataclass
class TokenizerConf:
    kind: str = MISSING                    # fsq (discrete) | ae (continuous)
    bits: Optional[int] = None             # fsq: bits per token
    channels: Optional[int] = None         # ae: channels per token
    kl: bool = False
    arch: str = MISSING                    # conv | vit | release (the release's BAR-FSQ: SigLIP2 encoder, ViT-L dec.)
    width: Optional[int] = None            # conv: base width
    num_down: Optional[int] = None         # conv: grid = resolution / 2^num_down
    patch: int = MISSING                   # vit, release: grid = resolution / patch
    vit: Optional[ViTSizes] = None         # vit: encoder / decoder sizes
    size: str = "full"                     # release: full (the release's sizes) | tiny (its structure, small; tests)
    checkpoint: Optional[str] = None       # load this tokenizer (e.g. the release's bar_fsq_16bits_ft.bin): no training
    loss: TokenizerLoss = field(default_factory=TokenizerLoss)
    train: TokenizerTrain = field(default_factory=TokenizerTrain)
    weights: TokenizerWeights = field(default_factory=TokenizerWeights)
    discriminator: DiscriminatorConf = field(default_factory=DiscriminatorConf)


@dataclass
class ModelConf:
    """A generator preset's sizes (bar/conf/model/<preset>.yaml also sets its training and sampling recipe)."""
    preset: str = MISSING
    dim: int = MISSING
    depth: int = MISSING
    heads: int = MISSING
    mlp_ratio: float = MISSING
    dropout: float = MISSING
    attn_dropout: float = MISSING
    class_repeat: int = MISSING
    patch_size: int = MISSING
    head_width: int = MISSING              # W: the condition width, and the head's width unless the head sets its own
    head_depth: int = MISSING
    label_dropout: float = MISSING
    rope_theta: float = MISSING
    compile: bool = False


@dataclass
class GeneratorTrain:
    steps: int = MISSING
    batch_size: int = MISSING              # global batch (over all ranks)
    lr: float = MISSING
    end_lr: float = MISSING
    warmup: int = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    grad_clip: float = MISSING
    order_anneal: List[float] = MISSING    # [start, end] fractions of steps: random-order probability 1 -> 0
    bf16: bool = True                      # autocast on GPUs; CPU runs stay fp32
    micro_batch_size: Optional[int] = None # per device and forward pass; null: planned (GPU), the per-rank batch (CPU)
    activation_checkpointing: Optional[bool] = None   # null: only when the plan needs it (GPU)
    decay_rule: str = "release"            # weight decay on: release (matrices, not norms/biases/embeddings) | all


@dataclass
class GeneratorSample:
    num_samples: int = MISSING
    batch_size: int = MISSING
    cfg_scale: float = MISSING
    temperature: float = MISSING
    temperature_is: str = "start"                  # MBM: start (release: anneals T..T/K) | mean (T on average)
    allocation_shape: Optional[List[int]] = None   # the preset's MBM schedule, fitted to other bits per AR step
    allocation: Optional[List[int]] = None         # an explicit schedule (sums to bits per AR step); wins when set
    kv_cache: bool = True
    nocfg: bool = True
    seed: int = 0
    precision: str = "bf16"                # on GPUs: bf16 (autocast) | tf32 (fp32, TF32 matmuls: the release's) |
                                           # fp32 (TF32 off); CPU always fp32. Logged: gFIDs of two never mix


@dataclass
class GeneratorConf:
    memory_budget_gb: Optional[float] = None   # per device; null: launcher.gpu_mem_gb on GPUs, free host RAM on CPU
    train: GeneratorTrain = field(default_factory=GeneratorTrain)
    sample: GeneratorSample = field(default_factory=GeneratorSample)


@dataclass
class ClassifierConf:
    width: int = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    features: str = "penultimate"          # FID, precision/recall: penultimate | random_multiscale (bar.eval.features)
    random_width: int = 64                 # random_multiscale: the random network's width
    random_seed: int = 0


@dataclass
class EvalConf:
    protocol: str = "fidelity"             # fidelity (torch-fidelity, eval.extractor) | adm (the paper's evaluator)
    extractor: str = MISSING               # classifier (offline, small) | inception (paper protocol)
    inception_weights: Optional[str] = None
    reference: Optional[str] = None        # adm: the reference batch, e.g. VIRTUAL_imagenet256_labeled.npz
    batch_size: int = MISSING
    classifier: ClassifierConf = field(default_factory=ClassifierConf)
    # evaluations during training, for convergence curves (metric history at optimizer steps; 0: at the end only)
    gfid_every: int = 0                    # generator steps between gFIDs (sampling generator.sample.num_samples)
    rfid_every: int = 0                    # tokenizer steps between rFIDs (of the EMA weights when there is an EMA)


@dataclass
class LauncherConf:
    """How points run; never part of a point's signature. Hydra's own launcher settings live in hydra.launcher.
    The defaults hold for every launcher (bar/conf/launcher/<name>.yaml sets its name and what differs)."""
    name: str = MISSING
    checkpoint_minutes: float = 30.0       # wall time between checkpoints (resume after a kill; 0: none by time)
    checkpoint_every: int = 0              # optimizer steps between checkpoints, besides (0: none by steps; tests
                                           # that kill and resume at known steps set it)
    keep_checkpoints: int = 2              # newest kept; a corrupt last one falls back to the one before
    gpu_tflops: float = 989.0              # peak dense bf16 TFLOP/s of one accelerator, H100/H200 (dry run's cost)
    utilization: float = 0.4               # fraction of that peak a training step reaches (cost model)
    sample_utilization: float = 0.025      # AR sampling's: reproduces the release's 24.33 img/s (BAR-B) on an H100
    gpu_mem_gb: float = 80.0               # memory of one accelerator: the per-device budget of the memory plan
    disk_gb_per_s: float = 1.0             # write (and read) speed of paths.outputs: checkpoint write time
    start_minutes: float = 5.0             # per job of the time chain: start-up to the first step (imports,
                                           # NCCL, torch.compile) besides reading the checkpoint
    submitted_at: Optional[float] = None   # set by the sweeper: launch overhead is measured from it


@dataclass
class TrackingConf:
    uri: str = MISSING
    parent_run_id: Optional[str] = None    # set by the sweeper for every point of a launch
    host: Optional[str] = None             # tracking=server
    port: Optional[int] = None
    figures: bool = True                   # a sweep ends by drawing its figures onto its launch (parent run)


@dataclass
class ProfileConf:
    name: str = MISSING


@dataclass
class ReleaseConf:
    """Where the release's files are on this machine (bar/conf/release/site.yaml, git-ignored), and which tokenizer
    each released generator samples with (the release's configs/generator/*.yaml)."""
    generators: Dict[str, Optional[str]] = field(default_factory=dict)   # preset -> generator checkpoint (.bin)
    tokenizers: Dict[str, Optional[str]] = field(default_factory=dict)   # release name -> tokenizer checkpoint
    tokenizer_of: Dict[str, str] = field(default_factory=dict)           # preset -> release tokenizer name
    references: Dict[str, Optional[str]] = field(default_factory=dict)   # imagenet256 / imagenet512 -> ADM batch


@dataclass
class Config:
    experiment: str = MISSING
    stage: str = MISSING                   # tokenizer | all | sample
    checkpoint: Optional[str] = None
    seed: int = MISSING
    device: str = MISSING
    num_threads: Optional[int] = None
    force: bool = False
    dry_run: bool = False
    point_label: Optional[str] = None
    paths: PathsConf = field(default_factory=PathsConf)
    data: DataConf = field(default_factory=DataConf)
    tokenizer: TokenizerConf = field(default_factory=TokenizerConf)
    model: ModelConf = field(default_factory=ModelConf)
    head: Any = MISSING                    # one of the head schemas below, chosen by the `head` group
    generator: GeneratorConf = field(default_factory=GeneratorConf)
    eval: EvalConf = field(default_factory=EvalConf)
    launcher: LauncherConf = field(default_factory=LauncherConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    profile: ProfileConf = field(default_factory=ProfileConf)
    release: ReleaseConf = field(default_factory=ReleaseConf)


def _head_schema(name: str) -> type:
    """The head's own config dataclass with a `name` field: the schema of `bar/conf/head/<option>.yaml`. A module
    attribute, so configs that carry it can be pickled (submitit jobs)."""
    _, options = HEADS[name]
    node = make_dataclass(f"{options.__name__}Node", [("name", str, field(default=name))], bases=(options,))
    node.__module__, node.__qualname__ = __name__, node.__name__
    globals()[node.__name__] = node
    return node


HEAD_SCHEMAS: dict[str, type] = {name: _head_schema(name) for name in HEADS}


def register() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent: storing again replaces)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for name, node in HEAD_SCHEMAS.items():
        store.store(group="schema/head", name=name, node=node)
