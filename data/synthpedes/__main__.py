"""python -m data.synthpedes --out DIR: generate a SynthPedes world (see data/synthpedes/generate.py)."""

from __future__ import annotations

import argparse
import json
import sys

from tools.cliargs import ArgumentParser, non_negative_int, positive_int, unit_float

from .ceiling import ambiguity, load_annotations
from .generate import WorldExistsError, generate
from .preview import contact_sheet
from .world import WorldConfig


def build_parser() -> argparse.ArgumentParser:
    d = WorldConfig()
    p = ArgumentParser(
        prog="python -m data.synthpedes",
        description="Generate SynthPedes, the embedded pedestrian world: 128x256 photos of people in the "
                    "CUHK-PEDES layout (reid_raw.json + imgs/) with per-image attribute annotations "
                    "(attributes.json). The same seed gives byte-identical annotation files; a re-run on the "
                    "same folder resumes.",
    )
    p.add_argument("--out", required=True, help="output folder (created; must be empty or hold the same world)")
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="world seed (default %(default)s)")
    p.add_argument("--train-ids", type=non_negative_int, default=d.train_ids, help="identities in train (default %(default)s)")
    p.add_argument("--val-ids", type=non_negative_int, default=d.val_ids, help="identities in val (default %(default)s)")
    p.add_argument("--test-ids", type=non_negative_int, default=d.test_ids, help="identities in test (default %(default)s)")
    p.add_argument("--mention", type=float, nargs=2, default=(d.mention_min, d.mention_max), metavar=("MIN", "MAX"),
                   help="share of visible attributes each caption states (default %(default)s)")
    p.add_argument("--noise", type=unit_float, default=d.noise_rate, help="share of captions with one wrong detail (default %(default)s)")
    p.add_argument("--workers", type=positive_int, default=None, help="render processes (default: CPU count)")
    p.add_argument("--preview", metavar="FILE.png", help="also write a contact sheet of 32 test images with captions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lo, hi = args.mention
    if not (0 < lo <= hi <= 1):
        print("error: --mention needs 0 < MIN <= MAX <= 1", file=sys.stderr)
        return 2
    cfg = WorldConfig(seed=args.seed, train_ids=args.train_ids, val_ids=args.val_ids, test_ids=args.test_ids,
                      mention_min=lo, mention_max=hi, noise_rate=args.noise)
    if sum(cfg.split_sizes().values()) == 0:
        print("error: the world has no identities (all split sizes are 0)", file=sys.stderr)
        return 2
    try:
        summary = generate(args.out, cfg, workers=args.workers, progress=not args.quiet)
    except (WorldExistsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ann = load_annotations(args.out)
    summary["ambiguity"] = {s: round(ambiguity(ann, s), 3) for s, n in cfg.split_sizes().items() if n}
    if args.preview:
        split = next(s for s in ("test", "val", "train") if cfg.split_sizes()[s])
        summary["preview"] = str(contact_sheet(args.out, args.preview, split=split))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
