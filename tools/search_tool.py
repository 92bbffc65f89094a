"""The THI search as one LangChain tool, for larger assistant agents.

The tool takes a description (plus k, rounds and an optional typed filter), runs the whole THI
loop and returns a short summary for the LLM, with the full ranking and the per-round trace as the
tool message's *artifact* (``response_format="content_and_artifact"``). It never raises into its
host agent: bad arguments and runtime failures (a filter nothing matches, a gallery that cannot be
opened, a failing MLLM server) come back to the model as an error tool message
(``ToolMessage(status="error")``) that says what went wrong. It has a sync and an async version
(``tool.invoke`` / ``await tool.ainvoke``).

The filter is a typed object (:class:`PersonFilter`: camera, person id, split, path prefix) whose
JSON schema is valid under OpenAI's strict tool schemas; :meth:`PersonFilter.where` compiles it to
a Chroma ``where`` clause.

The runner is injected (``make_search_tool(runner)``), so this module needs nothing from
``graphs``; ``graphs.service.default_search_tool()`` builds one on the default gallery.

>>> from graphs.service import default_search_tool
>>> tool = default_search_tool()                                          # doctest: +SKIP
>>> tool.invoke({"query": "a man in a grey hoodie with a black backpack"})  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable

from langchain_core.tools import StructuredTool, ToolException
from langgraph.errors import GraphBubbleUp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.text import printable

log = logging.getLogger(__name__)

#: The CLI's default round limit (``python -m graphs.thi --rounds``), the tool's too.
DEFAULT_ROUNDS = 5


class PersonFilter(BaseModel):
    """Which photos may be ranked; every field given must hold (AND). Compiled to a Chroma
    ``where`` clause over the gallery's metadata (``camera``, ``pid``, ``split``, ``path``)."""

    model_config = ConfigDict(extra="forbid")

    camera: int | None = Field(default=None, description="Only photos from this camera id.")
    person_id: int | None = Field(default=None, description="Only photos of this person id (galleries that know ids).")
    split: str | None = Field(default=None, description="Only photos of this dataset split, e.g. 'test'.")
    path_prefix: str | None = Field(
        default=None, description="Only photos whose id (their path in the gallery folder) starts with this.")

    def where(self, image_ids: Iterable[str] | None = None, paths: dict[str, str] | None = None) -> dict | None:
        """The Chroma ``where`` clause, or None when no field is set. ``path_prefix`` needs the
        gallery's image ids and their metadata paths (``paths``: id -> path). Raises
        ``ValueError`` when ``path_prefix`` matches no photo (or the ids are not given)."""
        clauses: list[dict] = []
        if self.camera is not None:
            clauses.append({"camera": {"$eq": self.camera}})
        if self.person_id is not None:
            clauses.append({"pid": {"$eq": self.person_id}})
        if self.split is not None:
            clauses.append({"split": {"$eq": self.split}})
        if self.path_prefix is not None:
            if image_ids is None or paths is None:
                raise ValueError("path_prefix needs the gallery's image ids")
            matching = [paths[i] for i in image_ids if i.startswith(self.path_prefix) and i in paths]
            if not matching:
                raise ValueError(f"no photo's id starts with {self.path_prefix!r}")
            clauses.append({"path": {"$in": matching}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class PersonSearchArgs(BaseModel):
    """Arguments of the person-search tool."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="A description of the person's appearance: gender, hair, clothes and their "
                                   "colours, shoes, bags, accessories, what they are doing, where.")
    k: int = Field(default=5, ge=1, le=50, description="How many best matches to return.")
    rounds: int = Field(default=DEFAULT_ROUNDS, ge=1, le=10,
                        description="Maximum rounds of MLLM inspection and query refinement.")
    filter: PersonFilter | None = Field(default=None, description="Only photos matching all given fields are ranked.")

    @field_validator("query")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the query is empty")
        return v


Runner = Callable[[str, int, int, "PersonFilter | None"], dict]
AsyncRunner = Callable[[str, int, int, "PersonFilter | None"], Awaitable[dict]]


def summarise(result: dict, k: int) -> str:
    """What the calling LLM reads: the best matches and how the search went."""
    lines = [f"Top {k} matches for: {result['query']!r}"]
    for n, c in enumerate(result["ranking"][:k], 1):
        extra = f", person id {c['pid']}" if c.get("pid") is not None else ""
        lines.append(f"{n}. {c['id']} (score {c['score']:.3f}{extra})")
    lines.append(f"Refined query: {result['final_query']!r}. Stopped: {result['stopped_because']}. "
                 f"{len(result['rounds'])} rounds, {result['mllm_calls']} MLLM calls.")
    return "\n".join(lines)


def _failure(e: Exception) -> ToolException:
    """A runtime failure as the message the calling model reads (one line)."""
    log.info("search_person failed: %s: %s", type(e).__name__, e)
    text = printable(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, max_len=300)
    return ToolException(f"search failed ({type(e).__name__}): {text}")


def _as_filter(value: Any) -> PersonFilter | None:
    if value is None or isinstance(value, PersonFilter):
        return value
    return PersonFilter.model_validate(value)


def make_search_tool(runner: Runner, name: str = "search_person", arunner: AsyncRunner | None = None) -> StructuredTool:
    """A LangChain tool over ``runner(query, k, rounds, filter) -> result dict`` (``filter``: a
    :class:`PersonFilter` or None). ``arunner`` is its async version (default: ``runner`` in a
    worker thread). Errors come back as error tool messages."""

    def search_person(query: str, k: int = 5, rounds: int = DEFAULT_ROUNDS,
                      filter: PersonFilter | None = None) -> tuple[str, dict]:
        try:
            result = runner(query, k, rounds, _as_filter(filter))
        except GraphBubbleUp:  # a LangGraph interrupt passes through to the host graph
            raise
        except Exception as e:
            raise _failure(e) from e
        return summarise(result, k), result

    async def asearch_person(query: str, k: int = 5, rounds: int = DEFAULT_ROUNDS,
                             filter: PersonFilter | None = None) -> tuple[str, dict]:
        try:
            if arunner is not None:
                result = await arunner(query, k, rounds, _as_filter(filter))
            else:
                result = await asyncio.to_thread(runner, query, k, rounds, _as_filter(filter))
        except GraphBubbleUp:
            raise
        except Exception as e:
            raise _failure(e) from e
        return summarise(result, k), result

    return StructuredTool.from_function(
        func=search_person,
        coroutine=asearch_person,
        name=name,
        description="Find a person in the gallery of pedestrian photos from a written description. The search "
                    "inspects its own top candidates with a multimodal LLM and refines the description before "
                    "answering. Returns the best-matching photo ids with scores.",
        args_schema=PersonSearchArgs,
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=True,
    )
