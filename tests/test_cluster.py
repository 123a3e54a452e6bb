import itertools

import numpy as np

from scanner import cluster
from scanner.config import ClusterConfig


def brute_force_max_clique_size(adjacency, n):
    for size in range(n, 0, -1):
        for subset in itertools.combinations(range(n), size):
            if all(b in adjacency[a] for a, b in itertools.combinations(subset, 2)):
                return size
    return 0


def test_maximum_clique_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(4, 12))
        density = rng.uniform(0.2, 0.9)
        adjacency = [set() for _ in range(n)]
        for a, b in itertools.combinations(range(n), 2):
            if rng.random() < density:
                adjacency[a].add(b)
                adjacency[b].add(a)
        clique = cluster.maximum_clique(adjacency, set(range(n)))
        assert all(b in adjacency[a] for a, b in itertools.combinations(clique, 2))
        assert len(clique) == brute_force_max_clique_size(adjacency, n)


def planted(rng, n_random: int, copies: int, noise: float) -> tuple[np.ndarray, set[int]]:
    source = rng.integers(0, 256, size=(32, 32, 3)).astype(np.float32)
    near = [np.clip(source + rng.normal(0, noise, source.shape), 0, 255) for _ in range(copies)]
    random = [rng.integers(0, 256, size=(32, 32, 3)).astype(np.float32) for _ in range(n_random)]
    images = np.stack(random[:3] + near + random[3:]).astype(np.uint8)
    return images, set(range(3, 3 + copies))


def test_planted_near_duplicates_form_one_clique_and_noise_forms_none():
    rng = np.random.default_rng(2)
    images, truth = planted(rng, n_random=10, copies=6, noise=3.0)
    cliques = cluster.find_cliques(images, ClusterConfig(threshold=0.08, min_clique=5))
    assert len(cliques) == 1 and set(cliques[0].members) == truth
    assert cliques[0].medoid in truth and cliques[0].max_distance <= 0.08
    noise_only, _ = planted(rng, n_random=16, copies=0, noise=0)
    assert cluster.find_cliques(noise_only, ClusterConfig(threshold=0.08, min_clique=2)) == []


def test_a_chain_of_small_steps_is_not_one_clique():
    # each image differs from the next by a little, from the first to the last by a lot:
    # connected components would chain them all, the clique criterion must not
    steps = [np.full((32, 32, 3), 40 + 12 * i, np.uint8) for i in range(8)]
    cliques = cluster.find_cliques(np.stack(steps), ClusterConfig(threshold=0.1, min_clique=3))
    assert all(len(c.members) <= 3 for c in cliques)
    assert all(max(c.members) - min(c.members) <= 2 for c in cliques)
