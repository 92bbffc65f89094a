"""The THI search as one LangChain tool, for larger assistant agents.

The tool takes a description (plus k, rounds and an optional metadata filter), runs the whole THI
loop and returns a short summary for the LLM, with the full ranking and the per-round trace as the
tool message's *artifact* (``response_format="content_and_artifact"``).

The runner is injected (``make_search_tool(runner)``), so this module needs nothing from
``graphs``; ``graphs.service.default_search_tool()`` builds one on the default gallery.

>>> from graphs.service import default_search_tool
>>> tool = default_search_tool()                                          # doctest: +SKIP
>>> tool.invoke({"query": "a man in a grey hoodie with a black backpack"})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field, field_validator

Runner = Callable[[str, int, int, "dict[str, Any] | None"], dict]


class PersonSearchArgs(BaseModel):
    """Arguments of the person-search tool."""

    query: str = Field(description="A description of the person's appearance: gender, hair, clothes and their "
                                   "colours, shoes, bags, accessories, what they are doing, where.")
    k: int = Field(default=5, ge=1, le=50, description="How many best matches to return.")
    rounds: int = Field(default=3, ge=1, le=10, description="Maximum rounds of MLLM inspection and query refinement.")
    filter: dict[str, Any] | None = Field(
        default=None, description='Optional metadata filter in Chroma syntax, e.g. {"camera": 3} or '
                                  '{"split": "test"}. Only matching photos are ranked.')

    @field_validator("query")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the query is empty")
        return v


def summarise(result: dict, k: int) -> str:
    """What the calling LLM reads: the best matches and how the search went."""
    lines = [f"Top {k} matches for: {result['query']!r}"]
    for n, c in enumerate(result["ranking"][:k], 1):
        extra = f", person id {c['pid']}" if c.get("pid") is not None else ""
        lines.append(f"{n}. {c['id']} (score {c['score']:.3f}{extra})")
    lines.append(f"Refined query: {result['final_query']!r}. Stopped: {result['stopped_because']}. "
                 f"{len(result['rounds'])} rounds, {result['mllm_calls']} MLLM calls.")
    return "\n".join(lines)


def make_search_tool(runner: Runner, name: str = "search_person") -> StructuredTool:
    """A LangChain tool over ``runner(query, k, rounds, filter) -> result dict``."""

    def search_person(query: str, k: int = 5, rounds: int = 3, filter: dict[str, Any] | None = None) -> tuple[str, dict]:
        result = runner(query, k, rounds, filter)
        return summarise(result, k), result

    return StructuredTool.from_function(
        func=search_person,
        name=name,
        description="Find a person in the gallery of pedestrian photos from a written description. The search "
                    "inspects its own top candidates with a multimodal LLM and refines the description before "
                    "answering. Returns the best-matching photo ids with scores.",
        args_schema=PersonSearchArgs,
        response_format="content_and_artifact",
    )
