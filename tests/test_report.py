"""The HTML report: self-contained, escaped, rendered in a real headless Chromium."""

import shutil
import subprocess

import numpy as np
import pytest

from scanner import demo as demo_world
from scanner.errors import MemscanError
from scanner.report import render_report
from scanner.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html, png):
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={png.parent / 'chromium-profile'}", f"--screenshot={png}",
                    "--window-size=1200,2400", f"file://{html}"], check=True, capture_output=True, timeout=120)
    from PIL import Image

    return Image.open(png).convert("RGB")


def test_empty_database_renders_and_says_so(tmp_path):
    db = tmp_path / "empty.duckdb"
    with Store(db) as store:
        store.start_run("scan-1", "scan", "model", "abc", {"sampling": {"samples_per_prompt": 4}, "cluster": {}, "match": {}}, {})
        store.insert("prompts", [{"run_id": "scan-1", "prompt_id": "p", "text": "<script>alert(1)</script> a cat",
                                  "source": None, "source_item_id": None}])
        store.finish_run("scan-1", {"sampling_s": 1.0})
    out = tmp_path / "report.html"
    counts = render_report(db, out)
    html = out.read_text()
    assert counts["findings"] == 0 and "No findings" in html
    assert "<script>" not in html  # scraped prompts are escaped (this one is not even shown without findings)
    assert "No membership scores" in html and "No identity inference results" in html


def test_a_hostile_prompt_and_caption_are_rendered_escaped(tmp_path, finding_db):
    """Prompts and captions are scraped data: the report shows them, as text."""
    prompt, caption = "<script>alert('prompt')</script> a cat", "<img src=x onerror=alert('caption')> a dog"
    with Store(finding_db) as store:
        store.execute("UPDATE prompts SET text = ? WHERE prompt_id = 'p1'", [prompt])
        store.insert("matches", [{"run_id": "r1", "candidate_id": "c1", "index_name": "nowhere", "item_id": "i1",
                                  "item_caption": caption, "l2": 0.05, "tiled_l2": 0.04, "anchored_l2": 0.3,
                                  "anchor": "generation", "phash_hamming": 2, "clip_cosine": 0.99, "verdict": "extracted"}])
    out = tmp_path / "report.html"
    assert render_report(finding_db, out)["findings"] == 1
    html = out.read_text()
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(" in html  # both shown
    assert "<script>alert" not in html and "<img src=x" not in html  # neither as markup


def test_not_a_memscan_database(tmp_path, foreign_db):
    with pytest.raises(MemscanError, match="not a memscan database"):
        render_report(foreign_db, tmp_path / "r.html")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_demo_report_in_a_real_browser(tmp_path, demo_run):
    db, stdout = demo_run
    out = tmp_path / "demo.html"
    counts = render_report(db, out)
    html = out.read_text()
    assert counts["extracted"] >= 1
    assert html.count('class="finding"') == counts["findings"] and "data:image/png;base64," in html
    assert 'alt="memorization against caption duplication"' in html and 'alt="ROC curves"' in html
    person = next(r["identity"] for r in demo_world.load_world(["kind", "identity"]) if r["kind"] == "identity")
    assert "<td>clid_th</td>" in html and person in html  # membership table, identity table
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    # whether a verdict names the prompt's own training image, by the index's captions, is what the world's item ids say
    from scanner.demo.evaluate import world_item_of

    with Store(db, read_only=True) as store:
        extracted = store.query("SELECT image_of_prompt, matched_item, prompt_source_item FROM findings "
                                "WHERE verdict = 'extracted'").to_pylist()
    assert all(r["image_of_prompt"] == (world_item_of(r["matched_item"]) == r["prompt_source_item"]) for r in extracted)
    assert sum(r["image_of_prompt"] for r in extracted) >= len(extracted) / 2  # 44 of 50 measured (session 33)
    assert "The training set holds this image under the prompt itself." in html
    assert "┃ image_of_prompt ┃" in stdout  # and the CLI's findings table says it
    # the methods name every view the criterion judged a prompt in, in order
    assert html.index("judged again on its generations each centred on its own mean colour") < html.index(
        "Then on them in grey, each standardized to zero mean and unit spread")
    image = screenshot(out, tmp_path / "shot.png")
    assert image.size[0] >= 1000
    # the gallery's pixelated images and the plot make the page far from blank
    colours = len(image.resize((300, 600)).getcolors(maxcolors=1 << 24))
    assert colours > 500


def test_a_fine_tune_finding_shows_the_reference_models_nearest_generation(tmp_path, demo_clip):
    """A fine-tune audit's finding gets, beside it, the reference model's generation of the same
    prompt nearest the training item, from a scan of the reference in the same database."""
    from scanner.features import png_bytes
    from scanner.index import IndexConfig, TrainingIndex, build_index
    from scanner.store import now

    rows = demo_world.load_world(["item_id", "caption", "image_png"])[:3]
    source = tmp_path / "training"
    source.mkdir()
    for row in rows:
        (source / f"{row['item_id']}.png").write_bytes(row["image_png"])
        (source / f"{row['item_id']}.txt").write_text(row["caption"])
    build_index(source, "ft", demo_clip, IndexConfig(thumbnail_size=32), root=tmp_path / "indexes")
    index = TrainingIndex.open("ft", tmp_path / "indexes")
    item, prompt = rows[0]["item_id"], rows[0]["caption"]
    training = demo_world.decode_png(rows[0]["image_png"])
    db = tmp_path / "audit.duckdb"
    with Store(db) as store:
        files = store.files_dir
        (files / "images").mkdir(parents=True, exist_ok=True)
        images = {"copy": training, "near": np.clip(training.astype(int) + 40, 0, 255).astype(np.uint8),
                  "far": np.full_like(training, 200)}
        for name, image in images.items():
            (files / "images" / f"{name}.png").write_bytes(png_bytes(image))

        def generation(run, name):
            return {"run_id": run, "generation_id": name, "prompt_id": "p1", "seed": 0, "num_inference_steps": 4,
                    "guidance_scale": 5.0, "scheduler": "DDIMScheduler", "height": 32, "width": 32, "batch_size": 4,
                    "status": "ok", "image_path": f"images/{name}.png", "thumbnail_path": f"images/{name}.png",
                    "created_at": now()}

        for run, model_ref, config in (
                ("base", "/models/base", {}),
                ("tuned", "/models/base + LoRA l.safetensors@1", {"reference": {"model_ref": "/models/base", "guidance": 3.0},
                                                                  "match": {"index": "ft", "index_folder": str(index.folder)}})):
            store.start_run(run, "scan", model_ref, run, config, {})
            store.insert("prompts", [{"run_id": run, "prompt_id": "p1", "text": prompt, "source": None, "source_item_id": None}])
        store.insert("generations", [generation("base", "near"), generation("base", "far"), generation("tuned", "copy")])
        store.insert("clusters", [{"run_id": "tuned", "cluster_id": "c1", "scope": "prompt", "prompt_id": "p1", "size": 4,
                                   "n_generations": 4, "medoid_generation_id": "copy", "mean_distance": 0.01,
                                   "max_distance": 0.02, "distance": "tiled_l2", "threshold": 0.02, "criterion": "clique>=4"}])
        store.insert("candidates", [{"run_id": "tuned", "candidate_id": "c1", "cluster_id": "c1", "prompt_id": "p1",
                                     "score": 1.0, "rank": 1, "reason": "test"}])
        store.insert("matches", [{"run_id": "tuned", "candidate_id": "c1", "index_name": "ft", "item_id": item,
                                  "item_caption": prompt, "l2": 0.0, "tiled_l2": 0.0, "verdict": "extracted"}])
        for run in ("base", "tuned"):
            store.finish_run(run, {})
    render_report(db, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    from scanner.distances import tiled_l2

    nearest = float(tiled_l2(images["near"], training))
    assert "Fine-tune audit" in html and "from run base" in html
    assert f"reference model, nearest (tiled l2 {nearest:.4f})" in html


def test_an_extracted_finding_says_what_the_verdict_was_measured_to_mean(tmp_path, finding_db):
    """A court reads an extracted verdict with its measured error: the report and the CLI state it,
    and say when the scan judged at settings that were not measured."""
    import dataclasses
    import json

    from scanner.calibration import verdict_statement
    from scanner.config import MatchConfig

    out = tmp_path / "report.html"
    render_report(finding_db, out)
    assert "measured at the default match settings only" not in out.read_text()  # no match, no verdict to qualify
    with Store(finding_db) as store:
        assert verdict_statement(store, "r1") is None
        store.insert("matches", [{"run_id": "r1", "candidate_id": "c1", "index_name": "demo", "item_id": "i1",
                                  "item_caption": "a red circle", "l2": 0.05, "tiled_l2": 0.04, "anchored_l2": 0.3,
                                  "anchor": "generation", "phash_hamming": 2, "clip_cosine": 0.99, "verdict": "extracted"}])
        unrecorded = verdict_statement(store, "r1")
        settings = {"cluster": {"threshold": 0.02}, "match": {**dataclasses.asdict(MatchConfig()), "index": "demo"}}
        store.execute("UPDATE runs SET config = ? WHERE run_id = 'r1'", [json.dumps(settings)])
        measured = verdict_statement(store, "r1")
        settings["match"]["extraction_ratio"] = 1.0
        store.execute("UPDATE runs SET config = ? WHERE run_id = 'r1'", [json.dumps(settings)])
        changed = verdict_statement(store, "r1")
    assert "extraction_ratio not recorded" in unrecorded and "extraction_ratio 1.0)" in changed
    assert measured.startswith("Extracted verdicts, measured at these settings") and "of which 2 are wrong" in measured  # the error, stated
    assert "only 45 of the 379 naming another prompt's" in measured  # and which verdicts the truth can rarely decide
    render_report(finding_db, out)
    assert "measured at the default match settings only" in out.read_text()
    assert "Here 1 of" not in changed and "only under other captions" not in out.read_text()  # nothing recorded to say it
    with Store(finding_db) as store:  # the image the verdict names is another caption's
        store.execute("UPDATE matches SET image_of_prompt = false, item_caption = 'a blue square'")
        other_caption = verdict_statement(store, "r1")
        assert store.query("SELECT image_of_prompt FROM findings").to_pylist() == [{"image_of_prompt": False}]
    assert "Here 1 of the 1 extracted verdicts name an image the training set holds only under other captions" in other_caption
    render_report(finding_db, out)
    assert "holds this image only under other captions than the prompt: a copy of another caption's image" in out.read_text()
