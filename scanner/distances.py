"""Image distances, one definition each (pure numpy).

Images are float arrays in [0, 1] of shape [..., H, W, C] (uint8 inputs are scaled).
- normalized l2: ``||a - b||_2 / sqrt(d)``, the root mean square difference;
- tiled l2 (Carlini et al. 2023): the same grid of tiles on both images, each tile's
  normalized l2, and the maximum over tiles: two images are close only if close everywhere;
- anchored l2 (Carlini et al., CIFAR-10): ``l2(x_hat, x) / (alpha * mean l2 of x_hat to its
  n nearest training items)``; the anchor set is the *generation's* nearest neighbours;
- Hamming distance between 64-bit perceptual hashes.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TILES = 4


def as_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]; float images are passed through as float32."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def normalized_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root mean square difference over the last three axes (broadcasts over leading axes)."""
    difference = as_unit(a) - as_unit(b)
    return np.sqrt(np.mean(difference * difference, axis=(-3, -2, -1)))


def tile_grid(images: np.ndarray, tiles: int = DEFAULT_TILES) -> np.ndarray:
    """[..., H, W, C] -> [..., tiles*tiles, H/tiles * W/tiles * C]: each row one tile's pixels."""
    images = as_unit(images)
    *lead, height, width, channels = images.shape
    if height % tiles or width % tiles:
        raise ValueError(f"image size {height}x{width} is not divisible into a {tiles}x{tiles} grid")
    th, tw = height // tiles, width // tiles
    grid = images.reshape(*lead, tiles, th, tiles, tw, channels)
    grid = np.moveaxis(grid, -4, -3)  # [..., tiles, tiles, th, tw, C]
    return grid.reshape(*lead, tiles * tiles, th * tw * channels)


def tiles_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tiled l2 of images already cut into tiles (``tile_grid``): tile an image set once and
    compare it with many."""
    difference = a - b
    return np.sqrt(np.mean(difference * difference, axis=-1)).max(axis=-1)


def tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int = DEFAULT_TILES) -> np.ndarray:
    """Maximum over a tiles x tiles grid of each tile's normalized l2."""
    return tiles_l2(tile_grid(a, tiles), tile_grid(b, tiles))


def pairwise_tiled_l2(images: np.ndarray, pairs: np.ndarray, tiles: int = DEFAULT_TILES,
                      block: int = 4096) -> np.ndarray:
    """Tiled l2 for the given index pairs [P, 2] of one image set, streamed in blocks."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.float32)
    grid = tile_grid(images, tiles)
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), block):
        chunk = pairs[start:start + block]
        out[start:start + block] = tiles_l2(grid[chunk[:, 0]], grid[chunk[:, 1]])
    return out


def anchored_l2(generated: np.ndarray, target: np.ndarray, neighbours: np.ndarray, alpha: float = 0.5) -> float:
    """Carlini's relative distance of a generation to a training image.

    ``neighbours`` are the generation's n nearest training images (the anchor set, [n, H, W, C]);
    below 1 the generation is much closer to ``target`` than to the rest of the training set.
    """
    return anchored(float(normalized_l2(generated, target)), float(np.mean(normalized_l2(generated[None], neighbours))), alpha)


def anchored(distance: float, anchor: float, alpha: float = 0.5) -> float:
    """``distance`` relative to ``alpha`` times the anchor distance (0 when the anchor is 0: a
    generation identical to its whole anchor set is no evidence of one item)."""
    return distance / (alpha * anchor) if anchor > 0 else 0.0


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bit differences between 64-bit hashes (unsigned integers), elementwise."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)
