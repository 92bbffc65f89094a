"""``python -m graphs.mcp``: THI over the Model Context Protocol (stdio), for assistants outside
LangChain (desktop assistants, IDE agents).

Tools (results are structured: MCP ``structuredContent`` with a JSON schema, plus a text summary):

* ``search(query, k=5, rounds=5, filter=None)``: the whole THI loop without a user; the ranking
  (rank, image id, score, person id, path), the final query, the stop reason, the MLLM calls and
  the per-round trace.
* ``start_dialogue(query, k=5, rounds=5)``: THI with the assistant's user answering: the first
  round's questions (slots, questions, the answers each slot knows), the current top candidates,
  and a ``dialogue_id``;
* ``answer(dialogue_id, answers={slot: free text}, finish=False)``: the next questions, or the
  result when the dialogue ends;
* ``finish_dialogue(dialogue_id)``: end it now with the ranking it has.

The models, the gallery and the MLLM load once, when the server starts (one run context: the flags
are :class:`graphs.config.THIContext`'s fields). Dialogues live in memory, or in a SQLite
checkpoint with ``--checkpoint FILE`` (they survive a restart). Nothing but the protocol is
written to stdout; logs go to stderr.

Configure a client (Claude Desktop's ``claude_desktop_config.json``, an IDE's MCP settings)::

    {"mcpServers": {"thi": {"command": "python", "args": ["-m", "graphs.mcp", "--gallery", "/data/CUHK-PEDES"]}}}
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
import threading
import typing
import uuid
from dataclasses import fields, replace
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.search_tool import DEFAULT_ROUNDS, PersonFilter

from .config import THIContext
from .server import backend_for, open_index, resolve
from .service import THIService
from .thi import build_graph, recursion_limit

log = logging.getLogger(__name__)


class Match(BaseModel):
    rank: int
    id: str = Field(description="image id (its path in the gallery folder)")
    score: float
    pid: int | None = Field(default=None, description="person id, when the gallery knows it")
    path: str = Field(description="the photo's file path")


class SearchResult(BaseModel):
    query: str
    final_query: str = Field(description="the query after the rounds (what the text encoder saw last)")
    ranking: list[Match]
    stopped_because: str | None
    mllm_calls: int = Field(description="MLLM calls this search made")
    rounds: list[dict[str, Any]] = Field(description="the per-round trace: checks, anchor, questions, answers, "
                                                      "rewritten query, top-k, cost")


class Question(BaseModel):
    slot: str = Field(description="the key to answer under")
    question: str
    options: list[str] = Field(description="the answers the slot knows; free text is read too")


class DialogueStep(BaseModel):
    dialogue_id: str
    status: Literal["questions", "finished"]
    round: int | None = Field(default=None, description="the round asking (status questions)")
    questions: list[Question] = Field(default_factory=list)
    top: list[Match] = Field(default_factory=list, description="the current best candidates")
    error: str | None = Field(default=None, description="why the last answers were refused (asked again)")
    result: SearchResult | None = Field(default=None, description="the outcome (status finished)")


def _ranking(state: dict, ctx: THIContext, k: int) -> list[Match]:
    index = resolve(ctx).index
    return [Match(rank=n, id=c["id"], score=c["score"], pid=index.pid(c["id"]), path=str(index.image(c["id"]).path))
            for n, c in enumerate(state["ranking"][:k], 1)]


def _result(state: dict, ctx: THIContext, k: int) -> SearchResult:
    usage = state.get("usage") or {}
    return SearchResult(query=state["query"], final_query=state["current_query"], ranking=_ranking(state, ctx, k),
                        stopped_because=state.get("stopped_because"), mllm_calls=usage.get("mllm_calls", 0),
                        rounds=list(state["rounds"]))


class Dialogues:
    """Interactive THI dialogues, one LangGraph thread each (``dialogue_id``)."""

    def __init__(self, context: THIContext, checkpoint: str | None = None):
        self.context = replace(context, user="human")
        if checkpoint:
            import sqlite3

            from langgraph.checkpoint.sqlite import SqliteSaver

            saver: Any = SqliteSaver(sqlite3.connect(checkpoint, check_same_thread=False))
        else:
            from langgraph.checkpoint.memory import InMemorySaver

            saver = InMemorySaver()
        self.graph = build_graph(saver)
        self._contexts: dict[str, THIContext] = {}
        self._lock = threading.Lock()

    def _config(self, dialogue_id: str, ctx: THIContext) -> dict:
        return {"configurable": {"thread_id": dialogue_id}, "recursion_limit": recursion_limit(ctx.thi_config())}

    def _context_of(self, dialogue_id: str) -> THIContext:
        with self._lock:
            ctx = self._contexts.get(dialogue_id)
        if ctx is not None:
            return ctx
        stored = self.graph.get_state({"configurable": {"thread_id": dialogue_id}}).values
        if not stored:
            raise ValueError(f"no dialogue {dialogue_id!r} (start one with start_dialogue)")
        known = {f.name for f in fields(THIContext)}
        ctx = THIContext(**{k: v for k, v in (stored.get("context") or {}).items() if k in known})
        with self._lock:
            self._contexts[dialogue_id] = ctx
        return ctx

    def _step(self, dialogue_id: str, out: dict, ctx: THIContext) -> DialogueStep:
        if "__interrupt__" in out:
            payload = out["__interrupt__"][0].value
            state = self.graph.get_state(self._config(dialogue_id, ctx)).values
            return DialogueStep(dialogue_id=dialogue_id, status="questions", round=payload["round"],
                                questions=[Question(slot=q["slot"], question=q["question"], options=q["options"])
                                           for q in payload["questions"]],
                                top=_ranking(state, ctx, ctx.k), error=payload.get("error"))
        return DialogueStep(dialogue_id=dialogue_id, status="finished", top=_ranking(out, ctx, ctx.k),
                            result=_result(out, ctx, ctx.k))

    def start(self, query: str, k: int, rounds: int) -> DialogueStep:
        dialogue_id = uuid.uuid4().hex
        ctx = replace(self.context, k=k, rounds=rounds)
        with self._lock:
            self._contexts[dialogue_id] = ctx
        out = self.graph.invoke({"query": query}, self._config(dialogue_id, ctx), context=ctx)
        return self._step(dialogue_id, out, ctx)

    def answer(self, dialogue_id: str, answers: dict[str, str], finish: bool) -> DialogueStep:
        ctx = self._context_of(dialogue_id)
        config = self._config(dialogue_id, ctx)
        snapshot = self.graph.get_state(config)
        if not snapshot.next:
            return self._step(dialogue_id, snapshot.values, ctx)  # finished before: its result again
        from langgraph.types import Command

        out = self.graph.invoke(Command(resume={"answers": answers, "finish": finish}), config, context=ctx)
        return self._step(dialogue_id, out, ctx)


def _tool_errors(fn):
    """Failures a caller can act on (a bad argument, a filter nothing matches, an MLLM or gallery
    error) come back as the tool's error result, in one line."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ToolError(f"{type(e).__name__}: {text}") from e

    return wrapper


def _check(k: int, rounds: int) -> None:
    if not 1 <= k <= 100:
        raise ValueError(f"k must be within 1..100, not {k}")
    if not 1 <= rounds <= 20:
        raise ValueError(f"rounds must be within 1..20, not {rounds}")


def build_server(context: THIContext, checkpoint: str | None = None):
    """The MCP server over ``context`` (its models, gallery and MLLM loaded now, once)."""
    from mcp.server.mcpserver import MCPServer

    service = THIService(context)
    dialogues = Dialogues(context, checkpoint)
    server = MCPServer("thi-reid", instructions=(
        "Find a person in a gallery of pedestrian photos from a written description. 'search' refines the "
        "ranking by asking a multimodal LLM about the top candidates; 'start_dialogue' / 'answer' / "
        "'finish_dialogue' ask your user attribute questions instead (pass their answers as free text)."))

    @server.tool()
    @_tool_errors
    def search(query: str, k: int = 5, rounds: int = DEFAULT_ROUNDS, filter: PersonFilter | None = None) -> SearchResult:
        """Find the person described by `query` (appearance: gender, hair, clothes and colours, shoes, bags,
        accessories). The search inspects its own top candidates with a multimodal LLM and refines the
        description for up to `rounds` rounds. Returns the `k` best photos (ids, scores, person ids, paths) and
        the per-round trace. `filter`: only photos matching all given fields are ranked."""
        _check(k, rounds)
        result = service.search(query, k=k, rounds=rounds, where=filter)
        return SearchResult(query=result["query"], final_query=result["final_query"],
                            ranking=[Match(rank=n, id=c["id"], score=c["score"], pid=c["pid"], path=c["path"])
                                     for n, c in enumerate(result["ranking"], 1)],
                            stopped_because=result["stopped_because"], mllm_calls=result["mllm_calls"],
                            rounds=result["rounds"])

    @server.tool()
    @_tool_errors
    def start_dialogue(query: str, k: int = 5, rounds: int = DEFAULT_ROUNDS) -> DialogueStep:
        """Start an interactive search for the person described by `query`: returns a `dialogue_id`, the current
        best candidates and the first questions for your user (answer them with `answer`)."""
        _check(k, rounds)
        return dialogues.start(query, k, rounds)

    @server.tool()
    @_tool_errors
    def answer(dialogue_id: str, answers: dict[str, str], finish: bool = False) -> DialogueStep:
        """Give your user's answers to the current questions as {slot: free text} ('skip' or leaving a slot out:
        no answer). Returns the next questions, or the result when the dialogue ends (`finish`: end after this)."""
        return dialogues.answer(dialogue_id, answers, finish)

    @server.tool()
    @_tool_errors
    def finish_dialogue(dialogue_id: str) -> DialogueStep:
        """End a dialogue now; returns its result (the ranking it has)."""
        return dialogues.answer(dialogue_id, {}, True)

    return server


# -------------------------------------------------------------------------------------------
# the command line: one flag per run-context field


_ALIASES = {"chroma_url": ["--url"], "k": ["-k"]}
_NOT_FLAGS = {"config", "resources", "user", "target", "target_pid", "filter", "user_mllm"}


def _flag_type(annotation: Any) -> tuple[Any, list | None]:
    """(argparse type, choices) of a context field's annotation."""
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    if typing.get_origin(base) is Literal:
        return str, list(typing.get_args(base))
    args = [a for a in typing.get_args(base) if a is not type(None)] or [base]
    inner = args[0]
    if typing.get_origin(inner) is Literal:
        return str, list(typing.get_args(inner))
    return (inner if inner in (int, float) else str), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m graphs.mcp",
        description="Serve THI person search over the Model Context Protocol (stdio): tools search, start_dialogue, "
                    "answer, finish_dialogue. The models, gallery and MLLM load once, at start. With no flag: the "
                    "shipped model, the SynthPedes demo gallery (generated on first use) and the offline MLLM.")
    hints = typing.get_type_hints(THIContext, include_extras=True)
    for f in fields(THIContext):
        if f.name in _NOT_FLAGS:
            continue
        kind, choices = _flag_type(hints[f.name])
        meta = getattr(hints[f.name], "__metadata__", ())
        description = next((m.description for m in meta if getattr(m, "description", None)), "")
        p.add_argument(f"--{f.name.replace('_', '-')}", *_ALIASES.get(f.name, []), dest=f.name, type=kind,
                       choices=choices, default=f.default,
                       help=f"{description} (default: {f.default})".replace("%", "%%"))
    p.add_argument("--config", metavar="JSON", default="{}", help='further THI settings, e.g. \'{"xi": 0.8}\'')
    p.add_argument("--index", action="store_true", help="index --gallery now if it is not indexed yet")
    p.add_argument("--checkpoint", metavar="FILE.sqlite", help="keep dialogues in this SQLite file (survive restarts)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    try:
        extra = json.loads(args.config)
        if not isinstance(extra, dict):
            raise ValueError("--config must be a JSON object of THI settings")
        values = {f.name: getattr(args, f.name) for f in fields(THIContext) if f.name not in _NOT_FLAGS}
        ctx = THIContext(**values, config=extra)
        ctx.thi_config()
        # stdout is the protocol's: anything a model loader prints goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            backend_for(ctx).preflight()
            open_index(ctx, index_if_missing=ctx.gallery is None or args.index, progress=True)
            server = build_server(ctx, args.checkpoint)
    except Exception as e:  # one line, whatever failed at start
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 1
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
