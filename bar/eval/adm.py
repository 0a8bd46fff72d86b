"""The ADM evaluation protocol: how the paper's gFID / sFID / IS / precision / recall were computed.

The paper scores 50,000 samples (an `.npz`, `arr_0` uint8 NHWC) with guided-diffusion's `evaluations/evaluator.py`
against `VIRTUAL_imagenet256_labeled.npz` (`arr_0`: 10,000 reference images; `mu`, `sigma`: pool-feature statistics;
`mu_s`, `sigma_s`: spatial-feature statistics). This module restates that evaluator in torch + numpy:

    evaluate_adm(samples, reference_npz, inception_weights=PATH | extractor=...) -> {gfid, sfid, inception_score,
                                                                                     precision, recall, num_samples}
    read_reference(path), iter_npz_images(path, batch), write_samples_npz / SampleNpzWriter, read_samples_npz
    InceptionADM (torch-fidelity's inception-v3-compat + the spatial tap), compute_features(batches, extractor)
    feature_statistics, fid_from_stats, inception_score, manifold_radii, precision_recall   (pure, no Inception)

Features (what ADM reads off TF's 2015 Inception graph, `classify_image_graph_def.pb`, fed float NHWC in [0, 255];
the graph resizes to 299 bilinearly and maps to [-1, 1]; torch-fidelity's `inception-v3-compat` ports the same graph
and weights, including the TF1 resize):
  - pool   `pool_3:0`, 2048 values                                     -> FID; precision / recall
  - spatial `mixed_6/conv:0`, first 7 channels of its NHWC map (17x17x7), flattened in NHWC order (2023 values)
                                                                        -> sFID
  - logits `softmax/logits/MatMul`: pool @ W, without the bias (1008 classes) -> IS
  `mixed_6/conv` is the 1x1 branch of the 7th `mixed` block of the graph. The graph's mixed blocks are mixed (5b),
  mixed_1 (5c), mixed_2 (5d), mixed_3 (6a, reduction to 17x17), mixed_4..mixed_7 (6b..6e), mixed_8 (7a), mixed_9 (7b),
  mixed_10 (7c); torch-fidelity's weight converter maps `mixed_6/conv/conv2d_params` and `mixed_6/conv/batchnorm` to
  `Mixed_6d.branch1x1.{conv,bn}`. The tensor `mixed_6/conv:0` is the output of that layer's ReLU (the conv and
  batchnorm ops are `mixed_6/conv/Conv2D` and `mixed_6/conv/batchnorm`), i.e. the output of torch-fidelity's
  BasicConv2d `Mixed_6d.branch1x1` (conv -> bn -> relu), shape (N, 192, 17, 17) in NCHW.

Metric definitions (guided-diffusion evaluations/evaluator.py):
  - statistics: mean and np.cov(rowvar=False) of the features (float64 here);
  - FID / sFID: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)); eps=1e-6 on the diagonals if sqrtm is not
    finite; the real part is taken when the imaginary diagonal is below 1e-3;
  - IS: softmax of the logits; splits of 5000 consecutive samples (the last may be shorter); per split
    exp(mean_i KL(p_i || mean p)); the mean over splits;
  - precision / recall: k=3 manifolds. Radii = squared distance to the (k+1)-th smallest entry of each row of the
    within-set squared-distance matrix (the point itself included, so the 3rd neighbour); a point is inside a manifold
    when its squared distance to some member is <= that member's radius. precision = fraction of samples inside the
    reference manifold, recall = fraction of reference images inside the sample manifold. ADM computes each distance
    block in float16 (falling back to float32 for a block with a non-finite entry); distance="fp16" emulates that
    (fp16 operands, fp32 accumulation, each step rounded to fp16), distance="fp32" is exact float32.
Deviations (documented, small): IS treats 0 * log 0 as 0 (ADM would give NaN); statistics in float64 (ADM takes the
mean in float32); the fp16 emulation need not round like a GPU bit for bit.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
from scipy import linalg
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from bar import UserError

POOL_DIM = 2048
SPATIAL_CHANNELS = 7
NUM_LOGITS = 1008
IS_SPLIT = 5000
PR_K = 3
STAT_ARRAYS = ("mu", "sigma", "mu_s", "sigma_s")

# extractor: uint8 (N, 3, H, W) -> (pool (N, 2048), spatial (N, 7*17*17), logits (N, 1008)), float tensors
Extractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------- npz files
@contextmanager
def _npy_member(path: Path, array: str):
    """Open `array`.npy inside an npz and yield (file, shape, dtype) positioned at the data (streamed, not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"npz file {str(path)!r} not found")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UserError(f"{str(path)!r} is not an npz (zip) file") from None
    with zf:
        if f"{array}.npy" not in zf.namelist():
            raise UserError(f"{str(path)!r} has no array {array!r} (it holds {sorted(n[:-4] for n in zf.namelist())})")
        with zf.open(f"{array}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise UserError(f"{array} of {str(path)!r} uses .npy format {version}; expected 1.0 or 2.0")
            yield f, shape, dtype, fortran


def npz_array_shape(path, array: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    with _npy_member(path, array) as (_, shape, dtype, _fortran):
        return tuple(shape), dtype


def _check_images(shape, dtype, where: str) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"{where} must be uint8 images (N, H, W, 3), got {np.dtype(dtype).name} {tuple(shape)}")


def iter_npz_images(path, batch_size: int, array: str = "arr_0") -> Iterator[np.ndarray]:
    """uint8 NHWC batches of an npz array, read as a stream (a 50k x 512^2 file never sits in memory)."""
    with _npy_member(path, array) as (f, shape, dtype, fortran):
        _check_images(shape, dtype, f"{array} of {str(path)!r}")
        if fortran:
            raise UserError(f"{array} of {str(path)!r} is stored in Fortran order; write it C-contiguous")
        per_image = int(np.prod(shape[1:]))
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            data = f.read(n * per_image)
            if len(data) != n * per_image:
                raise UserError(f"{str(path)!r} is truncated: {array} ends before image "
                                f"{start + len(data) // per_image}")
            yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n, *shape[1:])   # writable


def read_samples_npz(path, array: str = "arr_0") -> np.ndarray:
    return np.concatenate(list(iter_npz_images(path, 1024, array)))


class SampleNpzWriter:
    """Writes `arr_0` (uint8 NHWC, `num` images) batch by batch into an npz that np.load and the ADM evaluator read.

    The file appears under its name only when all `num` images are written (written to `.tmp`, then renamed)."""

    def __init__(self, path, num: int, height: int, width: int):
        self.path, self.num, self.shape = Path(path), num, (num, height, width, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.written = 0
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._file = self._zip.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, images_NHWC) -> None:
        images = images_NHWC.cpu().numpy() if torch.is_tensor(images_NHWC) else np.asarray(images_NHWC)
        if images.dtype != np.uint8 or images.shape[1:] != self.shape[1:]:
            raise UserError(f"samples must be uint8 {self.shape[1:]} per image, got {images.dtype} {images.shape[1:]}")
        if self.written + len(images) > self.num:
            raise UserError(f"{self.path}: {self.written + len(images)} images written, {self.num} declared")
        self._file.write(np.ascontiguousarray(images).tobytes())
        self.written += len(images)

    def close(self) -> Path:
        self._file.close()
        self._zip.close()
        if self.written != self.num:
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"{self.path}: {self.written} of {self.num} images written; file not created")
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._zip.close()
            self.tmp.unlink(missing_ok=True)


def write_samples_npz(path, images_NHWC) -> Path:
    """An in-memory uint8 (N, H, W, 3) array -> the ADM sample npz (same bytes as np.savez(path, arr_0=images))."""
    images = images_NHWC.cpu().numpy() if torch.is_tensor(images_NHWC) else np.asarray(images_NHWC)
    _check_images(images.shape, images.dtype, "samples")
    with SampleNpzWriter(path, *images.shape[:3]) as writer:
        writer.write(images)
    return Path(path)


@dataclass
class ReferenceBatch:
    """A reference batch: statistics read eagerly, images streamed on demand (iter_npz_images)."""
    path: Path
    num_images: int
    image_shape: tuple[int, int, int]
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None

    @property
    def has_statistics(self) -> bool:
        return self.mu is not None


def read_reference(path) -> ReferenceBatch:
    """Read an ADM reference batch (`arr_0` and, if present, all four of mu, sigma, mu_s, sigma_s)."""
    path = Path(path).expanduser()
    shape, dtype = npz_array_shape(path, "arr_0")
    _check_images(shape, dtype, f"arr_0 of reference batch {str(path)!r}")
    with np.load(path) as npz:
        present = [a for a in STAT_ARRAYS if a in npz.files]
        if present and len(present) < len(STAT_ARRAYS):
            missing = next(a for a in STAT_ARRAYS if a not in present)
            raise UserError(f"reference batch {str(path)!r} has {present} but no array {missing!r}")
        stats = {a: npz[a].astype(np.float64) for a in present}
    n, h, w, channels = shape                        # 4-D: checked by _check_images
    ref = ReferenceBatch(path, n, (h, w, channels), **stats)
    for m, c in (("mu", "sigma"), ("mu_s", "sigma_s")):
        mean, cov = getattr(ref, m), getattr(ref, c)
        if mean is not None and (mean.ndim != 1 or cov.shape != (len(mean), len(mean))):
            raise UserError(f"reference batch {str(path)!r}: {m} {mean.shape} and {c} {cov.shape} do not fit")
    return ref


# ----------------------------------------------------------------------------------------------------- features
def adm_spatial(mixed6_conv_NCHW: torch.Tensor) -> torch.Tensor:
    """`mixed_6/conv` map (N, C, H, W) -> ADM's spatial features: the first 7 channels in TF's NHWC layout, flattened
    as (h, w, c), i.e. (N, H*W*7)."""
    return mixed6_conv_NCHW[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(mixed6_conv_NCHW.shape[0], -1)


class InceptionADM(nn.Module):
    """torch-fidelity's inception-v3-compat returning ADM's three features: (pool, spatial, logits without bias).

    The spatial map is tapped with a forward hook on `Mixed_6d.branch1x1` (= TF's `mixed_6/conv`, see module doc)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self._tap = None
        net.Mixed_6d.branch1x1.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._tap = output

    @classmethod
    def from_weights(cls, weights_path) -> "InceptionADM":
        """The paper protocol: torch-fidelity's converted TF Inception weights from a local file (never downloaded)."""
        path = Path(str(weights_path)).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights not found at {str(path)!r} (torch-fidelity's "
                            f"weights-inception-2015-12-05-6726825d.pth)")
        return cls(FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path)))

    @classmethod
    def random(cls, seed: int = 0) -> "InceptionADM":
        """Same architecture and compute with random weights (convs He-initialised so activations keep their scale).
        For tests and benchmarks only: its numbers mean nothing."""
        class Unloaded(FeatureExtractorInceptionV3):
            def load_state_dict(self, state_dict, *args, **kwargs):   # keep the random initialisation
                return None

        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "empty.pt"
            torch.save({}, empty)
            net = Unloaded("inception-v3-compat", ["2048", "logits_unbiased"],
                           feature_extractor_weights_path=str(empty))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                    if m.bias is not None:
                        m.bias.zero_()
        return cls(net)

    @torch.no_grad()
    def forward(self, images_uint8_NCHW: torch.Tensor):
        pool, logits = self.net(images_uint8_NCHW)
        spatial = adm_spatial(self._tap).float()
        self._tap = None
        return pool.float(), spatial, logits.float()


@dataclass
class Features:
    pool: np.ndarray       # (N, 2048)
    spatial: np.ndarray    # (N, 2023) at 17x17
    logits: np.ndarray     # (N, 1008)


def compute_features(batches: Iterable, extractor: Extractor, device: str | torch.device = "cpu") -> Features:
    """uint8 NHWC batches (numpy or torch) -> the three ADM features of every image, in order (float32 numpy)."""
    pools, spatials, logits = [], [], []
    for batch in batches:
        x = batch if torch.is_tensor(batch) else torch.from_numpy(np.ascontiguousarray(batch))
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise UserError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        pool, spatial, logit = extractor(x.permute(0, 3, 1, 2).contiguous().to(device))
        pools.append(pool.float().cpu().numpy())
        spatials.append(spatial.float().cpu().numpy())
        logits.append(logit.float().cpu().numpy())
    if not pools:
        raise UserError("no images to evaluate")
    return Features(np.concatenate(pools), np.concatenate(spatials), np.concatenate(logits))


# ----------------------------------------------------------------------------------------------------- metrics
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with ddof=1) of (N, D) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between two Gaussians, as guided-diffusion's FIDStatistics.frechet_distance."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(f"statistics differ in size: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                        f"{sigma2.shape} (features from different extractors?)")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise UserError(f"FID: sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT) -> float:
    """ADM's IS from (N, classes) logits: mean over consecutive splits of exp(E_i KL(p_i || p_split))."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start:start + split_size]
        log_mean = np.log(part.mean(axis=0, keepdims=True))
        with np.errstate(divide="ignore"):
            kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) - log_mean), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def squared_distances(a: torch.Tensor, b: torch.Tensor, distance: str = "fp16") -> torch.Tensor:
    """(n, D), (m, D) -> (n, m) squared Euclidean distances as ADM's DistanceBlock: |a|^2 - 2 a.b + |b|^2, clipped at
    0; "fp16" emulates its float16 block (fp32 if any entry is not finite), "fp32" computes in float32."""
    if distance == "fp16":
        a16, b16 = a.half(), b.half()
        na = (a16 * a16).float().sum(1).half()
        nb = (b16 * b16).float().sum(1).half()
        ab = (a16.float() @ b16.float().T).half()
        d = torch.clamp((na[:, None] - 2 * ab) + nb[None, :], min=0)
        if torch.isfinite(d).all():
            return d.float()
    elif distance != "fp32":
        raise UserError(f"unknown distance {distance!r}: use fp16 (ADM's) or fp32")
    a, b = a.float(), b.float()
    return torch.clamp((a * a).sum(1)[:, None] - 2 * (a @ b.T) + (b * b).sum(1)[None, :], min=0)


def manifold_radii(features, k: int = PR_K, row_block: int = 2048, col_block: int = 10000, distance: str = "fp16",
                   device: str | torch.device = "cpu") -> np.ndarray:
    """(N,) squared radius of each point's manifold ball: the (k+1)-th smallest squared distance to the set (itself
    included), computed block by block (memory ~ row_block x (col_block + k + 1))."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    n = len(x)
    if n <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} feature vectors, got {n}")
    radii = torch.empty(n, device=device)
    for r0 in range(0, n, row_block):
        rows, best = x[r0:r0 + row_block], None
        for c0 in range(0, n, col_block):
            d = squared_distances(rows, x[c0:c0 + col_block], distance)
            d = d if best is None else torch.cat([best, d], dim=1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        assert best is not None                      # n > k >= 0: the column loop ran
        radii[r0:r0 + row_block] = best[:, k]
    return radii.cpu().numpy()


def precision_recall(reference, samples, k: int = PR_K, row_block: int = 2048, col_block: int = 10000,
                     distance: str = "fp16", device: str | torch.device = "cpu",
                     reference_radii: np.ndarray | None = None) -> tuple[float, float]:
    """ADM's k-NN precision (samples inside the reference manifold) and recall (reference inside the sample
    manifold), both from one blocked pass over the sample x reference distances."""
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float32), device=device)
    smp = torch.as_tensor(np.asarray(samples, dtype=np.float32), device=device)
    if ref.shape[1] != smp.shape[1]:
        raise UserError(f"reference features have {ref.shape[1]} dims, samples {smp.shape[1]}")
    radii_ref = reference_radii if reference_radii is not None else manifold_radii(
        reference, k, row_block, col_block, distance, device)
    r_ref = torch.as_tensor(radii_ref, device=device)
    r_smp = torch.as_tensor(manifold_radii(samples, k, row_block, col_block, distance, device), device=device)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=device)
    smp_in = torch.zeros(len(smp), dtype=torch.bool, device=device)
    for r0 in range(0, len(ref), row_block):          # reference rows, sample columns: ADM's orientation
        for c0 in range(0, len(smp), col_block):
            d = squared_distances(ref[r0:r0 + row_block], smp[c0:c0 + col_block], distance)
            ref_in[r0:r0 + row_block] |= (d <= r_smp[None, c0:c0 + col_block]).any(dim=1)
            smp_in[c0:c0 + col_block] |= (d <= r_ref[r0:r0 + row_block, None]).any(dim=0)
    return float(smp_in.double().mean()), float(ref_in.double().mean())


# ----------------------------------------------------------------------------------------------------- entry point
def _sample_batches(samples, batch_size: int) -> Iterator[np.ndarray]:
    if isinstance(samples, (str, Path)):
        yield from iter_npz_images(samples, batch_size)
        return
    images = samples.cpu().numpy() if torch.is_tensor(samples) else np.asarray(samples)
    _check_images(images.shape, images.dtype, "samples")
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def evaluate_adm(samples, reference, *, inception_weights=None, extractor: Extractor | None = None,
                 batch_size: int = 64, device: str | torch.device = "cpu", distance: str = "fp16",
                 reference_features: Features | None = None, pr_row_block: int = 2048,
                 pr_col_block: int = 10000) -> dict[str, float]:
    """Score samples (npz path or uint8 (N, H, W, 3) array) against an ADM reference batch (npz path or
    ReferenceBatch), as guided-diffusion's evaluator does.

    Pass `inception_weights` (local torch-fidelity Inception file) or an `extractor`; `reference_features` skips
    re-extracting the 10,000 reference images (cache them with `compute_features` once per reference file)."""
    ref = reference if isinstance(reference, ReferenceBatch) else read_reference(reference)
    if extractor is None:
        if inception_weights is None:
            raise UserError("evaluate_adm needs inception_weights=PATH (or an extractor)")
        extractor = InceptionADM.from_weights(inception_weights).to(device)
    sample = compute_features(_sample_batches(samples, batch_size), extractor, device)
    if reference_features is None:
        reference_features = compute_features(iter_npz_images(ref.path, batch_size), extractor, device)
    return adm_scores(sample, ref, reference_features, distance=distance, device=device, pr_row_block=pr_row_block,
                      pr_col_block=pr_col_block)


def adm_scores(sample: Features, ref: ReferenceBatch, reference_features: Features, *, distance: str = "fp16",
               device: str | torch.device = "cpu", pr_row_block: int = 2048,
               pr_col_block: int = 10000) -> dict[str, float]:
    """The ADM metrics of already extracted sample features (e.g. gathered from the ranks of a job)."""
    if ref.has_statistics:
        stats, stats_s = (ref.mu, ref.sigma), (ref.mu_s, ref.sigma_s)
    else:
        stats, stats_s = feature_statistics(reference_features.pool), feature_statistics(reference_features.spatial)
    precision, recall = precision_recall(reference_features.pool, sample.pool, PR_K, pr_row_block, pr_col_block,
                                         distance, device)
    return {"gfid": fid_from_stats(*feature_statistics(sample.pool), *stats),
            "sfid": fid_from_stats(*feature_statistics(sample.spatial), *stats_s),
            "inception_score": inception_score(sample.logits),
            "precision": precision, "recall": recall, "num_samples": len(sample.pool)}
