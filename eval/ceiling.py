"""python -m eval.ceiling DIR: the caption-only ceiling and ambiguity of a SynthPedes split.

The ceiling ranks each caption's gallery by how many of the caption's stated attributes each image
visibly agrees with (``data.synthpedes.ceiling``); it is the best any retriever reading only the
caption can do. Ties count at their expected rank.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from data.synthpedes.ceiling import (AnnotationError, SplitAnnotations, ambiguity, ceiling_scores, load_annotations,
                                     split_annotations)
from tools.attributes import IMAGE_SLOTS, SLOT_NAMES
from tools.cliargs import ArgumentParser
from tools.text import printable

from .metrics import rank_metrics, summary


def caption_only_ceiling(root: str | Path, split: str = "test") -> dict:
    """Ceiling metrics (percent) for a SynthPedes folder's split."""
    sa = split_annotations(load_annotations(root), split)
    scores, qp, gp = ceiling_scores(sa)
    return summary(rank_metrics(scores, qp, gp, ties="expected"))


KNOWLEDGE = ("caption", "person", "photo")


def with_knowledge(sa: SplitAnnotations, knowledge: str = "caption") -> SplitAnnotations:
    """``sa`` with each query's stated attributes extended by what ``knowledge`` adds (see module doc)."""
    if knowledge not in KNOWLEDGE:
        raise ValueError(f"knowledge must be one of {', '.join(KNOWLEDGE)}, not {knowledge!r}")
    if knowledge == "caption":
        return sa
    shown = np.where(sa.visible, sa.values, -1)[sa.query_image]  # what the query's own photo shows
    if knowledge == "person":
        shown[:, [SLOT_NAMES.index(s) for s in IMAGE_SLOTS]] = -1
    stated = np.where(sa.stated >= 0, sa.stated, shown).astype(sa.stated.dtype)
    return dataclasses.replace(sa, stated=stated)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="SynthPedes folder")
    p.add_argument("--split", default="test")
    p.add_argument("--knowledge", choices=KNOWLEDGE, default="caption",
                   help="what is known of each query's target: the caption (default), every attribute its photo "
                        "shows of the person, or that plus the photo's context")
    args = p.parse_args(argv)
    try:
        sa = split_annotations(load_annotations(args.dir), args.split)
    except AnnotationError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1
    known = with_knowledge(sa, args.knowledge)
    scores, qp, gp = ceiling_scores(known)
    out = {"split": args.split, "knowledge": args.knowledge, "ambiguity": round(ambiguity(known), 3),
           "ceiling": summary(rank_metrics(scores, qp, gp, ties="expected"))}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
