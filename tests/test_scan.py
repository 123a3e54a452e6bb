"""Scans on the demo models: resumable after kill -9 (SD, SDXL, SD3, SD with a LoRA), and scored against the ground truth."""

import functools
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_checks import run_main

from scanner.demo import FAMILY_MODELS, FINETUNE_LORA, SD_MODEL, demo_items
from scanner.store import Store

GENERATION_COLUMNS = "generation_id, prompt_id, seed, status, image_path, image_sha256, phash, dhash, degenerate"


def scan_command(prompts, db, model=SD_MODEL, extra=()) -> list[str]:
    return [sys.executable, "-m", "scanner", "scan", "--model", str(model), "--prompts", str(prompts), "--db", str(db),
            "--samples-per-prompt", "8", "--batch-size", "4", "--steps", "4", "--null-prompts", "2", "--no-progress", *extra]


def generation_rows(db) -> list[tuple]:
    with Store(db, read_only=True) as store:
        return store.execute(f"SELECT {GENERATION_COLUMNS} FROM generations ORDER BY generation_id")


def stored_images(db) -> int:
    folder = db.with_name(db.name + ".files")
    return sum(1 for _ in folder.rglob("*.png")) if folder.exists() else 0


# resuming lives in the generate stage and the store, not in an adapter: the UNet and transformer families and a
# LoRA (part of the generation ids) cover it; SDXL, another UNet family, added 22 s of CI and no other path
@pytest.mark.parametrize("family, extra", [("sd", ()), ("sd3", ()), ("sd", ("--lora", f"{FINETUNE_LORA}:0.8"))],
                         ids=["sd", "sd3", "sd-lora"])
def test_a_killed_scan_resumes_without_losing_or_duplicating_rows(tmp_path, family, extra):
    model = FAMILY_MODELS[family]
    scan_command_here = functools.partial(scan_command, model=model, extra=extra)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(r["caption"] for r in demo_items()[::15][:2]))
    reference = tmp_path / "reference.duckdb"  # scanned in this process: a subprocess's imports cost more than its scan
    assert run_main(*scan_command_here(prompts, reference)[3:], cwd=tmp_path).returncode == 0
    expected = generation_rows(reference)
    assert len(expected) == 32 and len({r[0] for r in expected}) == 32  # 2 prompts and 2 null prompts, 8 seeds each

    killed = tmp_path / "killed.duckdb"
    process = subprocess.Popen(scan_command_here(prompts, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while stored_images(killed) < 8 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = stored_images(killed)
    assert 0 < partial < 32, "the scan should have been killed part-way"

    resumed = subprocess.run(scan_command_here(prompts, killed), check=True, capture_output=True, text=True, timeout=600)
    assert "Resumed run" in resumed.stdout
    assert generation_rows(killed) == expected  # same ids, seeds, files and hashes; nothing lost or doubled
    with Store(killed, read_only=True) as store:
        assert store.execute("SELECT status FROM runs") == [("done",)]


@pytest.mark.slow
def test_demo_reproduces_duplicated_items_and_not_non_members(demo_run):
    from scanner.demo.evaluate import score_criterion, score_demo_run

    db, stdout = demo_run
    assert "Database:" in stdout and "duckdb" in stdout
    assert "Extracted verdicts, measured at these settings" in stdout  # with the verdict's measured error
    with Store(db, read_only=True) as store:
        run_id = store.execute("SELECT run_id FROM runs WHERE kind = 'demo'")[0][0]
        scores = {s.bucket: s for s in score_demo_run(store, run_id)}
        criterion = score_criterion(store, run_id)
        # every extracted training item carries membership scores, every candidate prompt a detector score
        unscored = store.execute(
            "SELECT count(*) FROM matches m WHERE m.run_id = ? AND m.verdict = 'extracted' AND NOT EXISTS "
            "(SELECT 1 FROM mia_scores s WHERE s.run_id = m.run_id AND s.item_id = m.item_id AND s.attack = 'clid_discrepancy')",
            [run_id])[0][0]
        candidates_scored = store.execute(
            "SELECT count(DISTINCT c.prompt_id), count(DISTINCT s.item_id) FROM candidates c LEFT JOIN mia_scores s "
            "ON s.run_id = c.run_id AND s.item_id = c.prompt_id AND s.attack = 'wen' WHERE c.run_id = ?", [run_id])[0]
    assert unscored == 0 and candidates_scored[0] == candidates_scored[1] > 0
    x200, non_members = scores["x200"], scores["non-member"]
    print({b: (s.prompts, s.flagged, s.reproduced, s.extracted) for b, s in scores.items()})
    # the model reproduces most of its x200 items' particular drawings (11 of 15 measured: a few x200 captions
    # are drawn so alike that even a copy is no closer to its drawing than to other drawings of the caption)
    assert x200.prompts == 15 and x200.reproduced >= 9
    assert x200.extracted >= 13 and scores["x50"].extracted >= 13  # and matching confirms them
    # non-member captions seldom collapse onto one image, and never onto a training image (4 of 15 measured
    # at the demo's 16 seeds: cliques of 5, the smallest, of generic drawings; the calibration scans put the
    # demo's false flags at 16 seeds at 6.2%, at the default 32 at 5.0%: docs/CALIBRATION.md, session 17)
    assert non_members.flagged <= 4 and non_members.extracted == 0
    # against the per-item truth: at least 90% of the memorized duplicated items flagged (36 of 36 measured),
    # and few of the x1 and non-member prompts whose item is not memorized: 5 of 30 measured in this audit of
    # 75 prompts at 16 seeds, bounded at 5, above issue 18's 5%, which is set for the default 32 seeds
    print(criterion)
    assert criterion.memorized >= 33 and criterion.recall >= 0.9 and criterion.unmemorized_flagged <= 5


@pytest.mark.slow
def test_a_small_audit_with_an_index_calibrates_where_its_own_words_gave_a_wrong_all_clear(demo_world_index, demo_sd,
                                                                                           demo_clip, tmp_path):
    """The fresh-clone scan of session 13: these three captions (a non-member, an x10 and an x200
    item, the last two memorized) scanned alone drew null prompts that kept the memorized items'
    words and collapsed onto their images; the threshold fell to 0.0028 at 16 seeds (0.0025 at 32),
    under both, and the scan printed an all-clear. Given the index, the nulls draw most of their
    words from 45 of its training captions (docs/CALIBRATION.md, "Few prompts"). 16 null prompts,
    half the default, to fit CI (measured, session 29: a threshold of 0.024 flags both; nulls
    recombined from the three captions alone give 0.0047, which misses the x10 item; 8 nulls give
    0.040, which flags the non-member too)."""
    from scanner.calibration import criterion_statement
    from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.scan import run_scan

    captions = ["three green stars at the top on a navy background", "one orange square at the left on a beige background",
                "two purple diamonds at the left on a navy background"]
    with Store(tmp_path / "small.duckdb") as store:  # the demo's index, not its run: this test need not wait for it
        result = run_scan(store, demo_sd, [Prompt.from_text(text) for text in captions],
                          ScanConfig(sampling=SamplingConfig(samples_per_prompt=16, batch_size=48),
                                     cluster=ClusterConfig(null_prompts=16)),
                          show_progress=False, embedder=demo_clip, index=demo_world_index)
        flagged = {text for (text,) in store.execute("SELECT DISTINCT p.text FROM candidates c JOIN prompts p "
                                                     "USING (run_id, prompt_id) WHERE c.run_id = ?", [result.run_id])}
        statement = criterion_statement(store, result.run_id)
    print(statement)
    assert set(captions[1:]) <= flagged and captions[0] not in flagged
    assert statement.training_captions == 45 and statement.nulls == 16 and statement.threshold > 0.01
    assert not any("recombined from the words of only" in line for line in statement.lines(found_nothing=False))


def test_triage_mass_samples_only_the_prompts_the_detector_ranks_first(tmp_path, demo_sd, monkeypatch):
    """Two x200 members among six non-members: --triage 0.25 keeps two prompts, the members,
    samples only them, and stores every prompt's detector score; run again, the scan resumes
    with the prompts the stored scores chose, without triaging again."""
    from scanner import demo as demo_world
    from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.scan import run_scan

    rows = [r for r in demo_world.membership_items(per_bucket=2, x1=0, nonmembers=6) if r["dup_count"] in (0, 200)]
    prompts = [Prompt.from_text(r["caption"]) for r in rows]
    members = {p.prompt_id for p, r in zip(prompts, rows) if r["dup_count"] == 200}
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=2, batch_size=8, triage=0.25),
                        cluster=ClusterConfig(threshold=0.02, min_clique=2))  # no null prompts: only what triage keeps is sampled
    with Store(tmp_path / "scan.duckdb") as store:
        result = run_scan(store, demo_sd, prompts, config, show_progress=False)
        sampled = {r[0] for r in store.execute("SELECT DISTINCT prompt_id FROM generations")}
        scored = store.execute("SELECT count(*) FROM mia_scores WHERE attack = 'seed_agreement_triage'")[0][0]
        monkeypatch.setattr("scanner.scan.triage", lambda *args, **kwargs: pytest.fail("triaged again"))
        again = run_scan(store, demo_sd, prompts, config, show_progress=False)
    assert len(members) == 2 and sampled == members and scored == len(prompts)
    assert (result.counts["prompts_given"], result.counts["prompts_sampled"]) == (len(prompts), 2)
    assert again.resumed and again.counts["prompts_sampled"] == 2 and again.counts["generated"] == 0


def test_a_scan_that_stops_early_flags_what_the_full_scan_flags(tmp_path, demo_sd):
    """Two x200 members and two non-members, 10 seeds, cliques of 4, the thresholds calibrated on 8
    null prompts: stopping early samples the nulls in full first and every prompt's 8 anchor seeds,
    then keeps the verdicts and each prompt's threshold, and draws fewer generations."""
    from scanner import demo as demo_world
    from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.scan import run_scan

    rows = [r for r in demo_world.membership_items(per_bucket=2, x1=0, nonmembers=2) if r["dup_count"] in (0, 200)]
    prompts = [Prompt.from_text(r["caption"]) for r in rows]
    flagged, results = {}, {}
    with Store(tmp_path / "scan.duckdb") as store:
        for stop_early in (False, True):
            config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=10, batch_size=10, stop_early=stop_early),
                                cluster=ClusterConfig(min_clique=4, null_prompts=8))
            results[stop_early] = run_scan(store, demo_sd, prompts, config, show_progress=False)
            flagged[stop_early] = store.execute("SELECT DISTINCT prompt_id FROM candidates WHERE run_id = ? ORDER BY 1",
                                                [results[stop_early].run_id])
    assert len(flagged[False]) >= 1 and flagged[True] == flagged[False]
    assert results[False].run_id != results[True].run_id and results[True].counts["null_prompts"] == 8
    assert results[False].counts["generated"] == results[False].counts["planned"] == (4 + 8) * 10
    assert 8 * 10 < results[True].counts["generated"] < (4 + 8) * 10
    with Store(tmp_path / "scan.duckdb", read_only=True) as store:
        thresholds = store.execute("SELECT run_id, value FROM metrics WHERE metric = 'criterion_threshold' ORDER BY 1")
        per_prompt = [dict(store.execute("SELECT subject, value FROM metrics WHERE metric = 'prompt_threshold' AND run_id = ?",
                                         [results[stop_early].run_id])) for stop_early in (False, True)]
    assert len(thresholds) == 2 and thresholds[0][1] == thresholds[1][1]  # the same nulls, the same threshold
    assert len(per_prompt[0]) == 4 + 8 and per_prompt[0] == per_prompt[1]  # the same anchor seeds, the same anchors


def test_a_scan_run_again_with_another_criterion_stores_the_settings_of_its_new_clusters(tmp_path, demo_sd):
    """The same prompts and seeds with a looser clique threshold: the generations are reused, the
    clusters computed again, and the run's stored settings are the ones they were computed with."""
    import json

    from scanner import demo as demo_world
    from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.scan import run_scan

    rows = [r for r in demo_world.membership_items(per_bucket=1, x1=0, nonmembers=0) if r["dup_count"] == 200]
    prompts = [Prompt.from_text(r["caption"]) for r in rows]
    sampling = SamplingConfig(samples_per_prompt=4, batch_size=4, num_inference_steps=4)
    with Store(tmp_path / "scan.duckdb") as store:
        for threshold in (0.02, 0.5):
            config = ScanConfig(sampling=sampling, cluster=ClusterConfig(threshold=threshold, min_clique=2))
            result = run_scan(store, demo_sd, prompts, config, show_progress=False)
        stored = json.loads(store.execute("SELECT config FROM runs WHERE run_id = ?", [result.run_id])[0][0])
        thresholds = store.execute("SELECT DISTINCT threshold FROM clusters WHERE run_id = ?", [result.run_id])
    assert result.resumed and result.counts["generated"] == 0
    assert stored["cluster"]["threshold"] == 0.5 and thresholds == [(0.5,)]


def test_a_prompted_scan_with_fewer_seeds_than_a_clique_is_refused_before_any_work(tmp_path, demo_sd):
    """3 seeds and cliques of 5: no prompt could ever be flagged, so its "no candidates" would be an
    all-clear on no evidence; the family's own seeds are checked alike once the model is known."""
    from scanner.config import ClusterConfig, SamplingConfig, ScanConfig, SettingError
    from scanner.generate import Prompt
    from scanner.scan import run_scan

    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=3), cluster=ClusterConfig(min_clique=5))
    with Store(tmp_path / "scan.duckdb") as store:
        with pytest.raises(SettingError, match=r"min_clique must be at most samples_per_prompt \(3\), not 5"):
            run_scan(store, demo_sd, [Prompt.from_text("a red circle")], config, show_progress=False)
        assert store.execute("SELECT count(*) FROM runs")[0][0] == 0
