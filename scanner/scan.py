"""A scan, stage by stage: prompts -> generations -> clusters -> candidates, in one store.

Each stage reads and writes the store only. With ``sampling.stop_early`` sampling and the
clique criterion take turns: seeds are drawn in rounds, each for the prompts whose verdict is
still open, so a prompt stops once a clique of ``min_clique`` is found or can no longer form. The run id is a hash of what determines the
generations (model weights, the precision the workers sample in, prompts, sampler settings; not
the batch size), so running the same scan again finds its run and resumes it. A model without
prompts (unconditional) draws many seeds of the empty prompt, and every generation is matched
against the training index instead of clustered (``match.match_every_generation``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scanner import calibration, cluster, generate, match
from scanner.config import SamplingConfig, ScanConfig
from scanner.distributed import LocalPool, Pool
from scanner.mia.attacks import check_attacks
from scanner.mia.in_scan import score_scan
from scanner.mia.triage import top_fraction, triage
from scanner.generate import Prompt
from scanner.models.loading import ModelSpec, WorkerModels, pool_precision
from scanner.index import TrainingIndex
from scanner.errors import MemscanError
from scanner.models.base import LABEL, SAMPLE, TEXT, UNCONDITIONAL_PROMPT, ImageTextEmbedder, TextToImageModel, require
from scanner.progress import progress_bar
from scanner.store import Store, stable_id


@dataclass(frozen=True)
class ScanResult:
    run_id: str
    resumed: bool
    timings: dict[str, float]
    counts: dict[str, int]


def unconditional_prompts(model: TextToImageModel) -> list[Prompt]:
    """What a scan of a model without text prompts samples when no prompts are given: the one empty
    prompt of an unconditional model, or every class of a class-conditional one, with many seeds."""
    if LABEL in model.capabilities:
        return [Prompt.from_text(name, source="class label") for name in model.class_names]
    return [Prompt.from_text(UNCONDITIONAL_PROMPT, source="unconditional")]


def check_unconditional_scan(model: TextToImageModel, prompts: Sequence[Prompt], config: ScanConfig,
                             index: TrainingIndex | None) -> None:
    """A model without text prompts is scanned as Carlini et al. scan their CIFAR-10 models: many
    seeds of the empty prompt (of each class, for a class-conditional model), every generation
    matched against the training set. What needs text prompts (null calibration of a clique
    threshold, stopping early on it) has nothing to work on."""
    labelled = LABEL in model.capabilities
    what = f"a {model.kind} model is {'class-conditional' if labelled else 'unconditional'}"
    if labelled:
        model.class_ids([p.text for p in prompts])  # one line for a prompt that names no class
    elif [p.text for p in prompts] != [UNCONDITIONAL_PROMPT]:
        raise MemscanError(f"{what}: it takes no prompts (drop --prompts and --prompts-from-index); its scan draws "
                           "--samples-per-prompt seeds and matches every generation against the training set")
    if index is None:
        raise MemscanError(f"{what}: with no text prompt whose generations could be calibrated, its scan matches every "
                           "generation against the training set (Carlini et al.'s CIFAR-10 extraction): give --index")
    if config.sampling.stop_early:
        raise MemscanError(f"{what}: --stop-early needs the clique criterion of a prompted model; drop it")


def run_id_for(model: TextToImageModel, precision: str, prompts: Sequence[Prompt], config: ScanConfig, kind: str) -> str:
    sampling = dataclasses.asdict(config.sampling)
    sampling.pop("batch_size")
    return kind + "-" + stable_id(model.model_hash, precision, sorted(p.prompt_id for p in prompts), sorted(sampling.items()),
                                  length=12)


def triage_prompts(store: Store, run_id: str, model: TextToImageModel, prompts: Sequence[Prompt],
                   sampling: SamplingConfig, pool: Pool, precision: str) -> list[Prompt]:
    """Keep the top fraction of prompts by the memorization detector; every prompt's score is
    stored, and a resumed scan keeps what the stored scores chose instead of triaging again."""
    attack = f"{sampling.triage_detector}_triage"
    stored = dict(store.execute("SELECT item_id, score FROM mia_scores WHERE run_id = ? AND attack = ?", [run_id, attack]))
    if all(p.prompt_id in stored for p in prompts):
        return top_fraction(prompts, np.array([stored[p.prompt_id] for p in prompts]), sampling.triage)
    kept, scores = triage(model, prompts, sampling.triage, seeds=tuple(range(sampling.triage_seeds)),
                          num_inference_steps=sampling.num_inference_steps, detector=sampling.triage_detector,
                          guidance_scale=sampling.guidance_scale, pool=pool, precision=precision)
    chosen = {p.prompt_id for p in kept}
    store.insert("mia_scores", [{"run_id": run_id, "item_id": p.prompt_id, "attack": attack, "score": float(s),
                                 "threshold": None, "predicted_member": p.prompt_id in chosen, "label": None,
                                 "settings": json.dumps({"fraction": sampling.triage, "seeds": sampling.triage_seeds, "kind": "prompt"})}
                                for p, s in zip(prompts, scores)])
    return kept


def sample_until_settled(store: Store, job: generate.SamplingJob, prompts: Sequence[Prompt], pool: Pool,
                         config: ScanConfig, advance: Callable[..., None]) -> dict[str, float]:
    """Draw seeds round by round (``cluster.verdict_checkpoints``), each round only for the prompts
    still open. Which prompts are open after a round depends only on the stored rows of the seeds
    before it, so a killed scan replays the same rounds and batches, and resumes where it stopped.
    The null prompts are sampled in full before, and the first round draws every prompt's anchor
    seeds: after it the criterion (each prompt's threshold) is the one the full plan would have."""
    sampling, planned = config.sampling, config.sampling.samples_per_prompt
    totals: dict[str, float] = {}
    still_open, drawn, criterion = list(prompts), 0, None
    for checkpoint in cluster.verdict_checkpoints(planned, config.cluster.min_clique, first=config.cluster.seeds_before_judging):
        round_job = dataclasses.replace(job, sampling=dataclasses.replace(
            sampling, seed_base=sampling.seed_base + drawn, samples_per_prompt=checkpoint - drawn))
        stats = generate.run_generation(store, round_job, still_open, pool, on_batch=advance,
                                        flush_rows=config.ray.flush_rows, flush_seconds=config.ray.flush_seconds)
        totals = {key: totals.get(key, 0) + value for key, value in stats.items()}
        drawn = checkpoint
        criterion = criterion or cluster.run_criterion(store, job.run_id, config.cluster)
        open_ids = cluster.open_prompts(store, job.run_id, [p.prompt_id for p in still_open], sampling.seed_base, drawn,
                                        planned, config.cluster, criterion)
        advance((len(still_open) - len(open_ids)) * (planned - drawn), skip=True)
        still_open = [p for p in still_open if p.prompt_id in open_ids]
        if not still_open:
            break
    return totals


def run_scan(store: Store, model: TextToImageModel, prompts: Sequence[Prompt], config: ScanConfig,
             kind: str = "scan", show_progress: bool = True, embedder: ImageTextEmbedder | None = None,
             index: TrainingIndex | None = None, pool: Pool | None = None) -> ScanResult:
    """Sample what is missing, then recompute clusters and candidates; ``embedder`` adds CLIP
    image embeddings to every generation (FAISS proposes near-duplicate edges from them);
    ``index`` matches every candidate to the training items it may reproduce. Sampling runs on
    ``pool`` (Ray workers holding the same models) or, by default, here."""
    require(model, SAMPLE, "a scan")
    config = dataclasses.replace(config, sampling=config.sampling.for_model(model))
    if config.sampling.triage < 1.0:
        check_attacks(model, [config.sampling.triage_detector])
    prompted = TEXT in model.capabilities
    if prompted:
        config.check_clique_can_form()
    else:
        check_unconditional_scan(model, prompts, config, index)
    pool = pool or LocalPool(WorkerModels(model, embedder))
    precision = pool_precision(pool)
    calibrated = prompted and config.cluster.threshold is None
    donors = calibration.null_donors(prompts, index.captions if index is not None else ()) if calibrated else []
    nulls = calibration.null_prompts(prompts, config.cluster.null_prompts, donors=donors) if calibrated else []
    if calibrated and not nulls:
        raise MemscanError("the criterion cannot be calibrated: the prompts have fewer than two distinct words to make "
                           "null prompts from; give a fixed --threshold")
    run_id = run_id_for(model, precision, [*prompts, *nulls], config, kind)
    provenance = config.to_dict()
    provenance["sampling"]["precision"] = precision
    provenance["model_kind"] = model.kind  # as resolved: model_index.json's class, or --model-kind
    provenance["family_defaults"] = model.defaults.source  # where unset steps and guidance came from
    if calibrated:  # what the null prompts were recombined from (the statement says it)
        provenance["cluster"]["null_donors"] = {"prompts": len(prompts), "training_captions": len(donors) - len(prompts)}
    if not prompted:  # no clique, no null prompts: every generation matched (match.match_every_generation)
        provenance["cluster"] = {"criterion": calibration.NEAREST_ITEM}
    provenance["loras"] = [{"file": lora.path, "scale": lora.scale} for lora in model.loras]  # the hash covers their bytes
    if not getattr(model, "seeded", True):  # an unseeded API: a generation is (prompt, draw index), never reproducible
        provenance["seeded"] = False
    if config.reference_model:  # a fine-tune audit: the report sets the reference model's scans beside its findings
        reference = ModelSpec.of(config.reference_model, loras=config.reference_loras)
        provenance["reference"] = {"model_ref": reference.model_ref, "guidance": config.sampling.reference_guidance}
    if index is not None:
        provenance["match"].update(index=index.name, index_folder=str(index.folder.resolve()),
                                   index_embedder_hash=index.manifest["embedder_hash"])
    if embedder is not None:
        provenance["features"].update(embedder=embedder.model_ref, embedder_hash=embedder.model_hash,
                                      embedder_preprocess=getattr(embedder, "preprocess_cfg", {}))
    resumed = store.start_run(run_id, kind, model.model_ref, model.model_hash, provenance, generate.library_versions())
    began = time.perf_counter()
    try:
        generate.record_prompts(store, run_id, [*prompts, *nulls])
        triaged, prompts_given = time.perf_counter(), len(prompts)
        if config.sampling.triage < 1.0:
            prompts = triage_prompts(store, run_id, model, prompts, config.sampling, pool, precision)
        triage_seconds = time.perf_counter() - triaged
        total = (len(prompts) + len(nulls)) * config.sampling.samples_per_prompt
        asked_before_sampling = generate.request_counts(model)
        with progress_bar("sampling", total, enabled=show_progress) as advance:
            already = len(generate.stored_work(store, run_id))
            advance(already, skip=True)
            job = generate.SamplingJob(run_id, model.model_hash, precision, config.sampling, str(store.files_dir),
                                       config.features.thumbnail_size)
            if config.sampling.stop_early:
                # the null prompts are sampled in full first: the criterion they calibrate decides when a verdict is settled
                stats = generate.run_generation(store, job, nulls, pool, on_batch=advance, flush_rows=config.ray.flush_rows,
                                                flush_seconds=config.ray.flush_seconds)
                rounds = sample_until_settled(store, job, prompts, pool, config, advance)
                stats = {key: stats.get(key, 0) + value for key, value in rounds.items()}
            else:
                stats = generate.run_generation(store, job, [*prompts, *nulls], pool, on_batch=advance,
                                                flush_rows=config.ray.flush_rows, flush_seconds=config.ray.flush_seconds)
        asked_while_sampling = generate.counted_since(asked_before_sampling, generate.request_counts(model))
        clustered = time.perf_counter()
        if prompted:
            cluster_counts = cluster.cluster_run(store, run_id, config.cluster)
        else:  # no prompt to collapse: the generations are grouped by the training item they match
            cluster_counts = match.match_every_generation(store, run_id, index, config.match)
        matched = time.perf_counter()
        if index is not None and prompted:
            cluster_counts.update({f"matched_{k}": v for k, v in match.match_run(store, run_id, index, config.match).items()})
        scored = time.perf_counter()
        cluster_counts["membership_scores"] = score_scan(store, run_id, model, index, config.sampling, pool, precision)
        timings = {"triage_s": triage_seconds, "sampling_s": stats["sampling_s"], "features_s": stats["features_s"],
                   "clustering_s": matched - clustered, "matching_s": scored - matched,
                   "membership_s": time.perf_counter() - scored, "total_s": time.perf_counter() - began}
        # a model behind an HTTP API: what this driver asked of it outside sampling, and what the sampling units asked,
        # here or on Ray workers (with a local pool the units' requests are the driver's own, counted once)
        for name, value in generate.request_counts(model).items():
            timings[f"requests_{name}"] = value - asked_while_sampling[name] + stats.get(f"requests_{name}", 0.0)
    except BaseException:
        store.finish_run(run_id, {"total_s": time.perf_counter() - began}, status="failed")
        raise
    store.finish_run(run_id, timings)
    counts = {"prompts_given": prompts_given, "prompts_sampled": len(prompts), "null_prompts": len(nulls),
              "generated": int(stats["generated"]),
              "resumed_from": int(stats["skipped_existing"]), "planned": total, **cluster_counts}
    return ScanResult(run_id, resumed, timings, counts)
