"""How identity inference moves with the number of images per person and the size of the
candidate name list, on the demo identities and the demo CLIP (one run, one table).

    python scripts/bench_idia.py

The false-positive rate depends on the distractors: with a short list, a non-member's images
often land on their own name by chance, and everyone looks like a member.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scanner import demo as demo_world
from scanner.demo.names import candidate_names
from scanner.idia import infer_identities, read_labels, read_people, roc_over_tau
from scanner.models.open_clip_model import OpenClip


def main() -> None:
    embedder = OpenClip.load(demo_world.CLIP_MODEL)
    with tempfile.TemporaryDirectory() as folder:
        people_dir, _, labels_file = demo_world.export_people(Path(folder))
        people, _ = read_people(people_dir)
        labels = read_labels(labels_file)
    print("| images per person | candidate names | TPR (tau=1) | FPR (tau=1) | TPR (tau=3) | FPR (tau=3) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n_names in (40, 100, 1000):
        names = candidate_names(sorted(people), total=n_names)
        for n_images in (1, 3, 5, 10):
            subset = {p: images[:n_images] for p, images in people.items()}
            curve = roc_over_tau(infer_identities(subset, names, embedder), labels)
            print(f"| {n_images} | {n_names} | {curve[0]['tpr']:.2f} | {curve[0]['fpr']:.2f} | "
                  f"{curve[2]['tpr']:.2f} | {curve[2]['fpr']:.2f} |")


if __name__ == "__main__":
    main()
