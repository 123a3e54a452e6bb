"""The membership attacks and memorization detectors memscan runs, with what each needs.

One table, shared by ``mia eval``, ``mia score``, ``mia dataset``, ``scan --triage-detector``
and the in-scan scores: a command looks its attacks up here and checks that the model offers
the capability each needs before any work starts (``check_attacks``). Each attack is an
``Attack`` (``scanner.mia.attack``) defined beside its scoring code; adding one is that file and
its name in this table.
"""

from __future__ import annotations

from collections.abc import Sequence

from scanner.errors import MemscanError
from scanner.mia.blackbox import WU_CLASSIFIER, WU_CLIP, WU_PIXEL
from scanner.mia.clid import CLID_TH, CLID_VEC
from scanner.mia.detectors import NORM_ALIGN, SEED_AGREEMENT, WEN
from scanner.mia.loss import LOSS, LOSS_VEC
from scanner.mia.reference_attacks import CLID_REF, LOSS_REF
from scanner.models.base import DENOISE, TEXT, Sampler, require


ATTACKS = {attack.name: attack for attack in (LOSS, LOSS_VEC, CLID_TH, CLID_VEC, WEN, NORM_ALIGN, SEED_AGREEMENT,
                                               WU_PIXEL, WU_CLIP, WU_CLASSIFIER, LOSS_REF, CLID_REF)}

DETECTORS = tuple(name for name, attack in ATTACKS.items() if attack.detector)


def parse_attacks(names: Sequence[str], flag: str = "--attacks") -> list[str]:
    """Known attack names, in the order given; an unknown or empty list is one line."""
    chosen = [name.strip() for name in names if name.strip()]
    unknown = sorted(set(chosen) - set(ATTACKS))
    if unknown or not chosen:
        raise MemscanError(f"{flag}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ATTACKS)}")
    return chosen


# what ``mia eval`` and ``mia score`` run when --attacks is not given, by what the model offers: CLiD and the Wen
# detector where a prompt conditions the denoiser, the loss alone (and per noise level) where none does, Wu et al.
# where the model can only be sampled
DEFAULT_ATTACKS = {"eval": {"gray box": ("loss", "clid_th", "wen"), "unconditional": ("loss", "loss_vec"),
                            "black box": ("wu_pixel", "wu_clip", "seed_agreement")},
                   "score": {"gray box": ("loss", "clid_th"), "unconditional": ("loss", "loss_vec"),
                             "black box": ("wu_pixel", "wu_clip")}}


def default_attacks(capabilities: frozenset[str], command: str) -> list[str]:
    if DENOISE not in capabilities:
        return list(DEFAULT_ATTACKS[command]["black box"])
    return list(DEFAULT_ATTACKS[command]["gray box" if TEXT in capabilities else "unconditional"])


def check_attacks(model: Sampler, names: Sequence[str], has_reference: bool = False) -> None:
    """Refuse, with one line naming what is missing, attacks the model cannot run."""
    for name in names:
        require(model, ATTACKS[name].needs, f"the {name} attack")
        if ATTACKS[name].text:
            require(model, TEXT, f"the {name} attack")
        if ATTACKS[name].reference and not has_reference:
            raise MemscanError(f"the {name} attack compares the model with a reference model: give --reference-model "
                               "(the fine-tune's base, or a model of its family known not to have trained on the items)")


def needs_embedder(names: Sequence[str]) -> bool:
    return any(ATTACKS[name].embedder for name in names)
