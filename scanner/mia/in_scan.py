"""Membership scores inside a scan: every candidate's prompt gets the Wen et al. detector's score
and every matched training item (``extracted`` or ``similar``) gets the loss and CLiD scores, so
a finding carries its membership evidence. Raw scores (higher: more member-like), no threshold:
thresholds need a labelled reference (``memscan mia score``).

Matched items are scored on the index's thumbnail resized to the model's resolution: exact when
the training images are no larger than the thumbnails (the demo), an approximation otherwise.
"""

from __future__ import annotations

import json

import numpy as np

from scanner.index import TrainingIndex, fit
from scanner.mia.denoising import NoiseProtocol
from scanner.mia.evaluate import LabelledItem, attack_scores
from scanner.mia.triage import conditional_gap
from scanner.models.base import TextToImageModel
from scanner.store import Store


def score_scan(store: Store, run_id: str, model: TextToImageModel, index: TrainingIndex | None,
               protocol: NoiseProtocol = NoiseProtocol()) -> int:
    """Store the scores of the run's candidate prompts and matched items; returns rows written."""
    rows = []
    prompts = store.execute("SELECT DISTINCT p.prompt_id, p.text FROM candidates c JOIN prompts p USING (run_id, prompt_id) "
                            "WHERE c.run_id = ? ORDER BY p.prompt_id", [run_id])
    if prompts:
        gaps = conditional_gap(model, [text for _, text in prompts], seeds=(0, 1, 2, 3))
        rows += [{"run_id": run_id, "item_id": prompt_id, "attack": "wen", "score": float(gap), "threshold": None,
                  "predicted_member": None, "label": None, "settings": json.dumps({"scope": "candidate prompt"})}
                 for (prompt_id, _), gap in zip(prompts, gaps)]
    matched = [] if index is None else store.execute(
        "SELECT DISTINCT item_id, item_caption FROM matches WHERE run_id = ? AND index_name = ? "
        "AND verdict IN ('extracted', 'similar') ORDER BY item_id", [run_id, index.name])
    if matched:
        items = [LabelledItem(item_id, caption or "", fit(index.thumbnail(item_id), model.resolution), False)
                 for item_id, caption in matched]
        raw = attack_scores(model, items, ["loss", "clid_th"], protocol)
        scores = {"loss": raw["loss"]["score"], "clid_discrepancy": raw["clid_th"]["d"].mean(axis=1)}
        settings = json.dumps({"scope": "matched training item", "image": "index thumbnail"})
        rows += [{"run_id": run_id, "item_id": item.item_id, "attack": attack, "score": float(values[i]), "threshold": None,
                  "predicted_member": None, "label": None, "settings": settings}
                 for attack, values in scores.items() for i, item in enumerate(items)]
    with store.transaction():
        store.execute("DELETE FROM mia_scores WHERE run_id = ? AND attack IN ('wen', 'loss', 'clid_discrepancy')", [run_id])
        store.insert("mia_scores", rows)
    return len(rows)
