"""The demo's fine-tune audit (issue 20): the demo model with its LoRA (``FINETUNE_LORA``),
scanned on the captions of the private items it was fine-tuned on and of the control items it
never saw, matched against an index of the fine-tuning set, and scored against the truth: which
private item was trained on how often (``dup_count``, a group per count) and which items are
controls (a flagged control prompt is a false flag).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scanner import demo as demo_world
from scanner.index import IndexConfig, TrainingIndex, build_index
from scanner.models.base import ImageTextEmbedder
from scanner.store import Store

FINETUNE_INDEX = "demo-finetune"


def finetune_rows(columns: list[str] | None = None) -> list[dict]:
    return demo_world.load_world(columns, demo_world.FINETUNE_ITEMS)


def group_of(row: dict) -> str:
    return f"private x{row['dup_count']}" if row["split"] == "private" else "control"


def finetune_index(embedder: ImageTextEmbedder, index_root: Path, work_dir: Path) -> TrainingIndex:
    """The index of the fine-tuning set as its owner holds it: one image (with caption) per
    private item; built once per items file."""
    items = demo_world.FINETUNE_ITEMS
    built_from = index_root / FINETUNE_INDEX / "world.txt"
    if not built_from.exists() or built_from.read_text() != demo_world.world_fingerprint(items):
        source = work_dir / "finetune-training-set"
        if not demo_world.fresh_export(source, items):
            for row in finetune_rows(["item_id", "caption", "split", "image_png"]):
                if row["split"] == "private":
                    (source / f"{row['item_id']}.png").write_bytes(row["image_png"])
                    (source / f"{row['item_id']}.txt").write_text(row["caption"])
            demo_world.mark_exported(source, items)
        build_index(source, FINETUNE_INDEX, embedder, IndexConfig(thumbnail_size=32), root=index_root, overwrite=True)
        built_from.write_text(demo_world.world_fingerprint(items))
    return TrainingIndex.open(FINETUNE_INDEX, index_root)


def finetune_labelled():
    """Private items as members (bucket: how often trained on), controls as non-members."""
    from scanner.mia.evaluate import LabelledItem

    return [LabelledItem(r["item_id"], r["caption"], demo_world.decode_png(r["image_png"]), r["split"] == "private",
                         group_of(r).removeprefix("private ") if r["split"] == "private" else "") for r in finetune_rows()]


def finetune_prompts():
    from scanner.generate import Prompt

    return [Prompt.from_text(r["caption"], source="demo-finetune", source_item_id=r["item_id"])
            for r in finetune_rows(["item_id", "caption"])]


@dataclass(frozen=True)
class GroupScore:
    group: str
    prompts: int
    memorized: int   # items the fine-tune reproduces (the ground truth: ``memorized_items``)
    flagged: int     # the prompt has a candidate (for a control: a false flag)
    extracted: int   # a candidate judged ``extracted`` against that very item
    extracted_memorized: int

    @property
    def recall(self) -> float | None:
        """Memorized items extracted, of those memorized; None for a group with none (the controls)."""
        return self.extracted_memorized / self.memorized if self.memorized else None


def memorized_items(hits: int = 2, within: float = 0.10) -> set[str]:
    """The items the fine-tune reproduces: at least ``hits`` of 8 seeds within tiled l2 ``within``
    of the item (scripts/train_demo_lora.py's check, recorded in check.json; the demo's own rule)."""
    check = json.loads((demo_world.FINETUNE_DIR / "check.json").read_text())
    return {item for item, row in check["items"].items() if sum(d <= within for d in row["lora_tiled_l2"]) >= hits}


def score_finetune_run(store: Store, run_id: str) -> list[GroupScore]:
    rows = {r["item_id"]: r for r in finetune_rows(["item_id", "split", "dup_count"])}
    flagged = {p for (p,) in store.execute("SELECT DISTINCT prompt_id FROM candidates WHERE run_id = ?", [run_id])}
    extracted = set(store.execute(
        "SELECT c.prompt_id, m.item_id FROM candidates c JOIN matches m USING (run_id, candidate_id) "
        "WHERE c.run_id = ? AND m.verdict = 'extracted'", [run_id]))
    memorized = memorized_items()
    counts: dict[str, list[int]] = {}
    for prompt_id, item_id in store.execute("SELECT prompt_id, source_item_id FROM prompts WHERE run_id = ?", [run_id]):
        if item_id not in rows:
            continue  # a null prompt
        group = counts.setdefault(group_of(rows[item_id]), [0, 0, 0, 0, 0])
        group[0] += 1
        group[1] += item_id in memorized
        group[2] += prompt_id in flagged
        group[3] += (prompt_id, item_id) in extracted
        group[4] += (prompt_id, item_id) in extracted and item_id in memorized
    order = sorted(counts, key=lambda g: (g == "control", -int(g.split("x")[-1]) if g != "control" else 0))
    return [GroupScore(group, *counts[group]) for group in order]


@dataclass(frozen=True)
class FineTuneAudit:
    fine_tune_run: str
    reference_run: str
    fine_tune: list[GroupScore]   # the fine-tune, sampled with model guidance from the base
    reference: list[GroupScore]   # the base model on the same prompts: what it reproduces without the fine-tune
    membership: dict              # attack -> metrics.AttackMetrics, private (members) against control items


def run_finetune_demo(store: Store, embedder: ImageTextEmbedder, index_root: Path, work_dir: Path,
                      samples_per_prompt: int = 16, guidance_weight: float = 3.0, guidance_scale: float = 1.0,
                      show_progress: bool = True) -> FineTuneAudit:
    """The demo fine-tune audit: the base model scanned plainly on the private and control
    captions (the contrast), the fine-tune scanned with FineXtract's model guidance from the base,
    both matched against the fine-tuning set's index, and the membership attacks (plain and against
    the base) on private against control items."""
    import dataclasses

    from scanner.config import SamplingConfig, ScanConfig
    from scanner.mia.evaluate import run_mia_eval
    from scanner.models.loading import ModelSpec
    from scanner.scan import run_scan

    base_spec = ModelSpec.of(demo_world.SD_MODEL)
    base = base_spec.load()
    fine_tune = ModelSpec.of(demo_world.SD_MODEL, loras=[str(demo_world.FINETUNE_LORA)]).load()
    index = finetune_index(embedder, index_root, work_dir)
    prompts = finetune_prompts()
    plain = ScanConfig(model=str(demo_world.SD_MODEL), prompts="demo-finetune", db=str(store.path),
                       sampling=SamplingConfig(samples_per_prompt=samples_per_prompt, batch_size=64))
    reference_run = run_scan(store, base, prompts, plain, kind="demo", show_progress=show_progress, embedder=embedder,
                             index=index).run_id
    guided = dataclasses.replace(plain, loras=(str(demo_world.FINETUNE_LORA),), reference_model=str(demo_world.SD_MODEL),
                                 sampling=dataclasses.replace(plain.sampling, guidance_scale=guidance_scale,
                                                              reference_guidance=guidance_weight))
    fine_tune_run = run_scan(store, fine_tune.guided_by(base, guidance_weight), prompts, guided, kind="demo",
                             show_progress=show_progress, embedder=embedder, index=index).run_id
    _, membership, _ = run_mia_eval(store, fine_tune, finetune_labelled(), ["loss", "clid_vec", "loss_ref", "clid_ref"],
                                    reference_model=base)
    return FineTuneAudit(fine_tune_run, reference_run, score_finetune_run(store, fine_tune_run),
                         score_finetune_run(store, reference_run), membership)
