"""python -m graphs.thi --query TEXT: interactive text-to-image person retrieval from the terminal.

The flags describe one run context (:class:`graphs.config.THIContext`); the models, gallery and
MLLM come from ``graphs.server``'s cache, as for every other entry point.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid

from langgraph.types import Command

from tools.embedder import DEFAULT_MODEL, EmbedderError
from tools.gallery import GalleryError
from tools.mllm import BACKENDS, MLLMError
from tools.threads import apply_thread_policy

from ..config import THIConfig, THIContext, fusion_weight_field
from ..report import write_report, write_trace
from ..server import backend_for, embedder_for, open_index
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
    p.add_argument("--query", required=True, help="the description of the person")
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
    g.add_argument("--thread-id", help="dialogue id in the checkpoint (default: a new one)")
    m = p.add_argument_group("MLLM")
    m.add_argument("--mllm", choices=BACKENDS, default="offline", help="backend (default %(default)s)")
    m.add_argument("--mllm-url", help="openai: base URL of an OpenAI-compatible server (or $THI_MLLM_BASE_URL)")
    m.add_argument("--mllm-model", help="openai: model name (or $THI_MLLM_MODEL)")
    m.add_argument("--mllm-path", help="transformers: folder of a local image-text-to-text model")
    m.add_argument("--mllm-timeout", type=float, default=60.0, help="openai: seconds per request (default %(default)s)")
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
    o.add_argument("--verbose", action="store_true", help="print the time of each start-up phase (to stderr)")
    return p


def context_from_args(args: argparse.Namespace) -> THIContext:
    """The run context the flags describe."""
    fusion = {} if args.lam is None else {fusion_weight_field(args.policy): args.lam}
    return THIContext(model=args.model, pretrained=args.pretrained, gallery=args.gallery, split=args.split,
                      chroma_url=args.url, data_dir=args.data_dir, device=args.device, mllm=args.mllm,
                      mllm_url=args.mllm_url, mllm_model=args.mllm_model, mllm_path=args.mllm_path,
                      mllm_timeout=args.mllm_timeout, policy=args.policy, k=args.k, rounds=args.rounds,
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
        print(f"  Q: {a['question']}  A: {a['value'] if a['value'] is not None else 'cannot tell'}  [{a['source']}]")
    if r["rewritten_query"]:
        print(f"  rewritten query: {r['rewritten_query']}")
    for note in r["notes"]:
        print(f"  note: {note}")
    print("  top-k: " + ", ".join(f"{c['id']} ({c['score']:.3f})" for c in r["topk"]))


def _ask_terminal(payload: dict) -> dict:
    print(f"\nRound {payload['round']}: the top candidates are")
    for c in payload["top"][:5]:
        print(f"  #{c['rank']} {c['id']}  {c['score']:.3f}  {c['path']}")
    print("Answer each question (Enter or 'skip' to skip, 'done' to finish):")
    answers = {}
    for q in payload["questions"]:
        try:
            text = input(f"  {q['question']} [{'/'.join(q['options'])}] ").strip()
        except EOFError:
            return {"answers": answers, "finish": True}
        if text.lower() in ("done", "finish", "quit", "q"):
            return {"answers": answers, "finish": True}
        answers[q["slot"]] = text or "skip"
    return {"answers": answers, "finish": False}


def _since_start() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _Phases:
    """Start-up phases and their seconds (``--verbose``)."""

    def __init__(self, on: bool):
        self.on = on
        self.times: list[tuple[str, float]] = []
        started = _since_start()
        if started is not None:
            self.times.append(("python start and imports", started))
        self.t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.times.append((name, now - self.t))
        self.t = now

    def print(self) -> None:
        if self.on:
            print("start-up: " + ", ".join(f"{name} {sec:.2f} s" for name, sec in self.times), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    phases = _Phases(False)
    args = build_parser().parse_args(argv)
    phases.on = args.verbose
    apply_thread_policy("query")
    logging.basicConfig(level=logging.ERROR if args.quiet or args.json else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if not args.query.strip():
        print("error: the query is empty", file=sys.stderr)
        return 2
    try:
        ctx = context_from_args(args)
        cfg = ctx.thi_config()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = not (args.quiet or args.json)
    try:
        if args.mllm == "transformers" and not args.mllm_path:
            raise ValueError("--mllm transformers needs --mllm-path FOLDER")
        demo = args.gallery is None
        embedder_for(ctx)
        phases.done("model")
        index = open_index(ctx, index_if_missing=demo or args.index, progress=progress)
        phases.done("gallery")
        mllm = backend_for(ctx)
        phases.done("MLLM")
    except GalleryError as e:
        hint = "" if "index it with" in str(e) else ""
        print(f"error: {e}{hint}" + ("" if args.gallery is None else
                                      f"; or pass --index to index {args.gallery} now"), file=sys.stderr)
        return 1
    except (EmbedderError, MLLMError, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1

    checkpointer = None
    if args.interactive or args.checkpoint:
        if args.checkpoint:
            import sqlite3

            from langgraph.checkpoint.sqlite import SqliteSaver

            checkpointer = SqliteSaver(sqlite3.connect(args.checkpoint, check_same_thread=False))
        else:
            from langgraph.checkpoint.memory import InMemorySaver

            checkpointer = InMemorySaver()
    graph = build_graph(checkpointer)
    run_config: dict = {"recursion_limit": recursion_limit(cfg)}
    if checkpointer is not None:
        run_config["configurable"] = {"thread_id": args.thread_id or uuid.uuid4().hex}
    phases.done("graph")
    phases.print()
    try:
        result = graph.invoke({"query": args.query}, config=run_config, context=ctx)
        while "__interrupt__" in result:
            reply = _ask_terminal(result["__interrupt__"][0].value)
            result = graph.invoke(Command(resume=reply), config=run_config, context=ctx)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.trace:
        write_trace(args.trace, [result])
    if args.report:
        write_report(args.report, result, lambda i: index.image(i).path, cfg.k, title=f"THI: {args.query}")
    out = {
        "query": result["query"], "final_query": result["current_query"], "policy": cfg.policy, "mllm": mllm.name,
        "rounds": result["rounds"], "ranking": result["ranking"][: cfg.k], "stopped_because": result["stopped_because"],
        "mllm_calls": mllm.stats.total_calls, "truncated": result.get("truncated", ""),
        "thread_id": run_config.get("configurable", {}).get("thread_id"),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"query: {result['query']}")
    if result.get("truncated"):
        print(f"note: the text encoder does not see the end of the query: {result['truncated']!r}")
    print("round 0 (retrieval): " + ", ".join(f"{c['id']} ({c['score']:.3f})" for c in result["original_ranking"][: cfg.k]))
    for r in result["rounds"]:
        _print_round(r)
    print(f"\nstopped: {result['stopped_because']}")
    print(f"final query: {result['current_query']}")
    print(f"final ranking ({mllm.stats.total_calls} MLLM calls, backend {mllm.name}"
          + (", ORACLE: simulation only" if mllm.is_oracle else "") + "):")
    for n, c in enumerate(result["ranking"][: cfg.k], 1):
        meta = index.metadatas[index.position[c["id"]]]
        print(f"  {n:2d}. {c['score']:.4f}  {c['id']}  {meta.get('path', '')}")
    return 0
