import duckdb
import pytest

from scanner.errors import MemscanError
from scanner.report import render_report
from scanner.store import _FINDINGS_VIEW, SCHEMA_VERSION, Store, now


def generation(run_id: str, generation_id: str, seed: int) -> dict:
    return {"run_id": run_id, "generation_id": generation_id, "prompt_id": "p1", "seed": seed,
            "num_inference_steps": 20, "guidance_scale": 5.0, "scheduler": "DDIMScheduler", "height": 32, "width": 32,
            "batch_size": 8, "status": "ok", "error": None, "image_path": f"images/{generation_id}.png",
            "image_sha256": "0" * 64, "phash": 2**63 + seed, "dhash": 7, "degenerate": False,
            "embedding": [0.1, 0.2], "created_at": now()}


def test_round_trip_is_idempotent_and_survives_reopening(tmp_path):
    path = tmp_path / "scan.duckdb"
    with Store(path) as store:
        store.start_run("r1", "scan", "model", "abc", {"k": 1}, {"torch": "x"})
        assert store.insert("generations", [generation("r1", "g1", 1), generation("r1", "g2", 2)]) == 2
        # the same batch again (a resumed scan) adds nothing
        assert store.insert("generations", [generation("r1", "g1", 1), generation("r1", "g3", 3)]) == 1
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        rows = store.query("SELECT generation_id, seed, phash, embedding FROM generations ORDER BY seed").to_pylist()
        assert [r["generation_id"] for r in rows] == ["g1", "g2", "g3"]
        assert rows[0]["phash"] == 2**63 + 1  # unsigned 64-bit hashes survive
        assert rows[0]["embedding"] == pytest.approx([0.1, 0.2])
        assert store.start_run("r1", "scan", "model", "abc", {"k": 1}, {}) is True


def test_transaction_rolls_back_a_failed_batch(tmp_path):
    with Store(tmp_path / "scan.duckdb") as store:
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.insert("generations", [generation("r1", "g1", 1)])
                raise RuntimeError("killed mid-batch")
        assert store.count("generations") == 0


def test_findings_view_joins_candidate_cluster_prompt_and_best_match(tmp_path):
    with Store(tmp_path / "scan.duckdb") as store:
        store.insert("prompts", [{"run_id": "r1", "prompt_id": "p1", "text": "a red circle", "source": None, "source_item_id": "obj-1"}])
        store.insert("generations", [generation("r1", "g1", 1)])
        store.insert("clusters", [{"run_id": "r1", "cluster_id": "c1", "scope": "prompt", "prompt_id": "p1", "size": 5,
                                   "n_generations": 16, "medoid_generation_id": "g1", "mean_distance": 0.02,
                                   "max_distance": 0.04, "distance": "tiled_l2", "threshold": 0.08, "criterion": "clique>=5"}])
        store.insert("candidates", [{"run_id": "r1", "candidate_id": "c1", "cluster_id": "c1", "prompt_id": "p1",
                                     "score": 5 / 16, "rank": 1, "reason": "test"}])
        rows = store.query("SELECT prompt, cluster_size, verdict FROM findings").to_pylist()
        assert rows == [{"prompt": "a red circle", "cluster_size": 5, "verdict": "unmatched"}]
        match = {"run_id": "r1", "candidate_id": "c1", "index_name": "demo", "l2": 0.05, "tiled_l2": 0.09,
                 "anchored_l2": 0.3, "anchor": "generation", "phash_hamming": 2, "clip_cosine": 0.99}
        store.insert("matches", [{**match, "item_id": "far", "item_caption": "x", "verdict": "similar", "l2": 0.2},
                                 {**match, "item_id": "obj-1", "item_caption": "a red circle", "verdict": "extracted"}])
        rows = store.query("SELECT matched_item, verdict FROM findings").to_pylist()
        assert rows == [{"matched_item": "obj-1", "verdict": "extracted"}]


def test_a_database_from_schema_3_is_read_as_it_is_and_upgraded_when_written(tmp_path, finding_db):
    """Schema 4 added ``matches.image_of_prompt``: an older database with an extracted finding still
    reports, and gains the column (empty for its old rows) when opened to write."""
    with Store(finding_db) as store:
        store.insert("matches", [{"run_id": "r1", "candidate_id": "c1", "index_name": "demo", "item_id": "i1",
                                  "item_caption": "a red circle", "l2": 0.05, "tiled_l2": 0.04, "verdict": "extracted"}])
        store.execute("DROP VIEW findings")
        store.execute("ALTER TABLE matches DROP COLUMN image_of_prompt")
        store.execute("UPDATE schema_info SET value = '3' WHERE key = 'schema_version'")
        store.execute(_FINDINGS_VIEW.replace("m.image_of_prompt,", ""))
    with Store(finding_db, read_only=True) as store:
        assert store.schema_version() == 3 and store.extracted_by_caption("r1") is None
        assert "image_of_prompt" not in store.query("SELECT * FROM findings").column_names
    assert render_report(finding_db, tmp_path / "old.html")["extracted"] == 1  # a report reads it as it is
    with Store(finding_db) as store:
        assert store.schema_version() == SCHEMA_VERSION and store.extracted_by_caption("r1") == (0, 0)
        assert store.query("SELECT verdict, image_of_prompt FROM findings").to_pylist() == [
            {"verdict": "extracted", "image_of_prompt": None}]


def test_rejects_foreign_and_newer_databases(tmp_path, foreign_db):
    with pytest.raises(MemscanError, match="not a memscan database"):
        Store(foreign_db)
    newer = tmp_path / "newer.duckdb"
    Store(newer).close()
    connection = duckdb.connect(str(newer))
    connection.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    connection.close()
    with pytest.raises(MemscanError, match="newer"):
        Store(newer)
    with pytest.raises(MemscanError, match="no such database"):
        Store(tmp_path / "missing.duckdb", read_only=True)
    text = tmp_path / "notes.duckdb"
    text.write_text("hello")
    with pytest.raises(MemscanError, match="notes.duckdb"):
        Store(text)


def test_images_folder_choice_is_remembered(tmp_path):
    with Store(tmp_path / "scan.duckdb", files_dir=tmp_path / "elsewhere") as store:
        assert store.image_file("images/a.png") == (tmp_path / "elsewhere" / "images/a.png").resolve()
    with Store(tmp_path / "scan.duckdb", read_only=True) as store:
        assert store.files_dir == (tmp_path / "elsewhere").resolve()
    with Store(tmp_path / "default.duckdb") as store:
        assert store.files_dir == tmp_path / "default.duckdb.files"


def test_the_duckdb_command_line_client_reads_a_memscan_database(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cli = shutil.which("duckdb") or str(Path(sys.executable).with_name("duckdb"))
    if not Path(cli).exists():
        pytest.skip("the duckdb command-line client is not installed (pip install duckdb-cli)")
    db = tmp_path / "scan.duckdb"
    with Store(db) as store:
        store.insert("generations", [generation("r1", "g1", 1)])
    result = subprocess.run([cli, "-readonly", "-csv", str(db), "SELECT seed, phash FROM generations"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["seed,phash", f"1,{2**63 + 1}"]


def test_a_run_resumed_with_other_settings_keeps_only_what_its_run_id_stands_for(tmp_path):
    """Changed settings replace the stored ones, and the rows derived under the old settings go
    with them; generations and triage scores stay. Unchanged settings keep everything."""
    with Store(tmp_path / "scan.duckdb") as store:
        store.start_run("r1", "scan", "model", "abc", {"cluster": {"threshold": 0.02}}, {})
        store.insert("generations", [generation("r1", "g1", 1)])
        store.insert("clusters", [{"run_id": "r1", "cluster_id": "c1", "scope": "prompt", "prompt_id": "p1", "size": 5,
                                   "n_generations": 16, "medoid_generation_id": "g1", "mean_distance": 0.01,
                                   "max_distance": 0.02, "distance": "tiled_l2", "threshold": 0.02, "criterion": "clique>=5"}])
        store.insert("mia_scores", [{"run_id": "r1", "item_id": "p1", "attack": attack, "score": 1.0}
                                    for attack in ("seed_agreement_triage", "wen")])
        store.finish_run("r1", {})

        assert store.start_run("r1", "scan", "model", "abc", {"cluster": {"threshold": 0.02}}, {}) is True
        assert store.count("clusters") == 1 and store.count("mia_scores") == 2

        assert store.start_run("r1", "scan", "model", "abc", {"cluster": {"threshold": 0.05}}, {}) is True
        assert store.execute("SELECT config->>'$.cluster.threshold', status FROM runs") == [("0.05", "running")]
        assert store.count("clusters") == 0 and store.count("generations") == 1
        assert store.execute("SELECT attack FROM mia_scores") == [("seed_agreement_triage",)]
