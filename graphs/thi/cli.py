"""python -m graphs.thi --query TEXT | --demo: interactive text-to-image person retrieval from the terminal.

The flags describe one run context (:class:`graphs.config.THIContext`); the MLLM comes from
``graphs.server``'s cache, as for every other entry point. The retrieval model is built from the
shared model flags (``tools.embedder.add_model_arguments``: research checkpoints, input size) and
its gallery index is registered for the run (``graphs.server.register``).

``--demo`` picks a caption of an annotated gallery (default: the demo gallery's test split) whose
true person plain retrieval ranks 2nd to k-th (:func:`pick_demo_case`), runs THI on it and prints
the true person's rank after every round.

Dialogues kept in a checkpoint (``--checkpoint F --thread-id T``): a new ``--query`` on a thread
starts a fresh dialogue there (the last one's values are replaced); ``--resume`` continues the
thread's dialogue where it stopped (a dialogue killed mid-way goes on from its last finished step,
an interactive one asks the questions it was waiting on, with the answers given before kept),
with the settings it was started with (flags given with ``--resume`` override them;
``--image-size`` and ``--random-weights`` are not kept with the dialogue: give them again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
from langgraph.types import Command

from data.readers import DatasetError, read_dataset
from tools.cliargs import ArgumentParser, cosine, non_negative_int, positive_int, unit_float
from tools.embedder import EmbedderError, add_model_arguments, embedder_from_args
from tools.gallery import GalleryError
from tools.index import GalleryIndex
from tools.mllm import BACKENDS, MLLMError
from tools.text import printable, printable_path
from tools.threads import apply_thread_policy

from ..config import THIConfig, THIContext, fusion_weight_field
from ..demo import open_gallery
from ..report import write_report, write_trace
from ..server import backend_for, gallery_folder, register, unregister
from .graph import build_graph, recursion_limit

log = logging.getLogger(__name__)

#: the name the CLI registers its gallery index under (``graphs.server.register``)
CLI_RESOURCES = "graphs.thi.cli"


#: ``--demo``'s default seed. It was chosen because its caption's dialogue shows THI moving the
#: true person up with the shipped model and the offline MLLM; other seeds show other outcomes,
#: failures included.
DEMO_SEED = 11
#: captions ``--demo`` looks through, in the seed's order, for one whose true person ranks 2..k
DEMO_SCAN = 1000


def build_parser() -> argparse.ArgumentParser:
    d = THIConfig()
    p = ArgumentParser(
        prog="python -m graphs.thi",
        description="Find a person in a gallery of pedestrian photos from a description, then refine the ranking "
                    "by asking an MLLM about the top candidates (THI). With no other flag it uses the shipped model, "
                    "the SynthPedes demo gallery (generated and indexed on first run under $THI_HOME, default "
                    "~/.cache/thi-reid) and the offline MLLM.",
        epilog='examples: "python -m graphs.thi --demo"; '
               '"python -m graphs.thi --query \'a woman in a red coat with a black backpack\'"')
    what = p.add_mutually_exclusive_group()
    what.add_argument("--query", help="the description of the person")
    what.add_argument("--demo", action="store_true",
                      help="THI at work on a caption of the annotated gallery (default: the demo gallery's test "
                           "split, the default world's test people): the true person's rank is printed after every "
                           "round, known only because the gallery is annotated. The caption is the first, in a "
                           "random order drawn with --seed, whose true person plain retrieval ranks 2nd to k-th: "
                           "not a random sample, but a case where THI has something to do")
    p.add_argument("--seed", type=non_negative_int,
                   help=f"--demo: the seed of the caption order (default {DEMO_SEED}, chosen because its dialogue "
                        "moves the true person up; other seeds may show THI failing)")
    g = p.add_argument_group("THI")
    g.add_argument("--policy", choices=("adaptive", "paper"), default=d.policy,
                   help="adaptive (ours) or paper (ICL's published algorithm) (default %(default)s)")
    g.add_argument("-k", type=positive_int, default=d.k,
                   help="top-k shown and used for convergence (default %(default)s)")
    g.add_argument("--rounds", type=positive_int, default=d.rounds, help="round limit (default %(default)s)")
    g.add_argument("--xi", type=cosine, default=d.xi,
                   help="paper: gate on the top-1 similarity, within [-1, 1] (default %(default)s)")
    g.add_argument("--lam", type=unit_float, help="weight of the original similarity in the fusion without a user, "
                   f"within [0, 1] (default: {d.lam} for paper, the paper's; {d.lam_adaptive} for adaptive; "
                   f"--interactive fuses at {d.lam_user})")
    g.add_argument("--anchor-depth", type=positive_int, default=d.anchor_depth,
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
    r.add_argument("--skip-missing", action="store_true",
                   help="leave out dataset records whose image file is missing (warns); give it when indexing too")
    r.add_argument("--url", help="Chroma server URL (http://HOST:PORT) instead of the local Chroma folder")
    r.add_argument("--data-dir", help="local Chroma folder (default $THI_HOME/chroma)")
    add_model_arguments(r, score=False)  # THI ranks by the global (BGE) embeddings
    o = p.add_argument_group("output")
    o.add_argument("--trace", metavar="FILE.jsonl", help="write one JSON line per round")
    o.add_argument("--report", metavar="FILE.html", help="write an HTML report: settings, every round's candidates "
                                                         "as thumbnails linking to the photos, a legend")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    o.add_argument("--out", metavar="FILE.json", help="also write that JSON object to this file")
    o.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    o.add_argument("--verbose", action="store_true", help="print the time of each start-up phase (to stderr)")
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


def open_cli_index(args: argparse.Namespace, progress: bool, ctx: THIContext | None = None,
                   phase: Callable[[str], None] | None = None) -> GalleryIndex:
    """The gallery index the flags name (or ``ctx``'s gallery and model, for a resumed dialogue),
    with the retrieval model of the model flags (its description goes to stderr unless
    ``--quiet``). The demo gallery is generated and indexed when missing; another gallery only with
    ``--index``. ``phase`` is told when the model ("model") and the gallery ("gallery") are ready."""
    if ctx is not None:
        args = argparse.Namespace(**{**vars(args), "model": ctx.model, "pretrained": ctx.pretrained,
                                     "device": ctx.device, "gallery": ctx.gallery, "split": ctx.split,
                                     "url": ctx.chroma_url, "data_dir": ctx.data_dir})
    embedder = embedder_from_args(args)
    if not args.quiet:
        print(embedder.describe(), file=sys.stderr)
    if phase:
        phase("model")
    gallery, _ = open_gallery(args.gallery, embedder, args.split, args.url, args.data_dir,
                              index_if_missing=args.gallery is None or args.index, progress=progress,
                              skip_missing=args.skip_missing)
    index = GalleryIndex(gallery, embedder)
    if phase:
        phase("gallery")
    return index


def _gallery_hint(ctx: THIContext, args: argparse.Namespace, error: Exception) -> str:
    """What to do about a gallery error, where the flags can fix it."""
    if ctx.gallery is not None and not args.index and "is not indexed" in str(error):
        return f"; or pass --index to index {ctx.gallery} now"
    return ""


# -------------------------------------------------------------------------------------------
# the demo


@dataclass(frozen=True)
class DemoCase:
    """The caption ``--demo`` runs: its text, its true person and photo, where it was found."""

    caption: str
    pid: int
    image: str  # the photo the caption describes (gallery id)
    number: int  # 1-based position of the caption among the split's captions (file order)
    total: int  # captions in the split
    seed: int
    scanned: int  # captions looked at before this one was taken (this one included)
    rank: int | None  # the true person's rank under plain retrieval (its best-ranked photo)
    fits: bool  # whether ``rank`` is within 2..k (False: none of the scanned captions was; the first is shown)


def person_rank(scores: np.ndarray, pids: np.ndarray, pid: int) -> int | None:
    """1-based rank of person ``pid``'s best-scored photo (ties counted in its favour, as the THI
    trace's ``target_rank``); None when the gallery has no photo of the person."""
    hit = pids == pid
    if not hit.any():
        return None
    return int((scores > scores[hit].max()).sum()) + 1


def gallery_pids(index: GalleryIndex) -> np.ndarray:
    """The person id of every gallery image (int [N], -1 where unknown), in the index's order."""
    return np.asarray([m.get("pid", -1) for m in index.metadatas])


def pick_demo_case(index: GalleryIndex, folder: str | Path, split: str, seed: int, k: int,
                   skip_missing: bool = False, scan: int = DEMO_SCAN) -> DemoCase:
    """The first caption, in the order of a random permutation drawn with ``seed``, whose true
    person plain retrieval (``index.scores``) ranks 2nd to ``k``-th; the first caption of that
    order (``fits`` False) when none of the first ``scan`` does. Raises ``data.readers.DatasetError``
    when ``folder`` has no annotations, ``ValueError`` when its ``split`` has no captions."""
    records = read_dataset(folder, skip_missing=skip_missing, splits=[split]).split(split)
    captions = [(r, c) for r in records for c in r.captions]
    if not captions:
        raise ValueError(f"{folder}: split {split!r} has no captions for --demo")
    pids = gallery_pids(index)
    order = np.random.default_rng(seed).permutation(len(captions))
    first = None
    for n, q in enumerate(order[:scan], 1):
        record, caption = captions[q]
        rank = person_rank(index.scores(caption), pids, record.pid)
        case = DemoCase(caption, int(record.pid), record.image, int(q) + 1, len(captions), seed, n, rank, False)
        first = first or case
        if rank is not None and 2 <= rank <= k:
            return replace(case, fits=True)
    return first


def _print_demo_header(case: DemoCase, folder: Path, split: str, k: int) -> None:
    print(f"demo: caption {case.number} of {case.total} in the {split} split of {folder} "
          f"(person {case.pid}, photo {case.image})")
    if case.fits:
        print(f"  chosen with seed {case.seed}: the first caption, in a random order drawn with that seed, whose true "
              f"person plain retrieval ranks 2nd to {k}th ({case.scanned} looked at). Not a random sample: a case "
              "where THI has something to do.")
    else:
        print(f"  seed {case.seed}: none of the first {case.scanned} captions in its order ranks its true person 2nd "
              f"to {k}th; showing the first")


def _rank_line(rank: int | None, before: int | None = None) -> str:
    if rank is None:
        return "  true person: not in the gallery (known only because the gallery is annotated)"
    moved = "" if before is None or before == rank else f"was {before}; "
    return f"  true person: rank {rank} ({moved}known only because the gallery is annotated)"


def round_ranks(rank0: int | None, rounds: list[dict]) -> list[int | None]:
    """The true person's rank before THI and after every round. A round that re-ranked records
    ``target_rank``; one that did not (no anchor yet) left the ranking, and so the rank, as it was."""
    ranks = [rank0]
    for r in rounds:
        ranks.append(r["target_rank"] if r.get("target_rank") is not None else ranks[-1])
    return ranks


# -------------------------------------------------------------------------------------------
# printing


#: checks printed per round; the rest are summed up in one line (--json and --trace hold them all)
SHOWN_CHECKS = 10  # by default the no-user search verifies at most 10 a round: all shown


def above_one_note(cfg: THIConfig, with_user: bool = False) -> str:
    """Why a fused score can exceed 1 (docs/design.md, "Adaptive, without a user")."""
    if cfg.policy == "adaptive" and not with_user:
        return (f"a fused score is not a cosine similarity: the anchor's new similarity is set to 1, so it scores "
                f"{cfg.lam_adaptive:g} x its original similarity + {1 - cfg.lam_adaptive:g} x 1, plus "
                f"{cfg.anchor_image_weight:g} x its image similarity to itself (1) and up to {cfg.verify_weight:g} "
                "for a confident \"yes\" (docs/design.md, \"Adaptive, without a user\")")
    return ("a fused score is not a cosine similarity: the anchor's new similarity is set to 1, and verified or "
            "agreeing candidates gain bonuses (docs/design.md, \"The THI graph\")")


def _print_round(r: dict, above_one: str | None = None, rank: int | None = None,
                 rank_before: int | None = None, known: bool = False) -> bool:
    """Print one round. ``above_one``: the note to print when a top-k score exceeds 1; ``known``:
    print the true person's ``rank``. Returns whether the note was printed."""
    print(f"\n-- round {r['round']} --")
    # with a user many candidates are checked per round: show the best-ranked few
    by_rank = sorted(r["inspected"], key=lambda i: i["rank"])
    shown, rest = by_rank[:SHOWN_CHECKS], by_rank[SHOWN_CHECKS:]
    for i in shown:
        verdict = "yes" if i["match"] else "no" if i["match"] is not None else "skipped"
        print(f"  verify #{i['rank']} {printable(i['id'])}: {verdict} ({i['confidence']:.2f}) {printable(i['reason'])}")
    if rest:
        print(f"  ... {len(rest)} more checked, {sum(bool(i['match']) for i in rest)} of them fit (see --json or --trace)")
    print(f"  anchor: {printable(r['anchor']) or '-'}")
    for a in r["answers"]:
        value = printable(a["value"]) if a["value"] is not None else "cannot tell"
        said = (f" (said: {printable(a['text'], max_len=120)!r})"
                if a.get("text") and printable(a["text"]).lower() not in (value.lower(), "") else "")
        print(f"  Q: {printable(a['question'])}  A: {value}{said}  [{printable(a['source'])}]")
    if r["rewritten_query"]:
        print(f"  rewritten query: {printable(r['rewritten_query'])}")
    for note in r["notes"]:
        print(f"  note: {printable(note)}")
    print("  top-k: " + ", ".join(f"{printable(c['id'])} ({c['score']:.3f})" for c in r["topk"]))
    if known:
        print(_rank_line(rank, rank_before))
    if above_one and any(c["score"] > 1 for c in r["topk"]):
        print(f"  why a score is above 1: {above_one}")
        return True
    return False


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
        _say(f"note: {printable(payload['error'])}")
    _say(f"\nRound {payload['round']}: the top candidates are")
    for c in payload["top"][:5]:
        _say(f"  #{c['rank']} {printable(c['id'])}  {c['score']:.3f}  {printable_path(c['path'])}")
    _say("Answer each question in your own words (Enter or 'skip' to skip, 'done' to finish):")
    answers = {}
    for q in payload["questions"]:
        text = _read(f"  {printable(q['question'])} [{'/'.join(printable(o) for o in q['options'])}] ")
        if text is None or text.lower() in ("done", "finish", "quit", "q"):
            return {"answers": answers, "finish": True}
        answers[q["slot"]] = text or "skip"
    return {"answers": answers, "finish": False}


def run_settings(cfg: THIConfig, index: GalleryIndex, mllm, ctx: THIContext) -> dict[str, str]:
    """The run's settings as the report shows them (label -> value)."""
    out = {"policy": cfg.policy, "retrieval model": index.embedder.name,
           "MLLM backend": mllm.name + (" (oracle: simulation only)" if mllm.is_oracle else ""),
           "user": "you, at the terminal" if ctx.user == "human" else "none (the MLLM answers about the anchor)",
           "k": str(cfg.k), "round limit": str(cfg.rounds)}
    if cfg.policy == "paper":
        out["xi (gate on the top-1 similarity)"] = f"{cfg.xi:g}"
        out["lambda (weight of the original similarity)"] = f"{cfg.lam:g}"
    else:
        lam = cfg.lam_user if ctx.user == "human" else cfg.lam_adaptive
        out["lambda (weight of the original similarity)"] = f"{lam:g}"
        out["anchor depth"] = str(cfg.anchor_depth)
    out["gallery"] = f"{gallery_folder(ctx)} (split {ctx.split})"
    return out


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
    if ctx.resources not in (None, CLI_RESOURCES):  # the CLI registers its own again; others lived elsewhere
        raise _Stop(1, f"dialogue {args.thread_id!r} ran over objects of another process; it cannot be resumed here")
    return ctx, snapshot


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
    """``python -m graphs.thi``: the exit status (0 ok, 1 failed, 2 bad input, 130 interrupted)."""
    state: dict = {}
    try:
        return _main(argv, state)
    except _Stop as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        where = state.get("where")
        print(("\n" if _prompting.is_set() else "") + "interrupted"
              + (f" (continue with --resume {where})" if where else ""), file=sys.stderr, flush=True)
        _prompting.clear()
        return 130
    finally:
        unregister(CLI_RESOURCES)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.seed is not None and not args.demo:
        parser.error("--seed chooses the --demo caption; give it with --demo")
    if args.resume:
        if args.query is not None or args.demo:
            raise _Stop(2, "give --query or --demo (a new dialogue) or --resume (continue one), not both")
        if not (args.checkpoint and args.thread_id):
            raise _Stop(2, "--resume needs --checkpoint FILE and --thread-id ID")
        if not Path(args.checkpoint).is_file():
            raise _Stop(1, f"no checkpoint file {args.checkpoint}")
    elif args.query is None and not args.demo:
        parser.error("give --query TEXT or --demo (or --resume to continue a dialogue kept in a checkpoint)")
    elif args.query is not None and not args.query.strip():
        raise _Stop(2, "the query is empty")


def _main(argv: list[str] | None, where: dict) -> int:
    phases = _Phases(False)
    parser = build_parser()
    args = parser.parse_args(argv)
    phases.on = args.verbose
    apply_thread_policy("query")
    logging.basicConfig(level=logging.ERROR if args.quiet or args.json else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    _check_args(parser, args)
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
        phases.done("MLLM")
        index = open_cli_index(args, progress, ctx if args.resume else None, phases.done)
    except GalleryError as e:
        raise _Stop(1, f"{e}{_gallery_hint(ctx, args, e)}") from None
    except (DatasetError, EmbedderError, MLLMError, ValueError, FileNotFoundError, OSError) as e:
        raise _Stop(1, str(e).splitlines()[0] if str(e) else repr(e)) from None
    case = None
    if args.demo:
        try:
            case = pick_demo_case(index, gallery_folder(ctx), ctx.split,
                                  DEMO_SEED if args.seed is None else args.seed, cfg.k, args.skip_missing)
        except DatasetError as e:
            raise _Stop(1, f"--demo needs an annotated dataset folder (person ids): {str(e).splitlines()[0]}") \
                from None
        except ValueError as e:
            raise _Stop(1, str(e)) from None
        ctx = replace(ctx, target_pid=case.pid)
    # the index built from the model flags, under the name the context keeps (a resume registers it again)
    ctx = replace(ctx, resources=register(CLI_RESOURCES, index=index))
    phases.print()

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
            query = case.caption if case else args.query
            result = graph.invoke({"query": query}, config=run_config, context=ctx)
        while "__interrupt__" in result:
            reply = _ask_terminal(result["__interrupt__"][0].value)
            result = graph.invoke(Command(resume=reply), config=run_config, context=ctx)
    except ValueError as e:
        raise _Stop(2, str(e).splitlines()[0]) from None
    ranks = None
    if case is not None:
        ranks = round_ranks(person_rank(index.scores(result["query"]), gallery_pids(index), case.pid),
                            result["rounds"])
    above_one = above_one_note(cfg, with_user=ctx.user == "human")
    if args.trace:
        write_trace(args.trace, [result])
    if args.report:
        write_report(args.report, result, lambda i: index.image(i).path, cfg.k,
                     title="THI demo" if case else "THI", settings=run_settings(cfg, index, mllm, ctx),
                     target_ranks=ranks, above_one=above_one,
                     target=(lambda i: index.pid(i) == case.pid) if case else None)
    usage = result.get("usage") or {}
    unavailable = mllm.unavailable
    out = {
        "query": result["query"], "final_query": result["current_query"], "policy": cfg.policy, "mllm": mllm.name,
        "model": index.embedder.name,
        "rounds": result["rounds"], "ranking": result["ranking"][: cfg.k], "stopped_because": result["stopped_because"],
        "mllm_calls": usage.get("mllm_calls", 0), "usage": usage, "truncated": result.get("truncated", ""),
        "thread_id": run_config.get("configurable", {}).get("thread_id"),
    }
    if case is not None:
        out["demo"] = asdict(case)
        out["target_ranks"] = ranks
    if unavailable is not None:
        out["error"] = f"MLLM unavailable: {unavailable}"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    for what, path in (("trace", args.trace), ("report", args.report), ("JSON", args.out)):
        if path and not args.quiet:
            print(f"{what} written to {printable_path(path)}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    else:
        _print_result(result, cfg, mllm, index, usage, case, ranks, above_one, gallery_folder(ctx), ctx.split)
    if unavailable is not None:
        # the ranking printed is what the dialogue kept without the MLLM
        print(f"error: MLLM unavailable ({unavailable.kind}): {printable(unavailable)}; the ranking above is the one "
              "kept without it", file=sys.stderr)
        return 1
    return 0


def _print_result(result: dict, cfg: THIConfig, mllm, index: GalleryIndex, usage: dict, case: DemoCase | None,
                  ranks: list[int | None] | None, above_one: str | None, folder: Path, split: str) -> None:
    if case is not None:
        _print_demo_header(case, folder, split, cfg.k)
    print(f"query: {printable(result['query'])}")
    if result.get("truncated"):
        print(f"note: the text encoder does not see the end of the query: {printable(result['truncated'])!r}")
    print("round 0 (retrieval): " + ", ".join(f"{printable(c['id'])} ({c['score']:.3f})"
                                             for c in result["original_ranking"][: cfg.k]))
    if ranks is not None:
        print(_rank_line(ranks[0]))
    for n, r in enumerate(result["rounds"], 1):
        if _print_round(r, above_one, ranks[n] if ranks else None, ranks[n - 1] if ranks else None, ranks is not None):
            above_one = None  # explained once
    print(f"\nstopped: {result['stopped_because']}")
    print(f"final query: {printable(result['current_query'])}")
    print(f"final ranking ({usage.get('mllm_calls', 0)} MLLM calls, backend {mllm.name}"
          + (", ORACLE: simulation only" if mllm.is_oracle else "") + "):")
    for n, c in enumerate(result["ranking"][: cfg.k], 1):
        meta = index.metadatas[index.position[c["id"]]]
        mark = "  <- the true person" if case is not None and meta.get("pid") == case.pid else ""
        print(f"  {n:2d}. {c['score']:.4f}  {printable(c['id'])}  {printable_path(meta.get('path', ''))}{mark}")
    if ranks is not None:
        print(f"true person: rank {ranks[0]} by retrieval alone, rank {ranks[-1]} after THI "
              f"({len(result['rounds'])} round(s)); known only because the gallery is annotated")
