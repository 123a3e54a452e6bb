"""Membership scores inside a scan: every candidate's prompt gets the Wen et al. detector's score
(on the scan's own seeds and steps: the noise its generations started from) and every matched
training item (``extracted`` or ``similar``) gets the loss and CLiD scores, so a finding carries
its membership evidence. Both run on the scan's pool (its Ray workers, or this process). Raw
scores (higher: more member-like), no threshold: thresholds need a labelled reference
(``memscan mia score``). A model without a denoiser (black box) gets none: its evidence is the
matches. A model without prompts (unconditional) gets the loss of its matched items only: the Wen
detector and CLiD work through a prompt; a class-conditional one the loss of its matched items,
each conditioned on the class whose generations reproduced it.

Matched items are scored on the index's thumbnail resized to the model's resolution: exact when
the training images are no larger than the thumbnails (the demo), an approximation otherwise.
"""

from __future__ import annotations

import json

from scanner.config import SamplingConfig
from scanner.distributed import Pool
from scanner.index import TrainingIndex
from scanner.mia.denoising import NoiseProtocol
from scanner.mia.evaluate import LabelledItem, features_on
from scanner.mia.triage import scores_on_pool
from scanner.models.base import DENOISE, LABEL, TEXT, TextToImageModel
from scanner.store import Store


def score_scan(store: Store, run_id: str, model: TextToImageModel, index: TrainingIndex | None, sampling: SamplingConfig,
               pool: Pool | None = None, precision: str | None = None, protocol: NoiseProtocol = NoiseProtocol()) -> int:
    """Store the scores of the run's candidate prompts and matched items; returns rows written."""
    if DENOISE not in model.capabilities:
        return 0
    protocol = protocol.for_model(model)
    rows = []
    prompted = TEXT in model.capabilities
    prompts = [] if not prompted else store.execute(
        "SELECT DISTINCT p.prompt_id, p.text FROM candidates c JOIN prompts p USING (run_id, prompt_id) "
        "WHERE c.run_id = ? ORDER BY p.prompt_id", [run_id])
    if prompts:
        seeds = range(sampling.seed_base, sampling.seed_base + sampling.samples_per_prompt)
        gaps = scores_on_pool(model, [text for _, text in prompts], "wen", seeds, sampling.num_inference_steps,
                              sampling.guidance_scale, pool, precision)
        settings = json.dumps({"scope": "candidate prompt", "seeds": [seeds.start, seeds.stop - 1],
                               "steps": sampling.num_inference_steps})
        rows += [{"run_id": run_id, "item_id": prompt_id, "attack": "wen", "score": float(gap), "threshold": None,
                  "predicted_member": None, "label": None, "settings": settings}
                 for (prompt_id, _), gap in zip(prompts, gaps)]
    # a class-conditional model's item is conditioned on the class whose generations reproduced it (the first, if several)
    condition = "min(p.text)" if LABEL in model.capabilities else "any_value(m.item_caption)"
    matched = [] if index is None else store.execute(
        f"SELECT m.item_id, {condition} FROM matches m LEFT JOIN candidates c USING (run_id, candidate_id) "
        "LEFT JOIN prompts p ON p.run_id = c.run_id AND p.prompt_id = c.prompt_id WHERE m.run_id = ? AND m.index_name = ? "
        "AND m.verdict IN ('extracted', 'similar') GROUP BY m.item_id ORDER BY m.item_id", [run_id, index.name])
    if matched:
        items = [LabelledItem(item_id, caption or "", index.thumbnail(item_id), False)  # resized to the model's by the attacks
                 for item_id, caption in matched]
        raw = features_on(pool, model, items, ["loss", "clid_th"] if prompted else ["loss"], protocol)
        scores = {"loss": raw["loss"]["score"]}
        if prompted:
            scores["clid_discrepancy"] = raw["clid_th"]["d"].mean(axis=1)
        settings = json.dumps({"scope": "matched training item", "image": "index thumbnail"})
        rows += [{"run_id": run_id, "item_id": item.item_id, "attack": attack, "score": float(values[i]), "threshold": None,
                  "predicted_member": None, "label": None, "settings": settings}
                 for attack, values in scores.items() for i, item in enumerate(items)]
    with store.transaction():
        store.execute("DELETE FROM mia_scores WHERE run_id = ? AND attack IN ('wen', 'loss', 'clid_discrepancy')", [run_id])
        store.insert("mia_scores", rows)
    return len(rows)
