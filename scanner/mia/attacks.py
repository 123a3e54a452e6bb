"""The membership attacks and memorization detectors memscan runs, with what each needs.

One table, shared by ``mia eval``, ``mia score``, ``mia dataset``, ``scan --triage-detector``
and the in-scan scores: a command looks its attacks up here and checks that the model offers
the capability each needs before any work starts (``check_attacks``). Adding an attack is its
scoring code and one entry here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanner.errors import MemscanError
from scanner.models.base import DENOISE, SAMPLE, Sampler, require


@dataclass(frozen=True)
class Attack:
    name: str
    needs: str          # the model capability: SAMPLE (black box) or DENOISE (gray box)
    fitted: str         # what is fitted on labelled data before it decides
    scores: str         # how it scores (higher: more member-like), and where it comes from
    embedder: bool = False   # also needs a CLIP-style embedder
    detector: bool = False   # scores a prompt without an image: usable to rank prompts (--triage-detector)


ATTACKS = {attack.name: attack for attack in (
    Attack("loss", DENOISE, "threshold",
           "minus the family's training loss under the true caption, shared noise (Matsumoto et al. 2023)"),
    Attack("clid_th", DENOISE, "robust scalers, mixing weight and threshold",
           "CLiD: loss drop from weakened captions to the true one, mixed with the loss (Zhai et al. 2024, Eq. 9)"),
    Attack("clid_vec", DENOISE, "classifier and threshold",
           "CLiD's vector [D_1..D_k, L] to a classifier (Zhai et al. 2024)"),
    Attack("wen", DENOISE, "threshold",
           "norm of the text-conditional minus unconditional prediction at the first step (Wen et al. 2024)", detector=True),
    Attack("norm_align", DENOISE, "threshold",
           "that norm plus the alignment at a low-noise step (Asthana and Belagiannis 2026)", detector=True),
    Attack("seed_agreement", SAMPLE, "threshold",
           "few-step samples of a caption agree across seeds, relative to other prompts' samples (memscan)", detector=True),
    Attack("wu_pixel", SAMPLE, "threshold",
           "minus the smallest pixel distance from the image to generations of its caption (Wu et al. 2022)", embedder=True),
    Attack("wu_clip", SAMPLE, "threshold",
           "minus the smallest CLIP distance from the image to generations of its caption (Wu et al. 2022)", embedder=True),
    Attack("wu_classifier", SAMPLE, "classifier and threshold",
           "both Wu et al. distances to a classifier (Wu et al. 2022)", embedder=True),
)}

DETECTORS = tuple(name for name, attack in ATTACKS.items() if attack.detector)


def parse_attacks(names: Sequence[str], flag: str = "--attacks") -> list[str]:
    """Known attack names, in the order given; an unknown or empty list is one line."""
    chosen = [name.strip() for name in names if name.strip()]
    unknown = sorted(set(chosen) - set(ATTACKS))
    if unknown or not chosen:
        raise MemscanError(f"{flag}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ATTACKS)}")
    return chosen


def check_attacks(model: Sampler, names: Sequence[str]) -> None:
    """Refuse, with one line naming what is missing, attacks the model cannot run."""
    for name in names:
        require(model, ATTACKS[name].needs, f"the {name} attack")


def needs_embedder(names: Sequence[str]) -> bool:
    return any(ATTACKS[name].embedder for name in names)
