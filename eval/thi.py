"""python -m eval.thi DIR: the THI benchmark.

For every caption of a split (or a fixed random sample with ``--limit``) it runs the THI graph on
the split's gallery and scores the ranking after every round under IRRA's protocol. Without a user
THI knows only the caption (the paper's setting); with ``--user simulated`` the questions are
answered about the true target photo by an MLLM backend (as ChatIR does; labelled as such).

JSON: ``baseline``/``final`` (R1, R5, R10, mAP, mINP), ``rounds`` (the same after each round),
``mllm_calls`` (mean, max per query), ``latency_ms`` (p50, p95 per query, models loaded and the
gallery indexed beforehand), ``overhead_ms`` (THI latency minus plain retrieval), ``ceiling`` for
SynthPedes, and the settings. ``--plot`` draws R1 per round for each policy run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.readers import FORMAT_NAMES, DatasetError, detect_format, read_dataset
from graphs.config import THIConfig, THIContext, fusion_weight_field
from graphs.demo import open_gallery
from graphs.report import trace_lines
from graphs.server import make_backend, register, unregister
from graphs.thi import build_graph, final_scores, recursion_limit
from tools.cliargs import (ArgumentParser, add_output_arguments, cosine, legacy_json_file, non_negative_int,
                           positive_int, unit_float)
from tools.embedder import Embedder, EmbedderError, add_model_arguments, embedder_from_args
from tools.gallery import GalleryError
from tools.index import GalleryIndex
from tools.mllm import BACKENDS, MLLM, MLLMError
from tools.mllm.base import ImageRef, Verdict
from tools.text import printable, printable_path
from tools.threads import apply_thread_policy, per_query_threads

from .benchmark import sample_indices, split_queries
from .metrics import METRIC_KEYS, NoMatchError, rank_metrics, summary

log = logging.getLogger(__name__)


class NoisyVerifier(MLLM):
    """Wraps a backend and flips each verification answer with probability ``flip`` (for the study
    of THI's gain against verification accuracy). Questions and abstentions pass through unchanged."""

    def __init__(self, inner: MLLM, flip: float, seed: int = 0):
        super().__init__(cache=False)
        self.inner, self.flip, self.seed = inner, flip, seed
        self.rng = np.random.default_rng(seed)
        self.name = f"{inner.name}+flip{flip:g}"
        self.is_oracle = inner.is_oracle

    @property
    def fingerprint(self) -> str:
        return f"{self.inner.fingerprint}+flip{self.flip:g}"

    def start_query(self, query: int) -> None:
        """Draw this query's flips from its own stream (seeded by the seed and the query's index), so
        that a query flips the same way whichever queries ran before it (a resumed run, a sample)."""
        self.rng = np.random.default_rng([self.seed, query])

    def _verify(self, image: ImageRef, text: str) -> Verdict:
        v = self.inner.verify(image, text)
        if v.match is None:  # no verdict to flip (and no random number drawn)
            return v
        if self.rng.random() < self.flip:
            return Verdict(not v.match, v.confidence, "flipped: " + v.reason)
        return v

    def _ask(self, image, slots):
        return self.inner.ask(image, slots)

    def _merge(self, query, facts, budget, count_tokens):
        return self.inner.merge(query, facts, budget, count_tokens)


def _row_metrics(scores: np.ndarray, target_pid: int, gallery_pids: np.ndarray) -> tuple[int, float, float]:
    """(rank of the first true match, AP, INP) of one ranking (the query has a match in the gallery)."""
    m = rank_metrics(scores[None, :], np.asarray([target_pid]), gallery_pids, ks=(1,), per_query=True)["per_query"]
    return int(m["first_rank"][0]), float(m["ap"][0]), float(m["inp"][0])


class JournalError(RuntimeError):
    """A resume journal belongs to another run (other settings) or cannot be read; one line."""


class Journal:
    """The finished queries of one benchmark run, one JSON line each, beside its ``--json`` output.

    The first line holds the run's settings; a run with other settings refuses the file (or, with
    ``restart``, discards it). Each later line is one finished query (its metrics per round, MLLM
    calls, latency, stop reason and, when traced, its trace lines), appended and flushed to disk
    when the query ends, so a killed run resumes from the first unfinished query with every count
    the same as an uninterrupted run's (latencies are those measured when each query ran). A line
    cut by a kill is dropped and that query is run again.
    """

    def __init__(self, path: str | Path, settings: dict, restart: bool = False):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as read back from the file
        self.rows: dict[int, dict] = {}
        if restart:
            self.path.unlink(missing_ok=True)
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            try:
                head = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                head = None
            if head is None and len(lines) <= 1:
                lines = []  # killed while the first line was written: nothing was finished
            elif not isinstance(head, dict) or head.get("settings") != self.settings:
                changed = sorted(k for k in set(self.settings) | set((head or {}).get("settings") or {})
                                 if (head or {}).get("settings", {}).get(k) != self.settings.get(k))
                raise JournalError(f"{printable_path(self.path)} resumes a run with other settings "
                                   f"({', '.join(changed) or 'unreadable'} differ); pass --restart to discard it, "
                                   f"or write --out elsewhere")
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("n"), int):
                    self.rows[row["n"]] = row
        # rewritten whole (atomically) so that a torn last line does not precede the next append
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"settings": self.settings}) + "\n")
            f.writelines(json.dumps(self.rows[n]) + "\n" for n in sorted(self.rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(self, row: dict) -> None:
        self.rows[row["n"]] = row
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def journal_path(json_out: str | Path, policy: str | None = None) -> Path:
    """Where the resume journal of a run writing ``json_out`` lives (one per policy when several)."""
    out = Path(json_out)
    return out.with_name(out.name + (f".{policy}" if policy else "") + ".journal.jsonl")


def _aggregate(first: np.ndarray, ap: np.ndarray, inp: np.ndarray) -> dict:
    out = {f"R{k}": float((first <= k).mean() * 100) for k in (1, 5, 10)}
    out["mAP"] = float(ap.mean() * 100)
    out["mINP"] = float(inp.mean() * 100)
    return {k: round(v, 2) for k, v in out.items()}


@per_query_threads()  # dialogues one at a time: per-query work, whatever the caller's policy
def run_thi_benchmark(root: str | Path, config: THIConfig, mllm: MLLM, embedder: Embedder, split: str = "test",
                      format: str = "auto", user: str = "none", user_mllm: MLLM | None = None,
                      limit: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                      url: str | None = None, trace: str | Path | None = None, progress: bool = True,
                      skip_missing: bool = False, dialogue_timeout: float | None = None,
                      journal: str | Path | None = None, restart: bool = False) -> dict:
    """Run the benchmark (see the module docstring) and return its report.

    ``skip_missing``: leave out records whose image file is missing (warns). ``dialogue_timeout``:
    seconds of work each dialogue may spend in all (the run context's ``mllm_dialogue_timeout``).
    ``journal``: a file that records every finished query (:class:`Journal`); a killed run given the
    same file resumes where it stopped, and a run with other settings refuses it (``restart``
    discards it).

    Raises:
        DatasetError, GalleryError: the split or its gallery cannot be used.
        NoMatchError: no query has a true match in the gallery (queries without one are left out
            and counted in ``num_skipped``).
        JournalError: the journal belongs to a run with other settings.
    """
    ds = read_dataset(root, format, skip_missing=skip_missing, splits=[split])
    records = ds.split(split)
    if not records:
        raise DatasetError(f"{root}: split {split!r} is empty")
    gallery, _ = open_gallery(root, embedder, split, url, data_dir, index_if_missing=True, progress=progress,
                              skip_missing=skip_missing)
    index = GalleryIndex(gallery, embedder)
    gallery_pids = index.pids
    texts, qpids, owner = split_queries(records)
    order = sample_indices(len(texts), limit, seed)
    matched = np.isin(qpids[order], gallery_pids)
    if not matched.any():
        raise NoMatchError(f"no query has a true match in gallery {gallery.name}: none of the {len(order)} queries' "
                           f"person ids is among its {len(gallery_pids)} images' (was it indexed from another "
                           f"split, or without person ids?)")
    skipped_queries = int((~matched).sum())
    if skipped_queries:
        log.warning("%d of %d queries have no true match in the gallery; left out", skipped_queries, len(order))
    order = order[matched]
    backends = [mllm] + ([user_mllm] if user_mllm is not None and user_mllm is not mllm else [])
    settings = {"dataset": str(Path(root).resolve()), "format": ds.format, "split": split, "config": config.to_dict(),
                "mllm": mllm.fingerprint, "user": user, "user_mllm": user_mllm.fingerprint if user_mllm else None,
                "model": embedder.name, "model_fingerprint": embedder.fingerprint, "gallery": gallery.name,
                "gallery_images": len(index.ids), "limit": limit, "seed": seed, "traced": bool(trace)}
    book = Journal(journal, settings, restart) if journal else None
    done = dict(book.rows) if book else {}

    graph = build_graph()
    limit_steps = recursion_limit(config)
    n_rounds = config.rounds
    rows: list[dict | None] = [done.get(n) for n in range(len(order))]
    # the benchmark's own objects (a fresh backend per run, maybe a noisy one) serve its contexts
    resources = register(index=index, mllm=mllm, user_mllm=user_mllm)
    run_ctx = THIContext.from_config(config, resources=resources, user="simulated" if user == "simulated" else "none",
                                     mllm_dialogue_timeout=dialogue_timeout)
    todo = [n for n in range(len(order)) if rows[n] is None]
    try:
        for n in tqdm(todo, desc=f"THI {config.policy}", unit="query", disable=not progress, mininterval=2,
                      initial=len(order) - len(todo), total=len(order)):
            q = int(order[n])
            text, pid = texts[q], int(qpids[q])
            ctx = replace(run_ctx, target=records[owner[q]].image, target_pid=pid)
            t0 = time.perf_counter()
            index.scores(text, cache=False)  # plain retrieval: encode and score the gallery (uncached)
            baseline_ms = (time.perf_counter() - t0) * 1000
            for b in backends:  # each dialogue pays for its own answers (see MLLM.clear_cache)
                b.clear_cache()
                if isinstance(b, NoisyVerifier):
                    b.start_query(q)
            user_calls0 = sum(b.stats.total_calls for b in backends[1:])
            t0 = time.perf_counter()
            snapshots = []
            for values in graph.stream({"query": text}, context=ctx, config={"recursion_limit": limit_steps},
                                       stream_mode="values"):
                if values.get("rounds") and len(values["rounds"]) > len(snapshots):
                    snapshots.append({k: values.get(k) for k in ("query", "current_query", "anchor", "verified",
                                                                "checked", "stated", "facts")})
                final = values
            latency_ms = (time.perf_counter() - t0) * 1000
            # this dialogue's calls: its rounds' own counts (THI's backend), plus the simulated user's
            # backend where it is a separate one
            calls = sum(int(r.get("mllm_calls", 0)) for r in final["rounds"]) \
                + sum(b.stats.total_calls for b in backends[1:]) - user_calls0
            base = index.scores(text)
            metrics = [_row_metrics(base, pid, gallery_pids)]
            for r in range(1, n_rounds + 1):
                metrics.append(_row_metrics(final_scores(snapshots[r - 1], ctx), pid, gallery_pids)
                               if r <= len(snapshots) else metrics[-1])
            row = {"n": n, "query": q, "first": [m[0] for m in metrics], "ap": [m[1] for m in metrics],
                   "inp": [m[2] for m in metrics], "calls": int(calls), "latency_ms": latency_ms,
                   "baseline_ms": baseline_ms, "rounds_run": len(final["rounds"]),
                   "stopped_because": final["stopped_because"]}
            if trace:
                row["trace"] = trace_lines(final, n)
            rows[n] = row
            if book:
                book.add(row)
    finally:
        unregister(resources)
    if trace:
        with open(trace, "w", encoding="utf-8") as f:
            for row in rows:
                f.writelines(line + "\n" for line in row["trace"])
    first = np.asarray([row["first"] for row in rows], dtype=np.int64)
    ap = np.asarray([row["ap"] for row in rows], dtype=np.float64)
    inp = np.asarray([row["inp"] for row in rows], dtype=np.float64)
    calls = [row["calls"] for row in rows]
    latency_arr = np.asarray([row["latency_ms"] for row in rows])
    base_arr = np.asarray([row["baseline_ms"] for row in rows])
    rounds_run = [row["rounds_run"] for row in rows]
    stops: dict[str, int] = {}
    for row in rows:
        stops[row["stopped_because"]] = stops.get(row["stopped_because"], 0) + 1
    report = {
        "dataset": {"root": str(Path(root).resolve()), "format": ds.format, "split": split},
        "policy": config.policy, "mllm": mllm.name, "oracle": bool(mllm.is_oracle),
        "user": user if user == "none" else f"simulated ({(user_mllm or mllm).name} answering about the target photo)",
        "config": config.to_dict(), "model": embedder.name, "num_queries": int(len(order)),
        "num_gallery": int(len(index.ids)),
        "baseline": _aggregate(first[:, 0], ap[:, 0], inp[:, 0]),
        "final": _aggregate(first[:, -1], ap[:, -1], inp[:, -1]),
        "rounds": [_aggregate(first[:, r], ap[:, r], inp[:, r]) for r in range(1, n_rounds + 1)],
        "mllm_calls": {"mean": round(float(np.mean(calls)), 3), "max": int(np.max(calls))},
        "latency_ms": {"p50": round(float(np.percentile(latency_arr, 50)), 2),
                       "p95": round(float(np.percentile(latency_arr, 95)), 2)},
        "overhead_ms": {"p50": round(float(np.percentile(latency_arr - base_arr, 50)), 2),
                        "p95": round(float(np.percentile(latency_arr - base_arr, 95)), 2)},
        "rounds_run": {"mean": round(float(np.mean(rounds_run)), 3), "max": int(np.max(rounds_run))},
        "stopped_because": stops,
    }
    if skipped_queries:
        report["num_skipped"] = skipped_queries
    if book:
        report["resumed_queries"] = len(done)
    if ds.format == "synthpedes":
        from data.synthpedes.ceiling import ceiling_scores, load_annotations, split_annotations

        sa = split_annotations(load_annotations(root), split)
        scores, cqp, cgp = ceiling_scores(sa)
        report["ceiling"] = summary(rank_metrics(scores[order], cqp[order], cgp, ties="expected"))
    return report


def plot_rounds(reports: list[dict], out: str | Path) -> None:
    """R1 per round (round 0 = baseline) for each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rep in reports:
        ys = [rep["baseline"]["R1"]] + [r["R1"] for r in rep["rounds"]]
        label = f"{rep['policy']} ({rep['mllm']}, user: {rep['user'].split(' ')[0]})"
        ax.plot(range(len(ys)), ys, marker="o", label=label)
    if reports and "ceiling" in reports[0]:
        ax.axhline(reports[0]["ceiling"]["R1"], color="grey", linestyle="--", label="caption-only ceiling")
    ax.set_xlabel("round")
    ax.set_ylabel("R1 (%)")
    ax.set_title("THI: R1 per round")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _mllm(kind: str, root: Path, device: str | None, flip: float = 0.0, protocol: str | None = None,
          server: dict | None = None) -> MLLM:
    server = server or {}
    options: dict = {}
    if kind == "offline":
        options = {"device": device}
    elif kind == "openai":  # unset values: the backend's defaults ($THI_MLLM_BASE_URL, ...)
        options = {k: server[k] for k in ("base_url", "model", "timeout") if server.get(k) is not None}
    elif kind == "transformers":
        if not server.get("path"):
            raise ValueError("--mllm transformers needs --mllm-path FOLDER")
        options = {"path": server["path"], "device": device}
    m = make_backend(kind, root, protocol=protocol, **options)
    m.preflight()  # a server that cannot answer fails here, in one line, before the benchmark's work
    return NoisyVerifier(m, flip) if flip > 0 else m


def policy_list(text: str) -> list[str]:
    """``--policy``: one policy or several, comma-separated (an argparse ``type=``)."""
    policies = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in policies if x not in ("paper", "adaptive")]
    if bad or not policies:
        raise argparse.ArgumentTypeError(f"must be adaptive, paper or 'paper,adaptive', not {text!r}")
    return policies


def main(argv: list[str] | None = None) -> int:
    d = THIConfig()
    p = ArgumentParser(prog="python -m eval.thi", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES,
                   help="dataset layout (default: recognised from the annotation file)")
    p.add_argument("--split", default="test", help="split whose captions are the queries (default %(default)s)")
    p.add_argument("--skip-missing", action="store_true", help="leave out records whose image file is missing (warns)")
    p.add_argument("--mllm", default="offline", choices=BACKENDS,
                   help="offline (default), oracle (simulation only), openai, transformers")
    p.add_argument("--policy", default=["adaptive"], type=policy_list,
                   help="adaptive (default), paper, or both as 'paper,adaptive'")
    p.add_argument("--user", choices=("none", "simulated"), default="none",
                   help="none: THI knows only the caption; simulated: the MLLM answers about the true target photo")
    p.add_argument("--user-mllm", choices=BACKENDS, help="backend of the simulated user (default: --mllm)")
    p.add_argument("--mllm-url", help="openai: base URL of an OpenAI-compatible server (or $THI_MLLM_BASE_URL)")
    p.add_argument("--mllm-model", help="openai: model name (or $THI_MLLM_MODEL)")
    p.add_argument("--mllm-path", help="transformers: folder of a local image-text-to-text model")
    p.add_argument("--mllm-timeout", type=float, help="openai: seconds per request (default: the backend's, 60)")
    p.add_argument("--mllm-protocol", metavar="ours|icl|FILE.json",
                   help="chat backends: how the MLLM is talked to (default: ours)")
    p.add_argument("--mllm-dialogue-timeout", type=float, metavar="S",
                   help="seconds of work each dialogue may spend in all; then it stops with the ranking it has")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help="round limit (default %(default)s)")
    p.add_argument("-k", type=positive_int, default=d.k, help="top-k used for convergence (default %(default)s)")
    p.add_argument("--xi", type=cosine, default=d.xi, help="paper gate, within [-1, 1] (default %(default)s, the paper's)")
    p.add_argument("--lam", type=unit_float, help="fusion weight of the original similarity without a user, within "
                   f"[0, 1] (default: {d.lam} for paper, {d.lam_adaptive} for adaptive)")
    p.add_argument("--anchor-depth", type=positive_int, default=d.anchor_depth,
                   help="adaptive: how deep the anchor search may verify (default %(default)s)")
    p.add_argument("--config", metavar="JSON", default="{}",
                   help='more THIConfig fields as a JSON object, e.g. \'{"questions_from": "probe"}\' (they '
                        "override the flags above)")
    p.add_argument("--flip", type=unit_float, default=0.0,
                   help="flip this share of verification answers, within [0, 1] (study)")
    p.add_argument("--limit", type=positive_int, help="evaluate a fixed random sample of this many queries")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the --limit sample (default %(default)s)")
    add_model_arguments(p, score=False)  # THI ranks by the global (BGE) embeddings
    p.add_argument("--data-dir", help="Chroma folder (default $THI_HOME/chroma)")
    p.add_argument("--url", help="Chroma server URL")
    add_output_arguments(p, "the report (a list of reports for several policies)", legacy_json=True)
    p.add_argument("--restart", action="store_true",
                   help="discard the journal beside --out (a run with other settings refuses it otherwise)")
    p.add_argument("--plot", metavar="OUT.png", help="plot R1 per round for each policy")
    p.add_argument("--trace", metavar="FILE.jsonl", help="write every query's rounds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    apply_thread_policy("query")  # one dialogue at a time: per-query work
    try:
        extra = json.loads(args.config)
        if not isinstance(extra, dict):
            raise ValueError("--config must be a JSON object of THIConfig fields")
        cfgs = [THIConfig(**{"policy": policy, "rounds": args.rounds, "k": args.k, "xi": args.xi,
                             "anchor_depth": args.anchor_depth,
                             **({} if args.lam is None else {fusion_weight_field(policy): args.lam}), **extra})
                for policy in args.policy]
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        print(f"error: bad --config: {printable(e)}", file=sys.stderr)
        return 2
    try:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        root = Path(args.dir)
        # the dataset and the MLLMs first: a missing folder or a server that cannot answer fails in
        # seconds, before the model loads
        if args.format == "auto":
            detect_format(root)  # the folder and its annotation file, without reading them yet
        elif not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found")
        server = {"base_url": args.mllm_url, "model": args.mllm_model, "timeout": args.mllm_timeout,
                  "path": args.mllm_path}
        backends = [(_mllm(args.mllm, root, args.device, args.flip, args.mllm_protocol, server),
                     _mllm(args.user_mllm, root, args.device, server=server) if args.user_mllm else None)
                    for _ in cfgs]
        embedder = embedder_from_args(args)
        if not args.quiet:
            print(embedder.describe(), file=sys.stderr)
        reports = []
        for cfg, (mllm, user_mllm) in zip(cfgs, backends):
            journal = journal_path(args.out, cfg.policy if len(cfgs) > 1 else None) if args.out else None
            reports.append(run_thi_benchmark(root, cfg, mllm, embedder, args.split, args.format, args.user, user_mllm,
                                             args.limit, args.seed, args.data_dir, args.url, args.trace,
                                             not (args.quiet or args.json), args.skip_missing,
                                             args.mllm_dialogue_timeout, journal=journal, restart=args.restart))
    except (DatasetError, EmbedderError, GalleryError, MLLMError, ValueError, OSError, JournalError) as e:
        print(f"error: {printable(str(e).splitlines()[0] if str(e) else type(e).__name__)}", file=sys.stderr)
        return 1
    result = reports[0] if len(reports) == 1 else reports
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out)  # whole or not at all: the journal stays the record until then
    if args.plot:
        plot_rounds(reports, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    for rep in reports:
        tag = " [ORACLE: simulation only]" if rep["oracle"] else ""
        print(f"policy {rep['policy']}, mllm {printable(rep['mllm'])}{tag}, user {printable(rep['user'])}, "
              f"{rep['num_queries']} queries" + (f" ({rep['resumed_queries']} from the journal)"
                                                 if rep.get("resumed_queries") else ""))
        print(f"{'':12s}" + "".join(f"{k:>8s}" for k in METRIC_KEYS))
        rows = [("baseline", rep["baseline"])] + [(f"round {i + 1}", r) for i, r in enumerate(rep["rounds"])]
        if "ceiling" in rep:
            rows.append(("ceiling", rep["ceiling"]))
        for name, m in rows:
            print(f"{name:12s}" + "".join(f"{m[k]:8.2f}" for k in METRIC_KEYS))
        print(f"MLLM calls per query: mean {rep['mllm_calls']['mean']}, max {rep['mllm_calls']['max']}; latency p50 "
              f"{rep['latency_ms']['p50']} ms (overhead p50 {rep['overhead_ms']['p50']} ms), p95 {rep['latency_ms']['p95']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
