"""The ADM evaluation protocol: each metric against a direct numpy/scipy statement of guided-diffusion's formula, the
npz layouts, the spatial-feature layout, and the entry point with a stand-in extractor (no Inception weights)."""

import zipfile

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.special import softmax

from bar import UserError
from bar.eval.adm import (InceptionADM, SampleNpzWriter, adm_spatial, compute_features, evaluate_adm,
    feature_statistics, fid_from_stats, inception_score, iter_npz_images, manifold_radii, precision_recall,
    read_reference, read_samples_npz, squared_distances, write_samples_npz)

RNG = np.random.default_rng(0)


def random_stats(d, n, shift=0.0, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)) @ np.random.default_rng(seed + 1).normal(size=(d, d)) + shift
    return x.mean(0), np.cov(x, rowvar=False)


# ----------------------------------------------------------------------------------------------------- FID / IS
def test_fid_matches_the_formula():
    mu1, s1 = random_stats(12, 200, seed=0)
    mu2, s2 = random_stats(12, 150, shift=0.3, seed=5)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-10)
    assert fid_from_stats(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)
    with pytest.raises(UserError, match="differ in size"):
        fid_from_stats(mu1, s1, mu2[:5], s2[:5, :5])


def test_statistics_are_mean_and_unbiased_covariance():
    x = RNG.normal(size=(50, 6)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert np.allclose(mu, x.astype(np.float64).mean(0)) and np.allclose(sigma, np.cov(x.astype(np.float64).T))


@pytest.mark.parametrize("n,split", [(12, 5), (40, 5000), (23, 23)])
def test_inception_score_matches_adm(n, split):
    logits = RNG.normal(size=(n, 10)) * 3
    p = softmax(logits, axis=1)
    scores = []
    for i in range(0, n, split):   # guided-diffusion compute_inception_score, split_size consecutive samples
        part = p[i:i + split]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    assert inception_score(logits, split) == pytest.approx(float(np.mean(scores)), rel=1e-12)


def test_inception_score_of_confident_uniform_predictions_is_the_class_count():
    logits = np.eye(8)[np.arange(64) % 8] * 200.0     # underflowing probabilities: 0 log 0 counts as 0
    assert inception_score(logits) == pytest.approx(8.0, rel=1e-9)


# ----------------------------------------------------------------------------------------------------- precision / recall
def brute_radii(x, k=3):
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]            # the point itself is entry 0: the k-th neighbour


def brute_pr(ref, smp, k=3):
    d = ((ref[:, None, :].astype(np.float64) - smp[None, :, :]) ** 2).sum(-1)     # (ref, samples)
    precision = np.mean(np.any(d <= brute_radii(ref, k)[:, None], axis=0))
    recall = np.mean(np.any(d <= brute_radii(smp, k)[None, :], axis=1))
    return precision, recall


@pytest.mark.parametrize("blocks", [(64, 50), (4096, 10000)])
def test_precision_recall_match_brute_force(blocks):
    ref = RNG.normal(size=(300, 8)).astype(np.float32)
    smp = (RNG.normal(size=(250, 8)) * 1.3 + 0.4).astype(np.float32)
    row, col = blocks
    radii = manifold_radii(ref, 3, row, col, distance="fp32")
    assert np.allclose(radii, brute_radii(ref), rtol=1e-4)
    p, r = precision_recall(ref, smp, 3, row, col, distance="fp32")
    bp, br = brute_pr(ref, smp)
    assert (p, r) == (bp, br)
    assert 0.2 < p < 1 and 0.2 < r < 1


def numpy_fp16_distances(u, v):
    """guided-diffusion's DistanceBlock in float16: norms, matmul, |u|^2 - 2uv + |v|^2, clipped at 0 (each op rounded
    to float16, products accumulated in float32)."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    nu = (u16 * u16).astype(np.float32).sum(1).astype(np.float16)
    nv = (v16 * v16).astype(np.float32).sum(1).astype(np.float16)
    uv = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
    d = (nu[:, None] - np.float16(2) * uv) + nv[None, :]
    return np.maximum(d, np.float16(0)).astype(np.float32)


def test_fp16_distances_emulate_adm_and_stay_close_to_exact():
    ref = RNG.normal(size=(200, 16)).astype(np.float32)
    smp = (RNG.normal(size=(180, 16)) + 0.2).astype(np.float32)
    d = squared_distances(torch.from_numpy(ref), torch.from_numpy(smp), "fp16").numpy()
    assert np.array_equal(d, numpy_fp16_distances(ref, smp))
    d_ref = numpy_fp16_distances(ref, ref)
    radii = np.sort(d_ref, axis=1)[:, 3]
    assert np.array_equal(manifold_radii(ref, 3, 64, 50, distance="fp16"), radii)
    d_rs = numpy_fp16_distances(ref, smp)
    r_smp = np.sort(numpy_fp16_distances(smp, smp), axis=1)[:, 3]
    expected = (np.mean(np.any(d_rs <= radii[:, None], axis=0)), np.mean(np.any(d_rs <= r_smp[None, :], axis=1)))
    assert precision_recall(ref, smp, 3, 64, 50, distance="fp16") == expected
    exact = precision_recall(ref, smp, distance="fp32")
    assert abs(expected[0] - exact[0]) < 0.03 and abs(expected[1] - exact[1]) < 0.03


def test_fp16_overflow_falls_back_to_fp32():
    big = RNG.normal(size=(10, 4)).astype(np.float32) * 1000
    d = squared_distances(torch.from_numpy(big), torch.from_numpy(big), "fp16")
    assert torch.isfinite(d).all() and torch.allclose(d, squared_distances(torch.from_numpy(big),
                                                                           torch.from_numpy(big), "fp32"))


# ----------------------------------------------------------------------------------------------------- npz files
def test_sample_npz_round_trips_byte_for_byte(tmp_path):
    images = RNG.integers(0, 256, size=(7, 8, 6, 3), dtype=np.uint8)
    path = write_samples_npz(tmp_path / "samples.npz", images)
    back = read_samples_npz(path)
    assert back.dtype == np.uint8 and back.shape == images.shape and back.tobytes() == images.tobytes()
    assert np.array_equal(np.load(path)["arr_0"], images)
    np.savez(tmp_path / "numpy.npz", arr_0=images)           # the member is what np.savez writes, byte for byte
    with zipfile.ZipFile(path) as a, zipfile.ZipFile(tmp_path / "numpy.npz") as b:
        assert a.namelist() == ["arr_0.npy"] and a.read("arr_0.npy") == b.read("arr_0.npy")
    assert [len(b) for b in iter_npz_images(path, 3)] == [3, 3, 1]


def test_streaming_writer(tmp_path):
    images = RNG.integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    with SampleNpzWriter(tmp_path / "s.npz", 10, 4, 4) as writer:
        for i in range(0, 10, 4):
            writer.write(torch.from_numpy(images[i:i + 4]))
    assert read_samples_npz(tmp_path / "s.npz").tobytes() == images.tobytes()
    writer = SampleNpzWriter(tmp_path / "short.npz", 10, 4, 4)
    writer.write(images[:3])
    with pytest.raises(UserError, match="3 of 10"):
        writer.close()
    assert not (tmp_path / "short.npz").exists() and not (tmp_path / "short.npz.tmp").exists()
    with pytest.raises(UserError, match="uint8"):
        write_samples_npz(tmp_path / "f.npz", images.astype(np.float32))


def reference_npz(path, images, stats=True, d=2048, ds=2023, drop=None):
    arrays = {"arr_0": images}
    if stats:
        arrays.update(mu=np.arange(d, dtype=np.float64), sigma=np.eye(d, dtype=np.float32),
                      mu_s=np.zeros(ds), sigma_s=np.eye(ds, dtype=np.float32))
    if drop:
        arrays.pop(drop)
    np.savez(path, **arrays)
    return path


def test_reference_batch_with_the_adm_layout(tmp_path):
    images = RNG.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    ref = read_reference(reference_npz(tmp_path / "VIRTUAL_imagenet256_labeled.npz", images))
    assert ref.num_images == 5 and ref.image_shape == (16, 16, 3) and ref.has_statistics
    assert ref.mu.shape == (2048,) and ref.mu[7] == 7 and ref.sigma.shape == (2048, 2048) and ref.sigma.dtype == np.float64
    assert ref.mu_s.shape == (2023,) and ref.sigma_s.shape == (2023, 2023)
    assert np.array_equal(np.concatenate(list(iter_npz_images(ref.path, 2))), images)


def test_reference_batch_errors_name_the_problem(tmp_path):
    images = RNG.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    for call, match in [
        (lambda: read_reference(tmp_path / "absent.npz"), "absent.npz' not found"),
        (lambda: read_reference(reference_npz(tmp_path / "a.npz", images, drop="arr_0")), "no array 'arr_0'"),
        (lambda: read_reference(reference_npz(tmp_path / "b.npz", images, drop="sigma_s", d=4, ds=4)),
         "no array 'sigma_s'"),
        (lambda: read_reference(reference_npz(tmp_path / "c.npz", images.astype(np.float32), stats=False)), "uint8"),
    ]:
        with pytest.raises(UserError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert not read_reference(reference_npz(tmp_path / "d.npz", images, stats=False)).has_statistics


# ----------------------------------------------------------------------------------------------------- features
def test_spatial_features_are_nhwc_first_seven_channels():
    fmap = torch.randn(2, 192, 17, 17)
    s = adm_spatial(fmap)
    assert s.shape == (2, 17 * 17 * 7)
    for n, h, w, c in [(0, 0, 0, 0), (1, 3, 5, 6), (0, 16, 16, 2), (1, 0, 9, 4)]:
        assert s[n, (h * 17 + w) * 7 + c] == fmap[n, c, h, w]      # TF's NHWC map [..., :7], reshaped (N, -1)


class StandIn:
    """A fixed random map from images to (pool, spatial, logits), the shapes an extractor returns (small dims)."""

    def __init__(self, pool=24, side=2, classes=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.side = side
        self.wp, self.ws, self.wl = (torch.randn(3 * 16, pool, generator=g), torch.randn(3 * 16, 7 * side * side,
                                     generator=g), torch.randn(pool, classes, generator=g))

    def __call__(self, x_uint8_NCHW):
        assert x_uint8_NCHW.dtype == torch.uint8 and x_uint8_NCHW.shape[1] == 3
        x = torch.nn.functional.adaptive_avg_pool2d(x_uint8_NCHW.float() / 255, 4).flatten(1)
        pool = torch.relu(x @ self.wp)
        return pool, x @ self.ws, pool @ self.wl


def test_compute_features_keeps_order_and_batching():
    images = RNG.integers(0, 256, size=(9, 8, 8, 3), dtype=np.uint8)
    ext = StandIn()
    whole = compute_features([images], ext)
    batched = compute_features([images[:4], images[4:]], ext)
    assert np.allclose(whole.pool, batched.pool) and whole.spatial.shape == (9, 28) and whole.logits.shape == (9, 10)


def test_evaluate_adm_with_a_stand_in_extractor(tmp_path):
    ext = StandIn()
    ref_images = RNG.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    feats = compute_features([ref_images], ext)
    (mu, sigma), (mu_s, sigma_s) = feature_statistics(feats.pool), feature_statistics(feats.spatial)
    ref_path = tmp_path / "ref.npz"
    np.savez(ref_path, arr_0=ref_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)

    same = evaluate_adm(ref_images, ref_path, extractor=ext, batch_size=16, distance="fp32")
    assert same["gfid"] == pytest.approx(0, abs=1e-6) and same["sfid"] == pytest.approx(0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["num_samples"] == 60

    samples = np.clip(RNG.integers(0, 256, size=(40, 8, 8, 3)) * 0.7 + 40, 0, 255).astype(np.uint8)
    s = compute_features([samples], ext)
    expected = {"gfid": fid_from_stats(*feature_statistics(s.pool), mu, sigma),
                "sfid": fid_from_stats(*feature_statistics(s.spatial), mu_s, sigma_s),
                "inception_score": inception_score(s.logits)}
    expected["precision"], expected["recall"] = precision_recall(feats.pool, s.pool, distance="fp32")
    path = write_samples_npz(tmp_path / "samples.npz", samples)
    got = evaluate_adm(path, ref_path, extractor=ext, batch_size=7, distance="fp32")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    # without statistics in the reference file they come from its images (ADM's fallback)
    np.savez(tmp_path / "ref_nostats.npz", arr_0=ref_images)
    assert evaluate_adm(samples, tmp_path / "ref_nostats.npz", extractor=ext, distance="fp32")["gfid"] == \
        pytest.approx(expected["gfid"], rel=1e-6)
    with pytest.raises(UserError, match="inception_weights"):
        evaluate_adm(samples, ref_path)


def test_inception_adm_returns_the_three_features():
    net = InceptionADM.random(seed=0)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    pool, spatial, logits = net(images)
    assert pool.shape == (2, 2048) and spatial.shape == (2, 7 * 17 * 17) and logits.shape == (2, 1008)
    taps = []
    hook = net.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: taps.append(o))
    _, spatial2, _ = net(images)
    hook.remove()
    assert taps[0].shape == (2, 192, 17, 17) and torch.equal(spatial2, adm_spatial(taps[0]))
    assert torch.allclose(logits, pool @ net.net.fc.weight.T, atol=1e-4)        # no bias, as ADM's MatMul
    with pytest.raises(UserError, match="Inception weights not found"):
        InceptionADM.from_weights("/nonexistent/weights.pth")
