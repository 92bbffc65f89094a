"""THI as a reusable service: models, gallery and MLLM loaded once, one call per search.

>>> service = THIService.default()                      # shipped model, demo gallery, offline MLLM
>>> result = service.search("a woman in a red coat", k=5)  # doctest: +SKIP
>>> tool = service.as_tool()                              # a LangChain tool for agents
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tools.embedder import DEFAULT_MODEL
from tools.index import GalleryIndex
from tools.mllm import MLLM
from tools.search_tool import make_search_tool

from .config import THIConfig, THIContext
from .server import live_context, open_index, resolve
from .thi import build_graph, recursion_limit


class THIService:
    """Searches over one run context (plain values; its live objects come from ``graphs.server``'s
    cache). ``THIService.default()`` opens the default setup; ``THIService.with_objects(index,
    mllm)`` runs over objects the caller built."""

    def __init__(self, context: THIContext):
        resolve(context)  # fail now (bad setting, missing model or gallery), not at the first search
        self.context = context
        self.graph = build_graph()

    @classmethod
    def default(cls, gallery: str | Path | None = None, model: str = DEFAULT_MODEL, mllm: str = "offline",
                config: THIConfig = THIConfig(), progress: bool = False, **context_fields: Any) -> "THIService":
        """The service on ``gallery`` (default: the demo gallery; a gallery not indexed yet is
        indexed now) with the retrieval ``model``, the ``mllm`` backend and ``config``; further
        :class:`THIContext` fields (e.g. ``mllm_url``, ``device``) by name."""
        ctx = THIContext.from_config(config, gallery=None if gallery is None else str(gallery), model=model,
                                     mllm=mllm, **context_fields)
        open_index(ctx, index_if_missing=True, progress=progress)
        return cls(ctx)

    @classmethod
    def with_objects(cls, index: GalleryIndex, mllm: MLLM, config: THIConfig = THIConfig()) -> "THIService":
        """The service over a gallery index and an MLLM built by the caller (registered in
        ``graphs.server`` for the service's lifetime in the process)."""
        return cls(live_context(index, mllm, config))

    @property
    def index(self) -> GalleryIndex:
        return resolve(self.context).index

    @property
    def mllm(self) -> MLLM:
        return resolve(self.context).mllm

    @property
    def config(self) -> THIConfig:
        return self.context.thi_config()

    def search(self, query: str, k: int = 5, rounds: int | None = None, where: dict | None = None) -> dict:
        """Run THI; returns query, final_query, rounds (trace), ranking [{id, score, pid}], stopped_because."""
        ctx = replace(self.context, k=max(1, k), rounds=rounds or self.context.rounds, filter=where or None)
        live = resolve(ctx)
        calls0 = live.mllm.stats.total_calls
        state = self.graph.invoke({"query": query}, context=ctx, config={"recursion_limit": recursion_limit(live.config)})
        ranking = [{**c, "pid": live.index.pid(c["id"])} for c in state["ranking"][:k]]
        return {"query": state["query"], "final_query": state["current_query"], "rounds": state["rounds"],
                "ranking": ranking, "stopped_because": state["stopped_because"],
                "mllm_calls": live.mllm.stats.total_calls - calls0, "truncated": state.get("truncated", "")}

    def as_tool(self):
        return make_search_tool(lambda q, k, r, f: self.search(q, k, r, f))


def default_search_tool(**kwargs: Any):
    """The LangChain tool on the default setup (shipped model, demo gallery, offline MLLM)."""
    return THIService.default(**kwargs).as_tool()
