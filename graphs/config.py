"""THI settings and the THI graph's run context, both plain values.

* :class:`THIConfig`: the typed, validated knobs of the THI loop.
* :class:`THIContext`: what a run is given (``graph.invoke(..., context=THIContext(...))`` or, from a
  LangGraph client, the same fields as a JSON object): which model, gallery, MLLM backend, policy
  and user. It holds no live objects: ``graphs.server.resolve`` turns it into them (embedder,
  gallery index, MLLM, user) through one process-wide cache, so every entry point builds them the
  same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal

from pydantic import Field

from tools.embedder import DEFAULT_MODEL

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


#: The THIContext fields that are THIConfig fields too (the rest of THIConfig goes in ``config``).
_OWN_FIELDS = ("policy", "k", "rounds")
_DEFAULTS = THIConfig()


@dataclass(frozen=True)
class THIContext:
    """The THI graph's run context: plain JSON values only, so a LangGraph server, an MCP server,
    a CLI and a test describe a run the same way. ``graphs.server.resolve(context)`` gives the
    live objects (cached per process); :meth:`thi_config` the validated settings.

    >>> ctx = THIContext(policy="paper", config={"xi": 0.8})
    >>> ctx.thi_config().xi
    0.8
    """

    # retrieval
    model: Annotated[str, Field(
        description="retrieval model: a registered name, an open_clip name (with pretrained), a checkpoint file "
                    "or local-dir:FOLDER")] = DEFAULT_MODEL
    pretrained: Annotated[str | None, Field(description="pretrained tag or checkpoint file for model")] = None
    gallery: Annotated[str | None, Field(
        description="dataset folder or image folder; None: the SynthPedes demo gallery")] = None
    split: Annotated[str, Field(description="split of a dataset folder")] = "test"
    chroma_url: Annotated[str | None, Field(
        description="Chroma server URL (http://HOST:PORT) instead of the local Chroma folder")] = None
    data_dir: Annotated[str | None, Field(description="local Chroma folder (None: $THI_HOME/chroma)")] = None
    device: Annotated[str | None, Field(description="torch device of the models (None: CUDA when present)")] = None
    # MLLM
    mllm: Annotated[str, Field(
        description="MLLM backend: offline, openai, transformers, or oracle (simulation only)")] = "offline"
    mllm_url: Annotated[str | None, Field(description="openai: base URL of an OpenAI-compatible server")] = None
    mllm_model: Annotated[str | None, Field(description="openai: model name")] = None
    mllm_path: Annotated[str | None, Field(
        description="transformers: folder of a local image-text-to-text model")] = None
    mllm_timeout: Annotated[float, Field(description="openai: seconds per request")] = 60.0
    mllm_protocol: Annotated[str | None, Field(
        description="chat backends (openai, transformers): how the MLLM is talked to: ours, icl (ICL's "
                    "protocol: open questions, the MLLM's merge used as the new query), or a protocol JSON "
                    "file (None: ours)")] = None
    mllm_dialogue_timeout: Annotated[float | None, Field(
        description="seconds of work (not of waiting for a person) one dialogue may spend in all; once spent, "
                    "every MLLM call fails at once and the dialogue stops with the ranking it has "
                    "(None: no limit)")] = None
    user_mllm: Annotated[str | None, Field(
        description="backend of the simulated user (None: the mllm backend)")] = None
    # THI
    policy: Annotated[Literal["paper", "adaptive"], Field(
        description="adaptive (ours) or paper (ICL's published algorithm)")] = _DEFAULTS.policy
    k: Annotated[int, Field(description="top-k shown, traced and used for convergence")] = _DEFAULTS.k
    rounds: Annotated[int, Field(description="the loop's own round limit")] = _DEFAULTS.rounds
    config: Annotated[dict[str, Any], Field(
        description='further THIConfig settings by name, e.g. {"xi": 0.8}')] = field(default_factory=dict)
    user: Annotated[Literal["none", "human", "simulated"], Field(
        description="who answers the questions: none (the MLLM, about the anchor), human (through an "
                    "interrupt), simulated (an MLLM about the target photo; benchmarks)")] = "none"
    target: Annotated[str | None, Field(
        description="image id of the target photo, when known (the simulated user answers about it)")] = None
    target_pid: Annotated[int | None, Field(
        description="person id of the target, when known: traced as its rank per round (None: the target "
                    "photo's person, when target is given)")] = None
    filter: Annotated[dict[str, Any] | None, Field(
        description="Chroma metadata filter (a where clause): only matching photos are ranked")] = None
    resources: Annotated[str | None, Field(
        description="name of live objects registered in this process (graphs.server.register); they "
                    "replace what the fields above would build")] = None

    def __post_init__(self) -> None:
        if self.user not in ("none", "human", "simulated"):
            raise ValueError(f"user must be 'none', 'human' or 'simulated', not {self.user!r}")
        if self.mllm_dialogue_timeout is not None and not (
                isinstance(self.mllm_dialogue_timeout, (int, float)) and 0 < self.mllm_dialogue_timeout < float("inf")):
            raise ValueError(f"mllm_dialogue_timeout must be a positive number of seconds, not "
                             f"{self.mllm_dialogue_timeout!r}")
        if not isinstance(self.config, dict):
            raise ValueError("config must be an object of THIConfig settings")
        clash = [k for k in _OWN_FIELDS if k in self.config]
        if clash:
            raise ValueError(f"set {', '.join(clash)} as context fields of their own, not in config")

    def thi_config(self) -> THIConfig:
        """The validated settings (``ValueError`` with a one-line message when one is wrong)."""
        known = {f.name for f in fields(THIConfig)}
        unknown = sorted(set(self.config) - known)
        if unknown:
            raise ValueError(f"unknown THI setting(s): {', '.join(unknown)}")
        return THIConfig(policy=self.policy, k=self.k, rounds=self.rounds, **self.config)

    @classmethod
    def from_config(cls, config: THIConfig, **fields_: Any) -> "THIContext":
        """The context of ``config`` (only the settings that differ from the defaults go in
        ``config``), with the other fields given by name."""
        extra = {k: v for k, v in asdict(config).items()
                 if k not in _OWN_FIELDS and v != getattr(_DEFAULTS, k)}
        return cls(policy=config.policy, k=config.k, rounds=config.rounds, config=extra, **fields_)
