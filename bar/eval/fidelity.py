"""Evaluation: features of generated (or reconstructed) images, each rank extracting its own shard, gathered in
order on rank 0 and scored there against a reference. Only features travel between ranks, never images.

Two protocols (`eval.protocol`):
  fidelity  torch-fidelity's FID, IS and precision/recall with one extractor (`eval.extractor`): `classifier`, a
            small net trained on the dataset itself (bar.eval.features; offline), or `inception`, torch-fidelity's
            `inception-v3-compat` from a local weights file. The reference is a dataset split; its features are
            computed once and cached by (data, split, extractor).
  adm       the paper's (bar.eval.adm): guided-diffusion's evaluator against an ADM reference batch (`eval.reference`):
            FID and sFID from its stored statistics, IS, k=3 precision/recall against its 10,000 images (their
            features cached once per reference file). Needs the Inception weights.
Both feature caches are bar.data.cache entries: checksummed, and built again when they fail.

    scores = evaluator.compare(images_shard, reference, "train", isc=True, prc=True)   # dict on rank 0, None else
Keys: fid, inception_score, precision, recall (+ sfid for adm). The evaluators are built from a point's config by
bar.orchestration.evaluators (which also trains the classifier extractor once per signature)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch_fidelity.metric_fid as tf_fid
import torch_fidelity.metric_isc as tf_isc
import torch_fidelity.metric_prc as tf_prc
from torch.utils.data import DataLoader, Dataset, Subset
from torch_fidelity.utils import create_feature_extractor

from bar.eval import adm
from bar.core import distributed
from bar.core.files import CorruptCheckpoint, load_verified, save_atomic
from bar.core.hashing import stable_hash
from bar.data.cache import get_or_build_together, load_or_rebuild
from bar.eval.features import CLASSIFIER_EXTRACTOR

INCEPTION_EXTRACTOR = "inception-v3-compat"
_LAYERS = {CLASSIFIER_EXTRACTOR: {"fid": "features", "isc": "logits", "prc": "features"},
           INCEPTION_EXTRACTOR: {"fid": "2048", "isc": "logits_unbiased", "prc": "2048"}}


class _Images(Dataset):
    """uint8 (N, C, H, W) images as torch-fidelity wants them: one CHW tensor per item, 3 channels for Inception."""

    def __init__(self, images, rgb: bool):
        self.images, self.rgb = images, rgb

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        x = x[0] if isinstance(x, tuple) else x
        return x.expand(3, -1, -1).contiguous() if self.rgb and x.shape[0] == 1 else x


class FidelityEvaluator:
    """torch-fidelity metrics with one fixed extractor, against cached reference features."""

    def __init__(self, extractor: str, weights: str, extractor_sig: str, data_sig: str, *, cache_root: str | Path,
                 batch_size: int, device: torch.device, loader_workers: int = 0):
        """`extractor`: CLASSIFIER_EXTRACTOR or INCEPTION_EXTRACTOR, loaded from `weights`; `extractor_sig` and
        `data_sig` key the cached reference features (under `cache_root`); `loader_workers` decode a reference
        split's images in parallel (an image folder's JPEGs)."""
        self.name, self.extractor_sig, self.data_sig = extractor, extractor_sig, data_sig
        self.cache_root, self.batch_size, self.device = cache_root, batch_size, device
        self.loader_workers = loader_workers
        self.extractor = create_feature_extractor(self.name, sorted(set(_LAYERS[self.name].values())),
                                                  cuda=device.type == "cuda", feature_extractor_weights_path=weights,
                                                  verbose=False)
        self._prepared: set[str] = set()

    @property
    def tag(self) -> str:
        """What the metrics came from; never compare numbers across different tags."""
        return f"{self.name}:{self.extractor_sig}"

    @torch.no_grad()
    def batch_features(self, images_NCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one batch of uint8 images, on the CPU (for callers that stream their images)."""
        x = images_NCHW.expand(-1, 3, -1, -1) if self.name == INCEPTION_EXTRACTOR and images_NCHW.shape[1] == 1 \
            else images_NCHW
        x = x.to(self.device, non_blocking=True)
        return {k: v.cpu() for k, v in self.extractor.convert_features_tuple_to_dict(self.extractor(x)).items()}

    def features(self, images, workers: int = 0) -> dict[str, torch.Tensor]:
        """Features of uint8 images ((N, C, H, W) tensor, or a dataset of images or (image, label) items), in
        batches of `batch_size` (torch-fidelity's own loop, with loader workers)."""
        loader = DataLoader(_Images(images, self.name == INCEPTION_EXTRACTOR), batch_size=self.batch_size,
                            num_workers=workers, pin_memory=self.device.type == "cuda")
        parts = [self.batch_features(batch) for batch in loader]
        if not parts:   # a rank holding no images (fewer than ranks): one blank image gives the features' widths
            side = getattr(self.extractor, "resolution", 299)
            blank = torch.zeros(1, getattr(self.extractor, "in_channels", 3), side, side, dtype=torch.uint8)
            parts = [{k: v[:0] for k, v in self.batch_features(blank).items()}]
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def _reference_key(self, name: str) -> str:
        return f"{self.data_sig}-{name}-{self.extractor_sig}"

    def prepare_reference(self, reference: Dataset, name: str) -> None:
        """All ranks: the reference split's features, extracted once into the cache, each rank its share (items
        rank::world, with loader workers) and only the features gathered: no rank extracts 1.28M images alone while
        the others wait."""
        if name in self._prepared:
            return

        def build(folder: Path) -> None:
            shard = Subset(reference, distributed.shard_indices(len(reference)).tolist())  # type: ignore[arg-type]
            features = gather_features(self.features(shard, self.loader_workers))
            if features is not None:
                save_atomic(features, folder / "features.pt")

        get_or_build_together(self.cache_root, "fidelity", self._reference_key(name), build)
        self._prepared.add(name)

    def reference_features(self, reference: Dataset, name: str) -> dict[str, torch.Tensor]:
        """Features of a reference split, from the cache (built by `prepare_reference`; again here, alone, only when
        the entry fails its checksum)."""
        features, _ = load_or_rebuild(self.cache_root, "fidelity", self._reference_key(name),
                                      lambda f: save_atomic(self.features(reference, self.loader_workers),
                                                            f / "features.pt"),
                                      lambda f: load_verified(f / "features.pt"))
        return features

    def compare(self, images_shard, reference: Dataset, reference_name: str, *, isc: bool = False,
                prc: bool = False, items: torch.Tensor | None = None) -> dict[str, float] | None:
        """FID (and optionally IS, precision/recall) of the images of all ranks against `reference`: the scores on
        rank 0, None on the others. `items`: the global index of each of this rank's images (None: rank::world)."""
        return self.score(self.features(images_shard), reference, reference_name, isc=isc, prc=prc, items=items)

    def score(self, features_shard: dict[str, torch.Tensor], reference: Dataset, reference_name: str, *,
              isc: bool = False, prc: bool = False, items: torch.Tensor | None = None) -> dict[str, float] | None:
        """`compare` for features a caller extracted itself (`batch_features` while it streams its images). All
        ranks call it; they leave together, after rank 0 has scored (distributed.wait_for_ranks)."""
        self.prepare_reference(reference, reference_name)
        feats = gather_features(features_shard, items)
        out = None if feats is None else self._scores(feats, self.reference_features(reference, reference_name),
                                                       isc, prc)
        distributed.wait_for_ranks(f"scoring against {reference_name}")
        return out

    def _scores(self, feats: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], isc: bool,
                prc: bool) -> dict[str, float]:
        layers = _LAYERS[self.name]
        stats = [tf_fid.fid_featuresdict_to_statistics(f, layers["fid"]) for f in (feats, ref)]
        out = {"fid": float(tf_fid.fid_statistics_to_metric(*stats, False)[tf_fid.KEY_METRIC_FID])}
        if isc:
            out["inception_score"] = float(tf_isc.isc_featuresdict_to_metric(feats, layers["isc"], verbose=False)[
                tf_isc.KEY_METRIC_ISC_MEAN])
        if prc:
            scores = tf_prc.prc_featuresdict_to_metric(feats, ref, layers["prc"], verbose=False)
            out["precision"] = float(scores[tf_prc.KEY_METRIC_PRECISION])
            out["recall"] = float(scores[tf_prc.KEY_METRIC_RECALL])
        return out


class ADMEvaluator:
    """The paper's protocol: guided-diffusion's evaluator (bar.eval.adm) against the ADM reference batch."""

    def __init__(self, reference_path: str | Path, inception_weights: str, *, cache_root: str | Path, batch_size: int,
                 device: torch.device):
        self.cache_root, self.batch_size, self.device = cache_root, batch_size, device
        self.reference = adm.read_reference(reference_path)
        self.extractor = adm.InceptionADM.from_weights(inception_weights).to(device)

    @property
    def tag(self) -> str:
        return f"adm:{Path(str(self.reference.path)).name}"

    def features(self, images_NCHW: torch.Tensor) -> adm.Features:
        batches = (images_NCHW[i:i + self.batch_size].permute(0, 2, 3, 1)
                   for i in range(0, len(images_NCHW), self.batch_size))
        return adm.compute_features(batches, self.extractor, self.device)

    def reference_features(self) -> adm.Features:
        stat = Path(str(self.reference.path)).stat()    # a file replaced in place (same size) is another reference
        key = stable_hash({"reference": str(Path(str(self.reference.path)).resolve()), "bytes": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns})

        def build(folder: Path):
            f = adm.compute_features(adm.iter_npz_images(self.reference.path, self.batch_size),
                                     self.extractor, self.device)
            np.savez(folder / "features.npz", pool=f.pool, spatial=f.spatial, logits=f.logits)

        features, _ = load_or_rebuild(self.cache_root, "adm-reference", key, build, _load_adm_features)
        return features

    def compare(self, images_shard: torch.Tensor, reference=None, reference_name: str = "", *, isc: bool = True,
                prc: bool = True, items: torch.Tensor | None = None) -> dict[str, float] | None:
        """FidelityEvaluator.compare's contract, scored the ADM way (always IS and precision/recall, plus sFID)."""
        f = self.features(images_shard)
        parts = gather_features({"pool": torch.from_numpy(f.pool), "spatial": torch.from_numpy(f.spatial),
                                 "logits": torch.from_numpy(f.logits)}, items)
        out = None if parts is None else self._scores(parts)
        distributed.wait_for_ranks("ADM scoring")    # the other ranks wait for rank 0's scores here
        return out

    def _scores(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        sample = adm.Features(*(parts[k].numpy() for k in ("pool", "spatial", "logits")))
        scores = adm.adm_scores(sample, self.reference, self.reference_features(), device=self.device)
        return {"fid": scores["gfid"], "sfid": scores["sfid"], "inception_score": scores["inception_score"],
                "precision": scores["precision"], "recall": scores["recall"]}


def _load_adm_features(folder: Path) -> adm.Features:
    """The cached features of an ADM reference; CorruptCheckpoint when the file cannot be read (the cache then
    builds it again)."""
    try:
        with np.load(folder / "features.npz") as saved:
            return adm.Features(saved["pool"], saved["spatial"], saved["logits"])
    except Exception as err:   # zip, pickle and shape errors of a damaged .npz
        raise CorruptCheckpoint(f"{folder / 'features.npz'}: unreadable ({type(err).__name__})") from None


def gather_features(local: dict[str, torch.Tensor], items: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor] | None:
    """Every rank's features in global item order, on rank 0 (None on the others). `items`: the global index of each
    local row (None: this rank holds items rank::world, as distributed.shard_indices deals them)."""
    world = distributed.world_size()
    if world == 1:
        return local if items is None else {k: v[items.argsort()] for k, v in local.items()}
    if items is None:
        total = sum(distributed.all_gather_objects(len(next(iter(local.values())))))
        items = torch.arange(distributed.rank(), total, world)
    parts = distributed.all_gather_objects((items.cpu(), {k: v.cpu() for k, v in local.items()}))
    if not distributed.is_main():
        return None
    order = torch.cat([rows for rows, _ in parts]).argsort()
    return {k: torch.cat([features[k] for _, features in parts])[order] for k in local}
