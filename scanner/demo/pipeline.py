"""The demo's extra stages around a scan: the training-set index it matches against, and
identity inference on its synthetic people."""

from __future__ import annotations

from pathlib import Path

from scanner import demo as demo_world
from scanner.index import IndexConfig, TrainingIndex, build_index
from scanner.models.base import ImageTextEmbedder

DEMO_INDEX = "demo"


def demo_index(embedder: ImageTextEmbedder, index_root: Path, work_dir: Path, world: Path = demo_world.WORLD,
               name: str = DEMO_INDEX) -> TrainingIndex:
    """The index of a demo-world model's training set (one file per copy), built once per world
    (the calibration models' worlds get their own ``name``), at the world's own resolution."""
    built_from = index_root / name / "world.txt"
    if not built_from.exists() or built_from.read_text() != demo_world.world_fingerprint(world):
        source = demo_world.export_training_set(work_dir / f"{name}-training-set", world)
        size = demo_world.decode_png(demo_world.load_world(["image_png"], world)[0]["image_png"]).shape[0]
        build_index(source, name, embedder, IndexConfig(thumbnail_size=size), root=index_root, overwrite=True)
        built_from.write_text(demo_world.world_fingerprint(world))
    return TrainingIndex.open(name, index_root)


def demo_identities(store, embedder: ImageTextEmbedder, work_dir: Path):
    """IDIA on the 40 demo people among 1,000 candidate names, with their membership labels."""
    from scanner.idia import read_labels, read_names, read_people, run_idia

    people_dir, names_file, labels_file = demo_world.export_people(work_dir / "demo-identities")
    people, _ = read_people(people_dir)
    labels = read_labels(labels_file)
    names = read_names(names_file)
    _, results, curve = run_idia(store, embedder, people, names, labels)
    return results, names, labels, curve


def demo_membership(store, model):
    """Membership attacks on labelled demo members (by duplication bucket) and non-members."""
    from scanner.mia.evaluate import LabelledItem, run_mia_eval

    items = [LabelledItem(r["item_id"], r["caption"], demo_world.decode_png(r["image_png"]), r["dup_count"] > 0,
                          demo_world.bucket_of(r["dup_count"])) for r in demo_world.membership_items()]
    _, results, _ = run_mia_eval(store, model, items)
    return results
