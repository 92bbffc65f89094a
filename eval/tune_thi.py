"""python -m eval.tune_thi: score THI settings on the VALIDATION split (never test).

Each setting is a JSON object of ``THIConfig`` fields, plus ``"user": "simulated"`` for the
simulated-user mode (and ``"user_mllm": "oracle"`` for a simulated user answering from the
annotations instead of the offline MLLM's eyes); one JSON line is printed per setting (baseline,
final, calls, overhead). This is how the defaults in ``graphs/config.py`` were chosen.

    python -m eval.tune_thi synthpedes --limit 800 '{"anchor_image_weight": 0.1}' '{"policy": "paper", "xi": 0.8}'
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tools.cliargs import ArgumentParser, non_negative_int, positive_int
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.text import printable


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.tune_thi", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="SynthPedes folder")
    p.add_argument("settings", nargs="*", default=["{}"], help="JSON objects of THIConfig fields (default: {})")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=positive_int, default=800, help="fixed random sample of queries (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=1)
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.split == "test":
        print("error: tune on the validation split; the test split is for reporting", file=sys.stderr)
        return 2
    from graphs.config import THIConfig
    from tools.mllm import make_mllm

    from .thi import _mllm, run_thi_benchmark

    try:
        settings = [json.loads(s) for s in args.settings]
        configs = [(s.pop("user", "none"), s.pop("user_mllm", None), THIConfig(**s), s) for s in settings]
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        print(f"error: bad setting: {printable(e)}", file=sys.stderr)
        return 2
    try:
        embedder = Embedder(args.model)
    except EmbedderError as e:
        print(f"error: {printable(str(e).splitlines()[0] if str(e) else e)}", file=sys.stderr)
        return 1
    print(embedder.describe(), file=sys.stderr)
    for user, user_mllm, cfg, shown in configs:
        # a fresh backend per setting: cached answers from the previous setting would not count as calls
        mllm = make_mllm("offline")
        answerer = _mllm(user_mllm, Path(args.dir), None) if user_mllm else None
        r = run_thi_benchmark(args.dir, cfg, mllm, embedder, split=args.split, user=user, user_mllm=answerer,
                              limit=args.limit, seed=args.seed, progress=False)
        print(json.dumps({"setting": shown, "user": r["user"], "baseline": r["baseline"], "final": r["final"],
                          "mllm_calls": r["mllm_calls"], "overhead_ms": r["overhead_ms"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
