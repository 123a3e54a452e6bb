"""Made-up person names for the demo identities and for realistic-looking distractor lists.

Distractors must look like the real names (same style, same length): a short or unrealistic
candidate list makes every person look like a member (Hintersdorf et al.)."""

from __future__ import annotations

import numpy as np

FIRST_SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "to", "sa", "ni", "bo", "el", "da", "fi", "gu", "ja", "ze", "qu"]
LAST_SYLLABLES = ["rin", "dor", "vek", "mal", "stan", "brick", "wen", "tor", "lisk", "mont", "farr", "quist"]


def make_name(rng: np.random.Generator, taken: set[str]) -> str:
    """A first name and a surname of two syllables each, not in ``taken`` (which it extends)."""
    while True:
        first = "".join(rng.choice(FIRST_SYLLABLES, size=2)).capitalize()
        last = "".join(rng.choice(LAST_SYLLABLES, size=2)).capitalize()
        name = f"{first} {last}"
        if name not in taken:
            taken.add(name)
            return name


def candidate_names(people: list[str], total: int = 1000, seed: int = 7) -> list[str]:
    """The people's names plus distractors in the same style, ``total`` in all, in a fixed order."""
    rng = np.random.default_rng(seed)
    taken = set(people)
    distractors = [make_name(rng, taken) for _ in range(max(0, total - len(people)))]
    return sorted(set(people)) + distractors
