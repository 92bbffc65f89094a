"""python -m graphs.thi --query TEXT: interactive text-to-image person retrieval from the terminal.

The flags describe one run context (:class:`graphs.config.THIContext`); the models, gallery and
MLLM come from ``graphs.server``'s cache, as for every other entry point.

Dialogues kept in a checkpoint (``--checkpoint F --thread-id T``): a new ``--query`` on a thread
starts a fresh dialogue there (the last one's values are replaced); ``--resume`` continues the
thread's dialogue where it stopped (a dialogue killed mid-way goes on from its last finished step,
an interactive one asks the questions it was waiting on, with the answers given before kept),
with the settings it was started with (flags given with ``--resume`` override them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import uuid
from dataclasses import fields, replace
from pathlib import Path

from langgraph.types import Command

from tools.embedder import DEFAULT_MODEL, EmbedderError
from tools.gallery import GalleryError
from tools.mllm import BACKENDS, MLLMError
from tools.text import printable

from ..config import THIConfig, THIContext, fusion_weight_field
from ..report import write_report, write_trace
from ..server import backend_for, open_index
from .graph import build_graph, recursion_limit

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    d = THIConfig()
    p = argparse.ArgumentParser(
        prog="python -m graphs.thi",
        description="Find a person in a gallery of pedestrian photos from a description, then refine the ranking "
                    "by asking an MLLM about the top candidates (THI). With no other flag it uses the shipped model, "
                    "the SynthPedes demo gallery (generated and indexed on first run under $THI_HOME, default "
                    "~/.cache/thi-reid) and the offline MLLM.",
        epilog='example: python -m graphs.thi --query "a woman in a red coat with a black backpack"')
    p.add_argument("--query", help="the description of the person (not with --resume)")
    g = p.add_argument_group("THI")
    g.add_argument("--policy", choices=("adaptive", "paper"), default=d.policy,
                   help="adaptive (ours) or paper (ICL's published algorithm) (default %(default)s)")
    g.add_argument("-k", type=int, default=d.k, help="top-k shown and used for convergence (default %(default)s)")
    g.add_argument("--rounds", type=int, default=d.rounds, help="round limit (default %(default)s)")
    g.add_argument("--xi", type=float, default=d.xi, help="paper: gate on the top-1 similarity (default %(default)s)")
    g.add_argument("--lam", type=float, help="weight of the original similarity in the fusion without a user "
                   f"(default: {d.lam} for paper, the paper's; {d.lam_adaptive} for adaptive; --interactive fuses "
                   f"at {d.lam_user})")
    g.add_argument("--anchor-depth", type=int, default=d.anchor_depth,
                   help="adaptive: how deep down the ranking the anchor search may verify (default %(default)s)")
    g.add_argument("--interactive", action="store_true", help="answer the questions yourself at the terminal")
    g.add_argument("--checkpoint", metavar="FILE.sqlite", help="keep the dialogue in this SQLite checkpoint (resumable)")
    g.add_argument("--thread-id", help="dialogue id in the checkpoint (default: a new one); a new --query on a "
                   "thread starts a fresh dialogue there")
    g.add_argument("--resume", action="store_true",
                   help="continue the dialogue of --thread-id in --checkpoint where it stopped (killed, or waiting "
                        "for answers), with the settings it was started with")
    m = p.add_argument_group("MLLM")
    m.add_argument("--mllm", choices=BACKENDS, default="offline", help="backend (default %(default)s)")
    m.add_argument("--mllm-url", help="openai: base URL of an OpenAI-compatible server (or $THI_MLLM_BASE_URL)")
    m.add_argument("--mllm-model", help="openai: model name (or $THI_MLLM_MODEL)")
    m.add_argument("--mllm-path", help="transformers: folder of a local image-text-to-text model")
    m.add_argument("--mllm-timeout", type=float, default=60.0, help="openai: seconds per request (default %(default)s)")
    m.add_argument("--mllm-protocol", metavar="ours|icl|FILE.json",
                   help="chat backends: how the MLLM is talked to: ours (default), icl (ICL's protocol: open "
                        "questions, the MLLM's merge used as the new query), or a protocol JSON file")
    m.add_argument("--mllm-dialogue-timeout", type=float, metavar="S",
                   help="seconds of work one dialogue may spend in all (not counting your time to answer); then "
                        "it stops with the ranking it has (default: no limit)")
    r = p.add_argument_group("retrieval")
    r.add_argument("--gallery", help="dataset folder or image folder (default: the SynthPedes demo gallery)")
    r.add_argument("--split", default="test", help="split of a dataset folder (default %(default)s)")
    r.add_argument("--index", action="store_true", help="index --gallery if it is not indexed yet")
    r.add_argument("--url", help="Chroma server URL (http://HOST:PORT) instead of the local Chroma folder")
    r.add_argument("--data-dir", help="local Chroma folder (default $THI_HOME/chroma)")
    r.add_argument("--model", default=DEFAULT_MODEL, help="retrieval model (default %(default)s)")
    r.add_argument("--pretrained", help="pretrained tag or checkpoint file for --model")
    r.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    o = p.add_argument_group("output")
    o.add_argument("--trace", metavar="FILE.jsonl", help="write one JSON line per round")
    o.add_argument("--report", metavar="FILE.html", help="write an HTML report with thumbnails")
    o.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    o.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    return p


def context_from_args(args: argparse.Namespace) -> THIContext:
    """The run context the flags describe."""
    fusion = {} if args.lam is None else {fusion_weight_field(args.policy): args.lam}
    return THIContext(model=args.model, pretrained=args.pretrained, gallery=args.gallery, split=args.split,
                      chroma_url=args.url, data_dir=args.data_dir, device=args.device, mllm=args.mllm,
                      mllm_url=args.mllm_url, mllm_model=args.mllm_model, mllm_path=args.mllm_path,
                      mllm_timeout=args.mllm_timeout, mllm_protocol=args.mllm_protocol,
                      mllm_dialogue_timeout=args.mllm_dialogue_timeout, policy=args.policy, k=args.k, rounds=args.rounds,
                      config={"xi": args.xi, "anchor_depth": args.anchor_depth, **fusion},
                      user="human" if args.interactive else "none")


#: checks printed per round; the rest are summed up in one line (--json and --trace hold them all)
SHOWN_CHECKS = 10  # by default the no-user search verifies at most 10 a round: all shown


def _print_round(r: dict) -> None:
    print(f"\n-- round {r['round']} --")
    # with a user many candidates are checked per round: show the best-ranked few
    by_rank = sorted(r["inspected"], key=lambda i: i["rank"])
    shown, rest = by_rank[:SHOWN_CHECKS], by_rank[SHOWN_CHECKS:]
    for i in shown:
        verdict = "yes" if i["match"] else "no" if i["match"] is not None else "skipped"
        print(f"  verify #{i['rank']} {i['id']}: {verdict} ({i['confidence']:.2f}) {i['reason']}")
    if rest:
        print(f"  ... {len(rest)} more checked, {sum(bool(i['match']) for i in rest)} of them fit (see --json or --trace)")
    print(f"  anchor: {r['anchor'] or '-'}")
    for a in r["answers"]:
        value = a["value"] if a["value"] is not None else "cannot tell"
        said = f" (said: {printable(a['text'], max_len=120)!r})" if a.get("text") and a["text"] != a["value"] else ""
        print(f"  Q: {a['question']}  A: {value}{said}  [{a['source']}]")
    if r["rewritten_query"]:
        print(f"  rewritten query: {r['rewritten_query']}")
    for note in r["notes"]:
        print(f"  note: {note}")
    print("  top-k: " + ", ".join(f"{c['id']} ({c['score']:.3f})" for c in r["topk"]))


def _say(text: str = "") -> None:
    """A line of the interactive dialogue: on stderr, so that stdout holds only the results (--json)."""
    print(text, file=sys.stderr, flush=True)


_prompting = threading.Event()  # a prompt waits on its line (Ctrl-C then starts a new one)


def _read(prompt: str) -> str | None:
    """One line typed by the person (None at end of input); the prompt goes to stderr (and, when
    the input is not a terminal, the answer read after it, so the log reads as a dialogue)."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    _prompting.set()
    line = sys.stdin.readline()
    _prompting.clear()
    if not sys.stdin.isatty():
        sys.stderr.write(line if line.endswith("\n") else line + "\n")
    return None if line == "" else line.strip()


def _ask_terminal(payload: dict) -> dict:
    """Ask the person the round's questions at the terminal; the resume value
    (``agents.users.Resume``)."""
    if payload.get("error"):
        _say(f"note: {payload['error']}")
    _say(f"\nRound {payload['round']}: the top candidates are")
    for c in payload["top"][:5]:
        _say(f"  #{c['rank']} {c['id']}  {c['score']:.3f}  {printable(str(c['path']))}")
    _say("Answer each question in your own words (Enter or 'skip' to skip, 'done' to finish):")
    answers = {}
    for q in payload["questions"]:
        text = _read(f"  {q['question']} [{'/'.join(q['options'])}] ")
        if text is None or text.lower() in ("done", "finish", "quit", "q"):
            return {"answers": answers, "finish": True}
        answers[q["slot"]] = text or "skip"
    return {"answers": answers, "finish": False}


def _open_checkpoint(path: str | None, interactive: bool):
    if path:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        return SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    if interactive:
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver()
    return None


def _given(args: argparse.Namespace) -> dict:
    """The context fields the command line sets to something other than their defaults."""
    defaults = context_from_args(build_parser().parse_args(["--query", "x"]))
    now = context_from_args(args)
    return {f.name: getattr(now, f.name) for f in fields(THIContext)
            if f.name != "config" and getattr(now, f.name) != getattr(defaults, f.name)}


class _Stop(Exception):
    """End main with this exit status after printing ``message`` (one ``error:`` line)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _resumed_context(graph, run_config: dict, args: argparse.Namespace) -> tuple[THIContext, object]:
    """The context of the dialogue in the checkpoint (flags given now override it) and its state."""
    snapshot = graph.get_state(run_config)
    if not snapshot.values:
        raise _Stop(1, f"no dialogue {args.thread_id!r} in {args.checkpoint}")
    stored = dict(snapshot.values.get("context") or {})
    known = {f.name for f in fields(THIContext)}
    try:
        ctx = THIContext(**{k: v for k, v in stored.items() if k in known})
        ctx = replace(ctx, **_given(args))
        ctx.thi_config()
    except (TypeError, ValueError) as e:
        raise _Stop(2, f"the dialogue's settings cannot be used: {str(e).splitlines()[0]}") from None
    if ctx.resources is not None:
        raise _Stop(1, f"dialogue {args.thread_id!r} ran over objects of another process; it cannot be resumed here")
    return ctx, snapshot


def main(argv: list[str] | None = None) -> int:
    """``python -m graphs.thi``: the exit status (0 ok, 1 failed, 2 bad input, 130 interrupted)."""
    state: dict = {}
    try:
        return _main(argv, state)
    except _Stop as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        where = state.get("where")
        print(("\n" if _prompting.is_set() else "") + "interrupted"
              + (f" (continue with --resume {where})" if where else ""), file=sys.stderr, flush=True)
        _prompting.clear()
        return 130


def _main(argv: list[str] | None, where: dict) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet or args.json else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if args.resume:
        if args.query is not None:
            raise _Stop(2, "give either --query (a new dialogue) or --resume (continue one), not both")
        if not (args.checkpoint and args.thread_id):
            raise _Stop(2, "--resume needs --checkpoint FILE and --thread-id ID")
        if not Path(args.checkpoint).is_file():
            raise _Stop(1, f"no checkpoint file {args.checkpoint}")
    elif args.query is None:
        raise _Stop(2, "give --query TEXT (or --resume to continue a dialogue kept in a checkpoint)")
    elif not args.query.strip():
        raise _Stop(2, "the query is empty")
    checkpointer = _open_checkpoint(args.checkpoint, args.interactive)
    graph = build_graph(checkpointer)
    run_config: dict = {}
    if checkpointer is not None:
        run_config["configurable"] = {"thread_id": args.thread_id or uuid.uuid4().hex}
        if args.checkpoint:
            where["where"] = f"--checkpoint {args.checkpoint} --thread-id {run_config['configurable']['thread_id']}"
    snapshot = None
    try:
        if args.resume:
            ctx, snapshot = _resumed_context(graph, run_config, args)
        else:
            ctx = context_from_args(args)
        cfg = ctx.thi_config()
    except ValueError as e:
        raise _Stop(2, str(e).splitlines()[0]) from None
    run_config["recursion_limit"] = recursion_limit(cfg)
    progress = not (args.quiet or args.json)
    try:
        if ctx.mllm == "transformers" and not ctx.mllm_path:
            raise ValueError("--mllm transformers needs --mllm-path FOLDER")
        mllm = backend_for(ctx)
        mllm.preflight()  # a server that cannot answer fails here, in one line, before any work
        demo = ctx.gallery is None
        index = open_index(ctx, index_if_missing=demo or args.index, progress=progress)
    except GalleryError as e:
        raise _Stop(1, f"{e}" + ("" if ctx.gallery is None else f"; or pass --index to index {ctx.gallery} now")) \
            from None
    except (EmbedderError, MLLMError, ValueError, FileNotFoundError, OSError) as e:
        raise _Stop(1, str(e).splitlines()[0]) from None

    try:
        if args.resume:
            assert snapshot is not None
            if not snapshot.next:
                _say(f"note: dialogue {args.thread_id!r} had finished; its result follows")
                result = snapshot.values
            elif snapshot.interrupts:
                result = graph.invoke(Command(resume=_ask_terminal(snapshot.interrupts[0].value)), config=run_config,
                                      context=ctx)
            else:
                result = graph.invoke(None, config=run_config, context=ctx)
        else:
            if checkpointer is not None and args.thread_id:
                before = graph.get_state(run_config)
                if before.next:
                    _say(f"note: thread {args.thread_id!r} held an unfinished dialogue "
                         f"({before.values.get('query', '')!r}); the new query replaces it (--resume continues one)")
            result = graph.invoke({"query": args.query}, config=run_config, context=ctx)
        while "__interrupt__" in result:
            reply = _ask_terminal(result["__interrupt__"][0].value)
            result = graph.invoke(Command(resume=reply), config=run_config, context=ctx)
    except ValueError as e:
        raise _Stop(2, str(e).splitlines()[0]) from None
    if args.trace:
        write_trace(args.trace, [result])
    if args.report:
        write_report(args.report, result, lambda i: index.image(i).path, cfg.k, title=f"THI: {result['query']}")
    usage = result.get("usage") or {}
    unavailable = mllm.unavailable
    out = {
        "query": result["query"], "final_query": result["current_query"], "policy": cfg.policy, "mllm": mllm.name,
        "rounds": result["rounds"], "ranking": result["ranking"][: cfg.k], "stopped_because": result["stopped_because"],
        "mllm_calls": usage.get("mllm_calls", 0), "usage": usage, "truncated": result.get("truncated", ""),
        "thread_id": run_config.get("configurable", {}).get("thread_id"),
    }
    if unavailable is not None:
        out["error"] = f"MLLM unavailable: {unavailable}"
    if args.json:
        print(json.dumps(out))
    else:
        _print_result(result, cfg, mllm, index, usage)
    if unavailable is not None:
        # the ranking printed is what the dialogue kept without the MLLM
        print(f"error: MLLM unavailable ({unavailable.kind}): {unavailable}; the ranking above is the one kept "
              "without it", file=sys.stderr)
        return 1
    return 0


def _print_result(result: dict, cfg: THIConfig, mllm, index, usage: dict) -> None:
    print(f"query: {result['query']}")
    if result.get("truncated"):
        print(f"note: the text encoder does not see the end of the query: {result['truncated']!r}")
    print("round 0 (retrieval): " + ", ".join(f"{c['id']} ({c['score']:.3f})" for c in result["original_ranking"][: cfg.k]))
    for r in result["rounds"]:
        _print_round(r)
    print(f"\nstopped: {result['stopped_because']}")
    print(f"final query: {result['current_query']}")
    print(f"final ranking ({usage.get('mllm_calls', 0)} MLLM calls, backend {mllm.name}"
          + (", ORACLE: simulation only" if mllm.is_oracle else "") + "):")
    for n, c in enumerate(result["ranking"][: cfg.k], 1):
        meta = index.metadatas[index.position[c["id"]]]
        print(f"  {n:2d}. {c['score']:.4f}  {c['id']}  {meta.get('path', '')}")
