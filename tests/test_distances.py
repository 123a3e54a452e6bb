import numpy as np
import pytest

from scanner import distances


def naive_tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int) -> float:
    a, b = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    size = a.shape[0] // tiles
    worst = 0.0
    for i in range(tiles):
        for j in range(tiles):
            ta = a[i * size:(i + 1) * size, j * size:(j + 1) * size]
            tb = b[i * size:(i + 1) * size, j * size:(j + 1) * size]
            worst = max(worst, np.sqrt(np.mean((ta - tb) ** 2)))
    return worst


def test_tiled_l2_matches_a_loop_over_tiles_and_sees_local_changes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    pairs = np.array([[0, 1], [2, 3], [4, 5], [1, 1]])
    got = distances.pairwise_tiled_l2(images, pairs, tiles=4)
    want = [naive_tiled_l2(images[a], images[b], 4) for a, b in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # a change confined to one tile: small on average, large for the tiled distance
    base = np.full((32, 32, 3), 128, np.uint8)
    patched = base.copy()
    patched[:8, :8] = 255
    assert distances.normalized_l2(base, patched) == pytest.approx((127 / 255) / 4, rel=1e-4)
    assert distances.tiled_l2(base, patched) == pytest.approx(127 / 255, rel=1e-4)


def test_grid_must_divide_the_image():
    with pytest.raises(ValueError, match="not divisible"):
        distances.tiled_l2(np.zeros((30, 30, 3), np.uint8), np.zeros((30, 30, 3), np.uint8), tiles=4)


def test_anchored_l2_is_relative_to_the_generations_neighbours():
    target = np.zeros((8, 8, 3), np.float32)
    generated = target + 0.01
    neighbours = np.stack([target + 0.5, target + 0.7])
    assert distances.anchored_l2(generated, target, neighbours, alpha=0.5) == pytest.approx(0.01 / (0.5 * 0.59), rel=1e-4)


def test_hamming_counts_differing_bits_of_unsigned_hashes():
    a = np.array([0, 2**64 - 1, 0b1011], dtype=np.uint64)
    b = np.array([0, 0, 0b0001], dtype=np.uint64)
    assert distances.hamming(a, b).tolist() == [0, 64, 2]
