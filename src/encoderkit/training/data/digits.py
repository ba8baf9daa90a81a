"""The 8x8 handwritten digits bundled with scikit-learn, and the user's own digit images.

``sklearn.datasets.load_digits``: 1,797 images from the UCI "Optical Recognition of
Handwritten Digits" set, each a 32x32 bitmap of ink counted over non-overlapping 4x4 blocks, so
pixels are 0..16 with bright = ink. ``read_digit_image`` brings any picture of a digit to the
same form: grayscale, bright ink on black, area-averaged (box filter, as the blocks were) down to
8x8, and scaled so the brightest pixel is 1. Images are read and written with Pillow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from encoderkit.utils.files import atomic_write

IMAGE_SIZE = 8
_WIDE_GRAY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16/32-bit gray: RGBA/L would clip at 255


class DigitsSplit(NamedTuple):
    """Train and test parts: images (N, 1, 8, 8) float32 in [0, 1], labels (N,) int64 0..9."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits, split once by a seeded, stratified shuffle.

    The test part has ``ceil(test_fraction * 1797)`` images (360 by default, 1,437 left to
    train), every class in the same proportion in both parts up to rounding; the same arguments
    give the same split. Pixels are the 0..16 counts divided by 16.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError(
            "load_digits_split needs scikit-learn (pip install scikit-learn), which bundles the "
            "digits data"
        ) from e
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (N, 8, 8), 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    n, n_classes = len(labels), len(np.unique(labels))
    n_test = math.ceil(round(test_fraction * n, 9)) if 0 < test_fraction < 1 else 0
    if not n_classes <= n_test <= n - n_classes:
        raise ValueError(
            f"test_fraction must leave at least {n_classes} images (one per class) in each part "
            f"of the {n}, i.e. lie in about [{n_classes / n:.4f}, {1 - n_classes / n:.4f}], "
            f"got {test_fraction}"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=n_test, random_state=seed, stratify=labels
    )
    return DigitsSplit(
        torch.from_numpy(x_train[:, None]),  # (N, 8, 8) -> (N, 1, 8, 8)
        torch.from_numpy(y_train),
        torch.from_numpy(x_test[:, None]),
        torch.from_numpy(y_test),
    )


def read_digit_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """A picture of one digit as (1, 8, 8) float32 in [0, 1], bright ink on black.

    Any format Pillow reads. Converted to grayscale (ITU-R 601 luma; transparent pixels count as
    white paper), inverted when it looks like dark ink on light paper (mean > 0.5), area-averaged
    to 8x8 and scaled so its brightest pixel is 1 (a blank image stays 0). A missing file raises
    ``FileNotFoundError``, an unreadable or empty (0 pixels wide or high) one ``ValueError``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no image file at {path}")
    if not path.is_file():
        raise ValueError(f"expected an image file at {path}, found a directory or other non-file")
    # OSError covers PIL.UnidentifiedImageError and truncated data; Pillow raises SyntaxError for
    # some malformed headers, ValueError for some bad pixel data
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated or corrupt file fails here
            gray = _to_gray(img)
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from e
    if gray.size == 0:  # nothing to average: numpy would warn, and the result be a blank image
        height, width = gray.shape
        raise ValueError(
            f"expected an image of at least 1 x 1 pixels in {path}, got {width} x {height}"
        )
    if gray.mean() > 0.5:  # dark ink on light paper -> bright ink on black, as in the data set
        gray = 1.0 - gray
    box = Image.Resampling.BOX  # area average, as UCI's 4x4 blocks
    small = Image.fromarray(gray, mode="F").resize((IMAGE_SIZE, IMAGE_SIZE), box)
    pixels = np.asarray(small, dtype=np.float32)
    peak = pixels.max()
    if peak > 1e-6:
        pixels = pixels / peak
    return torch.from_numpy(np.clip(pixels, 0.0, 1.0))[None]  # (1, 8, 8)


def _to_gray(img: Image.Image) -> np.ndarray:
    """(H, W) float32 luma in [0, 1], transparent parts composited over white paper."""
    if img.mode in _WIDE_GRAY:
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
    paper = Image.new("RGBA", img.size, "white")
    gray = Image.alpha_composite(paper, img.convert("RGBA")).convert("L")
    return np.asarray(gray, dtype=np.float32) / 255.0


def write_digit_image(image: torch.Tensor, path: str | os.PathLike[str], scale: int = 8) -> Path:
    """Write a (1, 8, 8) or (8, 8) image in [0, 1] as an 8-bit grayscale PNG, atomically.

    Bright ink on black, each pixel a ``scale`` x ``scale`` square (nearest neighbour), values
    rounded to 1/255. ``read_digit_image`` reads it back within that rounding, after its own
    rescaling to a maximum of 1 (and as long as the image is mostly dark: mean <= 0.5).
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 2 or image.numel() == 0:
        raise ValueError(f"image must have shape (1, H, W) or (H, W), got {tuple(image.shape)}")
    if image.is_complex() or not (image.is_floating_point() or image.dtype == torch.bool):
        raise TypeError(f"image must hold floats in [0, 1], got dtype {image.dtype}")
    pixels = image.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise ValueError(
            f"image values must be finite and in [0, 1], got min {pixels.min()} and max "
            f"{pixels.max()}"
        )
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"write_digit_image writes PNG; expected a path ending in .png, got {path}"
        )
    levels = np.rint(pixels * 255).astype(np.uint8)
    height, width = levels.shape
    img = Image.fromarray(levels, mode="L").resize(
        (width * scale, height * scale), Image.Resampling.NEAREST
    )
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
