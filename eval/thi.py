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
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.readers import FORMAT_NAMES, DatasetError, read_dataset
from graphs.config import THIConfig, THIContext, fusion_weight_field
from graphs.demo import open_gallery
from graphs.report import write_trace
from graphs.server import make_backend, register, unregister
from graphs.thi import build_graph, final_scores, recursion_limit
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.gallery import GalleryError
from tools.index import GalleryIndex
from tools.threads import apply_thread_policy
from tools.mllm import MLLM, MLLMError
from tools.mllm.base import ImageRef, Verdict

from .benchmark import sample_indices, split_queries
from .metrics import METRIC_KEYS, rank_metrics, summary

log = logging.getLogger(__name__)


class NoisyVerifier(MLLM):
    """Wraps a backend and flips each verification answer with probability ``flip`` (for the study
    of THI's gain against verification accuracy). Questions and abstentions pass through unchanged."""

    def __init__(self, inner: MLLM, flip: float, seed: int = 0):
        super().__init__(cache=False)
        self.inner, self.flip = inner, flip
        self.rng = np.random.default_rng(seed)
        self.name = f"{inner.name}+flip{flip:g}"
        self.is_oracle = inner.is_oracle

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
    """(rank of the first true match, AP, INP) of one ranking."""
    m = rank_metrics(scores[None, :], np.asarray([target_pid]), gallery_pids, ks=(1,), per_query=True)["per_query"]
    return int(m["first_rank"][0]), float(m["ap"][0]), float(m["inp"][0])


def _aggregate(first: np.ndarray, ap: np.ndarray, inp: np.ndarray) -> dict:
    out = {f"R{k}": float((first <= k).mean() * 100) for k in (1, 5, 10)}
    out["mAP"] = float(ap.mean() * 100)
    out["mINP"] = float(inp.mean() * 100)
    return {k: round(v, 2) for k, v in out.items()}


def run_thi_benchmark(root: str | Path, config: THIConfig, mllm: MLLM, embedder: Embedder, split: str = "test",
                      format: str = "auto", user: str = "none", user_mllm: MLLM | None = None,
                      limit: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                      url: str | None = None, trace: str | Path | None = None, progress: bool = True) -> dict:
    ds = read_dataset(root, format)
    records = ds.split(split)
    if not records:
        raise DatasetError(f"{root}: split {split!r} is empty")
    gallery, _ = open_gallery(root, embedder, split, url, data_dir, index_if_missing=True, progress=progress)
    index = GalleryIndex(gallery, embedder)
    gallery_pids = index.pids
    texts, qpids, owner = split_queries(records)
    order = sample_indices(len(texts), limit, seed)
    backends = [mllm] + ([user_mllm] if user_mllm is not None and user_mllm is not mllm else [])

    def total_calls() -> int:  # THI's and the simulated user's calls together
        return sum(b.stats.total_calls for b in backends)

    graph = build_graph()
    limit_steps = recursion_limit(config)
    n_rounds = config.rounds
    first = np.zeros((len(order), n_rounds + 1), dtype=np.int64)
    ap = np.zeros((len(order), n_rounds + 1))
    inp = np.zeros((len(order), n_rounds + 1))
    calls, latency, baseline_ms, rounds_run = [], [], [], []
    stops: dict[str, int] = {}
    states = []
    # the benchmark's own objects (a fresh backend per run, maybe a noisy one) serve its contexts
    resources = register(index=index, mllm=mllm, user_mllm=user_mllm)
    run_ctx = THIContext.from_config(config, resources=resources, user="simulated" if user == "simulated" else "none")
    try:
        for n, q in enumerate(tqdm(order, desc=f"THI {config.policy}", unit="query", disable=not progress,
                                   mininterval=2)):
            text, pid = texts[q], int(qpids[q])
            ctx = replace(run_ctx, target=records[owner[q]].image, target_pid=pid)
            t0 = time.perf_counter()
            index.scores(text, cache=False)  # plain retrieval: encode and score the gallery (uncached)
            baseline_ms.append((time.perf_counter() - t0) * 1000)
            for b in backends:  # each dialogue pays for its own answers (see MLLM.clear_cache)
                b.clear_cache()
            calls0 = total_calls()
            t0 = time.perf_counter()
            snapshots = []
            for values in graph.stream({"query": text}, context=ctx, config={"recursion_limit": limit_steps},
                                       stream_mode="values"):
                if values.get("rounds") and len(values["rounds"]) > len(snapshots):
                    snapshots.append({k: values.get(k) for k in ("query", "current_query", "anchor", "verified",
                                                                "checked", "stated", "facts")})
                final = values
            latency.append((time.perf_counter() - t0) * 1000)
            calls.append(total_calls() - calls0)
            stops[final["stopped_because"]] = stops.get(final["stopped_because"], 0) + 1
            rounds_run.append(len(final["rounds"]))
            base = index.scores(text)
            first[n, 0], ap[n, 0], inp[n, 0] = _row_metrics(base, pid, gallery_pids)
            row = (first[n, 0], ap[n, 0], inp[n, 0])
            for r in range(1, n_rounds + 1):
                if r <= len(snapshots):
                    row = _row_metrics(final_scores(snapshots[r - 1], ctx), pid, gallery_pids)
                first[n, r], ap[n, r], inp[n, r] = row
            if trace:
                states.append(final)
    finally:
        unregister(resources)
    if trace:
        write_trace(trace, states)
    latency_arr, base_arr = np.asarray(latency), np.asarray(baseline_ms)
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


def _mllm(kind: str, root: Path, device: str | None, flip: float = 0.0) -> MLLM:
    m = make_backend(kind, root, **({"device": device} if kind == "offline" else {}))
    return NoisyVerifier(m, flip) if flip > 0 else m


def main(argv: list[str] | None = None) -> int:
    d = THIConfig()
    p = argparse.ArgumentParser(prog="python -m eval.thi", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES)
    p.add_argument("--split", default="test")
    p.add_argument("--mllm", default="offline", help="offline (default), oracle (simulation only), openai, transformers")
    p.add_argument("--policy", default="adaptive", help="adaptive, paper, or both as 'paper,adaptive'")
    p.add_argument("--user", choices=("none", "simulated"), default="none",
                   help="none: THI knows only the caption; simulated: the MLLM answers about the true target photo")
    p.add_argument("--user-mllm", help="backend of the simulated user (default: --mllm)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("-k", type=int, default=d.k)
    p.add_argument("--xi", type=float, default=d.xi, help="paper gate (default %(default)s, the paper's)")
    p.add_argument("--lam", type=float, help="fusion weight of the original similarity without a user (default: "
                   f"{d.lam} for paper, {d.lam_adaptive} for adaptive)")
    p.add_argument("--anchor-depth", type=int, default=d.anchor_depth,
                   help="adaptive: how deep the anchor search may verify (default %(default)s)")
    p.add_argument("--config", metavar="JSON", default="{}",
                   help='more THIConfig fields as a JSON object, e.g. \'{"questions_from": "probe"}\' (they '
                        "override the flags above)")
    p.add_argument("--flip", type=float, default=0.0, help="flip this share of verification answers (study)")
    p.add_argument("--limit", type=int, help="evaluate a fixed random sample of this many queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pretrained")
    p.add_argument("--device")
    p.add_argument("--data-dir", help="Chroma folder (default $THI_HOME/chroma)")
    p.add_argument("--url", help="Chroma server URL")
    p.add_argument("--json", metavar="OUT", help="write the report(s) as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot R1 per round for each policy")
    p.add_argument("--trace", metavar="FILE.jsonl", help="write every query's rounds")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    apply_thread_policy("benchmark")
    policies = [x.strip() for x in args.policy.split(",") if x.strip()]
    try:
        extra = json.loads(args.config)
        if not isinstance(extra, dict):
            raise ValueError("--config must be a JSON object of THIConfig fields")
        cfgs = [THIConfig(**{"policy": policy, "rounds": args.rounds, "k": args.k, "xi": args.xi,
                             "anchor_depth": args.anchor_depth,
                             **({} if args.lam is None else {fusion_weight_field(policy): args.lam}), **extra})
                for policy in policies]
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        print(f"error: bad --config: {e}", file=sys.stderr)
        return 2
    try:
        embedder = Embedder(args.model, args.pretrained, device=args.device)
        root = Path(args.dir)
        reports = []
        for cfg in cfgs:
            mllm = _mllm(args.mllm, root, args.device, args.flip)
            user_mllm = _mllm(args.user_mllm, root, args.device) if args.user_mllm else None
            reports.append(run_thi_benchmark(root, cfg, mllm, embedder, args.split, args.format, args.user, user_mllm,
                                             args.limit, args.seed, args.data_dir, args.url, args.trace,
                                             not args.quiet))
    except (DatasetError, EmbedderError, GalleryError, MLLMError, ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    for rep in reports:
        tag = " [ORACLE: simulation only]" if rep["oracle"] else ""
        print(f"policy {rep['policy']}, mllm {rep['mllm']}{tag}, user {rep['user']}, {rep['num_queries']} queries")
        print(f"{'':12s}" + "".join(f"{k:>8s}" for k in METRIC_KEYS))
        rows = [("baseline", rep["baseline"])] + [(f"round {i + 1}", r) for i, r in enumerate(rep["rounds"])]
        if "ceiling" in rep:
            rows.append(("ceiling", rep["ceiling"]))
        for name, m in rows:
            print(f"{name:12s}" + "".join(f"{m[k]:8.2f}" for k in METRIC_KEYS))
        print(f"MLLM calls per query: mean {rep['mllm_calls']['mean']}, max {rep['mllm_calls']['max']}; latency p50 "
              f"{rep['latency_ms']['p50']} ms (overhead p50 {rep['overhead_ms']['p50']} ms), p95 {rep['latency_ms']['p95']} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    if args.plot:
        plot_rounds(reports, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
