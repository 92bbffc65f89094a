"""python -m train DIR --out CKPT_DIR: fine-tune open_clip for text-to-image person retrieval."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields

from data.readers import FORMAT_NAMES, DatasetError
from tools.cliargs import ArgumentParser, int_at_least, non_negative_int, positive_float, positive_int, unit_float
from tools.checkpoints import TRUST_ENV
from tools.text import printable

from .loop import TrainConfig, TrainingError, fit


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(
        prog="python -m train",
        description="Train an open_clip model on a dataset folder (any supported layout) with identity-aware "
                    "contrastive + IRRA SDM losses. Writes an open_clip local-dir model to --out (best validation "
                    "R1), checkpoints every epoch and resumes a killed run. RDA diversity_captions are used when "
                    "the annotation file has them.")
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--out", required=True, help="output folder (a local-dir model; resumed if it holds this run)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES)
    p.add_argument("--annotations", metavar="FILE", help="read this annotation file instead (e.g. RDA output)")
    p.add_argument("--model", default="synthpedes-small",
                   help="architecture: shipped name, open_clip name (e.g. ViT-B-16) or local-dir:PATH (default "
                        "%(default)s, the architecture every shipped model shares; without --scratch or --init its "
                        "weights, v3's, are the start: --model synthpedes-small-v7 fine-tunes the default model)")
    p.add_argument("--init", metavar="TAG_OR_FILE", help="start from these weights (pretrained tag or checkpoint file)")
    p.add_argument("--scratch", action="store_true", help="random initialisation of the architecture")
    p.add_argument("--pretrain-world", metavar="DIR", action="append",
                   help="a separate SynthPedes world: pre-train the image tower on its attribute annotations first "
                        "(repeat for several worlds; never the dataset being trained on)")
    p.add_argument("--pretrain-epochs", type=non_negative_int, default=d.pretrain_epochs)
    p.add_argument("--text-pretrain-epochs", type=non_negative_int, default=d.text_pretrain_epochs,
                   help="with --pretrain-world: then pre-train the text tower to read what those worlds' captions "
                        "state (default %(default)s: no)")
    p.add_argument("--extra-world", metavar="DIR[=ANNOTATIONS]", action="append",
                   help="another dataset folder (e.g. a SynthPedes world with another seed) whose train split joins "
                        "contrastive training, its people kept apart from the main dataset's; =FILE reads that "
                        "annotation file instead (e.g. the world's RDA output); repeat for several")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=int_at_least(2), default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--init-logit-scale", type=float, default=d.init_logit_scale,
                   help="--scratch: initial logit scale, 1/temperature (default %(default)s)")
    p.add_argument("--negative-weight", type=float, default=d.negative_weight,
                   help="loss weight of hard negative captions (colour swaps...) (default %(default)s)")
    p.add_argument("--attribute-weight", type=float, default=d.attribute_weight,
                   help="weight of shared image/text attribute heads, labels parsed from the captions (default %(default)s)")
    p.add_argument("--similar-batches", type=float, default=d.similar_batches,
                   help="share of people batched with look-alikes (default %(default)s)")
    p.add_argument("--same-person-weight", type=unit_float, default=d.same_person_weight,
                   help="contrastive target weight of a person's other photos against the caption's own photo; "
                        "1 = IRRA's identity-aware targets, below 1 the photo's context (place, action, bystanders) "
                        "is learnt (default %(default)s)")
    p.add_argument("--id-weight", type=float, default=d.id_weight, help="identity classification loss weight (0 = off)")
    p.add_argument("--rda-decay", type=float, default=d.rda_decay, help="RDA weight w = max(0.1, 1 - DECAY * epoch)")
    p.add_argument("--precision", default=d.precision, choices=("auto", "bf16", "fp32"))
    p.add_argument("--save-dtype", default=d.save_dtype, choices=("fp32", "fp16"))
    p.add_argument("--seed", type=non_negative_int, default=d.seed)
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--workers", type=positive_int, default=d.workers, help="image loading threads")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out train/val records whose image file is missing (warns); other splits are not read")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle an --init file in full when it holds Python objects beyond tensors and plain values "
                        "(this can run code the file carries; refused by default; the same as THI_TRUST_CHECKPOINTS=1)")
    p.add_argument("--restart", action="store_true", help="discard a previous run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trust_checkpoint:
        os.environ[TRUST_ENV] = "1"
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.pretrain_world and len(args.pretrain_world) == 1:
        args.pretrain_world = args.pretrain_world[0]  # one world: the same run identity as before lists existed
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    if args.text_pretrain_epochs and not args.pretrain_world:
        print("error: --text-pretrain-epochs needs --pretrain-world (the captions come from those worlds)", file=sys.stderr)
        return 2
    try:
        summary = fit(args.dir, args.out, cfg, model=args.model, init=args.init, scratch=args.scratch,
                      format=args.format, device=args.device, annotation_file=args.annotations,
                      progress=not args.quiet, restart=args.restart, skip_missing=args.skip_missing)
    except (DatasetError, TrainingError) as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
