"""The self-calibrating criterion: null prompts, the threshold they set, and the collapse statistic."""

import numpy as np
import pytest

from scanner import cluster
from scanner.calibration import NULL_SOURCE, null_prompts, null_threshold
from scanner.config import ClusterConfig
from scanner.generate import Prompt


def test_null_prompts_recombine_the_audit_words_and_never_repeat_an_audit_prompt():
    audit = [Prompt.from_text(t) for t in ("two red circles at the left on a teal background",
                                           "one blue star at the top on a gray background",
                                           "three green bars at the center on a pink background")]
    nulls = null_prompts(audit, 20)
    assert len(nulls) == 20 and len({p.text for p in nulls}) == 20
    assert all(p.source == NULL_SOURCE for p in nulls)
    assert not {p.text for p in nulls} & {p.text for p in audit}
    vocabulary = {w for p in audit for w in p.text.split()}
    assert all(set(p.text.split()) <= vocabulary for p in nulls)
    assert [p.text for p in null_prompts(audit, 20)] == [p.text for p in nulls]  # the same scan draws the same nulls
    # a vocabulary too small for the count gives what exists, without looping forever
    assert len(null_prompts([Prompt.from_text("a b")], 10)) <= 1


def test_the_null_threshold_is_a_fraction_of_the_nulls_median_whatever_their_low_tail():
    ordinary = np.linspace(0.10, 0.20, 24)
    assert null_threshold(ordinary, 0.25) == pytest.approx(0.25 * np.median(ordinary))
    # a quarter of the nulls collapse (random caption words that still name a memorized image): the median holds
    collapsed = np.concatenate([ordinary, np.full(8, 0.01)])
    assert null_threshold(collapsed, 0.25) == pytest.approx(0.25 * np.median(collapsed))
    assert 0.25 * 0.10 < null_threshold(collapsed, 0.25) < 0.25 * 0.20
    assert null_threshold([0.2, float("inf"), 0.1], 0.5) == pytest.approx(0.1)  # too few usable generations: far
    assert np.isnan(null_threshold([float("inf")] * 3 + [0.1], 0.25))  # most nulls unusable: nothing to calibrate on
    assert np.isnan(null_threshold([], 0.25))


def test_collapse_distance_is_the_threshold_at_which_the_clique_first_forms():
    rng = np.random.default_rng(1)
    base = rng.random((32, 32, 3)).astype(np.float32)
    images = np.clip(np.stack([base + rng.normal(0, 0.01 * (1 + i), base.shape) for i in range(16)]), 0, 1).astype(np.float32)
    for k in (2, 5, 8, 12):
        distance = cluster.collapse_distance(images, k, 4)
        assert cluster.largest_clique(images, ClusterConfig(threshold=distance, min_clique=k)) >= k
        assert cluster.largest_clique(images, ClusterConfig(threshold=float(np.nextafter(np.float32(distance), np.float32(0))), min_clique=k)) < k
    assert cluster.collapse_distance(images[:3], 4, 4) == float("inf")


def test_a_fixed_threshold_needs_no_null_prompts_and_a_calibrated_one_does():
    assert ClusterConfig(threshold=0.02, null_prompts=0).threshold == 0.02
    with pytest.raises(ValueError, match="null_prompts"):
        ClusterConfig(null_prompts=0)
    with pytest.raises(ValueError, match="null_factor"):
        ClusterConfig(null_factor=0)


def test_the_statement_never_carries_the_calibration_to_a_resolution_it_was_not_measured_at(tmp_path):
    """A scan's all-clear states the criterion's measured recall, and says when the model draws at
    a size the calibration models do not (the 32-pixel demo's numbers are no evidence at 512)."""
    from scanner.calibration import MEASURED_RESOLUTIONS, criterion_statement
    from scanner.store import Store, now

    with Store(tmp_path / "scan.duckdb") as store:
        for side in (32, 512):
            run = f"r{side}"
            store.start_run(run, "scan", "model", "abc", {"cluster": {"min_clique": 5, "null_factor": 0.3}}, {})
            store.insert("prompts", [{"run_id": run, "prompt_id": "p", "text": "a cat", "source": None, "source_item_id": None}])
            store.insert("generations", [{"run_id": run, "generation_id": f"g{i}", "prompt_id": "p", "seed": i,
                                          "num_inference_steps": 4, "guidance_scale": 5.0, "scheduler": "DDIM", "height": side,
                                          "width": side, "batch_size": 4, "status": "ok", "image_path": None,
                                          "created_at": now()} for i in range(16)])
        small, large = criterion_statement(store, "r32"), criterion_statement(store, "r512")
    assert small.resolution == 32 in MEASURED_RESOLUTIONS and large.resolution == 512
    assert not any("pixel" in line for line in small.lines(found_nothing=True))
    warning = [line for line in large.lines(found_nothing=True) if "512-pixel" in line]
    assert warning and "no evidence at 512" in warning[0]
    assert any("does not show that nothing is memorized" in line for line in large.lines(found_nothing=True))
