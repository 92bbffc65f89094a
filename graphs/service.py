"""THI as a reusable service: models, gallery and MLLM loaded once, one call per search.

>>> service = THIService.default()                      # shipped model, demo gallery, offline MLLM
>>> result = service.search("a woman in a red coat", k=5)  # doctest: +SKIP
>>> result = await service.asearch("a woman in a red coat")  # doctest: +SKIP
>>> tool = service.as_tool()                              # a LangChain tool for agents (sync and async)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tools.embedder import DEFAULT_MODEL
from tools.index import GalleryIndex
from tools.mllm import MLLM
from tools.search_tool import DEFAULT_ROUNDS, PersonFilter, make_search_tool

from .config import THIConfig, THIContext
from .server import backend_for, live_context, open_index, resolve
from .thi import build_graph, recursion_limit


class THIService:
    """Searches over one run context (plain values; its live objects come from ``graphs.server``'s
    cache). ``THIService.default()`` opens the default setup; ``THIService.with_objects(index,
    mllm)`` runs over objects the caller built. Thread-safe: concurrent searches each count their
    own MLLM calls (``mllm_calls``, ``usage``)."""

    def __init__(self, context: THIContext):
        resolve(context)  # fail now (bad setting, missing model or gallery), not at the first search
        self.context = context
        self.graph = build_graph()

    @classmethod
    def default(cls, gallery: str | Path | None = None, model: str = DEFAULT_MODEL, mllm: str = "offline",
                config: THIConfig = THIConfig(), progress: bool = False, **context_fields: Any) -> "THIService":
        """The service on ``gallery`` (default: the demo gallery; a gallery not indexed yet is
        indexed now) with the retrieval ``model``, the ``mllm`` backend and ``config``; further
        :class:`THIContext` fields (e.g. ``mllm_url``, ``mllm_protocol``, ``mllm_dialogue_timeout``,
        ``device``) by name. A chat backend is checked first (``preflight``: ``MLLMError`` in one
        line when its server cannot answer)."""
        ctx = THIContext.from_config(config, gallery=None if gallery is None else str(gallery), model=model,
                                     mllm=mllm, **context_fields)
        backend_for(ctx).preflight()
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

    def _where(self, where: "dict | PersonFilter | None") -> dict | None:
        if isinstance(where, PersonFilter):
            index = self.index
            paths = {i: str(m.get("path", "")) for i, m in zip(index.ids, index.metadatas)}
            return where.where(index.ids, paths)
        return where or None

    def _context(self, k: int, rounds: int | None, where: "dict | PersonFilter | None") -> THIContext:
        for name, value in (("k", k), ("rounds", rounds)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
        return replace(self.context, k=k, rounds=self.context.rounds if rounds is None else rounds,
                       filter=self._where(where))

    def _result(self, state: dict, ctx: THIContext) -> dict:
        index = resolve(ctx).index
        usage = state.get("usage") or {}
        ranking = [{**c, "pid": index.pid(c["id"]), "path": str(index.image(c["id"]).path)}
                   for c in state["ranking"][: ctx.k]]
        return {"query": state["query"], "final_query": state["current_query"], "rounds": state["rounds"],
                "ranking": ranking, "stopped_because": state["stopped_because"],
                "mllm_calls": usage.get("mllm_calls", 0), "usage": usage, "truncated": state.get("truncated", "")}

    def search(self, query: str, k: int = 5, rounds: int | None = None,
               where: "dict | PersonFilter | None" = None) -> dict:
        """Run THI; returns query, final_query, rounds (trace), ranking [{id, score, pid, path}],
        stopped_because, mllm_calls (this search's own), usage. ``rounds``: the round limit
        (default: the context's); ``where``: a Chroma metadata filter or a :class:`PersonFilter`.
        Raises ``ValueError`` for ``k`` or ``rounds`` below 1, an empty query, or a filter that
        matches no photo."""
        ctx = self._context(k, rounds, where)
        state = self.graph.invoke({"query": query}, context=ctx,
                                  config={"recursion_limit": recursion_limit(ctx.thi_config())})
        return self._result(state, ctx)

    async def asearch(self, query: str, k: int = 5, rounds: int | None = None,
                      where: "dict | PersonFilter | None" = None) -> dict:
        """:meth:`search`, awaitable (the graph's nodes run in worker threads)."""
        ctx = self._context(k, rounds, where)
        state = await self.graph.ainvoke({"query": query}, context=ctx,
                                         config={"recursion_limit": recursion_limit(ctx.thi_config())})
        return self._result(state, ctx)

    def as_tool(self):
        """The LangChain tool over this service (default ``rounds``: the CLI's, 5)."""
        return make_search_tool(lambda q, k, r, f: self.search(q, k, r, f),
                                arunner=lambda q, k, r, f: self.asearch(q, k, r, f))


def default_search_tool(**kwargs: Any):
    """The LangChain tool on the default setup (shipped model, demo gallery, offline MLLM)."""
    return THIService.default(**kwargs).as_tool()


__all__ = ["DEFAULT_ROUNDS", "THIService", "default_search_tool"]
