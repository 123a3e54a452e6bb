"""Benchmark: CLiD's vector attack with gradient-boosted trees (the paper's choice) against a
logistic regression, on the same features and the same auxiliary/evaluation split.

    python scripts/bench_clid_classifier.py [--model DIR] [--seeds 0,1,2]

The CLiD features of the demo membership sets are computed once per model; each split seed
draws another auxiliary half; both classifiers are fitted on it and scored on the other half.
Prints AUC and TPR at 1% FPR per classifier and split, and their means.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from scanner import demo as demo_world
    from scanner.mia import metrics
    from scanner.mia.classifier import BoostedTrees, LogisticRegression
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.attack import fit_classifier
    from scanner.mia.evaluate import LabelledItem, features_on, split_halves
    from scanner.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(demo_world.SD_MODEL))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()

    items = [LabelledItem(r["item_id"], r["caption"], demo_world.decode_png(r["image_png"]), r["dup_count"] > 0)
             for r in demo_world.membership_items()]
    labels = np.array([item.member for item in items])
    raw = features_on(None, load_model(args.model), items, ["clid_vec"], NoiseProtocol())["clid_vec"]
    results: dict[str, list] = {"gradient-boosted trees": [], "logistic regression": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        auxiliary = split_halves(items, seed)
        for name, classifier in (("gradient-boosted trees", BoostedTrees), ("logistic regression", LogisticRegression)):
            scores, threshold, _ = fit_classifier(classifier, raw, labels, auxiliary)
            result = metrics.evaluate(scores[~auxiliary], labels[~auxiliary], threshold)
            results[name].append((result.auc, result.tpr_at_1_fpr))
            print(f"split {seed}: {name:24} AUC {result.auc:.3f}  TPR@1%FPR {result.tpr_at_1_fpr:.2f}", flush=True)
    for name, values in results.items():
        auc, tpr = np.mean(values, axis=0)
        print(f"mean over {len(values)} splits: {name:24} AUC {auc:.3f}  TPR@1%FPR {tpr:.2f}")


if __name__ == "__main__":
    main()
