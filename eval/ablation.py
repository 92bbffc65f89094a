"""python -m eval.ablation DIR: the headline table: base / +RDA / +THI / +RDA+THI.

Two designs, the two rows of each differing only in RDA. ``--from-scratch`` (the ablation table in
docs/results.md, section 7): both models are trained from random weights with v3's recipe, one on
the original captions (``base``; that is ``synthpedes-small``, v3, the earlier default model) and one with RDA
(``rda``), about an hour each on 2 cores. Without it, a short continuation: both start from v3 and
train the same few more epochs (about 20 minutes in all). Then it runs plain retrieval and THI (adaptive policy,
offline MLLM, no user) with both on the SynthPedes test split, and writes
``eval/results/ablation.json``: keys ``base``, ``rda``, ``thi``, ``rda+thi`` (R1, R5, R10, mAP,
mINP), ``ceiling`` (the caption-only ceiling), ``shipped`` (the default model's own row) and the
commands and seeds that produced them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from tools.cliargs import ArgumentParser, non_negative_int, positive_int
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.mllm import make_mllm
from tools.text import printable

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ablation.json"
#: how the base model (``synthpedes-small``, v3) was trained; docs/training.md, "synthpedes-small (v3)", has the full recipe
SHIPPED_MODEL_COMMAND = ("python -m train synthpedes --out runs/synthpedes-small-v3 --scratch "
                         "--pretrain-world synthpedes-pretrain --pretrain-world synthpedes-attr --pretrain-epochs 4 "
                         "--text-pretrain-epochs 1 --epochs 20 --save-dtype fp16")
#: the shipped recipe's attribute pre-training worlds (docs/training.md, "The worlds")
PRETRAIN_WORLDS = ("synthpedes-pretrain", "synthpedes-attr")


class StepFailed(Exception):
    pass


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:  # the step has printed its own error line
        raise StepFailed(" ".join(["python"] + cmd[1:4]) + " ...")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="SynthPedes folder (the default world)")
    p.add_argument("--base-model", default="local-dir:runs/synthpedes-small-cont",
                   help="the model trained without RDA (default: %(default)s, where --train writes it; a clone "
                        "has it only after a --train run)")
    p.add_argument("--rda-model", default="local-dir:runs/synthpedes-small-cont-rda",
                   help="the model trained with RDA (default: %(default)s, where --train writes it)")
    p.add_argument("--train", action="store_true",
                   help="run RDA and train both models first (about 20 minutes on 2 cores; 2 hours --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="with --train: train both from random weights with the shipped recipe (2 x about 55 minutes)")
    p.add_argument("--restart", action="store_true",
                   help="with --train: redo RDA and retrain both models from the start, discarding what their "
                        "folders and the RDA journal hold (otherwise a killed --train run resumes)")
    p.add_argument("--rda-out", default="runs/rda/reid_raw_rda.json", help="RDA annotation file (with --train)")
    p.add_argument("--epochs", type=positive_int, help="epochs of both models (with --train; default 4, or 20 --from-scratch)")
    p.add_argument("--pretrain-world", action="append",
                   help="with --from-scratch: an attribute pre-training world, repeatable "
                        f"(default: the shipped recipe's, {' and '.join(PRETRAIN_WORLDS)})")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, help="THI on a fixed random sample of queries (default: all)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", metavar="FILE.json", default=str(DEFAULT_OUT), help="write the results here "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of the table")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    def folder(model: str) -> str:
        return model[len("local-dir:"):] if model.startswith("local-dir:") else model

    if args.from_scratch:
        worlds = [x for w in (args.pretrain_world or PRETRAIN_WORLDS) for x in ("--pretrain-world", w)]
        recipe = ["--scratch", "--epochs", str(args.epochs or 20), *worlds, "--pretrain-epochs", "4",
                  "--text-pretrain-epochs", "1"]
    else:  # a short continuation of the shipped model at a low learning rate
        recipe = ["--epochs", str(args.epochs or 4), "--lr", "1e-4", "--warmup-epochs", "0.5"]
    common = recipe + ["--save-dtype", "fp16", "--seed", str(args.seed), "--quiet"]
    steps = [[sys.executable, "-m", "graphs.rda", args.dir, "--out", args.rda_out, "--seed", str(args.seed)],
             [sys.executable, "-m", "train", args.dir, "--out", folder(args.base_model)] + common,
             [sys.executable, "-m", "train", args.dir, "--out", folder(args.rda_model), "--annotations",
              args.rda_out] + common]
    missing = [f"--{flag} {folder(model)}" for flag, model in (("base-model", args.base_model),
                                                                 ("rda-model", args.rda_model))
               if model.startswith("local-dir:") and not Path(folder(model)).is_dir()]
    if missing and not args.train:
        print(f"error: {' and '.join(missing)}: no such model folder; train both first with --train (about 20 "
              "minutes on 2 cores), or pass --base-model and --rda-model", file=sys.stderr)
        return 1
    if args.train:
        try:
            for cmd in steps:
                _run(cmd + (["--restart"] if args.restart else []))
        except StepFailed as e:
            print(f"error: a training step failed: {printable(e)} (see its message above)", file=sys.stderr)
            return 1
    # Recorded either way: without --train they are the commands that made the models being loaded.
    commands = [SHIPPED_MODEL_COMMAND] + [" ".join(["python"] + cmd[1:]) for cmd in steps]
    from graphs.config import THIConfig

    from .benchmark import run_benchmark
    from .thi import run_thi_benchmark

    results: dict = {}
    t0 = time.perf_counter()
    try:
        for tag, model in (("shipped", DEFAULT_MODEL), ("base", args.base_model), ("rda", args.rda_model)):
            embedder = Embedder(model)
            if not args.quiet:
                print(f"{tag}: {embedder.describe()}", file=sys.stderr)
            report, *_ = run_benchmark(args.dir, args.split, model=model, chroma=False, progress=not args.quiet,
                                       embedder=embedder)
            results[tag] = {k: report[k] for k in ("R1", "R5", "R10", "mAP", "mINP")}
            results.setdefault("ceiling", report.get("ceiling"))
            if tag == "shipped":
                continue
            thi = run_thi_benchmark(args.dir, THIConfig(policy="adaptive"), make_mllm("offline"), embedder, args.split,
                                    limit=args.limit, seed=args.seed, progress=not args.quiet)
            key = "thi" if tag == "base" else "rda+thi"
            results[key] = thi["final"]
            results[f"{key}_baseline_same_queries"] = thi["baseline"]
            results[f"{key}_mllm_calls"] = thi["mllm_calls"]
    except (EmbedderError, FileNotFoundError) as e:
        print(f"error: {printable(str(e).splitlines()[0] if str(e) else e)}", file=sys.stderr)
        return 1
    results["settings"] = {
        "dataset": str(Path(args.dir)), "split": args.split, "base_model": args.base_model, "rda_model": args.rda_model,
        "thi": "adaptive policy, offline MLLM, no user", "thi_queries": args.limit or "all", "seed": args.seed,
        "commands": commands + [" ".join(["python", "-m", "eval.ablation"] + (argv if argv is not None else sys.argv[1:]))],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results))
        return 0
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    print(f"{'':16s}" + "".join(f"{k:>8s}" for k in keys))
    for row in ("shipped", "base", "rda", "thi", "rda+thi", "ceiling"):
        if results.get(row):
            print(f"{row:16s}" + "".join(f"{results[row][k]:8.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
