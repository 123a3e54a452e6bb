"""``memscan mia eval``: run the attacks on labelled members and non-members and measure them.

Statistical honesty: each set is split once (seeded) into an auxiliary half, on which every
threshold, scaler and mixing weight is fitted, and an evaluation half, on which the metrics
are computed; every metric is stored with its member and non-member counts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from scanner.features import resize
from scanner.mia import metrics
from scanner.mia.attack import Features
from scanner.mia.attacks import ATTACKS, check_attacks
from scanner.mia.denoising import NoiseProtocol
from scanner.mia.measurements import Measurements
from scanner.distributed import LocalPool, Pool, map_in_order
from scanner.models.base import ImageTextEmbedder, TextToImageModel
from scanner.models.loading import WorkerModels, pool_precision
from scanner.store import Store, stable_id



@dataclass(frozen=True)
class LabelledItem:
    item_id: str
    caption: str
    image: np.ndarray
    member: bool
    bucket: str = ""


def attack_scores(model: TextToImageModel, items: Sequence[LabelledItem], attacks: Sequence[str],
                  protocol: NoiseProtocol, triage_seeds: Sequence[int] = (0, 1, 2, 3),
                  embedder: ImageTextEmbedder | None = None,
                  reference_model: TextToImageModel | None = None) -> dict[str, Features]:
    """Raw per-item features of each attack (before any fitting), every shared measurement made
    once; a detector's is its evidence (``finish_features`` scores it once every item's is in:
    seed agreement compares a prompt's samples with all the others')."""
    chosen = [ATTACKS[name] for name in attacks]
    # at the model's resolution: a user's labelled images come in any size (and mixed sizes)
    images = np.stack([resize(item.image, model.resolution) for item in items])
    measured = Measurements(model, images, [item.caption for item in items], chosen,
                            protocol, embedder, triage_seeds, reference_model)
    return {attack.name: attack.features(measured) for attack in chosen}


def finish_features(features: dict[str, Features]) -> dict[str, Features]:
    """The whole set's features: detector evidence turned into scores, so that how the set was cut
    into chunks (workers, batches) never changes a score."""
    return {name: ATTACKS[name].whole_set(raw) for name, raw in features.items()}


@dataclass(frozen=True)
class AttackJob:
    attacks: tuple[str, ...]
    protocol: NoiseProtocol


def score_chunk(job: AttackJob, models: WorkerModels, chunk: Sequence[LabelledItem]) -> dict[str, Features]:
    """A Ray worker's task: the raw attack features of a chunk of items."""
    return attack_scores(models.model, chunk, job.attacks, job.protocol, embedder=models.embedder,
                         reference_model=models.reference)


def features_on(pool: Pool | None, model: TextToImageModel, items: Sequence[LabelledItem], attacks: Sequence[str],
                protocol: NoiseProtocol, embedder: ImageTextEmbedder | None = None, chunk_size: int = 64,
                reference_model: TextToImageModel | None = None) -> dict[str, Features]:
    """``attack_scores`` chunk by chunk, on ``pool``'s Ray workers or in this process. Every feature
    belongs to one item (the shared noise depends on the repeat and timestep, not on the batch),
    so the joined result does not depend on where the chunks ran. Attacks the model cannot run, or
    that need a reference model not given, are refused before any work (``check_attacks``)."""
    check_attacks(model, attacks, has_reference=reference_model is not None)
    pool = pool or LocalPool(WorkerModels(model, embedder, reference_model))
    chunks = [items[start:start + chunk_size] for start in range(0, len(items), chunk_size)]
    ordered = map_in_order(pool, functools.partial(score_chunk, AttackJob(tuple(attacks), protocol)), chunks)
    return finish_features({attack: {key: np.concatenate([part[attack][key] for part in ordered]) for key in ordered[0][attack]}
                            for attack in ordered[0]})


def _features_and_precision(pool: Pool | None, model: TextToImageModel, items: Sequence[LabelledItem],
                            attacks: Sequence[str], protocol: NoiseProtocol,
                            embedder: ImageTextEmbedder | None,
                            reference_model: TextToImageModel | None) -> tuple[dict[str, Features], str]:
    """The attack features and the precision they were computed in (part of the run id)."""
    pool = pool or LocalPool(WorkerModels(model, embedder, reference_model))
    return (features_on(pool, model, items, attacks, protocol, embedder, reference_model=reference_model),
            pool_precision(pool))


def reference_identity(reference_model: TextToImageModel | None) -> dict:
    """What a run records of its reference model, and what its id depends on."""
    return {} if reference_model is None else {"reference_model": reference_model.model_ref,
                                                "reference_model_hash": reference_model.model_hash}


def require_distinct(items: Sequence[LabelledItem]) -> None:
    """Scores are stored per item id: two items with one id would leave one row for both."""
    ids = [item.item_id for item in items]
    if len(set(ids)) < len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"item ids must be distinct, and {', '.join(repeated[:3])} repeat "
                         "(scanner.mia.labelled.distinct_ids names them by their set)")


def split_halves(items: Sequence[LabelledItem], seed: int) -> np.ndarray:
    """A boolean mask of the auxiliary half, drawn separately among members and non-members."""
    rng = np.random.default_rng(seed)
    auxiliary = np.zeros(len(items), bool)
    for member in (True, False):
        index = np.flatnonzero([item.member == member for item in items])
        auxiliary[rng.permutation(index)[: len(index) // 2]] = True
    return auxiliary


def run_mia_eval(store: Store, model: TextToImageModel, items: Sequence[LabelledItem], attacks: Sequence[str] = ("loss", "clid_th", "wen"),
                 protocol: NoiseProtocol = NoiseProtocol(), seed: int = 0, embedder: ImageTextEmbedder | None = None,
                 pool: Pool | None = None,
                 reference_model: TextToImageModel | None = None) -> tuple[str, dict[str, metrics.AttackMetrics], list[dict]]:
    """Score (here, or on ``pool``'s Ray workers), fit on the auxiliary half, evaluate on the
    other; store scores and metrics. ``reference_model`` is what the reference attacks compare with."""
    require_distinct(items)
    protocol = protocol.for_model(model)  # resolved before the run id names it
    labels = np.array([item.member for item in items])
    auxiliary = split_halves(items, seed)
    raw, precision = _features_and_precision(pool, model, items, attacks, protocol, embedder, reference_model)
    compared_with = reference_identity(reference_model)
    run_id = "mia-" + stable_id(model.model_hash, precision, sorted(i.item_id for i in items), sorted(attacks), asdict(protocol),
                                seed, compared_with, length=12)
    store.start_run(run_id, "mia", model.model_ref, model.model_hash,
                    {"attacks": list(attacks), "protocol": asdict(protocol), "split_seed": seed, "precision": precision,
                     **compared_with}, {})
    results, per_bucket, score_rows, metric_rows = {}, [], [], []
    evaluation = ~auxiliary
    for attack in attacks:
        scores, threshold, extra = ATTACKS[attack].fit(raw[attack], labels, auxiliary)
        result = metrics.evaluate(scores[evaluation], labels[evaluation], threshold)
        results[attack] = result
        for item, score, aux in zip(items, scores, auxiliary):
            score_rows.append({"run_id": run_id, "item_id": item.item_id, "attack": attack, "score": float(score),
                               "threshold": threshold, "predicted_member": bool(score >= threshold), "label": item.member,
                               "settings": json.dumps({"split": "auxiliary" if aux else "evaluation", "bucket": item.bucket, **extra})})
        for name, value in (("auc", result.auc), ("tpr_at_1pct_fpr", result.tpr_at_1_fpr),
                            ("tpr_at_0.1pct_fpr", result.tpr_at_01_fpr), ("balanced_accuracy", result.balanced_accuracy)):
            metric_rows.append({"run_id": run_id, "metric": f"mia_{name}", "subject": attack, "value": value,
                                "n_positive": result.n_members, "n_negative": result.n_nonmembers,
                                "details": json.dumps({"threshold": threshold, "roc": result.roc, **extra})})
        nonmember_eval = evaluation & ~labels
        for bucket in sorted({i.bucket for i in items if i.member and i.bucket}):
            chosen = evaluation & np.array([i.member and i.bucket == bucket for i in items]) | nonmember_eval
            bucket_result = metrics.evaluate(scores[chosen], labels[chosen], threshold)
            per_bucket.append({"attack": attack, "bucket": bucket, "auc": bucket_result.auc,
                               "tpr_at_1pct_fpr": bucket_result.tpr_at_1_fpr, "members": bucket_result.n_members,
                               "non_members": bucket_result.n_nonmembers})
            metric_rows.append({"run_id": run_id, "metric": "mia_bucket_auc", "subject": f"{attack}:{bucket}",
                                "value": bucket_result.auc, "n_positive": bucket_result.n_members,
                                "n_negative": bucket_result.n_nonmembers,
                                "details": json.dumps({"tpr_at_1pct_fpr": bucket_result.tpr_at_1_fpr})})
    with store.transaction():
        store.replace_run_rows(["mia_scores", "metrics"], run_id)
        store.insert("mia_scores", score_rows)
        store.insert("metrics", metric_rows)
    store.finish_run(run_id, {})
    return run_id, results, per_bucket


def run_mia_score(store: Store, model: TextToImageModel, reference: Sequence[LabelledItem], unlabeled: Sequence[LabelledItem],
                  attacks: Sequence[str] = ("loss", "clid_th"), protocol: NoiseProtocol = NoiseProtocol(),
                  embedder: ImageTextEmbedder | None = None, pool: Pool | None = None,
                  reference_model: TextToImageModel | None = None) -> tuple[str, list[dict]]:
    """Score unlabeled items with every scaler and threshold fitted on the labelled reference set."""
    items = list(reference) + list(unlabeled)
    require_distinct(items)
    protocol = protocol.for_model(model)
    labels = np.array([item.member for item in reference] + [False] * len(unlabeled))
    fitted_on = np.arange(len(items)) < len(reference)
    raw, precision = _features_and_precision(pool, model, items, attacks, protocol, embedder, reference_model)
    compared_with = reference_identity(reference_model)
    run_id = "mia-score-" + stable_id(model.model_hash, precision, sorted(i.item_id for i in items), sorted(attacks),
                                      asdict(protocol), compared_with, length=12)
    store.start_run(run_id, "mia", model.model_ref, model.model_hash,
                    {"attacks": list(attacks), "protocol": asdict(protocol), "reference": len(reference),
                     "precision": precision, **compared_with}, {})
    rows = []
    for attack in attacks:
        scores, threshold, extra = ATTACKS[attack].fit(raw[attack], labels, fitted_on)
        rows += [{"run_id": run_id, "item_id": item.item_id, "attack": attack, "score": float(score), "threshold": threshold,
                  "predicted_member": bool(score >= threshold), "label": None,
                  "settings": json.dumps({"calibrated_on": f"{int(labels.sum())} members, {int((~labels[fitted_on]).sum())} non-members", **extra})}
                 for item, score in zip(unlabeled, scores[~fitted_on])]
    with store.transaction():
        store.replace_run_rows(["mia_scores"], run_id)
        store.insert("mia_scores", rows)
    store.finish_run(run_id, {})
    return run_id, rows
