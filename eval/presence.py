"""python -m eval.presence DIR: does the offline recogniser see a person where there is one, and only there?

Positives: every photo of a SynthPedes split (default ``test``: people the head never saw).
Negatives: pictures with no person drawn by ``train.presence`` with a seed the training does not
use (scenes without the person, occluders, noise, flat colours, stripes, shapes, pages of text,
animal shapes, shuffled photos of the split). Reports positive recall (photos of people taken for
people), negative recall (pictures without one taken for none), per kind, at the head's threshold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.synthpedes.ceiling import AnnotationError, load_annotations
from tools.cliargs import ArgumentParser, add_output_arguments, legacy_json_file, positive_int
from tools.mllm.recogniser import DEFAULT_WEIGHTS, Recogniser


def presence_scores(root: str | Path, split: str = "test", negatives_n: int = 2000, seed: int = 12345,
                    weights: str | Path = DEFAULT_WEIGHTS, progress: bool = True) -> dict:
    """Positive and negative recall of the recogniser's presence head (see the module docstring).
    Raises ValueError when the recogniser has no presence head, AnnotationError on a bad folder."""
    from train.pairs import load_all_pixels
    from train.presence import negatives

    rec = Recogniser.load(weights)
    if rec.presence is None:
        raise ValueError(f"{weights}: this recogniser has no presence head (train one with train.attributes --presence)")
    root = Path(root)
    images = [im for im in load_annotations(root)["images"] if im["split"] == split]
    if not images:
        raise AnnotationError(f"{root}: no photos in split {split!r}")
    photos = load_all_pixels([root / "imgs" / im["file_path"] for im in images], rec.input_size, progress=progress)
    neg, kinds = negatives(negatives_n, seed, photos)

    def p_person(pixels: np.ndarray) -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(pixels), 64), desc="presence", disable=not progress, mininterval=2):
            out.extend(rec._predict_pixels(pixels[i:i + 64])[1])
        return np.asarray(out, dtype=float)

    pos_p, neg_p = p_person(photos), p_person(neg)
    thr = rec.presence_threshold
    kinds_a = np.asarray(kinds)
    return {"split": split, "threshold": thr, "positives": len(pos_p), "negatives": len(neg_p),
            "positive_recall": round(float((pos_p >= thr).mean()), 4),
            "negative_recall": round(float((neg_p < thr).mean()), 4),
            "negative_recall_by_kind": {k: round(float((neg_p[kinds_a == k] < thr).mean()), 4)
                                        for k in sorted(set(kinds))},
            "positives_missed": [images[i]["file_path"] for i in np.flatnonzero(pos_p < thr)][:20],
            "negative_seed": seed}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.presence", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="SynthPedes folder (needs attributes.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--negatives", type=positive_int, default=2000, help="pictures without a person to draw (default 2000)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the negatives (training uses 0 to 2)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="recogniser weights (default: the shipped ones)")
    add_output_arguments(p, "the report", legacy_json=True, always_json=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    try:
        report = presence_scores(args.dir, args.split, args.negatives, args.seed, args.weights, not args.quiet)
    except (AnnotationError, ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
