"""The TensorFlow 1 image ops that DeepSpeech's spectrogram augmentations call, in numpy float32.

`resize_bilinear` and `resize_bicubic` are tf.compat.v1.image.resize_bilinear / resize_bicubic with their defaults
(align_corners=False, half_pixel_centers=False: the "legacy" source position out * in_size / out_size, bicubic with
TF's 1024-entry table of Keys' kernel at a = -0.75), as tensorflow/core/kernels/image/resize_*_op.cc compute them,
in their order of float32 operations. `dense_image_warp` is tf.contrib.image.dense_image_warp (bilinear lookup of
each pixel at its position minus the flow, clamped to the image). tests/test_augment.py compares the resizes with
TensorFlow's kernels.
"""

from __future__ import annotations

import functools

import numpy as np

F32 = np.float32


def _legacy_positions(in_size: int, out_size: int) -> np.ndarray:
    """Source positions of the output pixels: out * (in / out), in float32 as the kernels' LegacyScaler."""
    return np.arange(out_size, dtype=F32) * (F32(in_size) / F32(out_size))


@functools.lru_cache(maxsize=256)
def _linear(in_size: int, out_size: int):
    pos = _legacy_positions(in_size, out_size)
    floor = np.floor(pos)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    return lower, upper, (pos - floor).astype(F32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """ResizeBilinear of a [H, W] float32 image to [height, width]."""
    image = np.asarray(image, F32)
    y0, y1, ly = _linear(image.shape[0], height)
    x0, x1, lx = _linear(image.shape[1], width)
    top, bottom = image[y0], image[y1]
    top_left, top_right = top[:, x0], top[:, x1]
    bottom_left, bottom_right = bottom[:, x0], bottom[:, x1]
    top = top_left + (top_right - top_left) * lx
    bottom = bottom_left + (bottom_right - bottom_left) * lx
    return top + (bottom - top) * ly[:, None]


TABLE = 1024


@functools.lru_cache(maxsize=1)
def _cubic_table() -> np.ndarray:
    """InitCoeffsTable(-0.75): float32 [TABLE + 1, 2], computed in double like the kernel."""
    a = float(F32(-0.75))
    table = np.empty((TABLE + 1, 2), F32)
    for i in range(TABLE + 1):
        x = float(F32(i * 1.0 / TABLE))
        table[i, 0] = ((a + 2) * x - (a + 3)) * x * x + 1
        x = float(F32(x + 1.0))
        table[i, 1] = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return table


@functools.lru_cache(maxsize=256)
def _cubic(in_size: int, out_size: int):
    """Per output pixel: the 4 source indices (clamped) and weights, GetWeightsAndIndices<LegacyScaler, false>."""
    pos = _legacy_positions(in_size, out_size)
    loc = np.floor(pos).astype(np.int64)
    offset = np.rint((pos - loc.astype(F32)) * F32(TABLE)).astype(np.int64)  # lrintf: half to even
    table = _cubic_table()
    weights = np.stack([table[offset, 1], table[offset, 0], table[TABLE - offset, 0], table[TABLE - offset, 1]])
    indices = np.clip(loc + np.arange(-1, 3)[:, None], 0, in_size - 1)
    return indices, weights


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """ResizeBicubic of a [H, W, C] float32 image to [height, width, C]: rows first, then columns."""
    image = np.asarray(image, F32)
    iy, wy = _cubic(image.shape[0], height)
    ix, wx = _cubic(image.shape[1], width)
    rows = image[iy[0]] * wy[0][:, None, None]
    for k in range(1, 4):
        rows = rows + image[iy[k]] * wy[k][:, None, None]
    out = rows[:, ix[0]] * wx[0][None, :, None]
    for k in range(1, 4):
        out = out + rows[:, ix[k]] * wx[k][None, :, None]
    return out


def dense_image_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """out[y, x] = image at (y - flow[y, x, 0], x - flow[y, x, 1]), bilinear, clamped to the [H, W] image
    (H and W at least 2)."""
    image = np.asarray(image, F32)
    height, width = image.shape
    alphas, floors = [], []
    for axis, size in ((0, height), (1, width)):
        grid = np.arange(size, dtype=F32)
        query = (grid[:, None] if axis == 0 else grid[None, :]) - flow[..., axis]
        floor = np.minimum(np.maximum(F32(0), np.floor(query)), F32(size - 2))
        floors.append(floor.astype(np.int64))
        alphas.append(np.clip(query - floor, F32(0), F32(1)))
    (fy, fx), (ay, ax) = floors, alphas
    flat = image.ravel()
    base = fy * width + fx
    top_left, top_right = flat[base], flat[base + 1]
    bottom_left, bottom_right = flat[base + width], flat[base + width + 1]
    top = ax * (top_right - top_left) + top_left
    bottom = ax * (bottom_right - bottom_left) + bottom_left
    return ay * (bottom - top) + top
