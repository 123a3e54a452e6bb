"""Dataset inference for a data owner (after Dubinski et al., "CDI: Copyrighted Data
Identification in Diffusion Models"): one image may not be decidable, a set of them is.

Per-item membership features of the owner's suspect set are compared with those of a reference
set drawn from the same distribution and known not to be trained on. As in CDI, a classifier
fitted to tell half of the suspect set from half of the reference set (features: CLiD's
discrepancies and the denoising loss) scores the other halves, so no item is both fitted and
tested, and no single feature has to carry the signal (on the rebuilt demo model the mean
discrepancy alone no longer separated single-copy members). A one-sided Mann-Whitney U test
asks whether the held-out suspect scores are stochastically larger; the p-value says how surprising
the difference would be if the suspect set had not been trained on either. We also report how
many suspect items the test needed: the smallest n (over random orderings) at which p < alpha.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from scanner.mia.classifier import LogisticRegression

if TYPE_CHECKING:  # the statistics alone load no model code
    from scanner.distributed import Pool
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import LabelledItem
    from scanner.models.base import ImageTextEmbedder, TextToImageModel
    from scanner.store import Store

ATTACK = "dataset_inference"   # its rows in mia_scores and metrics
FEATURES = "clid_vec"          # the per-item features the classifier is fitted on
REFERENCE_FEATURES = "clid_ref"  # the same, minus a reference model's (with --reference-model)
BLACKBOX_FEATURES = "wu_classifier"  # a model that can only be sampled: Wu et al.'s two distances (needs a CLIP)
UNCONDITIONAL_FEATURES = "loss_vec"  # a model without prompts: its loss at each noise level


def dataset_features(capabilities: frozenset[str], has_reference: bool) -> str:
    """The features dataset inference fits its classifier on: CLiD's (minus a reference model's
    when there is one) where the denoiser is reachable, the loss at each noise level where the
    model takes no prompt, else Wu et al.'s black-box distances."""
    from scanner.errors import MemscanError
    from scanner.models.base import DENOISE, TEXT

    if DENOISE not in capabilities:
        return BLACKBOX_FEATURES
    if TEXT not in capabilities:
        if has_reference:
            raise MemscanError("dataset inference against a reference model compares CLiD's features, which work "
                               "through a prompt; an unconditional model takes none: drop --reference-model")
        return UNCONDITIONAL_FEATURES
    return REFERENCE_FEATURES if has_reference else FEATURES


@dataclass(frozen=True)
class DatasetVerdict:
    p_value: float
    items_needed: int | None   # None: not significant even with every suspect item
    suspect: int
    reference: int
    suspect_median: float
    reference_median: float
    alpha: float


def one_sided_p(suspect: np.ndarray, reference: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(suspect, reference, alternative="greater").pvalue)


def dataset_inference(suspect: np.ndarray, reference: np.ndarray, alpha: float = 0.05, orderings: int = 20,
                      seed: int = 0) -> DatasetVerdict:
    """Test whether ``suspect`` scores exceed ``reference`` scores (higher score: more member-like)."""
    suspect, reference = np.asarray(suspect, float), np.asarray(reference, float)
    p_value = one_sided_p(suspect, reference)
    needed = None
    if p_value < alpha:
        rng = np.random.default_rng(seed)
        counts = []
        for _ in range(orderings):
            order = rng.permutation(len(suspect))
            counts.append(next((n for n in range(2, len(suspect) + 1)
                                if one_sided_p(suspect[order[:n]], reference) < alpha), len(suspect)))
        needed = int(np.ceil(np.median(counts)))
    return DatasetVerdict(p_value, needed, len(suspect), len(reference), float(np.median(suspect)),
                          float(np.median(reference)), alpha)


def held_out_scores(suspect: np.ndarray, reference: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-item features [n, f] of both sets -> classifier scores of the halves it was not fitted on."""
    return held_out(suspect, reference, seed)[:2]


def held_out(suspect: np.ndarray, reference: np.ndarray,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``held_out_scores``, and the positions in ``suspect`` and in ``reference`` of the items scored."""
    rng = np.random.default_rng(seed)
    suspect_order, reference_order = rng.permutation(len(suspect)), rng.permutation(len(reference))
    suspect_fit, suspect_test = np.array_split(suspect_order, 2)
    reference_fit, reference_test = np.array_split(reference_order, 2)
    x = np.vstack([suspect[suspect_fit], reference[reference_fit]])
    y = np.r_[np.ones(len(suspect_fit)), np.zeros(len(reference_fit))]
    classifier = LogisticRegression.fit(x, y)
    return classifier.score(suspect[suspect_test]), classifier.score(reference[reference_test]), suspect_test, reference_test


def run_dataset_inference(store: Store, model: TextToImageModel, items: Sequence[LabelledItem], alpha: float = 0.05,
                          pool: Pool | None = None, protocol: NoiseProtocol | None = None,
                          seed: int = 0, reference_model: TextToImageModel | None = None,
                          embedder: ImageTextEmbedder | None = None) -> tuple[str, DatasetVerdict]:
    """``memscan mia dataset``: is the suspect set (the ``items`` marked member) trained on, judged
    against the reference set (the others)? CLiD's features of every item (here, or on ``pool``'s
    Ray workers), a classifier's scores of the halves it was not fitted on (split with ``seed``),
    and the one-sided test at ``alpha``. Stores a run of kind ``mia``: each held-out item's score
    in ``mia_scores`` (attack ``dataset_inference``, ``label`` true for a suspect item) and the
    p-value in ``metrics`` (``dataset_p_value``). Item ids must be distinct (``labelled.distinct_ids``).
    With ``reference_model`` the features are CLiD's minus the reference model's (``clid_ref``); for
    a model that can only be sampled (behind an HTTP API) they are Wu et al.'s distances, which
    need ``embedder``; for a model without prompts, its loss at each noise level (``dataset_features``)."""
    from scanner.distributed import LocalPool
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import features_on, reference_identity, require_distinct
    from scanner.models.loading import WorkerModels, pool_precision
    from scanner.store import stable_id

    protocol = (protocol or NoiseProtocol()).for_model(model)
    suspect_items = [item for item in items if item.member]
    reference_items = [item for item in items if not item.member]
    if len(suspect_items) < 2 or len(reference_items) < 2:
        raise ValueError(f"dataset inference splits each set in two: {len(suspect_items)} suspect and "
                         f"{len(reference_items)} reference items, at least 2 of each are needed")
    require_distinct(items)
    pool = pool or LocalPool(WorkerModels(model, embedder, reference_model))
    chosen = dataset_features(model.capabilities, reference_model is not None)
    features = features_on(pool, model, items, [chosen], protocol, embedder,
                           reference_model=reference_model)[chosen]["features"]
    in_suspect = np.array([item.member for item in items])
    suspect_scores, reference_scores, suspect_test, reference_test = held_out(features[in_suspect],
                                                                              features[~in_suspect], seed)
    verdict = dataset_inference(suspect_scores, reference_scores, alpha=alpha)
    precision = pool_precision(pool)
    run_id = "mia-dataset-" + stable_id(model.model_hash, precision, sorted(i.item_id for i in suspect_items),
                                        sorted(i.item_id for i in reference_items), asdict(protocol), seed, alpha,
                                        reference_identity(reference_model), length=12)
    store.start_run(run_id, "mia", model.model_ref, model.model_hash,
                    {"attack": ATTACK, "features": chosen, "protocol": asdict(protocol), "split_seed": seed,
                     **reference_identity(reference_model),
                     "alpha": alpha, "suspect": len(suspect_items), "reference": len(reference_items),
                     "precision": precision}, {})
    score_rows = [{"run_id": run_id, "item_id": item.item_id,
                   "attack": ATTACK, "score": float(score), "threshold": None, "predicted_member": None,
                   "label": item.member, "settings": json.dumps({"set": name})}
                  for name, group, positions, scores in (("suspect", suspect_items, suspect_test, suspect_scores),
                                                         ("reference", reference_items, reference_test, reference_scores))
                  for item, score in zip([group[i] for i in positions], scores)]
    metric_rows = [{"run_id": run_id, "metric": "dataset_p_value", "subject": ATTACK, "value": verdict.p_value,
                    "n_positive": verdict.suspect, "n_negative": verdict.reference,
                    "details": json.dumps({"items_needed": verdict.items_needed, "alpha": alpha,
                                           "suspect_median": verdict.suspect_median,
                                           "reference_median": verdict.reference_median,
                                           "suspect_items": len(suspect_items), "reference_items": len(reference_items)})}]
    with store.transaction():
        store.replace_run_rows(["mia_scores", "metrics"], run_id)
        store.insert("mia_scores", score_rows)
        store.insert("metrics", metric_rows)
    store.finish_run(run_id, {})
    return run_id, verdict
