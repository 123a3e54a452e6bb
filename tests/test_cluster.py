import itertools
import json

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
    cliques = cluster.find_groups(images, ClusterConfig(threshold=0.08, min_clique=5))
    assert len(cliques) == 1 and set(cliques[0].members) == truth
    assert cliques[0].medoid in truth and cliques[0].max_distance <= 0.08
    noise_only, _ = planted(rng, n_random=16, copies=0, noise=0)
    assert cluster.find_groups(noise_only, ClusterConfig(threshold=0.08, min_clique=2)) == []


def test_a_chain_of_small_steps_is_not_one_clique():
    # each image differs from the next by a little, from the first to the last by a lot:
    # connected components would chain them all, the clique criterion must not
    steps = [np.full((32, 32, 3), 40 + 12 * i, np.uint8) for i in range(8)]
    cliques = cluster.find_groups(np.stack(steps), ClusterConfig(threshold=0.1, min_clique=3))
    assert all(len(c.members) <= 3 for c in cliques)
    assert all(max(c.members) - min(c.members) <= 2 for c in cliques)


def test_faiss_proposed_edges_give_the_same_cliques_as_all_pairs():
    rng = np.random.default_rng(3)
    groups = []
    images, embeddings = [], []
    for group in range(6):
        source = rng.integers(0, 256, size=(32, 32, 3)).astype(np.float32)
        direction = rng.normal(size=16)
        copies = int(rng.integers(5, 12))
        groups.append(set(range(len(images), len(images) + copies)))
        for _ in range(copies):
            images.append(np.clip(source + rng.normal(0, 3, source.shape), 0, 255))
            embeddings.append(direction + rng.normal(0, 0.05, 16))
    for _ in range(120):
        images.append(rng.integers(0, 256, size=(32, 32, 3)).astype(np.float32))
        embeddings.append(rng.normal(size=16))
    images = np.stack(images).astype(np.uint8)
    embeddings = np.stack(embeddings).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    from scanner.features import perceptual_hashes
    phashes = np.array([perceptual_hashes(image)[0] for image in images], dtype=np.uint64)

    exact = ClusterConfig(threshold=0.08, min_clique=5, all_pairs_limit=10_000)
    proposed = ClusterConfig(threshold=0.08, min_clique=5, all_pairs_limit=0, min_cosine=0.9, max_hamming=12)
    assert len(cluster.propose_pairs(len(images), proposed, embeddings, phashes)) < len(cluster.all_pairs(len(images))) / 20
    by_all_pairs = cluster.find_groups(images, exact)
    by_faiss = cluster.find_groups(images, proposed, embeddings, phashes)
    assert [set(c.members) for c in by_faiss] == [set(c.members) for c in by_all_pairs]
    assert sorted(map(frozenset, (set(c.members) for c in by_faiss)), key=min) == sorted(map(frozenset, groups), key=min)


def test_dense_component_criterion_requires_density():
    # a star graph is connected but sparse: no dense component; a clique is dense
    star = [set() for _ in range(6)]
    for leaf in range(1, 6):
        star[0].add(leaf)
        star[leaf].add(0)
    assert cluster.dense_components(star, set(range(6)), min_size=3, min_density=0.5) == []
    full = [set(range(5)) - {i} for i in range(5)]
    assert cluster.dense_components(full, set(range(5)), min_size=3, min_density=0.5) == [[0, 1, 2, 3, 4]]


def test_verdict_checkpoints_look_where_a_verdict_can_first_settle_then_ever_more_sparsely():
    assert cluster.verdict_checkpoints(16, 8) == list(range(8, 17))
    assert cluster.verdict_checkpoints(10, 8) == list(range(3, 11))  # 3 unlike images: 1 + 7 more < 8
    # the calibrated criterion's anchor seeds are drawn for every prompt before the first look
    assert cluster.verdict_checkpoints(32, 5, first=8)[:3] == [8, 9, 10] and cluster.verdict_checkpoints(4, 2, first=8) == [4]
    long = cluster.verdict_checkpoints(500, 10)
    gaps = np.diff(long)
    assert long[0] == 10 and long[-1] == 500 and np.all(gaps >= 1) and len(long) < 50
    assert all(gap <= max(1, drawn // 8) for gap, drawn in zip(gaps, long))  # never skip more than an eighth
    # settled: a clique of min_clique is found, or cannot form even if every remaining seed joined
    assert cluster.view_verdict(8, 0, 8, 8) is True and cluster.view_verdict(1, 0, 6, 8) is False
    assert cluster.view_verdict(7, 0, 7, 8) is None and cluster.view_verdict(2, 0, 6, 8) is None
    # with a core of 8: the clique alone does not flag; a core out of reach settles it unflagged
    assert cluster.view_verdict(5, 7, 4, 5, core_size=8) is None and cluster.view_verdict(5, 8, 4, 5, core_size=8) is True
    assert cluster.view_verdict(5, 3, 4, 5, core_size=8) is False
    # over the views: flagged in one settles it, as does none able to flag
    assert cluster.verdict_settled([None, True]) and cluster.verdict_settled([False, False])
    assert not cluster.verdict_settled([False, None])


def _store_generations(store, prompt_id: str, images: np.ndarray, null: bool) -> None:
    from PIL import Image

    from scanner.calibration import NULL_SOURCE
    from scanner.store import now

    store.insert("prompts", [{"run_id": "r", "prompt_id": prompt_id, "text": prompt_id, "source": NULL_SOURCE if null else "test"}])
    rows = []
    for seed, image in enumerate(images):
        path = f"{prompt_id}-{seed}.png"
        Image.fromarray(image).save(store.files_dir / path)
        rows.append({"run_id": "r", "generation_id": f"{prompt_id}-{seed}", "prompt_id": prompt_id, "seed": seed,
                     "num_inference_steps": 4, "guidance_scale": 5.0, "scheduler": "DDIM", "height": 32, "width": 32,
                     "batch_size": 8, "status": "ok", "image_path": path, "thumbnail_path": path, "phash": seed,
                     "degenerate": False, "created_at": now()})
    store.insert("generations", rows)


def test_a_layout_redrawn_under_a_colour_or_a_contrast_that_changes_per_seed_is_flagged_in_a_later_view(tmp_path):
    """The SDXL-shaped calibration model's misses (docs/CALIBRATION.md, sessions 19, 20 and 30): every seed draws
    the same layout, shifted to another colour, or at another contrast. As drawn, no five seeds are within the
    threshold the null prompts calibrate. Centred on their own mean colour the first are one image; in grey,
    each standardized, so are the second (a contrast is not a colour shift: centring leaves them apart). The null
    prompts calibrate each view. With both views off, neither prompt is flagged."""
    from scanner.calibration import criterion_statement
    from scanner.store import Store

    rng = np.random.default_rng(0)
    pattern = rng.uniform(0.25, 0.75, (32, 32, 3))
    shifts = np.array([[x, y, z] for x in (-0.2, 0.2) for y in (-0.2, 0.2) for z in (-0.2, 0.2)])  # 8 colours apart
    redrawn = np.stack([np.clip(pattern + shift + rng.normal(0, 0.01, pattern.shape), 0, 1) for shift in shifts])
    blocks = np.kron(rng.integers(0, 2, (8, 8)), np.ones((4, 4)))[..., None].repeat(3, axis=-1)  # a layout of 0 and 1
    contrasts = np.linspace(0.2, 0.9, 8)
    recontrasted = np.stack([0.5 + contrast * (blocks - 0.5) + rng.normal(0, 0.01, blocks.shape) for contrast in contrasts])
    as_bytes = lambda images: (np.clip(images, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    with Store(tmp_path / "scan.duckdb") as store:
        store.start_run("r", "scan", "model", "abc", {}, {})
        store.files_dir.mkdir()
        _store_generations(store, "redrawn", as_bytes(redrawn), null=False)
        _store_generations(store, "recontrasted", as_bytes(recontrasted), null=False)
        for prompt in range(3):
            _store_generations(store, f"ordinary-{prompt}", as_bytes(rng.uniform(0.2, 0.8, (8, 32, 32, 3))), null=False)
        for prompt in range(12):
            _store_generations(store, f"null-{prompt}", as_bytes(rng.uniform(0.2, 0.8, (8, 32, 32, 3))), null=True)

        def flagged(settings: ClusterConfig) -> list[tuple]:
            cluster.cluster_run(store, "r", settings)
            return sorted(store.execute("SELECT c.prompt_id, cl.size, cl.distance, c.reason FROM candidates c "
                                        "JOIN clusters cl USING (run_id, cluster_id) WHERE c.run_id = 'r'"))

        plain_only = flagged(ClusterConfig(colour_centred=False, grey_standardized=False))
        centred_only = flagged(ClusterConfig(grey_standardized=False))
        every_view = flagged(ClusterConfig())
        statement = " ".join(criterion_statement(store, "r").lines(found_nothing=False))
    assert plain_only == []
    assert [(prompt, size, distance) for prompt, size, distance, _ in centred_only] == [("redrawn", 8, "tiled_l2:colour_centred")]
    assert [(prompt, size, distance) for prompt, size, distance, _ in every_view] == [
        ("recontrasted", 8, "tiled_l2:grey_standardized"), ("redrawn", 8, "tiled_l2:colour_centred")]
    assert every_view[0][3].endswith("on grey images, each standardized") and every_view[1][3].endswith("on colour-centred images")
    assert "centred on its own mean colour" in statement and "then on them in grey, each standardized" in statement
    assert "(0.495 x the nulls' reference there)" in statement and "in any view" in statement


def test_a_tight_clique_without_a_core_is_not_flagged_and_a_memorized_prompt_is(tmp_path):
    """The core (docs/CALIBRATION.md, session 25): an ordinary prompt can draw 5 near-identical images by chance or
    because its model draws its background alike; a memorized one reproduces its image in most seeds. Both have a
    clique of 5 within the threshold the null prompts calibrate; only the memorized one has half its 16 seeds
    agreeing within the core's. With ``core_share=0`` both are flagged."""
    from scanner.store import Store

    rng = np.random.default_rng(1)
    noise = lambda count: rng.uniform(0.2, 0.8, (count, 32, 32, 3))  # noqa: E731
    copies = lambda count: np.clip(rng.uniform(0.2, 0.8, (32, 32, 3)) + rng.normal(0, 0.01, (count, 32, 32, 3)), 0, 1)  # noqa: E731
    as_bytes = lambda images: (np.asarray(images) * 255).round().astype(np.uint8)  # noqa: E731
    with Store(tmp_path / "scan.duckdb") as store:
        store.start_run("r", "scan", "model", "abc", {}, {})
        store.files_dir.mkdir()
        _store_generations(store, "memorized", as_bytes(np.concatenate([copies(12), noise(4)])), null=False)
        _store_generations(store, "five-alike", as_bytes(np.concatenate([copies(5), noise(11)])), null=False)
        for prompt in range(3):
            _store_generations(store, f"ordinary-{prompt}", as_bytes(noise(16)), null=False)
        for prompt in range(12):
            _store_generations(store, f"null-{prompt}", as_bytes(noise(16)), null=True)

        def flagged(settings: ClusterConfig) -> list[str]:
            cluster.cluster_run(store, "r", settings)
            return sorted(row[0] for row in store.execute("SELECT prompt_id FROM candidates WHERE run_id = 'r'"))

        assert flagged(ClusterConfig(colour_centred=False, grey_standardized=False, core_share=0)) == ["five-alike", "memorized"]
        assert flagged(ClusterConfig(colour_centred=False, grey_standardized=False)) == ["memorized"]
        assert flagged(ClusterConfig()) == ["memorized"]
        recorded = json.loads(store.execute("SELECT details FROM metrics WHERE run_id = 'r' AND metric = 'criterion_threshold'")[0][0])
    assert recorded["core_size"] == 8 and recorded["core_share"] == 0.5 and recorded["core_factor"] == 0.7
