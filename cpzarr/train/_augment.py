"""On-the-fly augmentation of single-cell crops, with DeepProfiler's knobs.

Crops arrive scaled to [0, 1] per crop and channel, channels last ``(n, y, x, channel)``; every
transform keeps that shape and range. Randomness comes from a NumPy ``Generator`` that the data
pipeline seeds from ``(seed, epoch, batch)``, so a batch is the same whether or not the run was
interrupted and resumed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment", "minmax_scale"]


def minmax_scale(crops: np.ndarray, *, channel_axis: int = 1) -> np.ndarray:
    """Scale each crop's each channel to [0, 1] by its own minimum and maximum.

    The same per-crop, per-channel min–max scaling ``cpzarr.features`` applies before a CNN, so a
    trained model sees at training time what it sees when profiling. A constant channel
    becomes 0.

    Parameters
    ----------
    crops : ndarray (cell, channel, y, x)
        Any numeric dtype.
    channel_axis : int
        Axis of the channels; the reduction runs over every other axis except the first.

    Returns
    -------
    ndarray of float32, same shape

    Examples
    --------
    >>> minmax_scale(np.array([[[[2, 4], [6, 10]]]]))[0, 0]
    array([[0.  , 0.25],
           [0.5 , 1.  ]], dtype=float32)
    """
    crops = np.asarray(crops)
    axes = tuple(a for a in range(1, crops.ndim) if a != channel_axis % crops.ndim)
    # Extremes in the stored dtype (cheaper than after conversion), then one scaling pass.
    low = crops.min(axis=axes, keepdims=True).astype(np.float32)
    span = crops.max(axis=axes, keepdims=True).astype(np.float32) - low
    scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    return ((crops.astype(np.float32) - low) * scale).astype(np.float32, copy=False)


def _resize_bilinear(patch: np.ndarray, size: int) -> np.ndarray:
    """Resize a (y, x, channel) patch to (size, size, channel), pixel centres aligned."""
    h, w = patch.shape[:2]
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = np.clip(ys - y0, 0, 1)[:, None, None]
    wx = np.clip(xs - x0, 0, 1)[None, :, None]
    top = patch[y0][:, x0] * (1 - wx) + patch[y0][:, x1] * wx
    bottom = patch[y1][:, x0] * (1 - wx) + patch[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(patch.dtype)


def augment(
    crops: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_probability: float = 0.5,
    crop_fraction: tuple[float, float] = (0.8, 1.0),
    brightness: float = 0.1,
    contrast: tuple[float, float] = (0.8, 1.2),
) -> np.ndarray:
    """Randomly crop, flip, rotate and change brightness and contrast of each crop.

    Per crop, independently: with probability ``crop_probability`` a random square of
    ``crop_fraction`` (80–100 %) of the side is cut out and resized back (bilinear); a horizontal
    flip with probability 0.5; a rotation by a random multiple of 90°; brightness shifted by a
    uniform offset in ``±brightness`` (in units of the [0, 1] range, so ±10 %); contrast scaled
    about each channel's mean by a factor uniform in ``contrast``; finally clipped to [0, 1].

    Parameters
    ----------
    crops : ndarray (cell, y, x, channel), float32 in [0, 1]
        Square crops, channels last.
    rng : numpy.random.Generator
        Source of randomness.
    crop_probability, crop_fraction, brightness, contrast
        DeepProfiler's settings by default.

    Returns
    -------
    ndarray, same shape and dtype, values in [0, 1]

    Examples
    --------
    >>> x = np.random.default_rng(0).random((4, 32, 32, 5), dtype=np.float32)
    >>> augment(x, np.random.default_rng(1)).shape
    (4, 32, 32, 5)
    """
    crops = np.asarray(crops, dtype=np.float32)
    n, size = crops.shape[0], crops.shape[1]
    out = np.empty_like(crops)
    for i in range(n):
        crop = crops[i]
        if rng.random() < crop_probability:
            side = max(1, int(round(size * rng.uniform(*crop_fraction))))
            y0, x0 = rng.integers(0, size - side + 1, size=2)
            crop = _resize_bilinear(crop[y0 : y0 + side, x0 : x0 + side], size)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = np.rot90(crop, k=int(rng.integers(4)), axes=(0, 1))
    mean = out.mean(axis=(1, 2), keepdims=True)
    factor = rng.uniform(*contrast, size=(n, 1, 1, crops.shape[-1])).astype(np.float32)
    shift = rng.uniform(-brightness, brightness, size=(n, 1, 1, 1)).astype(np.float32)
    out -= mean
    out *= factor
    out += mean + shift
    return np.clip(out, 0.0, 1.0, out=out)
