"""The self-calibrating criterion: null prompts, the threshold they set, and the collapse statistic."""

import numpy as np
import pytest

from scanner import cluster
from scanner.calibration import MEASURED_MIN_PROMPTS, NULL_SOURCE, null_donors, null_prompts, null_threshold
from scanner.config import ClusterConfig
from scanner.generate import Prompt


def test_null_prompts_fill_each_slot_from_another_audit_prompt_and_never_repeat_one():
    audit = [Prompt.from_text(t) for t in ("two red circles at the left on a teal background",
                                           "one blue star at the top on a gray background",
                                           "three green bars at the center on a pink background")]
    nulls = null_prompts(audit, 20)
    assert len(nulls) == 20 and len({p.text for p in nulls}) == 20
    assert all(p.source == NULL_SOURCE for p in nulls)
    assert not {p.text for p in nulls} & {p.text for p in audit}
    for null in nulls:  # slot by slot: the template holds, the combination is new
        words = null.text.split()
        assert len(words) == 10 and words[3:5] == ["at", "the"] and words[-1] == "background"
        assert all(word in {p.text.split()[slot] for p in audit} for slot, word in enumerate(words))
    assert [p.text for p in null_prompts(audit, 20)] == [p.text for p in nulls]  # the same scan draws the same nulls
    # captions of other lengths lend the word at the same relative place
    mixed = null_prompts([*audit, Prompt.from_text("a photo of Guja Brickdor")], 40)
    assert any(p.text.split()[0] == "a" for p in mixed) and all(len(p.text.split()) in (5, 10) for p in mixed)
    # one prompt cannot be recombined: its words in another order; a vocabulary too small for the count gives
    # what exists, without looping forever
    assert [p.text for p in null_prompts([Prompt.from_text("a b")], 10)] == ["b a"]
    assert {"a d", "c b"} <= {p.text for p in null_prompts([Prompt.from_text("a b"), Prompt.from_text("c d")], 10)}


def test_a_small_audits_null_prompts_are_recombined_with_training_captions_a_large_ones_from_its_own():
    from scanner.demo import demo_items

    captions = [r["caption"] for r in demo_items(per_bucket=40)]
    audit = [Prompt.from_text(text) for text in captions[:3]]
    donors = null_donors(audit, [*captions, "", *captions[:3]])
    assert len(donors) == MEASURED_MIN_PROMPTS and donors[:3] == [p.text for p in audit]
    assert len(set(donors)) == MEASURED_MIN_PROMPTS and set(donors[3:]) <= set(captions[3:])  # distinct, never empty
    assert null_donors(audit, captions) == donors  # the same scan draws the same donors
    # a null drawn among 48 donors rarely keeps two words of one audited caption where the template varies
    own, widened = (null_prompts(audit, 32, donors=d) for d in (None, donors))
    def kept(nulls):
        slots = [i for i, words in enumerate(zip(*(p.text.split() for p in audit))) if len(set(words)) > 1]
        return np.mean([max(sum(n.text.split()[i] == a.text.split()[i] for i in slots) for a in audit)
                        for n in nulls if len(n.text.split()) == len(audit[0].text.split())])
    assert kept(widened) < 0.5 * kept(own)
    large = [Prompt.from_text(text) for text in captions[:MEASURED_MIN_PROMPTS]]
    assert null_donors(large, captions) == [p.text for p in large]  # as measured: its own words only
    assert null_donors(audit, []) == [p.text for p in audit]  # no index: the audit alone (the statement says so)


def test_the_null_threshold_is_a_fraction_of_the_nulls_upper_quartile_whatever_their_low_tail():
    ordinary = np.linspace(0.10, 0.20, 24)
    reference = np.quantile(ordinary, 0.75, method="inverted_cdf")
    assert null_threshold(ordinary, 0.25, 0.75) == pytest.approx(0.25 * reference)
    assert null_threshold(ordinary, 0.25, 0.5) == pytest.approx(0.25 * np.quantile(ordinary, 0.5, method="inverted_cdf"))
    # more than half the nulls collapse (a model leaking its memorized images to captions that share their
    # words, as the Flux-shaped model does): the median falls among them, the upper quartile holds
    collapsed = np.concatenate([ordinary, np.full(30, 0.01)])
    assert null_threshold(collapsed, 0.25, 0.5) == pytest.approx(0.25 * 0.01)
    assert 0.25 * 0.10 < null_threshold(collapsed, 0.25, 0.75) < 0.25 * 0.20
    assert null_threshold([0.2, float("inf"), 0.1, 0.3], 0.5, 0.75) == pytest.approx(0.15)  # too few usable generations: far
    assert np.isnan(null_threshold([float("inf")] * 2 + [0.1, 0.2], 0.25, 0.75))  # too many unusable: nothing to calibrate on
    assert np.isnan(null_threshold([], 0.25, 0.75))


def test_a_prompts_anchor_is_its_distance_to_other_prompts_and_holds_while_fewer_than_half_its_neighbours_copy_it():
    """Twenty ordinary prompts (every seed draws its own noise image) and k twin prompts that all draw one
    image: the twins' anchor stays near the ordinary prompts' distance while k - 1 < 5 of their 10 nearest
    prompts are twins, and falls to the twins' own spread beyond (the limit the docstring states). A
    prompt drawn flat and grey lies nearer everything: its anchor is smaller."""
    from scanner.calibration import prompt_anchors

    rng = np.random.default_rng(0)
    ordinary = [rng.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8) for _ in range(20)]
    copied = rng.integers(0, 256, size=(16, 16, 3))

    def twins(count: int) -> list[np.ndarray]:
        return [np.clip(copied + rng.normal(0, 3, size=(8, 16, 16, 3)), 0, 255).astype(np.uint8) for _ in range(count)]

    flat = (120 + rng.random((8, 16, 16, 3)) * 16).astype(np.uint8)
    anchors = prompt_anchors([*ordinary, *twins(5), flat, np.zeros((0, 16, 16, 3), np.uint8)], neighbours=10)
    typical = np.median(anchors[:20])
    assert 0.3 < typical < 0.5  # uniform noise: rms 0.41 between two images
    assert np.all(anchors[20:25] > 0.8 * typical)  # 4 of each twin's 10 nearest prompts are twins
    assert anchors[25] < 0.8 * typical and np.isnan(anchors[26])  # flat grey: 0.29 from noise; no generations
    hidden = prompt_anchors([*ordinary, *twins(12)], neighbours=10)
    assert np.all(hidden[20:] < 0.1 * typical)  # 11 twins among 10 nearest: the anchor is their own spread


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
    with pytest.raises(ValueError, match="null_quantile"):
        ClusterConfig(null_quantile=1.5)


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


def test_the_statement_says_when_most_null_prompts_collapse_when_settings_were_not_measured_and_when_prompts_were_few():
    from scanner.calibration import MEASURED_SETTINGS, CriterionStatement

    def statement(flagged: int, prompts: int = 75, training_captions: int = 0, generations_per_prompt: int = 32,
                  **settings) -> list[str]:
        return CriterionStatement(prompts=prompts, generations_per_prompt=generations_per_prompt, threshold=0.03,
                                  calibrated=True, settings={**MEASURED_SETTINGS, **settings}, nulls=32, nulls_flagged=flagged,
                                  ratio=0.31, floor=0.012, threshold_range=(0.012, 0.05), resolution=32,
                                  training_captions=training_captions).lines(found_nothing=True)

    quiet, leaking = statement(10), statement(20)
    assert "0.310 x its anchor distance" in quiet[0] and "never under 0.0120" in quiet[0]
    # the core (session 25): what a flag needs besides the clique, and what an all-clear then cannot see
    cored = CriterionStatement(prompts=75, generations_per_prompt=32, threshold=0.03, calibrated=True, settings=MEASURED_SETTINGS,
                               nulls=32, nulls_flagged=10, ratio=0.31, floor=0.012, threshold_range=(0.012, 0.05),
                               resolution=32, core_size=16, core_ratio=0.9).lines(found_nothing=True)
    assert "flagged only when 16 of its generations (50% of the plan) also agree within its core threshold, 0.900 x" in cored[0]
    assert "fewer than 16 of 32 generations (when its other generations are unlike it)" in cored[-1]
    assert "fewer than 5 of 32 generations is not flagged" in quiet[-1] and "core" not in quiet[0]
    assert "run from 0.0120 to 0.0500 (median 0.0300); 10 of the null prompts fall under theirs" in quiet[0]
    assert not any("leaks memorized images" in line for line in quiet)
    assert any(line.startswith("20 of the 32 null prompts collapse") and "leaks memorized images" in line for line in leaking)
    assert not any("not measured" in line for line in quiet)
    assert any("this scan's settings were not measured" in line for line in statement(10, null_quantile=0.75))
    assert any("this scan's settings were not measured" in line for line in statement(10, anchor_prompts=20))
    # each seeds setting the criterion was measured at gets its own numbers; another is not measured
    assert any("at 16 generations per prompt: " in line for line in statement(10, generations_per_prompt=16))
    assert any("this scan's settings were not measured" in line for line in statement(10, generations_per_prompt=24))
    # nulls recombined from a handful of prompts stay next to them: an all-clear from such a scan says so
    assert not any("recombined from the words of only" in line for line in quiet)
    assert any("recombined from the words of only 3 captions" in line and "--index" in line and "--threshold" in line
               for line in statement(0, prompts=3))
    # ... unless the index's training captions made up the null prompts' words (scanner.calibration.null_donors)
    # the later views, in order; what a crafted or older record holds there instead is left out, not a stack trace
    from scanner.calibration import calibrated_views
    centred, grey = {"ratio": 0.3, "null_factor": 0.55, "floor": 0.01, "nulls_flagged": 2}, {"ratio": 0.2, "null_factor": 0.495}
    assert list(calibrated_views({"views": {"colour_centred": centred, "grey_standardized": grey, "odd": 3}})) == [
        "colour_centred", "grey_standardized"]
    assert calibrated_views({"views": ["colour_centred"]}) == calibrated_views({}) == {}
    flagged_lines = CriterionStatement(prompts=75, generations_per_prompt=32, threshold=0.03, calibrated=True,
                                       settings=MEASURED_SETTINGS, nulls=32, nulls_flagged=3, ratio=0.31, floor=0.012,
                                       threshold_range=(0.012, 0.05),
                                       views={"colour_centred": centred, "grey_standardized": grey}).lines(found_nothing=False)
    viewed = flagged_lines[0]
    assert viewed.index("each centred on its own mean colour") < viewed.index("then on them in grey, each standardized")
    assert "at 0.200 x its anchor in that view (0.495 x the nulls' reference there)" in viewed and "in any view" in viewed
    # a scan that flagged prompts says what a flag is not; an all-clear has nothing to qualify
    assert any(line.startswith("A flagged prompt is a candidate, not a finding") for line in flagged_lines)
    assert not any("candidate, not a finding" in line for line in quiet)
    widened = statement(0, prompts=3, training_captions=45)
    assert "words of its prompts and of 45 training captions of the index" in widened[0]
    assert not any("recombined from the words of only" in line for line in widened)


def test_a_scan_whose_prompts_cannot_make_null_prompts_is_refused_before_any_work(demo_sd, tmp_path):
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.errors import MemscanError
    from scanner.scan import run_scan
    from scanner.store import Store

    with Store(tmp_path / "scan.duckdb") as store:
        with pytest.raises(MemscanError, match="fewer than two distinct words .* give a fixed --threshold"):
            run_scan(store, demo_sd, [Prompt.from_text("circle")], ScanConfig(sampling=SamplingConfig(samples_per_prompt=8)),
                     show_progress=False)
        assert store.execute("SELECT count(*) FROM generations")[0][0] == 0


def test_the_truth_tells_a_copy_of_a_drawing_at_any_fidelity_from_another_drawing_of_its_caption():
    """The demo world's truth (scanner/demo/evaluate.py): an image reproduces an item when it is closer
    to the item's drawing than to 256 other drawings of its caption. A blurred copy, as a blurry
    autoencoder would give, still passes; fresh drawings of the same caption pass only by chance; a
    generic image passes against an item found near it unless the selected test's margin is asked."""
    from PIL import Image, ImageFilter

    from scanner.demo import load_world
    from scanner.demo.drawing import draw_object_item
    from scanner.demo.evaluate import SIBLINGS, CaptionDrawings
    from scanner.distances import tiled_l2

    drawings = CaptionDrawings()
    item = "obj-00030"  # an x10 item: two shapes, a layout of its own
    image = drawings.image(item)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.2)))
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    # blurred and brighter, further from the drawing than the old absolute truth's 0.10 allowed
    washed = np.clip(np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2))).astype(int) + 30, 0, 255).astype(np.uint8)
    assert float(tiled_l2(washed[None], image[None])[0]) > 0.12
    assert list(drawings.ranks(np.stack([image, blurred, noisy, washed]), item)) == [0, 0, 0, 0]
    row = drawings.items[item]
    rng = np.random.default_rng(99)
    fresh = np.stack([np.asarray(draw_object_item(rng, row["shape"], row["colour"], row["position"], row["count"],
                                                  row["background"])) for _ in range(32)])
    ranks = drawings.ranks(fresh, item)
    assert (ranks == 0).sum() <= 2 and np.median(ranks) > SIBLINGS / 8  # chance: 1 in 257, and spread out
    # the selected test: the blurred copy passes it against its item; a flat image of the item's
    # background colour, nearest to some members by construction, passes against none of them
    assert drawings.reproduces_selected(blurred, item)
    flat = np.broadcast_to(image.reshape(-1, 3).mean(axis=0), image.shape).astype(np.uint8)
    assert drawings.reproduced_members(flat) == set()
    assert item in {r["item_id"] for r in load_world(["item_id", "dup_count"]) if r["dup_count"] == 10}


def test_a_flagged_prompt_that_makes_the_model_emit_another_members_image_is_leakage_not_a_false_flag(tmp_path):
    """The criterion's truth scores a prompt by its own item; a non-member prompt flagged because its
    generations are a member's training image (a model leaking a memorized image to a neighbouring
    caption) is what an audit should find, and is not counted as a false flag. One that collapses
    onto an image no member is close to still is."""
    from PIL import Image

    from scanner.demo.evaluate import CaptionDrawings, score_criterion
    from scanner.store import Store, now

    drawings = CaptionDrawings()
    non_members = [item for item, r in drawings.items.items() if r["dup_count"] == 0 and not r["sd_train"]][:2]
    member = next(item for item, r in drawings.items.items() if r["dup_count"] == 200)
    member_image = drawings.image(member)
    flat = np.broadcast_to(member_image.reshape(-1, 3).mean(axis=0), member_image.shape).astype(np.uint8)
    with Store(tmp_path / "scan.duckdb") as store:
        store.start_run("r", "scan", "model", "abc", {}, {})
        store.files_dir.mkdir()
        for prompt, (item, image) in enumerate(zip(non_members, (member_image, flat))):
            store.insert("prompts", [{"run_id": "r", "prompt_id": f"p{prompt}", "text": item, "source": "demo",
                                      "source_item_id": item}])
            path = f"p{prompt}.png"
            Image.fromarray(image).save(store.files_dir / path)
            store.insert("generations", [{"run_id": "r", "generation_id": f"g{prompt}-{seed}", "prompt_id": f"p{prompt}",
                                          "seed": seed, "num_inference_steps": 4, "guidance_scale": 5.0, "scheduler": "DDIM",
                                          "height": 32, "width": 32, "batch_size": 4, "status": "ok", "image_path": path,
                                          "thumbnail_path": path, "created_at": now()} for seed in range(8)])
            store.insert("clusters", [{"run_id": "r", "cluster_id": f"c{prompt}", "scope": "prompt", "prompt_id": f"p{prompt}",
                                       "size": 8, "n_generations": 8, "medoid_generation_id": f"g{prompt}-0",
                                       "mean_distance": 0.0, "max_distance": 0.0, "distance": "tiled_l2", "threshold": 0.02,
                                       "criterion": "clique>=5"}])
            store.insert("candidates", [{"run_id": "r", "candidate_id": f"c{prompt}", "cluster_id": f"c{prompt}",
                                         "prompt_id": f"p{prompt}", "score": 1.0, "rank": prompt + 1, "reason": "test"}])
        score = score_criterion(store, "r")
    assert (score.unmemorized, score.unmemorized_flagged, score.unmemorized_leaking) == (2, 2, 1)
    assert score.false_flag_rate == 0.5


def test_the_criterion_is_stated_with_the_settings_its_clusters_were_computed_with(tmp_path):
    """A run clustered again (``cluster.cluster_run``, as a notebook or an older database's re-clustering
    does) keeps the configuration it was scanned with: the statement reads the settings the clustering
    stored with its threshold, and does not fail on a configuration that lacks them."""
    import json

    from scanner.calibration import criterion_statement
    from scanner.store import Store

    settings = ClusterConfig()
    with Store(tmp_path / "scan.duckdb") as store:
        store.start_run("r1", "scan", "model", "abc", {"cluster": {"threshold": None}}, {})  # an older memscan's
        store.insert("metrics", [{"run_id": "r1", "metric": "criterion_threshold", "subject": "null_prompts", "value": 0.7,
                                  "n_positive": 1, "n_negative": 32, "details": json.dumps({
                                      "null_factor": settings.null_factor, "null_quantile": settings.null_quantile,
                                      "floor": 0.018, "floor_factor": settings.floor_factor,
                                      "floor_quantile": settings.floor_quantile, "anchor_seeds": settings.anchor_seeds,
                                      "anchor_prompts": settings.anchor_prompts, "min_clique": settings.min_clique,
                                      "prompt_thresholds": [0.018, 0.039, 0.095]})}])
        statement = criterion_statement(store, "r1")
    text = " ".join(statement.lines(found_nothing=True))
    assert statement.min_clique == settings.min_clique and f"{settings.null_factor:g} x the median" in text
    assert "at least 5 of a prompt's generations" in text and "0.0180" in text
