"""Digits domain: a data-space pyramid over sklearn's 8x8 digits (scales 1, 2, 4, 8), class-conditional.

The smallest real domain: it exercises every part of the core (grid operators, scalar quantiser,
scale transformer, guidance, trainer) and trains on two CPU cores in a couple of minutes.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from core.data import check_samples
from core.grid import GridOps
from core.hookspecs import hookimpl
from core.plots import class_columns, pyplot
from domains.digits.data import load_digits_split, to_pixels


@hookimpl
def c2f_load_data(cfg, split):
    return load_digits_split(split, cfg.domain.test_size, cfg.domain.split_seed)


@hookimpl
def c2f_condition(cfg):
    return {"num_classes": 10}


@hookimpl
def c2f_scale_ops(cfg):
    return GridOps(list(cfg.domain.scales), up_mode=cfg.domain.up_mode)


@lru_cache(maxsize=4)
def _classifier(test_size: int, split_seed: int):
    """Logistic regression fitted on the real training digits (the judge of class accuracy)."""
    from sklearn.linear_model import LogisticRegression

    train = load_digits_split("train", test_size, split_seed)
    test = load_digits_split("test", test_size, split_seed)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(to_pixels(train.x), train.cond.numpy())
    return clf, float(clf.score(to_pixels(test.x), test.cond.numpy()))


@hookimpl
def c2f_evaluate(cfg, samples, run_dir):
    x, cond = samples["samples"], samples["cond"]
    check_samples(x, (1, 8, 8), "digit")
    clf, test_acc = _classifier(cfg.domain.test_size, cfg.domain.split_seed)
    pixels = to_pixels(x)
    predicted = clf.predict(pixels)
    unique = len(np.unique(np.round(pixels).astype(np.int8), axis=0)) / len(pixels)
    return {"class_accuracy": float((predicted == cond.numpy()).mean()),
            "classifier_test_accuracy": test_acc,
            "unique_fraction": float(unique)}


@hookimpl
def c2f_visualize(cfg, samples, path):
    plt = pyplot()
    x, cond = samples["samples"], samples["cond"]
    classes, per_class = class_columns(cond)
    fig, axes = plt.subplots(per_class, len(classes), figsize=(len(classes), per_class), squeeze=False)
    for j, c in enumerate(classes):
        imgs = x[cond == c][:per_class]
        for i in range(per_class):
            ax = axes[i][j]
            ax.imshow(imgs[i, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(c), fontsize=9)
    fig.suptitle("class-conditional samples (columns: requested class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
