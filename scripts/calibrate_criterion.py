"""Measure memorization criteria across models: tune on one calibration model, test on the others.

    python scripts/calibrate_criterion.py scan --model sd-64      # sample one model (minutes)
    python scripts/calibrate_criterion.py compare                 # every criterion on every scanned model
    python scripts/calibrate_criterion.py grid                    # the anchored criterion's settings, scans at 32 seeds
    python scripts/calibrate_criterion.py statistics --model demo --seeds 16   # a stored scan's rows on its first 16 seeds

``scan`` samples the demo prompts of one calibration model (``scanner.demo.CALIBRATION_MODELS``:
all x200/x50/x10 items, ``--per-bucket`` x1 members and non-members) plus ``--nulls`` null
prompts (the prompts' words recombined slot by slot, ``scanner.calibration.null_prompts``), and
writes one row per prompt to ``runs/criterion-<model>.parquet``: its bucket, the per-item truth
(memorized: at least 25% of its generations reproduce its own training image, closer to it than to
256 other drawings of its caption: ``scanner.demo.evaluate.CaptionDrawings``), its collapse distance
for every clique size (the smallest tiled-l2 threshold at which that many of its generations form a
clique) and its anchor (``scanner.calibration.prompt_anchors`` at the default settings: how far its
first generations lie from other prompts'). ``statistics`` recomputes those rows from a stored scan,
on its first ``--seeds`` seeds if given (the generations a scan at that many seeds draws).

``compare`` scores criteria on those rows: recall on memorized duplicated items, false flags on
x1 and non-member prompts whose item is not memorized. A fixed threshold is tuned on one model
and carried to the others; the calibrated criteria set their threshold on each scan's own null
prompts (averaged over draws of 32 of them), so only their factor is carried. ``grid`` scores the
anchored criterion at every clique size, reference quantile, factor and floor on each scanned model,
then tunes it on each model alone and carries it to the others. ``spread`` scores rules that would read a
model's spread from the scan itself (the mirror of the audit's upper tail about the nulls' median) beside the default.

``evaluate`` runs memscan's own clustering and matching at their defaults on each stored scan
and scores them: the numbers of docs/CALIBRATION.md; ``--set min_clique=8`` (repeatable) scores the
criterion at other settings, ``scan --no-statistics`` samples a scan for ``evaluate`` alone. ``mix``
pools one model's scans at several guidance scales prompt by prompt (each prompt's generations at every scale, as a scan sampling at
all of them would draw) and scores the default criterion on the pool against each scan alone.
``small`` runs memscan's scan at its defaults on small audits (a few prompts, half of them
duplicated items), with the world's index or, ``--prompts-only``, without: what the null prompts
of a small audit are recombined from (``scanner.calibration.null_donors``). ``--steps`` names
scans at other sampling steps beside those at 20; ``evaluate --seeds 16`` scores a copy of each scan holding its
first 16 seeds. ``fidelity`` sets each duplicated item's round trip
through the model's own autoencoder beside its nearest generation: how close the model can come at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanner import cluster, features
from scanner.config import ClusterConfig, MatchConfig, SamplingConfig, ScanConfig
from scanner.demo import CALIBRATION_MODELS, bucket_of, decode_png, demo_items, load_world
from scanner.demo.evaluate import DUPLICATED_BUCKETS, REPRODUCED_SHARE, CaptionDrawings, reproduced_share
from scanner.generate import Prompt
from scanner.models.loading import load_embedder
from scanner.calibration import (NULL_SOURCE, anchored_thresholds, criterion_statement, null_prompts, null_threshold,
                                 prompt_anchors, quantile_name)
from scanner.store import Store

RUNS = Path("runs")
CLIQUE_SIZES = range(2, 17)
DEFAULT_SAMPLES = 16  # the seeds per prompt the calibration tables were first measured at (memscan's default until session 13)
DEFAULT_STEPS = 20  # the demo-sized families' sampling steps (scanner/models: DEMO_SIZED)


def scan_model(name: str, per_bucket: int, nulls: int, samples: int, guidance: float, steps: int,
               statistics: bool = True) -> Path:
    """Sample one calibration model into ``runs/``; with ``statistics``, also its per-prompt rows (every clique
    size's collapse distance: 1.5 minutes more on 461 prompts at 32 pixels), which ``compare`` and ``grid`` read and
    ``evaluate`` does not."""
    from scanner.models.registry import load_model
    from scanner.scan import run_scan

    model_dir, world = CALIBRATION_MODELS[name]
    items = demo_items(per_bucket=per_bucket, world=world)
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in items]
    prompts += null_prompts(prompts, nulls)
    db = RUNS / f"{scan_stem(name, guidance, samples, steps)}.duckdb"
    config = ScanConfig(model=str(model_dir), db=str(db),
                        sampling=SamplingConfig(samples_per_prompt=samples, batch_size=64, num_inference_steps=steps,
                                                guidance_scale=guidance))
    with Store(db) as store:
        result = run_scan(store, load_model(model_dir), prompts, config, kind="calibration",
                          embedder=load_embedder(config.features))
        scanned = result.counts["prompts_sampled"] + result.counts["null_prompts"]
        print(f"{name}: {scanned} prompts, {result.timings['total_s']:.0f}s -> {db}")
        if not statistics:
            return db
        rows = prompt_statistics(store, result.run_id, world)
    out = db.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"{name}: per-prompt statistics -> {out}")
    return out


def scan_stem(name: str, guidance: float, samples: int, steps: int = DEFAULT_STEPS) -> str:
    """A stored scan's file name: scans at other seeds per prompt or steps sit beside those at the defaults."""
    return (f"criterion-{name}-g{guidance:g}" + ("" if samples == DEFAULT_SAMPLES else f"-s{samples}")
            + ("" if steps == DEFAULT_STEPS else f"-t{steps}"))


def prompt_statistics(store: Store, run_id: str, world: Path, seeds: int | None = None) -> list[dict]:
    """One row per prompt: truth, anchor (``calibration.prompt_anchors`` at the default settings) and
    collapse distance at every clique size, on the first ``seeds`` seeds of each prompt (all by default:
    the first 16 of a 32-seed scan are the generations a 16-seed scan draws)."""
    truth, default = CaptionDrawings(world), ClusterConfig()
    by_prompt = {p: g._replace(images=g.images[:seeds]) for p, g in generations_by_prompt(store, run_id).items()}
    ids = sorted(by_prompt)
    anchors = prompt_anchors([by_prompt[p].images[:default.anchor_seeds] for p in ids], default.anchor_prompts)
    out = []
    for prompt_id, anchor in zip(ids, anchors):
        images = by_prompt[prompt_id].images
        row = {"prompt_id": prompt_id, **prompt_truth(by_prompt[prompt_id], truth), "anchor": float(anchor)}
        pairs = cluster.all_pairs(len(images))
        for k in CLIQUE_SIZES:
            row[f"collapse_{k}"] = cluster.collapse_distance(images, k, default.tiles, pairs)
        out.append(row)
    return out


def restate(name: str, steps: int, seeds: int | None) -> Path:
    """Recompute a stored 32-seed scan's rows (after the statistics changed, or on its first ``seeds`` seeds)."""
    db = RUNS / f"{scan_stem(name, 5.0, 32, steps)}.duckdb"
    with Store(db, read_only=True) as store:
        rows = prompt_statistics(store, latest_calibration_run(store), CALIBRATION_MODELS[name][1], seeds)
    out = db.with_name(db.stem + (f"-first{seeds}" if seeds else "") + ".parquet")
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"{name}: {len(rows)} prompts -> {out}")
    return out


class PromptGenerations(NamedTuple):
    source: str | None
    item_id: str | None
    images: np.ndarray  # the prompt's thumbnails in seed order


def generations_by_prompt(store: Store, run_id: str) -> dict[str, PromptGenerations]:
    """A stored scan's thumbnails per prompt id (a prompt's id is its text's, the same in every scan)."""
    rows = store.query("SELECT p.prompt_id, p.source, p.source_item_id, g.thumbnail_path FROM generations g "
                       "JOIN prompts p USING (run_id, prompt_id) WHERE g.run_id = ? AND g.status = 'ok' "
                       "ORDER BY p.prompt_id, g.seed", [run_id]).to_pylist()
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["prompt_id"], []).append(row)
    return {prompt_id: PromptGenerations(group[0]["source"], group[0]["source_item_id"], np.stack(
                [features.load_image(store.image_file(g["thumbnail_path"])) for g in group]))
            for prompt_id, group in grouped.items()}


def prompt_truth(prompt: PromptGenerations, truth: CaptionDrawings) -> dict:
    """The prompt's bucket and whether its item is memorized (REPRODUCED_SHARE of these generations reproduce it)."""
    if prompt.source == NULL_SOURCE:
        return {"bucket": "null", "memorized": False}
    return {"bucket": bucket_of(truth.items[prompt.item_id]["dup_count"]),
            "memorized": reproduced_share(truth, prompt.images, prompt.item_id) >= REPRODUCED_SHARE}


def outcome(rows: list[dict], flagged: np.ndarray) -> tuple[float, float, float]:
    """Recall on memorized duplicated items, false flags on unmemorized x1/non-member prompts, and on null prompts."""
    buckets = np.array([r["bucket"] for r in rows])
    memorized = np.array([r["memorized"] for r in rows])
    positive = memorized & np.isin(buckets, DUPLICATED_BUCKETS)
    negative = ~memorized & np.isin(buckets, ("x1", "non-member"))
    null = buckets == "null"
    return (float(flagged[positive].mean()) if positive.any() else float("nan"),
            float(flagged[negative].mean()) if negative.any() else float("nan"),
            float(flagged[null].mean()) if null.any() else float("nan"))


def null_draws(rows: list[dict], statistic: np.ndarray, nulls: int, threshold_of, draws: int = 300) -> np.ndarray:
    """Share of draws in which each prompt is flagged, the threshold set by ``threshold_of`` on
    ``nulls`` null prompts drawn from the scan's (a scan samples one such set; the draws average over which)."""
    return calibrated_draws(rows, nulls, lambda chosen: statistic <= threshold_of(statistic[chosen]), draws)


def calibrated_draws(rows: list[dict], nulls: int, flags_of, draws: int = 300) -> np.ndarray:
    """Share of draws in which each prompt is flagged by ``flags_of(the drawn null prompts' row indices)``."""
    null = np.flatnonzero(np.array([r["bucket"] == "null" for r in rows]))
    rng = np.random.default_rng(0)
    flagged = np.zeros(len(rows))
    for _ in range(draws):
        flagged += flags_of(rng.choice(null, size=min(nulls, len(null)), replace=False))
    return flagged / draws


def anchored_flags(rows: list[dict], k: int, factor: float, quantile: float, floor_factor: float, floor_quantile: float):
    """memscan's criterion (``calibration.anchored_thresholds``, as ``cluster.calibrate`` applies it) as a
    function of the drawn nulls' row indices: each prompt flagged when its collapse distance is within its threshold."""
    collapse, anchor = column(rows, f"collapse_{k}"), column(rows, "anchor")

    def flags_of(chosen: np.ndarray) -> np.ndarray:
        return collapse <= anchored_thresholds(collapse[chosen], anchor[chosen], anchor, factor, quantile, floor_factor,
                                               floor_quantile).thresholds
    return flags_of


def plain_default_flags(rows: list[dict], floor: bool = True):
    """``anchored_flags`` at memscan's default settings (``floor`` False: without the floor), in the plain view only:
    the rows hold no colour-centred statistics, so memscan's second view (``cluster.views``, session 20) is not in
    these draws; ``evaluate`` runs memscan's own stages."""
    d = ClusterConfig()
    return anchored_flags(rows, d.min_clique, d.null_factor, d.null_quantile, d.floor_factor if floor else 0.0, d.floor_quantile)


def low_quantile(alpha: float):
    """The rejected alternative: the j-th smallest null, j = floor(alpha (M + 1)), which keeps the
    false-flag rate at most alpha for prompts exchangeable with the nulls (flagged strictly below it)."""
    def threshold_of(values: np.ndarray) -> float:
        rank = max(1, int(np.floor(alpha * (len(values) + 1))))
        return float(np.nextafter(np.sort(values)[rank - 1], 0))
    return threshold_of


def at_default(rows: list[dict], nulls: int = 32, draws: int = 300) -> np.ndarray:
    return calibrated_draws(rows, nulls, plain_default_flags(rows), draws)


def compare(paths: list[Path], tuned_on: str, k: int = 5) -> None:
    """Every criterion on every scanned model: recall, false flags (unmemorized x1 and non-members), null flags."""
    scans = {path.stem.removeprefix("criterion-"): pq.read_table(path).to_pylist() for path in paths}
    tuned = next(rows for name, rows in scans.items() if name.startswith(tuned_on))
    # the fixed threshold and the run-relative factor are tuned on one model: the largest that keeps its false flags at 5%
    fixed = max((d for d in np.arange(0.005, 0.2, 0.0025) if outcome(tuned, column(tuned, f"collapse_{k}") <= d)[1] <= 0.05),
                default=0.02)
    factor = max((f for f in np.arange(0.05, 1.0, 0.025) if outcome(tuned, relative_to_run(tuned, f, k))[1] <= 0.05),
                 default=0.25)
    print(f"tuned on {tuned_on}: fixed threshold {fixed:.4f}, run-relative factor {factor:.3f}\n")
    print("| model | criterion | recall (memorized x200/x50/x10) | false flags (unmemorized x1 + non-members) | null prompts flagged |")
    print("| --- | --- | --- | --- | --- |")
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name, rows in scans.items():
        memorized = sum(r["memorized"] and r["bucket"] in DUPLICATED_BUCKETS for r in rows)
        collapse = {size: column(rows, f"collapse_{size}") for size in CLIQUE_SIZES}
        criteria = {
            "fixed 0.02, k 8 (the old default, tuned on demo)": collapse[8] <= 0.02,
            f"fixed {fixed:.4f}, k {k} (tuned on {tuned_on})": collapse[k] <= fixed,
            f"{factor:.3f} x the audit prompts' median collapse, k {k} (tuned on {tuned_on})": relative_to_run(rows, factor, k),
            f"at most 5% of 32 nulls flagged (their low tail), k {k}": null_draws(rows, collapse[k], 32, low_quantile(0.05)),
        }
        for quantile in (0.5, 0.75):
            for f in (0.2, 0.25, 0.3, 0.4):
                criteria[f"{f} x {quantile_name(quantile)} of 32 nulls, k {k}"] = null_draws(
                    rows, collapse[k], 32, lambda v, f=f, q=quantile: null_threshold(v, f, q))
        default = ClusterConfig()
        criteria[f"anchored: {default.null_factor} x {quantile_name(default.null_quantile)} of 32 nulls' collapse / anchor, "
                 f"floor {default.floor_factor} x {quantile_name(default.floor_quantile)}, k {default.min_clique} (the default)"] = \
            at_default(rows)
        criteria["the same of 16 nulls"] = at_default(rows, nulls=16)
        criteria["the same without the floor"] = calibrated_draws(rows, 32, plain_default_flags(rows, floor=False))
        for label, flagged in criteria.items():
            recall, false_flags, null_flags = outcome(rows, np.asarray(flagged, dtype=float))
            results.setdefault(f"{name} ({memorized} memorized)", {})[label] = (recall, false_flags)
            print(f"| {name} ({memorized} memorized) | {label} | {recall:.2f} | {false_flags:.3f} | {null_flags:.3f} |")
    # the same numbers, one row per model: recall / false flags of the criteria docs/CALIBRATION.md compares
    summary = [label for label in criteria if label.startswith(("fixed 0.02", f"0.3 x median of 32 nulls, k {k}",
                                                                 f"0.25 x upper quartile of 32 nulls, k {k}", "anchored:",
                                                                 f"{factor:.3f} x"))]
    print("\n| model | " + " | ".join(summary) + " |\n| --- |" + " --- |" * len(summary))
    for model, by_label in results.items():
        print(f"| {model} | " + " | ".join(f"{by_label[label][0]:.2f} / {by_label[label][1]:.3f}" for label in summary) + " |")
    print()
    for name, rows in scans.items():
        nulls = [r[f"collapse_{k}"] for r in rows if r["bucket"] == "null"]
        print(f"{name}: null prompts' collapse distance at k {k}, quartiles "
              + " ".join(f"{q:.4f}" for q in np.quantile(nulls, [0.25, 0.5, 0.75])))
        print(f"{name}: median collapse distance at k {k} by bucket (memorized items for x200/x50/x10): " + ", ".join(
            f"{b} {np.median([r[f'collapse_{k}'] for r in rows if r['bucket'] == b and (r['memorized'] or b in ('x1', 'non-member', 'null'))]):.4f}"
            for b in ("x200", "x50", "x10", "x1", "non-member", "null")))


def grid(paths: list[Path]) -> None:
    """The anchored criterion at clique sizes 3 to 8, the nulls' median or upper quartile, factors 0.4 to
    0.7 and floors 0 to 0.2 on each scanned model (thresholds set on 60 draws of 32 nulls), then tuned
    on each model alone (the setting with its largest recall at most 5% of its ordinary prompts flagged)
    and carried to the others: recall / false flags."""
    scans = {path.stem.removeprefix("criterion-"): pq.read_table(path).to_pylist() for path in paths}
    print("| k | reference | factor | floor | " + " | ".join(scans) + " |\n| --- | --- | --- | --- |" + " --- |" * len(scans))
    results = {}
    for k in range(3, 9):
        for quantile in (0.5, 0.75):
            for factor in np.round(np.arange(0.2 if quantile == 0.75 else 0.4, 0.71 if quantile == 0.5 else 0.51, 0.025), 3):
                for floor in (0.0, 0.1, 0.15, 0.2):
                    cells = results[(k, quantile, factor, floor)] = {}
                    for name, rows in scans.items():
                        flagged = calibrated_draws(rows, 32, anchored_flags(rows, k, factor, quantile, floor, 0.75), draws=60)
                        cells[name] = outcome(rows, flagged)[:2]
                    print(f"| {k} | {quantile_name(quantile)} | {factor} | {floor} | " + " | ".join(
                        f"{r:.2f} / {f:.3f}" for r, f in cells.values()) + " |", flush=True)
    print("\n| tuned on | its setting (k, reference, factor, floor) | " + " | ".join(scans) + " |\n| --- | --- |"
          + " --- |" * len(scans))
    for tuned in scans:
        allowed = [key for key, cells in results.items() if cells[tuned][1] <= 0.05]
        best = max(allowed, key=lambda key: (results[key][tuned][0], key[2], -key[3]))
        print(f"| {tuned} | {best[0]}, {quantile_name(best[1])}, {best[2]}, {best[3]} | " + " | ".join(
            f"{r:.2f} / {f:.3f}" for r, f in results[best].values()) + " |")


def first_seeds(db: Path, seeds: int) -> Path:
    """A copy of a stored scan holding each prompt's first ``seeds`` seeds only: the generations a scan at that
    many seeds draws (its images hard-linked; made once, under a temporary name until it is whole)."""
    out = db.with_name(f"{db.stem}-first{seeds}.duckdb")
    if out.exists():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(f"{partial}.files", ignore_errors=True)
    partial.unlink(missing_ok=True)
    shutil.copytree(f"{db}.files", f"{partial}.files", copy_function=os.link)
    shutil.copyfile(db, partial)
    with Store(partial) as store:
        store.execute("DELETE FROM generations WHERE generation_id IN (SELECT generation_id FROM (SELECT generation_id, "
                      "row_number() OVER (PARTITION BY run_id, prompt_id ORDER BY seed) AS seed_rank FROM generations) "
                      "WHERE seed_rank > ?)", [seeds])
    os.rename(f"{partial}.files", f"{out}.files")
    os.rename(partial, out)
    return out


def evaluate(name: str, guidance: float, samples: int, steps: int, config: ClusterConfig, match_config: MatchConfig,
             seeds: int | None = None) -> dict:
    """memscan's own stages at these settings on a stored calibration scan (on its first ``seeds`` seeds if given):
    clusters, candidates and matches recomputed as a scan would, then scored against the model's world."""
    from scanner import match
    from scanner.demo.evaluate import score_criterion, score_extraction

    _, world = CALIBRATION_MODELS[name]
    db = RUNS / f"{scan_stem(name, guidance, samples, steps)}.duckdb"
    db = first_seeds(db, seeds) if seeds else db
    index = world_index(name, load_embedder(ScanConfig().features))
    with Store(db) as store:
        run_id = latest_calibration_run(store)
        cluster.cluster_run(store, run_id, config)
        match.match_run(store, run_id, index, match_config)
        criterion, extraction = score_criterion(store, run_id, world), score_extraction(store, run_id, world)
        statement = criterion_statement(store, run_id)
        verdicts = store.query(
            "SELECT m.candidate_id, m.item_id, m.relative_tiled_l2, m.anchored_l2, m.tiled_l2, m.item_spacing, m.verdict "
            "FROM matches m WHERE m.run_id = ?", [run_id]).to_pylist()
    return {"model": name, "recall": criterion.recall, "memorized": criterion.memorized,
            "flagged": criterion.unmemorized_flagged, "leaking": criterion.unmemorized_leaking,
            "false_flags": criterion.false_flag_rate, "unmemorized": criterion.unmemorized,
            "threshold": statement.threshold, "nulls_flagged": statement.nulls_flagged, "nulls": statement.nulls,
            "extracted_precision": extraction.precision, "extracted_recall": extraction.recall,
            "judged_extracted": extraction.judged, "ambiguous": extraction.ambiguous, "reproducing": extraction.reproducing,
            "echoing": extraction.echoing, "own_judged": extraction.own_judged, "own_decided": extraction.own_decided,
            "other_judged": extraction.other_judged, "other_decided": extraction.other_decided,
            "matches": verdicts}


def small_audits(name: str, size: int, draws: int, samples: int, prompts_only: bool) -> None:
    """memscan's scan at its defaults on ``draws`` small audits of ``size`` prompts, half of them (rounded
    up) duplicated items: the case where null prompts recombined from the audit alone leak onto its
    memorized images. Without ``prompts_only`` the scan is given the world's index, whose training
    captions make up the null prompts' donors (``scanner.calibration.null_donors``)."""
    from scanner.demo.evaluate import score_criterion
    from scanner.models.registry import load_model
    from scanner.scan import run_scan

    model_dir, world = CALIBRATION_MODELS[name]
    model, embedder = load_model(model_dir), load_embedder(ScanConfig().features)
    index = world_index(name, embedder)
    items = demo_items(per_bucket=40, world=world)
    duplicated = [r for r in items if bucket_of(r["dup_count"]) in DUPLICATED_BUCKETS]
    ordinary = [r for r in items if bucket_of(r["dup_count"]) not in DUPLICATED_BUCKETS]
    # steps and guidance left to the family, as a user's scan leaves them (20 and 5 on the demo and Flux-shaped models)
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=samples, batch_size=64))
    label = "audit prompts only" if prompts_only else f"audit prompts + training captions of {index.name}"
    db = RUNS / f"small-{name}-n{size}-s{samples}.duckdb"
    print(f"| {name}, {size} prompts, nulls from {label} | threshold (nulls under it) | memorized flagged | ordinary flagged |")
    print("| --- | --- | --- | --- |")
    totals = np.zeros(4, dtype=int)
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        halves = (-(-size // 2), size // 2)
        chosen = [pool[i] for pool, n in zip((duplicated, ordinary), halves) for i in rng.choice(len(pool), n, replace=False)]
        prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in chosen]
        with Store(db) as store:
            result = run_scan(store, model, prompts, config, kind="small-audit", show_progress=False, embedder=embedder,
                              index=None if prompts_only else index)
            score, statement = score_criterion(store, result.run_id, world), criterion_statement(store, result.run_id)
        counts = np.array([score.memorized, score.memorized_flagged, score.unmemorized, score.unmemorized_flagged])
        totals += counts
        print(f"| draw {draw} | {statement.threshold:.4f} ({statement.nulls_flagged} of {statement.nulls}) | "
              f"{counts[1]} of {counts[0]} | {counts[3]} of {counts[2]} |", flush=True)
    print(f"| all | | {totals[1]} of {totals[0]} | {totals[3]} of {totals[2]} |")


def fidelity(name: str, samples: int) -> None:
    """How close the model can come to its duplicated training items at all: each item's round trip
    through the model's own autoencoder against the nearest of its prompt's generations in the stored
    scan (tiled l2). The per-item truth was an absolute tiled l2 of 0.10 until session 15; on a model
    whose autoencoder cannot come within it, no copy was a copy by that truth."""
    import torch
    from diffusers import AutoencoderKL

    from scanner.distances import tiled_l2

    model_dir, world = CALIBRATION_MODELS[name]
    vae = AutoencoderKL.from_pretrained(model_dir / "vae").float().eval()
    items = {r["item_id"]: r for r in load_world(["item_id", "dup_count", "image_png"], world)
             if bucket_of(r["dup_count"]) in DUPLICATED_BUCKETS}
    with Store(RUNS / f"{scan_stem(name, 5.0, samples)}.duckdb", read_only=True) as store:
        by_prompt = generations_by_prompt(store, latest_calibration_run(store))
    rows = []
    for prompt in by_prompt.values():
        if prompt.item_id not in items:
            continue
        image = decode_png(items[prompt.item_id]["image_png"]).astype(np.float32) / 255
        with torch.no_grad():
            x = torch.from_numpy(image).permute(2, 0, 1)[None] * 2 - 1
            back = (vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)[0].permute(1, 2, 0).numpy() + 1) / 2
        nearest = float(tiled_l2(image[None], prompt.images.astype(np.float32) / 255, 4).min())
        rows.append((bucket_of(items[prompt.item_id]["dup_count"]), float(tiled_l2(image[None], back[None], 4)[0]), nearest))
    print(f"| {name}: bucket | autoencoder round trip (median) | nearest generation (median) | nearest within 1.5 x its round trip |")
    print("| --- | --- | --- | --- |")
    for bucket in DUPLICATED_BUCKETS:
        chosen = [r for r in rows if r[0] == bucket]
        print(f"| {bucket} | {np.median([r[1] for r in chosen]):.3f} | {np.median([r[2] for r in chosen]):.3f} | "
              f"{sum(r[2] <= 1.5 * r[1] for r in chosen)} of {len(chosen)} |")


def world_index(name: str, embedder):
    """The training index of a calibration model's world (built once, under indexes/)."""
    from scanner.demo.pipeline import demo_index

    _, world = CALIBRATION_MODELS[name]
    return demo_index(embedder, Path("indexes"), RUNS, world, name="demo" if world.name == "world.parquet" else f"demo-{world.stem}")


def mix(name: str, guidances: list[float], samples: int) -> None:
    """The default criterion on each scan alone and on their pool (the truth from the same generations)."""
    _, world = CALIBRATION_MODELS[name]
    truth = CaptionDrawings(world)
    scans = {}
    for guidance in guidances:
        with Store(RUNS / f"{scan_stem(name, guidance, samples)}.duckdb", read_only=True) as store:
            scans[f"guidance {guidance:g}"] = generations_by_prompt(store, latest_calibration_run(store))
    shared = set.intersection(*(set(scan) for scan in scans.values()))
    scans[" + ".join(scans)] = {p: scans[next(iter(scans))][p]._replace(images=np.concatenate([scan[p].images for scan in scans.values()]))
                                for p in shared}
    default = ClusterConfig()
    for label, by_prompt in scans.items():
        prompts = [by_prompt[p] for p in sorted(by_prompt)]
        anchors = prompt_anchors([p.images[:default.anchor_seeds] for p in prompts], default.anchor_prompts)
        rows = [{**prompt_truth(p, truth), "anchor": anchor, f"collapse_{default.min_clique}":
                 cluster.collapse_distance(p.images, default.min_clique, default.tiles)} for p, anchor in zip(prompts, anchors)]
        null = np.flatnonzero([p.source == NULL_SOURCE for p in prompts])
        recall, false_flags, _ = outcome(rows, plain_default_flags(rows)(null).astype(float))
        memorized = sum(r["memorized"] and r["bucket"] in DUPLICATED_BUCKETS for r in rows)
        print(f"{name}, {label} ({len(prompts[0].images)} generations per prompt): "
              f"recall {recall:.2f} of {memorized}, false flags {false_flags:.3f}")


def spread_rules(paths: list[Path]) -> None:
    """Rules that would read how widely a model's ordinary prompts spread from the scan itself, beside the default
    (session 32), in the plain view on the 32-seed rows: the clique of 5 within the rule's factor x M, M the nulls'
    median of collapse distance over anchor, and the core (16 of 32) within ``core_factor`` x the nulls' median
    there; no floor. The mirror of the audit prompts' 95th percentile q about M (memorization only lowers a
    prompt's ratio, so their upper tail is free of it), min(0.55 M, 2 M - q), the same in log space,
    min(0.55 M, M^2 / q), and the reference min(M, the audit prompts' median): recall / false flags."""
    default = ClusterConfig()
    core = cluster.core_size(32, default)
    print("| model | the default (0.55 M) | mirror, min(0.55 M, 2M - q95) | log mirror, min(0.55 M, M^2 / q95) | "
          "0.55 x min(M, the audit's median) |\n| --- | --- | --- | --- | --- |")
    for path in paths:
        rows = pq.read_table(path).to_pylist()
        null = np.array([r["bucket"] == "null" for r in rows])
        ratio, core_ratio = (column(rows, f"collapse_{k}") / column(rows, "anchor") for k in (default.min_clique, core))
        within_core = core_ratio <= default.core_factor * np.median(core_ratio[null])
        reference, upper = np.median(ratio[null]), np.quantile(ratio[~null], 0.95)
        default_threshold = default.null_factor * reference
        thresholds = [default_threshold, min(default_threshold, 2 * reference - upper),
                      min(default_threshold, reference ** 2 / upper),
                      default.null_factor * min(reference, np.median(ratio[~null]))]
        cells = [outcome(rows, (ratio <= threshold) & within_core)[:2] + (threshold / reference,) for threshold in thresholds]
        print(f"| {path.stem.removeprefix('criterion-')} | " + " | ".join(
            f"{recall:.2f} / {false_flags:.3f} ({factor:.2f} M)" for recall, false_flags, factor in cells) + " |")


def cluster_settings(assignments: list[str]) -> ClusterConfig:
    """The default criterion with ``key=value`` overrides, each value read as JSON (``min_clique=8``,
    ``null_factor=0.45``, ``colour_centred=false``)."""
    overrides = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        overrides[key] = json.loads(value)
    return dataclasses.replace(ClusterConfig(), **overrides)


def latest_calibration_run(store: Store) -> str:
    return store.execute("SELECT run_id FROM runs WHERE kind = 'calibration' ORDER BY started_at DESC LIMIT 1")[0][0]


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=np.float64)


def relative_to_run(rows: list[dict], factor: float, k: int) -> np.ndarray:
    statistic = column(rows, f"collapse_{k}")
    audit = np.array([r["bucket"] != "null" for r in rows])
    return statistic <= factor * np.median(statistic[audit])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan")
    scan.add_argument("--model", choices=sorted(CALIBRATION_MODELS), required=True)
    scan.add_argument("--per-bucket", type=int, default=60)
    scan.add_argument("--nulls", type=int, default=60)
    scan.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    scan.add_argument("--guidance", type=float, default=5.0)
    scan.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    scan.add_argument("--no-statistics", action="store_true", help="skip the per-prompt rows (evaluate does not need them)")
    restating = sub.add_parser("statistics", help="recompute a stored 32-seed scan's rows (on its first --seeds seeds)")
    restating.add_argument("--model", choices=sorted(CALIBRATION_MODELS), nargs="+", required=True)
    restating.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    restating.add_argument("--seeds", type=int, default=None)
    gridding = sub.add_parser("grid", help="the anchored criterion's settings on every scanned model, and tuned on each")
    gridding.add_argument("--seeds", type=int, default=None, help="the rows of the first this many seeds (statistics --seeds)")
    sub.add_parser("spread", help="rules reading a model's spread from the scan itself, on every 32-seed scan's rows")
    comparison = sub.add_parser("compare")
    comparison.add_argument("--tuned-on", default="demo", help="the model the fixed and run-relative criteria are tuned on")
    evaluation = sub.add_parser("evaluate", help="memscan's stages at their defaults on every scanned model")
    evaluation.add_argument("--guidance", type=float, default=5.0)
    evaluation.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                            help="evaluate the scans stored at this many seeds per prompt")
    evaluation.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="... and this many sampling steps")
    evaluation.add_argument("--seeds", type=int, default=None,
                            help="on each scan's first this many seeds (a copy of it: what a scan at that many draws)")
    evaluation.add_argument("--model", choices=sorted(CALIBRATION_MODELS), nargs="+", default=list(CALIBRATION_MODELS),
                            help="the models to evaluate (default: every model with a stored scan at these settings)")
    evaluation.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="a criterion setting other than the default (ClusterConfig; repeatable). The stored "
                                 "scans are left clustered at these settings")
    small = sub.add_parser("small", help="memscan's scan at its defaults on small audits of one model")
    small.add_argument("--model", choices=sorted(CALIBRATION_MODELS), required=True)
    small.add_argument("--prompts", type=int, default=3, help="audit prompts, half of them (rounded up) duplicated items")
    small.add_argument("--draws", type=int, default=5)
    small.add_argument("--samples", type=int, default=32)
    small.add_argument("--prompts-only", action="store_true", help="no index: nulls from the audit prompts alone")
    fidelity_parser = sub.add_parser("fidelity", help="how close the model's own autoencoder comes to its duplicated items")
    fidelity_parser.add_argument("--model", choices=sorted(CALIBRATION_MODELS), required=True)
    fidelity_parser.add_argument("--samples", type=int, default=32, help="the stored scan's seeds per prompt")
    mixing = sub.add_parser("mix", help="the default criterion on one model's scans at several guidance scales, pooled")
    mixing.add_argument("--model", choices=sorted(CALIBRATION_MODELS), required=True)
    mixing.add_argument("--guidance", type=float, nargs="+", required=True)
    mixing.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    args = parser.parse_args()
    if args.command == "scan":
        scan_model(args.model, args.per_bucket, args.nulls, args.samples, args.guidance, args.steps, not args.no_statistics)
    elif args.command == "small":
        small_audits(args.model, args.prompts, args.draws, args.samples, args.prompts_only)
    elif args.command == "fidelity":
        fidelity(args.model, args.samples)
    elif args.command == "mix":
        mix(args.model, args.guidance, args.samples)
    elif args.command == "statistics":
        for name in args.model:
            restate(name, args.steps, args.seeds)
    elif args.command == "grid":
        first = f"-first{args.seeds}" if args.seeds else ""
        grid(sorted(path for path in RUNS.glob("criterion-*-s32*.parquet") if ("-first" in path.stem) == bool(first)
                    and path.stem.endswith(first)))
    elif args.command == "spread":
        spread_rules(sorted(path for path in RUNS.glob("criterion-*-s32*.parquet") if "-first" not in path.stem))
    elif args.command == "compare":
        compare(sorted(path for path in RUNS.glob("criterion-*.parquet") if "-first" not in path.stem), args.tuned_on)
    else:
        try:
            settings = cluster_settings(args.set)
        except (TypeError, ValueError) as error:
            parser.error(f"--set: {error}")
        print("| model | threshold (nulls under it) | recall | false flags (flagged; of them leaking) | extracted precision "
              "(judged; ambiguous) | extracted recall (of near-copies; echoes) | the truth decides, of the verdicts naming "
              "the prompt's own item / another caption's |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in args.model:
            if (RUNS / f"{scan_stem(name, args.guidance, args.samples, args.steps)}.duckdb").exists():
                r = evaluate(name, args.guidance, args.samples, args.steps, settings, MatchConfig(), args.seeds)
                print(f"| {name} | {r['threshold']:.4f} ({r['nulls_flagged']} of {r['nulls']}) | {r['recall']:.2f} of "
                      f"{r['memorized']} | {r['false_flags']:.3f} of {r['unmemorized']} ({r['flagged']}; {r['leaking']}) | "
                      f"{r['extracted_precision']:.2f} ({r['judged_extracted']}; "
                      f"{r['ambiguous']}) | {r['extracted_recall']:.2f} of {r['reproducing']}; {r['echoing']} | "
                      f"{r['own_decided']} of {r['own_judged']} / {r['other_decided']} of {r['other_judged']} |", flush=True)


if __name__ == "__main__":
    main()
