"""Identity inference on CLIP-style models (IDIA, Hintersdorf et al., "Does CLIP Know My Face?").

For each person (several images) and a candidate name list (the person's name among many
realistic distractors): for each prompt template, classify every image zero-shot over all
names and take the majority name across the images (a tie skips that template); the person is
predicted to be in the training data when at least ``tau`` templates give the correct name.
Per person we also keep the share of (image, template) predictions that were correct and the
share of templates, so users can choose a stricter rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanner.errors import input_error
from scanner.features import load_image
from scanner.inputs import read_text
from scanner.models.base import ImageTextEmbedder
from scanner.sources import IMAGE_SUFFIXES

# 21 templates, from the bare name to "a person named ...", as in the paper's setting
TEMPLATES = (
    "{}", "an image of {}", "a photo of {}", "{} in a photo", "a picture of {}", "{} in a picture",
    "a portrait of {}", "{} in a portrait", "a cropped photo of {}", "a close-up photo of {}", "a good photo of {}",
    "a bright photo of {}", "a dark photo of {}", "a blurry photo of {}", "a low resolution photo of {}",
    "a photo of the face of {}", "{} smiling", "{} posing for a photo", "a photo of a person named {}",
    "a picture of a person named {}", "a person named {}",
)


@dataclass(frozen=True)
class PersonResult:
    person: str
    n_images: int
    n_templates: int          # templates that were decided (not tied)
    correct_templates: int
    image_share: float        # correct (image, template) predictions / all of them
    template_share: float     # correct templates / all templates
    predicted_member: bool


def read_people(folder: Path, mapping: dict[str, str] | None = None) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """One sub-folder per person (its name, or ``mapping[folder name]``). Returns the people with
    their readable images, and the list of problems (unreadable files) that were skipped."""
    if not folder.is_dir():
        raise input_error(folder, "no such people folder; expected one sub-folder of images per person")
    people: dict[str, list[np.ndarray]] = {}
    skipped = []
    for person_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = (mapping or {}).get(person_dir.name, person_dir.name)
        images = []
        for path in sorted(p for p in person_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                images.append(load_image(path))
            except Exception:  # corrupt or truncated: counted, never silently used
                skipped.append(f"{path}: unreadable image")
        if not images:
            raise input_error(person_dir, "no readable image for this person")
        if name in people:
            raise input_error(person_dir, f"a second folder for the name '{name}'")
        people[name] = images
    if not people:
        raise input_error(folder, "no person folders inside")
    return people, skipped


def read_csv_pairs(path: Path, key: str, value: str, encoding: str | None = None) -> dict[str, str]:
    """A two-column CSV (with a header naming ``key`` and ``value``) as a dict."""
    import csv
    import io

    if not path.is_file():
        raise input_error(path, "no such file")
    reader = csv.DictReader(io.StringIO(read_text(path, encoding), newline=""))
    if not reader.fieldnames or key not in reader.fieldnames or value not in reader.fieldnames:
        raise input_error(path, f"expected a CSV with columns {key},{value}")
    return {row[key]: row[value] for row in reader}


def read_labels(path: Path, encoding: str | None = None) -> dict[str, bool]:
    """Membership labels: a CSV ``name,member`` with true/false (or 1/0, yes/no)."""
    return {name: member.strip().lower() in ("1", "true", "yes", "member")
            for name, member in read_csv_pairs(path, "name", "member", encoding).items()}


def read_names(path: Path, encoding: str | None = None) -> list[str]:
    """Candidate names, one per line, in ``encoding`` (UTF-8 by default)."""
    if not path.is_file():
        raise input_error(path, "no such names file")
    names = [line.strip() for line in read_text(path, encoding).splitlines() if line.strip()]
    if not names:
        raise input_error(path, "no names in file")
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise input_error(path, f"duplicate names: {', '.join(duplicates[:5])}")
    return names


def infer_identities(people: dict[str, list[np.ndarray]], names: Sequence[str], embedder: ImageTextEmbedder,
                     tau: int = 1, templates: Sequence[str] = TEMPLATES,
                     on_person: Callable[[int], None] | None = None) -> list[PersonResult]:
    """The paper's rule for every person; every person's name must be among ``names``."""
    missing = [p for p in people if p not in set(names)]
    if missing:
        raise ValueError(f"people missing from the candidate names: {', '.join(missing[:5])}")
    name_index = {name: i for i, name in enumerate(names)}
    text = np.stack([embedder.embed_texts([t.format(n) for n in names]) for t in templates])  # [T, names, D]
    results = []
    for person, images in people.items():
        image_features = embedder.embed_images(np.stack(images))                             # [I, D]
        predictions = np.argmax(np.einsum("id,tnd->tin", image_features, text), axis=2)         # [T, I]
        truth = name_index[person]
        decided = correct = 0
        for per_template in predictions:
            (top, votes), *rest = Counter(per_template.tolist()).most_common(2) + [(None, 0)]
            if rest[0][1] == votes:  # a tie between the two most voted names: skip the template
                continue
            decided += 1
            correct += top == truth
        results.append(PersonResult(person, len(images), decided, correct, float(np.mean(predictions == truth)),
                                    correct / len(templates), correct >= tau))
        if on_person:
            on_person(1)
    return results


def roc_over_tau(results: Sequence[PersonResult], labels: dict[str, bool], n_templates: int = len(TEMPLATES)) -> list[dict]:
    """TPR, FPR and accuracy of the rule "member if at least tau templates are correct", per tau."""
    labelled = [r for r in results if r.person in labels]
    positives = sum(labels[r.person] for r in labelled)
    negatives = len(labelled) - positives
    curve = []
    for tau in range(1, n_templates + 1):
        predicted = {r.person: r.correct_templates >= tau for r in labelled}
        tp = sum(predicted[p] and labels[p] for p in predicted)
        fp = sum(predicted[p] and not labels[p] for p in predicted)
        curve.append({"tau": tau, "tpr": tp / positives if positives else float("nan"),
                      "fpr": fp / negatives if negatives else float("nan"),
                      "accuracy": (tp + negatives - fp) / len(labelled) if labelled else float("nan"),
                      "members": positives, "non_members": negatives})
    return curve


def run_idia(store, embedder: ImageTextEmbedder, people: dict[str, list[np.ndarray]], names: Sequence[str],
             labels: dict[str, bool], tau: int = 1, provenance: dict | None = None,
             on_person: Callable[[int], None] | None = None) -> tuple[str, list[PersonResult], list[dict]]:
    """Infer every person's membership and store the results (and, with labels, the ROC over tau)."""
    import json

    from scanner.store import stable_id

    results = infer_identities(people, names, embedder, tau=tau, on_person=on_person)
    curve = roc_over_tau(results, labels) if labels else []
    run_id = "idia-" + stable_id(embedder.model_hash, sorted(people), list(names), tau, length=12)
    store.start_run(run_id, "idia", embedder.model_ref, embedder.model_hash,
                    {**(provenance or {}), "n_names": len(names), "tau": tau, "templates": list(TEMPLATES)}, {})
    with store.transaction():
        store.replace_run_rows(["idia_results", "metrics"], run_id)
        store.insert("idia_results", [{"run_id": run_id, "person": r.person, "n_images": r.n_images,
                                       "n_templates": r.n_templates, "correct_templates": r.correct_templates,
                                       "image_share": r.image_share, "template_share": r.template_share, "tau": tau,
                                       "predicted_member": r.predicted_member, "label": labels.get(r.person)}
                                      for r in results])
        store.insert("metrics", [{"run_id": run_id, "metric": "idia_tau", "subject": str(p["tau"]), "value": p["tpr"],
                                  "n_positive": p["members"], "n_negative": p["non_members"], "details": json.dumps(p)}
                                 for p in curve])
    store.finish_run(run_id, {})
    return run_id, results, curve
