"""Tests of the MNIST reader, the in-project classifier and the image metrics (domains/image)."""
import gzip
import hashlib
import json
import time
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from core.errors import InputError
from domains.image import classifier as C
from domains.image import metrics as M
from domains.image.data import (MNIST_FILES, load_mnist, mnist_tensor_data, read_idx,
                                to_uint8, to_unit_range)

MD5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
       "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea"}


@pytest.fixture(scope="session")
def mnist_dir(shared_data):
    path = shared_data / "mnist"
    names = [n for pair in MNIST_FILES.values() for n in pair]
    if not all((path / f"{n}.gz").is_file() or (path / n).is_file() for n in names):
        pytest.skip(f"MNIST IDX files not found in {path}")
    return path


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split,n", [("train", 60_000), ("test", 10_000)])
def test_load_mnist_real_files(mnist_dir, split, n):
    images, labels = load_mnist(mnist_dir, split)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.long
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert (labels.bincount(minlength=10) > 0.08 * n).all()   # every digit is well represented
    assert 30 < images.float().mean() < 40                   # MNIST mean pixel is about 33

    image_name, label_name = MNIST_FILES[split]
    raw = gzip.decompress((mnist_dir / f"{image_name}.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == MD5[image_name]
    # the parsed pixels are exactly the file's data section, in order
    assert images.numpy().tobytes() == raw[16:]
    raw_labels = gzip.decompress((mnist_dir / f"{label_name}.gz").read_bytes())
    assert labels.numpy().astype(np.uint8).tobytes() == raw_labels[8:]


def test_load_mnist_returns_independent_copies(mnist_dir):
    images, labels = load_mnist(mnist_dir, "test")
    images[0] = 255
    labels[0] = 7 if int(labels[0]) != 7 else 3
    again_images, again_labels = load_mnist(mnist_dir, "test")
    assert not torch.equal(images[0], again_images[0])
    assert int(again_labels[0]) != int(labels[0])


def test_uncompressed_files_give_the_same_arrays(mnist_dir, tmp_path):
    for name in MNIST_FILES["test"]:
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    images, labels = load_mnist(tmp_path, "test")
    ref_images, ref_labels = load_mnist(mnist_dir, "test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_missing_file_names_it_and_says_where_to_get_it(mnist_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte") as err:
        load_mnist(tmp_path, "test")
    assert "MNIST/raw" in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        load_mnist(mnist_dir, "val")


def test_truncated_gzip_raises_value_error_naming_the_file(mnist_dir, tmp_path):
    blob = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*(corrupt|truncated)"):
        load_mnist(tmp_path, "test")


def test_corrupt_uncompressed_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    img, lab = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    img.write_bytes(_idx_bytes(images, 2051))
    lab.write_bytes(_idx_bytes(labels, 2049))
    got_images, got_labels = load_mnist(tmp_path, "test")
    assert np.array_equal(got_images.numpy(), images)
    assert got_labels.tolist() == labels.tolist()

    img.write_bytes(_idx_bytes(images, 2051)[:-10])                      # truncated data
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_mnist(tmp_path, "test")
    img.write_bytes(_idx_bytes(images, 2051)[:10])                       # truncated header
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_mnist(tmp_path, "test")
    img.write_bytes(_idx_bytes(images, 2049))                            # wrong magic
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*magic"):
        load_mnist(tmp_path, "test")
    img.write_bytes(_idx_bytes(images, 2051))
    lab.write_bytes(_idx_bytes(labels[:4], 2049))                        # count mismatch
    with pytest.raises(ValueError, match="mismatch"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match="magic"):
        read_idx(img, 2049)


def test_mnist_tensor_data(mnist_dir):
    data = mnist_tensor_data(mnist_dir, "test", limit=1000)
    images, labels = load_mnist(mnist_dir, "test")
    assert data.x.shape == (1000, 1, 28, 28) and data.x.dtype == torch.float32
    assert float(data.x.min()) == -1.0 and float(data.x.max()) == 1.0
    assert torch.equal(data.cond, labels[:1000])
    assert torch.equal(to_uint8(data.x)[:, 0], images[:1000])            # exact round trip
    assert len(mnist_tensor_data(mnist_dir, "test")) == 10_000
    with pytest.raises(ValueError):
        mnist_tensor_data(mnist_dir, "test", limit=0)


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def _textbook_fd(a, b):
    """The pytorch-fid computation: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _gaussian_feats(rng, n, d, shift=0.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    a = _gaussian_feats(rng, 2000, 64)
    scale = np.trace(np.cov(a, rowvar=False))
    assert M.frechet_distance(a, a) <= 1e-6 * scale
    relu = np.maximum(a, 0.0)
    relu[:, :5] = 0.0                                                  # dead units: singular cov
    assert M.frechet_distance(relu, relu) <= 1e-6 * np.trace(np.cov(relu, rowvar=False))
    assert M.frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(a).float()) < 1e-3


def test_frechet_distance_rises_with_noise():
    rng = np.random.default_rng(1)
    a = _gaussian_feats(rng, 3000, 32)
    noise = rng.normal(size=a.shape)
    fds = [M.frechet_distance(a, a + s * noise) for s in (0.0, 0.1, 0.3, 0.6, 1.0, 2.0)]
    assert fds[0] < 1e-8
    assert all(x < y for x, y in zip(fds, fds[1:])), fds


@pytest.mark.parametrize("d,shift", [(8, 0.0), (32, 0.5), (64, 2.0)])
def test_frechet_distance_matches_textbook_formula(d, shift):
    rng = np.random.default_rng(d)
    a = _gaussian_feats(rng, 1500, d)
    b = _gaussian_feats(rng, 1000, d, shift=shift)
    ours, ref = M.frechet_distance(a, b), _textbook_fd(a, b)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert M.frechet_distance(b, a) == pytest.approx(ours, rel=1e-9)
    # closed form for two exactly known Gaussians in 1-d: (m1-m2)^2 + (s1-s2)^2
    x = np.array([[-1.0], [1.0]]) * 2.0
    y = np.array([[-1.0], [1.0]]) + 3.0
    assert M.frechet_distance(x, y) == pytest.approx(9.0 + (np.sqrt(8.0) - np.sqrt(2.0)) ** 2)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError):
        M.frechet_distance(np.full((10, 3), np.nan), np.zeros((10, 3)))


# --------------------------------------------------------------------------------------------
# kernel distance (KID)
# --------------------------------------------------------------------------------------------


def _naive_kid(a, b):
    """Unbiased squared MMD, cubic polynomial kernel, with explicit loops over all pairs."""
    m, d = len(a), a.shape[1]

    def k(x, y):
        return (sum(float(xi) * float(yi) for xi, yi in zip(x, y)) / d + 1.0) ** 3

    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2.0 * xy


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_kernel_distance_matches_naive_unbiased_formula(shift):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(12, 5))
    b = rng.normal(size=(12, 5)) * 1.3 + shift
    ref = _naive_kid(a, b)
    # one subset holding every item: a permutation of each set, which the estimate ignores
    ours = M.kernel_distance(a, b, subsets=1, subset_size=100)
    assert ours == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert M.kernel_distance(b, a, subsets=3, subset_size=12) == pytest.approx(ref, rel=1e-10)
    assert M.kernel_distance(torch.from_numpy(a), torch.from_numpy(b), subsets=1) == pytest.approx(ref)
    # seeded subsets: deterministic, and a different seed draws different subsets
    big_a, big_b = rng.normal(size=(60, 5)), rng.normal(size=(50, 5))
    one = M.kernel_distance(big_a, big_b, subsets=4, subset_size=20, seed=1)
    assert one == M.kernel_distance(big_a, big_b, subsets=4, subset_size=20, seed=1)
    assert one != M.kernel_distance(big_a, big_b, subsets=4, subset_size=20, seed=2)
    with pytest.raises(ValueError):
        M.kernel_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        M.kernel_distance(a, b, subsets=0)


def test_kernel_distance_near_zero_for_one_distribution_positive_for_a_shift():
    rng = np.random.default_rng(4)
    d = 16
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a = rng.normal(size=(2000, d)) @ mix
    same = rng.normal(size=(2000, d)) @ mix
    shifted = rng.normal(size=(2000, d)) @ mix + 0.5
    kid_same = M.kernel_distance(a, same)
    kid_shift = M.kernel_distance(a, shifted)
    assert abs(kid_same) < 0.02 and kid_shift > 0.5
    assert kid_shift > 20 * abs(kid_same)


# --------------------------------------------------------------------------------------------
# improved precision / recall
# --------------------------------------------------------------------------------------------


def _reference_precision_recall(real, fake, k):
    """Direct transcription of Kynkäänniemi et al.: explicit distance matrices, np.partition."""
    def radii(x):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return np.partition(d, k, axis=1)[:, k]          # index 0 is the point itself

    def coverage(query, centres, r):
        d = np.sqrt(((query[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
        return float((d <= r[None, :]).any(1).mean())

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    assert M.precision_recall(a, a.copy()) == (1.0, 1.0)
    assert M.precision_recall(a, a + 100.0) == (0.0, 0.0)
    dup = np.repeat(a[:50], 5, axis=0)                       # exact duplicates: zero radii
    assert M.precision_recall(dup, dup.copy()) == (1.0, 1.0)


def test_precision_recall_matches_reference_and_detects_mode_collapse():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 8))
    fake = 0.5 * rng.normal(size=(300, 8)) + 0.7               # narrow and shifted
    p, r = M.precision_recall(real, fake, k=3, batch_size=64)
    assert (p, r) == pytest.approx(_reference_precision_recall(real, fake, 3), abs=1e-12)
    assert 0.0 < r < p < 1.0                                  # a narrow generator: low recall
    collapsed = real[:20] + 1e-3 * rng.normal(size=(20, 8))   # covers few real modes
    p_c, r_c = M.precision_recall(real, np.repeat(collapsed, 10, axis=0))
    assert p_c > 0.9 and r_c < 0.2
    with pytest.raises(ValueError):
        M.precision_recall(real[:3], fake, k=3)


# --------------------------------------------------------------------------------------------
# classifier API (fast) and metrics on images
# --------------------------------------------------------------------------------------------


def test_lenet_shapes_and_input_checks():
    torch.manual_seed(0)
    net = C.LeNet().eval()
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    assert net.features(x).shape == (6, C.FEATURE_DIM)
    assert net(x).shape == (6, 10)
    assert torch.equal(net(x[:, 0]), net(x))                 # [N, 28, 28] is accepted too
    with pytest.raises(ValueError, match="28, 28"):
        net(torch.zeros(2, 3, 28, 28))


def test_train_classifier_api_on_a_small_subset(mnist_dir, tmp_path):
    kwargs = dict(seed=3, limit=2000, max_steps=12, batch_size=64, progress=False, ckpt_every=4)
    model, acc = C.train_classifier(mnist_dir, tmp_path / "a", **kwargs)
    assert isinstance(model, C.LeNet) and not model.training
    assert 0.3 < acc <= 1.0                                  # 12 steps already beat chance
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 11 and "accuracy" in log[-1]   # the core trainer's log

    class Killed(Exception):
        pass

    def kill(step, logs):
        if step == 6:
            raise Killed
    with pytest.raises(Killed):                              # killed after the checkpoint at 4
        C.train_classifier(mnist_dir, tmp_path / "b", on_step=kill, **kwargs)
    model2, acc2 = C.train_classifier(mnist_dir, tmp_path / "b", **kwargs)  # resumes: identical
    assert acc2 == acc
    for (name, p), p2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(p, p2), name
    with pytest.raises(InputError, match="another run"):     # a folder of another run is refused
        C.train_classifier(mnist_dir, tmp_path / "b", **{**kwargs, "lr": 1e-3})
    model3, _ = C.train_classifier(mnist_dir, tmp_path / "c", **{**kwargs, "seed": 4})
    assert not torch.equal(model.head.weight, model3.head.weight)


def test_load_or_train_caches_atomically(mnist_dir, tmp_path, monkeypatch):
    calls = []
    real_train = C.train_classifier

    def tiny_train(data_dir, run_dir, seed=0, progress=True, device="cpu"):
        calls.append(seed)
        return real_train(data_dir, run_dir, seed=seed, limit=500, max_steps=3, progress=False,
                          device=device)

    monkeypatch.setattr(C, "train_classifier", tiny_train)
    cache = tmp_path / "cache"
    model, acc = C.load_or_train_classifier(mnist_dir, cache, seed=5, progress=False)
    path = cache / "mnist_lenet_seed5.pt"
    assert calls == [5] and path.is_file()
    # no temporary file left behind; the training run (log, checkpoint) beside the weights
    assert sorted(p.name for p in cache.iterdir()) == [path.name, "mnist_lenet_seed5.run"]
    model2, acc2 = C.load_or_train_classifier(mnist_dir, cache, seed=5, progress=False)
    assert calls == [5] and acc2 == acc and not model2.training
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    assert torch.equal(model.features(x), model2.features(x))

    monkeypatch.setenv(C.CACHE_ENV, str(cache))                 # default cache dir from the env
    C.load_or_train_classifier(mnist_dir, seed=5, progress=False)
    assert calls == [5] and C.default_cache_dir() == cache

    path.write_bytes(b"not a checkpoint")                       # a broken cache is retrained
    with pytest.warns(UserWarning, match="retraining"):
        C.load_or_train_classifier(mnist_dir, cache, seed=5, progress=False)
    assert calls == [5, 5]
    assert C.load_or_train_classifier(mnist_dir, cache, seed=5, progress=False)[1] == acc


def test_image_metrics_api_with_an_untrained_judge(mnist_dir):
    torch.manual_seed(0)
    judge = C.LeNet().eval()
    images, labels = load_mnist(mnist_dir, "test")
    fake, real = to_unit_range(images[:300]).unsqueeze(1), images[300:700]   # float and uint8
    out = M.image_metrics(judge, fake, labels[:300], real, batch_size=128)
    assert set(out) == {"fd", "kid", "precision", "recall", "class_accuracy"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["fd"] > 0 and 0 <= out["class_accuracy"] <= 1
    assert set(M.image_metrics(judge, fake, None, real)) == {"fd", "kid", "precision", "recall"}
    noisy = fake + 0.8 * torch.randn_like(fake)
    assert M.image_metrics(judge, noisy, None, real)["fd"] > out["fd"]
    floor = M.real_floor(judge, images[:2000], images[5000:], n=300, train_labels=labels[:2000])
    assert set(floor) == {"floor_fd", "floor_kid", "floor_precision", "floor_recall",
                          "floor_class_accuracy"}
    with pytest.raises(ValueError, match="NaN"):
        M.image_metrics(judge, torch.full_like(fake, float("nan")), None, real)
    with pytest.raises(ValueError, match="labels"):
        M.class_accuracy(judge, fake, labels[:10])


# --------------------------------------------------------------------------------------------
# the real judge (trains once, about two minutes on two CPU cores)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_judge(mnist_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("c2f_cache")
    start = time.perf_counter()
    model, acc = C.load_or_train_classifier(mnist_dir, cache, seed=0, progress=False)
    return model, acc, cache, time.perf_counter() - start


@pytest.mark.slow
def test_trained_classifier_reaches_99_percent_and_loads_from_cache(mnist_dir, trained_judge):
    model, acc, cache, train_seconds = trained_judge
    assert acc >= 0.99, acc
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model2, acc2 = C.load_or_train_classifier(mnist_dir, cache, seed=0, progress=False)
    load_seconds = time.perf_counter() - start
    assert acc2 == acc and load_seconds < min(5.0, train_seconds / 5)
    for (name, p), p2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(p, p2), name
    images, labels = load_mnist(mnist_dir, "test")
    assert M.class_accuracy(model2, images, labels) == pytest.approx(acc, abs=1e-12)


@pytest.mark.slow
def test_real_floor_and_degraded_samples(mnist_dir, trained_judge):
    judge = trained_judge[0]
    train_images, train_labels = load_mnist(mnist_dir, "train")
    test_images, _ = load_mnist(mnist_dir, "test")
    floor = M.real_floor(judge, train_images, test_images, n=5000, train_labels=train_labels)
    assert floor["floor_class_accuracy"] > 0.99
    assert floor["floor_precision"] > 0.6 and floor["floor_recall"] > 0.6

    rng = torch.Generator().manual_seed(0)
    fake = to_unit_range(train_images[:5000]).unsqueeze(1)
    fds = []
    for sigma in (0.2, 0.5):
        noisy = fake + sigma * torch.randn(fake.shape, generator=rng)
        out = M.image_metrics(judge, noisy, train_labels[:5000], test_images[:5000])
        fds.append(out["fd"])
    assert floor["floor_fd"] < fds[0] < fds[1]
    # a generator that repeats one digit per class: precise but with poor recall
    one_per_class = torch.stack([fake[train_labels[:5000] == c][0] for c in range(10)])
    collapsed = one_per_class.repeat_interleave(500, dim=0)
    out = M.image_metrics(judge, collapsed, torch.arange(10).repeat_interleave(500),
                          test_images[:5000])
    assert out["class_accuracy"] > 0.99
    assert out["recall"] < 0.1 and out["fd"] > 10 * floor["floor_fd"]
