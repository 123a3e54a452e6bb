"""Sweep the memorization criterion (tiled-l2 threshold delta, clique size k) on a demo scan.

    python scripts/calibrate_cluster.py [--db runs/demo.duckdb] [--out docs/CALIBRATION.md]

Ground truth per scanned prompt, from the demo world: the item is *memorized* when at least
25% of its generations reproduce it (``scanner.demo.evaluate``: closer to its training image than
to every one of 256 other drawings of its caption; until session 15, within tiled l2 0.10 of it);
x1 members and non-members are the prompts that must not be flagged. For each (delta, k) the script re-clusters the stored generations (nothing is written)
and reports recall on memorized items and the false-flag rate on x1 and non-member prompts.

A second truth counts what an auditor counts: a prompt *emits a training image* when at least
25% of its generations are within tiled l2 ``--emit-tiled-l2`` (0.06) of some member image (any
of them, not only its own item; 0.10 is too loose against 1,100 members at 32x32, where half
the unseen captions come that close to some member by chance). The last column is the flag rate among the non-member and unmemorized x1 prompts
that emit none: flags there are false under both truths.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from scanner import cluster, features
from scanner.config import ClusterConfig
from scanner.demo import bucket_of, decode_png, load_world
from scanner.demo.evaluate import DUPLICATED_BUCKETS, REPRODUCED_SHARE, CaptionDrawings, reproduced_share
from scanner.distances import tiled_l2
from scanner.store import Store


def emits_a_member(images: np.ndarray, members: np.ndarray, within: float, chunk: int = 4) -> bool:
    """At least REPRODUCED_SHARE of the generations are within ``within`` (tiled l2) of some member image."""
    close = []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        distances = tiled_l2(part[:, None], members[None, :])  # [part, members]
        close.extend(distances.min(axis=1) <= within)
    return float(np.mean(close)) >= REPRODUCED_SHARE


def load_scan(db: Path, emit_within: float) -> list[dict]:
    truth = {r["item_id"]: r for r in load_world(["item_id", "dup_count", "image_png"])}
    drawings = CaptionDrawings()
    members = np.stack([decode_png(r["image_png"]) for r in truth.values() if r["dup_count"] > 0])
    with Store(db, read_only=True) as store:
        run_id = store.execute("SELECT run_id FROM runs WHERE kind IN ('demo', 'scan') ORDER BY started_at DESC LIMIT 1")[0][0]
        rows = store.query("SELECT p.source_item_id, g.thumbnail_path, g.phash, g.embedding FROM generations g "
                           "JOIN prompts p USING (run_id, prompt_id) WHERE g.run_id = ? AND g.status = 'ok' "
                           "AND NOT g.degenerate ORDER BY p.prompt_id, g.seed", [run_id]).to_pylist()
        prompts: dict[str, list[dict]] = {}
        for row in rows:
            prompts.setdefault(row["source_item_id"], []).append(row)
        scanned = []
        for item_id, generations in prompts.items():
            images = np.stack([features.load_image(store.image_file(g["thumbnail_path"])) for g in generations])
            reproduced = reproduced_share(drawings, images, item_id)
            embeddings = None if any(g["embedding"] is None for g in generations) else np.array([g["embedding"] for g in generations], np.float32)
            scanned.append({"item_id": item_id, "bucket": bucket_of(truth[item_id]["dup_count"]), "images": images,
                            "embeddings": embeddings, "phashes": np.array([g["phash"] for g in generations], np.uint64),
                            "memorized": reproduced >= REPRODUCED_SHARE, "reproduced": reproduced,
                            "emits_member": emits_a_member(images, members, emit_within)})
    return scanned


def sweep(scanned: list[dict], thresholds: list[float], sizes: list[int]) -> list[dict]:
    """Recall on memorized duplicated items (x200, x50, x10), the false-flag rate on non-members,
    and the flag rate on x1 members (some of which the model did memorize) and on unmemorized x1."""
    memorized = [s for s in scanned if s["memorized"] and s["bucket"] in DUPLICATED_BUCKETS]
    nonmembers = [s for s in scanned if s["bucket"] == "non-member"]
    singles = [s for s in scanned if s["bucket"] == "x1"]
    emit_nothing = [s for s in nonmembers + singles if not s["memorized"] and not s["emits_member"]]
    results = []
    for threshold in thresholds:
        for k in sizes:
            settings = ClusterConfig(threshold=threshold, min_clique=k)
            flagged = {s["item_id"] for s in scanned if cluster.find_groups(s["images"], settings, s["embeddings"], s["phashes"])}
            rate = lambda group: sum(s["item_id"] in flagged for s in group) / max(1, len(group))  # noqa: E731
            results.append({"threshold": threshold, "k": k, "recall": rate(memorized), "nonmember_flags": rate(nonmembers),
                            "x1_flags": rate(singles), "x1_unmemorized_flags": rate([s for s in singles if not s["memorized"]]),
                            "emit_nothing_flags": rate(emit_nothing), "emit_nothing": len(emit_nothing)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("runs/demo.duckdb"))
    parser.add_argument("--out", type=Path, default=Path("docs/CALIBRATION.md"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 5, 8, 12])
    parser.add_argument("--emit-tiled-l2", type=float, default=0.06, help="'emits a member image' truth: tiled l2 to some member")
    args = parser.parse_args()
    if not args.db.exists():
        subprocess.run([sys.executable, "-m", "scanner", "demo", "--db", str(args.db), "--no-progress"], check=True)
    scanned = load_scan(args.db, args.emit_tiled_l2)
    buckets: dict[str, list[dict]] = {}
    for s in scanned:
        buckets.setdefault(s["bucket"], []).append(s)
    n = len(scanned[0]["images"])
    lines = [f"Scan: `{args.db}`, {len(scanned)} prompts x {n} generations.", "",
             "| bucket | prompts | memorized (>= 25% of generations within tiled l2 0.10 of the training image) | "
             f"emit some member image (>= 25% within {args.emit_tiled_l2:.2f} of any member) | mean reproduced share |",
             "| --- | --- | --- | --- | --- |"]
    for bucket, items in buckets.items():
        lines.append(f"| {bucket} | {len(items)} | {sum(s['memorized'] for s in items)} | {sum(s['emits_member'] for s in items)} | "
                     f"{np.mean([s['reproduced'] for s in items]):.2f} |")
    results = sweep(scanned, args.thresholds, args.sizes)
    lines += ["", "| tiled l2 delta | clique k | recall (memorized x200/x50/x10) | flagged non-members | flagged x1 | "
              f"flagged unmemorized x1 | flagged among the {results[0]['emit_nothing']} non-member and x1 prompts that emit no member image |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['threshold']:.3f} | {r['k']} | {r['recall']:.2f} | {r['nonmember_flags']:.2f} | "
                     f"{r['x1_flags']:.2f} | {r['x1_unmemorized_flags']:.2f} | {r['emit_nothing_flags']:.2f} |")
    table = "\n".join(lines)
    print(table)
    header = args.out.read_text().split("<!-- sweep -->")[0] if args.out.exists() else "# Calibration\n\n"
    args.out.write_text(header + "<!-- sweep -->\n" + table + "\n")


if __name__ == "__main__":
    main()
