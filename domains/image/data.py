"""MNIST from the original IDX files (the layout of torchvision's ``MNIST/raw/``).

``data_dir`` holds the four files, gzipped or not::

    train-images-idx3-ubyte(.gz)   60,000 x 28 x 28 uint8, magic 2051
    train-labels-idx1-ubyte(.gz)   60,000 uint8 labels 0..9, magic 2049
    t10k-images-idx3-ubyte(.gz)    10,000 images
    t10k-labels-idx1-ubyte(.gz)    10,000 labels

An IDX file is a big-endian header -- two zero bytes, a type byte (0x08 = unsigned byte), the
number of dimensions ``d`` -- followed by ``d`` big-endian int32 sizes and the raw data. So the
magic number of the image files reads 0x00000803 = 2051 and that of the label files 2049.

Parsed splits are cached per process (keyed by the resolved file paths, their sizes and
modification times); :func:`load_mnist` hands out fresh tensors, so callers may modify them.
"""
from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from core.data import TensorData
from core.errors import MissingFileError

__all__ = ["MNIST_FILES", "SPLITS", "find_mnist_file", "read_idx", "load_mnist",
           "mnist_tensor_data", "to_unit_range", "to_uint8"]

SPLITS = ("train", "test")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_EXPECTED_COUNT = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
_WHERE_TO_GET = (
    "get the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), for example from an existing "
    "torchvision download (its MNIST/raw folder), and put them in data_dir"
)


def find_mnist_file(data_dir, name: str) -> Path:
    """``data_dir/name.gz`` or ``data_dir/name``, whichever exists (gzip preferred)."""
    data_dir = Path(data_dir).expanduser()
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"MNIST file '{name}.gz' (or '{name}') not found in {data_dir}: {_WHERE_TO_GET}"
    )


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file of unsigned bytes into a uint8 array of the shape its header gives.

    Raises ValueError, naming the file, for a wrong magic number, a non-ubyte type, a short
    header or a data section whose length does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    magic = int(np.frombuffer(raw, dtype=">u4", count=1)[0])
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: wrong IDX magic number {magic}, expected {expected_magic}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#010x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        problem = "truncated" if got < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX data {problem}: header says shape {shape} = {expected} bytes, "
            f"file holds {got}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_cached(image_key: tuple, label_key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    image_path, label_path = Path(image_key[0]), Path(label_key[0])
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC)
    if images.ndim != 3:
        raise ValueError(f"{image_path}: expected 3 dimensions [N, rows, cols], got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{label_path}: expected 1 dimension [N], got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"image/label count mismatch: {image_path.name} holds {len(images)} images, "
            f"{label_path.name} holds {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: label {int(labels.max())} outside 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load_mnist(data_dir, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[N, 28, 28]`` and labels long ``[N]`` of ``split`` ("train" or "test")."""
    if split not in MNIST_FILES:
        raise ValueError(f"unknown MNIST split '{split}'; choose one of {SPLITS}")
    image_name, label_name = MNIST_FILES[split]
    image_path = find_mnist_file(data_dir, image_name)
    label_path = find_mnist_file(data_dir, label_name)
    images, labels = _load_cached(_file_key(image_path), _file_key(label_path))
    return images.clone(), labels.clone()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 pixels 0..255 (clamped, rounded)."""
    return ((x.detach().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def mnist_tensor_data(data_dir, split: str = "train", limit: int | None = None) -> TensorData:
    """MNIST as ``TensorData(x=[N, 1, 28, 28] float in [-1, 1], cond=labels)``.

    ``limit`` keeps the first ``limit`` examples of the split's file order.
    """
    images, labels = load_mnist(data_dir, split)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit}")
        images, labels = images[:limit], labels[:limit]
    return TensorData(x=to_unit_range(images).unsqueeze(1), cond=labels)
