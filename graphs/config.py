"""THI configuration (plain values) and runtime context (models, gallery, MLLM, user)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tools.embedder import Embedder
from tools.gallery import Gallery
from tools.mllm.base import MLLM, ImageRef
from tools.probe import AttributeProbe

Policy = Literal["paper", "adaptive"]


@dataclass(frozen=True)
class THIConfig:
    """Knobs of the THI loop. Paper defaults from ICL (xi 0.50, lambda 0.8, top-5, 5 rounds)."""

    policy: Policy = "adaptive"
    k: int = 10  # top-k shown, traced and used for convergence
    rounds: int = 5  # the loop's own round limit
    xi: float = 0.50  # paper: gate on the query's top-1 similarity
    lam: float = 0.8  # paper: fusion weight of the original similarity
    # adaptive, without a user: the same weight. 0.9 keeps R10 with synthpedes-small-v7, whose
    # ranking a merged query moves more than v3's (chosen on validation; 0.8, the paper's, before)
    lam_adaptive: float = 0.9
    depth: int = 5  # paper: candidates walked, one per round
    # Adaptive, without a user: how the anchor is searched for. "sequential" verifies down the
    # current ranking one candidate at a time and stops at the first confident "yes" (usually 1-2
    # calls, so the search can afford to go deeper when the top candidates are wrong); "batch"
    # verifies verify_per_round candidates per round within verify_budget and picks by anchor_by.
    anchor_search: str = "sequential"
    anchor_depth: int = 10  # sequential: the search looks at most this deep (and verifies at most this many)
    verify_after_anchor: int = 2  # sequential: candidates verified once the anchor is known, to re-rank them
    verify_per_round: int = 3  # adaptive, batch search
    verify_window: int = 5  # adaptive, batch search: how deep in the current ranking to look for unverified candidates
    verify_budget: int = 5  # adaptive, batch search: verifications per query at most (the paper's worst case is 5)
    questions_per_round: int = 5  # adaptive, with a user: questions per round
    # adaptive, with a user: where the top candidates disagree, judged by the retriever's zero-shot
    # probe ("probe") or, once they have answered the questionnaire, by their answers ("answers")
    questions_from: str = "answers"
    anchor_questions: int = 8  # adaptive, without a user: questions asked of the anchor (once)
    lam_user: float = 0.5  # adaptive, with a user: fusion weight of the original similarity
    verify_weight: float = 0.1  # adaptive: a verified candidate moves by w * (2 p(match) - 1) once there is an anchor
    min_yes_confidence: float = 0.5  # adaptive: a "yes" below this does not make an anchor
    anchor_by: str = "confidence"  # adaptive, batch search: the anchor is the most confident "yes" (ties: best-ranked), or "rank"
    anchor_image_weight: float = 0.2  # adaptive, without a user: weight of image similarity to the anchor
    # With a user the facts describe the target itself, so checking many candidates against them
    # pays off (at the price of more MLLM calls; the no-user budget above follows the paper's).
    # "answers": a checked candidate answers the whole questionnaire once (one call) and is scored
    # fact by fact against everything known (agents.inspector.agreement); "verify": one yes/no
    # verification of the full description per candidate and round (the earlier behaviour).
    user_check: str = "answers"
    user_verify_per_round: int = 15
    user_verify_window: int = 30
    user_verify_budget: int = 60
    user_verify_weight: float = 0.3  # user_check "verify": a candidate moves by w * (2 p(match) - 1)
    agreement_weight: float = 0.1  # user_check "answers": the agreement log-likelihood ratio's weight in the score
    agreement_prior: float = 0.3  # chance that a random photo shows a stated value
    agreement_floor: float = 0.02  # least probability that the eyes misread an attribute
    ask_context: bool = True  # adaptive, with a user: also ask where the person was, doing what, anyone nearby
    user_elsewhere_factor: float = 0.5  # with a user: weight of the photo's context against the person's facts
    shortlist: int = 100  # candidates kept in the state

    def __post_init__(self) -> None:
        if self.policy not in ("paper", "adaptive"):
            raise ValueError(f"policy must be 'paper' or 'adaptive', not {self.policy!r}")
        if self.k < 1 or self.rounds < 1 or self.shortlist < self.k:
            raise ValueError("k and rounds must be >= 1 and shortlist >= k")
        if self.anchor_search not in ("sequential", "batch"):
            raise ValueError(f"anchor_search must be 'sequential' or 'batch', not {self.anchor_search!r}")
        if self.anchor_depth < 1 or self.verify_after_anchor < 0:
            raise ValueError("anchor_depth must be >= 1 and verify_after_anchor >= 0")
        if self.questions_from not in ("probe", "answers"):
            raise ValueError(f"questions_from must be 'probe' or 'answers', not {self.questions_from!r}")
        if self.user_check not in ("answers", "verify"):
            raise ValueError(f"user_check must be 'answers' or 'verify', not {self.user_check!r}")
        if not 0.0 < self.agreement_prior < 1.0 or not 0.0 < self.agreement_floor < 1.0:
            raise ValueError("agreement_prior and agreement_floor must be within (0, 1)")
        if self.anchor_by not in ("rank", "confidence"):
            raise ValueError(f"anchor_by must be 'rank' or 'confidence', not {self.anchor_by!r}")
        if not all(0.0 <= w <= 1.0 for w in (self.lam, self.lam_adaptive, self.lam_user)):
            raise ValueError("lam, lam_adaptive and lam_user must be within [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def fusion_weight_field(policy: str) -> str:
    """The THIConfig field holding a policy's fusion weight of the original similarity without a
    user (what the CLIs' ``--lam`` sets): ``lam`` for the paper's policy, ``lam_adaptive`` for ours."""
    return "lam" if policy == "paper" else "lam_adaptive"


class GalleryIndex:
    """The gallery's embeddings in memory for exact scoring, with a text-embedding cache."""

    def __init__(self, gallery: Gallery, embedder: Embedder, cache_size: int = 4096):
        self.gallery = gallery
        self.embedder = embedder
        self.ids, self.embeddings, self.metadatas = gallery.embeddings()
        self.position = {i: n for n, i in enumerate(self.ids)}
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        if self.embeddings.shape[1] != embedder.dim:
            raise ValueError(f"gallery {gallery.name} holds {self.embeddings.shape[1]}-d embeddings but the model "
                             f"{embedder.name} makes {embedder.dim}-d ones; re-index the gallery with this model")

    def encode(self, text: str) -> np.ndarray:
        hit = self._text_cache.get(text)
        if hit is None:
            hit = self.embedder.encode_texts([text], progress=False)[0]
            self._text_cache[text] = hit
            if len(self._text_cache) > self._cache_size:
                self._text_cache.popitem(last=False)
        else:
            self._text_cache.move_to_end(text)
        return hit

    def scores(self, text: str) -> np.ndarray:
        return self.embeddings @ self.encode(text)

    def image(self, image_id: str) -> ImageRef:
        meta = self.metadatas[self.position[image_id]]
        return ImageRef(image_id, Path(meta["path"]))

    def pid(self, image_id: str) -> int | None:
        return self.metadatas[self.position[image_id]].get("pid")

    @cached_property
    def probe(self) -> AttributeProbe:
        return AttributeProbe(self.embedder)

    def disagreement(self, ids: list[str], slots: list[str]) -> dict[str, float]:
        emb = self.embeddings[[self.position[i] for i in ids]]
        return self.probe.disagreement(emb, slots)


@dataclass
class THIContext:
    """What the THI graph's nodes use, given at ``invoke(..., context=THIContext(...))``."""

    index: GalleryIndex
    mllm: MLLM
    config: THIConfig = field(default_factory=THIConfig)
    user: Any = None  # None, agents.users.SimulatedUser or agents.users.HumanUser
    target_pid: int | None = None  # when known (benchmarks): traced as the target's rank
    allowed: set[str] | None = None  # a metadata filter's matches: only these images are ranked
