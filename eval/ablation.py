"""python -m eval.ablation DIR: the headline table: base / +RDA / +THI / +RDA+THI.

Trains (``--train``) or loads the base model and the RDA model, then runs plain retrieval and THI
(adaptive policy, offline MLLM, no user) with both on the SynthPedes test split, and writes
``eval/results/ablation.json``: keys ``base``, ``rda``, ``thi``, ``rda+thi`` (R1, R5, R10, mAP,
mINP), ``ceiling`` (the caption-only ceiling) and the commands and seeds that produced them.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.mllm import make_mllm

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ablation.json"


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="SynthPedes folder (the default world)")
    p.add_argument("--base-model", default=DEFAULT_MODEL, help="base model (default: the shipped one)")
    p.add_argument("--rda-model", default="local-dir:runs/synthpedes-small-rda", help="model trained with RDA")
    p.add_argument("--train", action="store_true", help="run RDA and train the RDA model first (about an hour on 2 cores)")
    p.add_argument("--rda-out", default="runs/rda/reid_raw_rda.json", help="RDA annotation file (with --train)")
    p.add_argument("--epochs", type=int, default=36, help="epochs of the RDA model (with --train)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="THI on a fixed random sample of queries (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    commands = []
    if args.train:
        rda_dir = args.rda_model[len("local-dir:"):] if args.rda_model.startswith("local-dir:") else args.rda_model
        steps = [[sys.executable, "-m", "graphs.rda", args.dir, "--out", args.rda_out, "--seed", str(args.seed)],
                 [sys.executable, "-m", "train", args.dir, "--out", rda_dir, "--annotations", args.rda_out, "--scratch",
                  "--epochs", str(args.epochs), "--save-dtype", "fp16", "--seed", str(args.seed), "--quiet"]]
        for cmd in steps:
            _run(cmd)
            commands.append(" ".join(["python"] + cmd[1:]))
    from graphs.config import THIConfig

    from .benchmark import run_benchmark
    from .thi import run_thi_benchmark

    results: dict = {}
    t0 = time.perf_counter()
    try:
        for tag, model in (("base", args.base_model), ("rda", args.rda_model)):
            embedder = Embedder(model)
            report, *_ = run_benchmark(args.dir, args.split, model=model, chroma=False, progress=not args.quiet,
                                       embedder=embedder)
            results[tag] = {k: report[k] for k in ("R1", "R5", "R10", "mAP", "mINP")}
            results.setdefault("ceiling", report.get("ceiling"))
            thi = run_thi_benchmark(args.dir, THIConfig(policy="adaptive"), make_mllm("offline"), embedder, args.split,
                                    limit=args.limit, seed=args.seed, progress=not args.quiet)
            key = "thi" if tag == "base" else "rda+thi"
            results[key] = thi["final"]
            results[f"{key}_baseline_same_queries"] = thi["baseline"]
            results[f"{key}_mllm_calls"] = thi["mllm_calls"]
    except (EmbedderError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]} (train it with --train)", file=sys.stderr)
        return 1
    results["settings"] = {
        "dataset": str(Path(args.dir)), "split": args.split, "base_model": args.base_model, "rda_model": args.rda_model,
        "thi": "adaptive policy, offline MLLM, no user", "thi_queries": args.limit or "all", "seed": args.seed,
        "commands": commands + [" ".join(["python", "-m", "eval.ablation"] + (argv if argv is not None else sys.argv[1:]))],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    print(f"{'':16s}" + "".join(f"{k:>8s}" for k in keys))
    for row in ("base", "rda", "thi", "rda+thi", "ceiling"):
        if results.get(row):
            print(f"{row:16s}" + "".join(f"{results[row][k]:8.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
