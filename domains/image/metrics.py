"""Image-generation metrics judged by the in-project MNIST classifier (all offline).

* **Fréchet distance** (``fd``): the FID formula on the classifier's 128-d penultimate features,
  ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. Because the features come from
  our LeNet and not from Inception-v3, the numbers are comparable within this project only.
* **Kernel distance** (``kid``): the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3`` (the KID of Bińkowski et al., ICLR 2018, as in clean-fid and
  torch-fidelity), averaged over seeded random subsets. Unbiased, so it can be slightly negative
  and, unlike FD, does not grow as the sets shrink.
* **Improved precision / recall** (Kynkäänniemi et al., NeurIPS 2019): each sample of a set gets a
  ball reaching its k-th nearest neighbour within that set (k = 3, the sample itself excluded).
  Precision is the fraction of generated samples inside at least one ball of a real sample;
  recall is the fraction of real samples inside at least one ball of a generated sample.
* **Class accuracy**: how often the classifier assigns a generated image the label it was
  conditioned on.

Images are ``[N, 1, 28, 28]`` (or ``[N, 28, 28]``) floats in [-1, 1] -- values outside are
clamped, as they would be when saved as pixels -- or uint8 pixels 0..255.

All these estimates depend on the sample sizes (FD is biased upwards for small sets), so compare
numbers only at equal sizes; :func:`real_floor` gives the value a perfect generator would reach.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from domains.image.data import to_unit_range

__all__ = ["prepare_images", "extract_features", "frechet_distance", "kernel_distance",
           "precision_recall", "class_accuracy", "image_metrics", "real_floor"]


# --------------------------------------------------------------------------------------------
# inputs and features
# --------------------------------------------------------------------------------------------


def prepare_images(images) -> torch.Tensor:
    """Any accepted image batch -> float32 ``[N, 1, 28, 28]`` in [-1, 1]."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = to_unit_range(images)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images [N, 1, H, W] or [N, H, W], got {tuple(images.shape)}")
    images = images.detach().to(torch.float32)
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    return images.clamp(-1.0, 1.0)


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def _batched(classifier: nn.Module, fn, images, batch_size: int) -> torch.Tensor:
    images = prepare_images(images)
    was_training = classifier.training
    classifier.eval()
    device = _device(classifier)
    try:
        outs = [fn(images[i:i + batch_size].to(device)).cpu()
                for i in range(0, len(images), batch_size)]
    finally:
        classifier.train(was_training)
    if not outs:
        raise ValueError("no images given")
    return torch.cat(outs)


def extract_features(classifier: nn.Module, images, batch_size: int = 500) -> torch.Tensor:
    """Penultimate classifier features ``[N, D]`` (``classifier.features``), in eval mode."""
    return _batched(classifier, classifier.features, images, batch_size)


def _as_2d_float64(feats, name: str) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [N, D], got shape {feats.shape}")
    if len(feats) < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {len(feats)}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return feats


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N_a, D]``, ``[N_b, D]``.

    ``tr((S_a S_b)^(1/2))`` is computed as ``sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2)))``: the matrix
    is symmetric positive semi-definite and has the same eigenvalues as ``S_a S_b``, so a
    symmetric eigen-solver gives the trace without the complex round-off (and the ``eps * I``
    retry) of a general matrix square root; singular covariances are handled exactly.
    """
    a = _as_2d_float64(feats_a, "feats_a")
    b = _as_2d_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean)
    return max(fd, 0.0)


# --------------------------------------------------------------------------------------------
# kernel (inception) distance
# --------------------------------------------------------------------------------------------


def kernel_distance(feats_a, feats_b, subsets: int = 10, subset_size: int = 1000,
                    seed: int = 0) -> float:
    """Unbiased squared MMD with the kernel ``k(x, y) = (x.y / d + 1)^3`` (KID, Bińkowski et al.
    2018), the mean over ``subsets`` subsets of ``m = min(subset_size, N_a, N_b)`` items drawn
    without replacement from each set by ``np.random.default_rng(seed)`` (deterministic)::

        1/(m(m-1)) sum_{i!=j} [k(a_i, a_j) + k(b_i, b_j)] - 2/m^2 sum_{i,j} k(a_i, b_j)

    float64 throughout. Not clipped at zero: for two samples of one distribution it scatters
    around 0.
    """
    a = _as_2d_float64(feats_a, "feats_a")
    b = _as_2d_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), size=m, replace=False)]
        y = b[rng.choice(len(b), size=m, replace=False)]
        k_xx = (x @ x.T / d + 1.0) ** 3
        k_yy = (y @ y.T / d + 1.0) ** 3
        k_xy = (x @ y.T / d + 1.0) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        total += within - 2.0 * k_xy.sum() / (m * m)
    return float(total / subsets)


# --------------------------------------------------------------------------------------------
# improved precision / recall
# --------------------------------------------------------------------------------------------


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[len(a), len(b)]`` (float64 matrix products). Round-off
    below ~1e-12 of the squared norms is set to exactly zero, so coincident points are at 0."""
    a_sq = (a * a).sum(1, keepdim=True)
    scale = a_sq + b_sq[None, :]
    d = scale - 2.0 * (a @ b.T)
    return torch.where(d <= 1e-12 * scale, torch.zeros_like(d), d)


def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance of every row of ``x`` to its k-th nearest other row."""
    x_sq = (x * x).sum(1)
    # the (k+1)-th smallest of a row includes the point itself at distance 0
    return torch.cat([_sq_dists(x[i:i + batch_size], x, x_sq).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(x), batch_size)])


def _inside_any_ball(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                     batch_size: int) -> float:
    c_sq = (centres * centres).sum(1)
    hits = [(_sq_dists(query[i:i + batch_size], centres, c_sq) <= radii[None, :]).any(1)
            for i in range(0, len(query), batch_size)]
    return float(torch.cat(hits).double().mean())


def precision_recall(real_feats, fake_feats, k: int = 3, batch_size: int = 1000
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls, ``k = 3``.

    A point lies in a ball when its squared distance to the centre is ``<=`` the centre's squared
    k-NN radius (the reference implementation's rule). Both sets need more than ``k`` samples.
    """
    real = torch.from_numpy(_as_2d_float64(real_feats, "real_feats"))
    fake = torch.from_numpy(_as_2d_float64(fake_feats, "fake_feats"))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1 or len(real) <= k or len(fake) <= k:
        raise ValueError(f"need k >= 1 and more than k={k} samples per set, got "
                         f"{len(real)} real and {len(fake)} fake")
    real_radii = _knn_radii(real, k, batch_size)
    fake_radii = _knn_radii(fake, k, batch_size)
    precision = _inside_any_ball(fake, real, real_radii, batch_size)
    recall = _inside_any_ball(real, fake, fake_radii, batch_size)
    return precision, recall


# --------------------------------------------------------------------------------------------
# class accuracy and the combined report
# --------------------------------------------------------------------------------------------


def class_accuracy(classifier: nn.Module, images, labels, batch_size: int = 500) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to their ``labels``."""
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    logits = _batched(classifier, classifier, images, batch_size)
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} images but {len(labels)} labels")
    return float((logits.argmax(1) == labels).double().mean())


def image_metrics(classifier: nn.Module, fake_images, fake_labels, real_images,
                  batch_size: int = 500, k: int = 3) -> dict[str, float]:
    """``fd``, ``kid``, ``precision``, ``recall`` of ``fake_images`` against ``real_images`` in the
    classifier's feature space, and ``class_accuracy`` of the fakes when ``fake_labels`` (the
    labels they were conditioned on) is not None."""
    fake = extract_features(classifier, fake_images, batch_size)
    real = extract_features(classifier, real_images, batch_size)
    precision, recall = precision_recall(real, fake, k=k)
    out = {"fd": frechet_distance(fake, real), "kid": kernel_distance(fake, real),
           "precision": precision, "recall": recall}
    if fake_labels is not None:
        out["class_accuracy"] = class_accuracy(classifier, fake_images, fake_labels, batch_size)
    return out


def real_floor(classifier: nn.Module, train_images, test_images, n: int = 10_000,
               train_labels=None, batch_size: int = 500, k: int = 3, seed: int = 0
               ) -> dict[str, float]:
    """The metrics of a perfect generator: ``n`` real training images (a seeded random subset)
    in the role of the samples, scored by :func:`image_metrics` against the first ``n`` test
    images. Keys carry a ``floor_`` prefix (``floor_fd``, ``floor_kid``, ``floor_precision``,
    ``floor_recall``, and ``floor_class_accuracy`` when ``train_labels`` is given). Compare a
    model's metrics with the floor at the same ``n``."""
    train_images = torch.as_tensor(train_images)
    test_images = torch.as_tensor(test_images)
    n_train = min(n, len(train_images))
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(
        len(train_images), size=n_train, replace=False)))
    labels = None if train_labels is None else torch.as_tensor(train_labels)[idx]
    metrics = image_metrics(classifier, train_images[idx], labels, test_images[:n],
                            batch_size=batch_size, k=k)
    return {f"floor_{key}": value for key, value in metrics.items()}
