"""python -m data.stats DIR: summarise a dataset folder as one JSON object.

``{"format": ..., "splits": {"train": {"ids": n, "images": n, "captions": n}, ...}}`` with every
split present; SynthPedes splits also carry ``ambiguity`` (mean number of identities of the split
that agree with everything a caption states).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tools.cliargs import ArgumentParser
from tools.text import printable

from .readers import FORMAT_NAMES, Dataset, DatasetError, read_dataset


def dataset_stats(ds: Dataset) -> dict:
    out: dict = {"format": ds.format, "splits": {}}
    for split in ds.splits:
        records = ds.split(split)
        out["splits"][split] = {
            "ids": len({r.pid for r in records}),
            "images": len(records),
            "captions": sum(len(r.captions) for r in records),
        }
    if ds.format == "synthpedes":
        from .synthpedes.ceiling import AnnotationError, ambiguity, load_annotations

        try:
            ann = load_annotations(ds.root)
            for split in out["splits"]:
                out["splits"][split]["ambiguity"] = round(ambiguity(ann, split), 3)
        except AnnotationError as e:
            raise DatasetError(str(e)) from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m data.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="dataset folder")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES,
                   help="dataset layout (default: detect from the annotation file's name)")
    p.add_argument("--skip-missing", action="store_true", help="skip records whose image file is missing (warns)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        ds = read_dataset(args.dir, args.format, skip_missing=args.skip_missing)
        print(json.dumps(dataset_stats(ds)))
    except DatasetError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
