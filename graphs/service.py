"""THI as a reusable service: models, gallery and MLLM loaded once, one call per search.

>>> service = THIService.default()                      # shipped model, demo gallery, offline MLLM
>>> result = service.search("a woman in a red coat", k=5)  # doctest: +SKIP
>>> tool = service.as_tool()                              # a LangChain tool for agents
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tools.embedder import DEFAULT_MODEL, Embedder
from tools.mllm import MLLM, make_mllm
from tools.search_tool import make_search_tool

from .config import GalleryIndex, THIConfig, THIContext
from .demo import open_gallery
from .thi import build_graph, recursion_limit


class THIService:
    def __init__(self, index: GalleryIndex, mllm: MLLM, config: THIConfig = THIConfig()):
        self.index = index
        self.mllm = mllm
        self.config = config
        self.graph = build_graph()

    @classmethod
    def default(cls, gallery: str | Path | None = None, model: str = DEFAULT_MODEL, mllm: str = "offline",
                config: THIConfig = THIConfig(), progress: bool = False, **mllm_options: Any) -> "THIService":
        embedder = Embedder(model)
        g, folder = open_gallery(gallery, embedder, progress=progress, index_if_missing=True)
        if mllm == "oracle":
            mllm_options.setdefault("synthpedes_dir", folder)
        return cls(GalleryIndex(g, embedder), make_mllm(mllm, **mllm_options), config)

    def allowed_ids(self, where: dict | None) -> set[str] | None:
        if not where:
            return None
        got = self.index.gallery.collection.get(where=where, include=[])
        return set(got["ids"])

    def search(self, query: str, k: int = 5, rounds: int | None = None, where: dict | None = None) -> dict:
        """Run THI; returns query, final_query, rounds (trace), ranking [{id, score, pid}], stopped_because."""
        cfg = replace(self.config, k=max(1, k), rounds=rounds or self.config.rounds)
        calls0 = self.mllm.stats.total_calls
        ctx = THIContext(index=self.index, mllm=self.mllm, config=cfg, allowed=self.allowed_ids(where))
        state = self.graph.invoke({"query": query}, context=ctx, config={"recursion_limit": recursion_limit(cfg)})
        ranking = [{**c, "pid": self.index.pid(c["id"])} for c in state["ranking"][:k]]
        return {"query": state["query"], "final_query": state["current_query"], "rounds": state["rounds"],
                "ranking": ranking, "stopped_because": state["stopped_because"],
                "mllm_calls": self.mllm.stats.total_calls - calls0, "truncated": state.get("truncated", "")}

    def as_tool(self):
        return make_search_tool(lambda q, k, r, f: self.search(q, k, r, f))


def default_search_tool(**kwargs: Any):
    """The LangChain tool on the default setup (shipped model, demo gallery, offline MLLM)."""
    return THIService.default(**kwargs).as_tool()
