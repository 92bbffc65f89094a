"""python -m eval.ceiling DIR: the caption-only ceiling and ambiguity of a SynthPedes split.

The ceiling ranks each caption's gallery by how many of the caption's stated attributes each image
visibly agrees with (``data.synthpedes.ceiling``); it is the best any retriever reading only the
caption can do. Ties count at their expected rank.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.synthpedes.ceiling import AnnotationError, ambiguity, ceiling_scores, load_annotations, split_annotations

from .metrics import rank_metrics, summary


def caption_only_ceiling(root: str | Path, split: str = "test") -> dict:
    """Ceiling metrics (percent) for a SynthPedes folder's split."""
    sa = split_annotations(load_annotations(root), split)
    scores, qp, gp = ceiling_scores(sa)
    return summary(rank_metrics(scores, qp, gp, ties="expected"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="SynthPedes folder")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    try:
        sa = split_annotations(load_annotations(args.dir), args.split)
    except AnnotationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    scores, qp, gp = ceiling_scores(sa)
    out = {"split": args.split, "ambiguity": round(ambiguity(sa), 3),
           "ceiling": summary(rank_metrics(scores, qp, gp, ties="expected"))}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
