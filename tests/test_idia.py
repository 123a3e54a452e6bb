"""Identity inference on the demo CLIP and its synthetic identities, and its bad input."""

import numpy as np
import pytest
from PIL import Image

from scanner.demo import export_people
from scanner.errors import MemscanError
from scanner.idia import TEMPLATES, infer_identities, read_labels, read_names, read_people, roc_over_tau


@pytest.fixture(scope="module")
def demo_people(tmp_path_factory):
    folder = tmp_path_factory.mktemp("identities")
    people_dir, names_file, labels_file = export_people(folder)
    labels = read_labels(labels_file)
    people, skipped = read_people(people_dir)
    return people, read_names(names_file), labels, skipped


def test_demo_exports_are_redone_for_another_world(tmp_path):
    folder = tmp_path / "identities"
    export_people(folder)
    stale = folder / "people" / "Gone Person" / "old.png"  # a person of an older demo world
    stale.parent.mkdir()
    stale.write_bytes(b"")
    export_people(folder)
    assert stale.exists()  # the same world: the export is reused as it is
    (folder / ".complete").write_text("0123456789abcdef")  # made from another world.parquet
    people_dir, names_file, _ = export_people(folder)
    people, _ = read_people(people_dir)
    assert not stale.exists() and set(people) <= set(read_names(names_file)) and len(people) == 40


def test_demo_clip_knows_its_member_identities(demo_people, demo_clip):
    people, names, labels, skipped = demo_people
    assert len(people) == 40 and len(names) == 1000 and not skipped
    results = infer_identities(people, names, demo_clip, tau=1)
    point = roc_over_tau(results, labels)[0]
    print({r.person: (r.correct_templates, labels[r.person]) for r in results})
    assert point["members"] == 20 and point["non_members"] == 20
    assert point["tpr"] >= 0.9 and point["fpr"] <= 0.1


def test_a_short_distractor_list_makes_everyone_look_like_a_member(demo_people, demo_clip):
    people, names, labels, _ = demo_people
    non_members = {p: people[p] for p in people if not labels[p]}
    # with only the people's own names to choose from, a guess is right far more often than among 1,000
    short = infer_identities(non_members, sorted(non_members), demo_clip)
    long = infer_identities(non_members, names, demo_clip)
    assert sum(r.image_share for r in short) > sum(r.image_share for r in long)
    assert sum(r.predicted_member for r in short) > sum(r.predicted_member for r in long)


class ScriptedEmbedder:
    """Images and texts embed to fixed directions, to check the voting rule exactly."""

    model_ref, model_hash, dim = "scripted", "0" * 64, 3

    def embed_images(self, images):
        return np.stack([np.eye(3)[int(image[0, 0, 0])] for image in images]).astype(np.float32)

    def embed_texts(self, texts):
        vectors = {"Ann": [1, 0, 0], "Bob": [0, 1, 0], "Cy": [0, 0, 1]}
        return np.array([vectors[next(n for n in vectors if n in t)] for t in texts], np.float32)


def test_majority_vote_and_ties():
    image = lambda k: np.full((4, 4, 3), k, np.uint8)  # noqa: E731
    people = {"Ann": [image(0), image(0), image(1)], "Bob": [image(0), image(1)], "Cy": [image(0), image(0)]}
    results = {r.person: r for r in infer_identities(people, ["Ann", "Bob", "Cy"], ScriptedEmbedder(), tau=1)}
    assert results["Ann"].correct_templates == len(TEMPLATES) and results["Ann"].predicted_member
    assert results["Bob"].n_templates == 0 and not results["Bob"].predicted_member  # 1-1 tie: every template skipped
    assert results["Cy"].correct_templates == 0 and results["Cy"].image_share == 0.0


def test_bad_people_and_names(tmp_path):
    (tmp_path / "people" / "Ann").mkdir(parents=True)
    (tmp_path / "people" / "Ann" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(MemscanError, match="no readable image"):
        read_people(tmp_path / "people")
    Image.new("RGB", (8, 8)).save(tmp_path / "people" / "Ann" / "ok.png")
    people, skipped = read_people(tmp_path / "people")
    assert len(people["Ann"]) == 1 and len(skipped) == 1 and "broken.png" in skipped[0]
    (tmp_path / "names.txt").write_text("Ann\nBob\nAnn\n")
    with pytest.raises(MemscanError, match="duplicate names: Ann"):
        read_names(tmp_path / "names.txt")
    (tmp_path / "names.txt").write_text("\n\n")
    with pytest.raises(MemscanError, match="no names"):
        read_names(tmp_path / "names.txt")
    with pytest.raises(ValueError, match="missing from the candidate names: Ann"):
        infer_identities(people, ["Bob"], ScriptedEmbedder())
