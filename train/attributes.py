"""python -m train.attributes DIR --out FILE.safetensors: train the offline MLLM's attribute recogniser.

With ``--presence`` it trains the recogniser's person-presence head instead (``train.presence``).

Reads a SynthPedes folder (``attributes.json`` gives every slot's value and visibility per image),
trains ``tools.mllm.recogniser.AttributeNet`` on the train split (plus the train splits of any
``--extra-train`` worlds: more people, never the test ones) with caption-safe augmentation (flips,
small shifts and zooms, brightness/contrast; never hue) and keeps the weights with the best mean
per-slot accuracy on DIR's val split. Prints per-slot test accuracy at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.synthpedes.ceiling import AnnotationError, load_annotations
from tools.attributes import SLOT_NAMES
from tools.mllm.recogniser import (DEFAULT_WEIGHTS, INPUT_SIZE, AttributeNet, Recogniser, combine, provenance,
                                   slot_classes, to_input)

from .pairs import augment, load_all_pixels

log = logging.getLogger(__name__)


def targets(images: list[dict]) -> np.ndarray:
    """[N, S] class index per slot: the value when visible, else the slot's ``unseen`` class."""
    out = np.zeros((len(images), len(SLOT_NAMES)), dtype=np.int64)
    for i, im in enumerate(images):
        for j, s in enumerate(SLOT_NAMES):
            classes = slot_classes(s)
            v = im["attributes"].get(s)
            out[i, j] = classes.index(v) if (v is not None and im["visible"].get(s)) else len(classes) - 1
    return out


def split_data(root: Path, ann: dict, split: str, workers: int, progress: bool,
               size: tuple[int, int] = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    images = [im for im in ann["images"] if im["split"] == split]
    if not images:
        return np.zeros((0, *size, 3), np.uint8), np.zeros((0, len(SLOT_NAMES)), np.int64)
    pixels = load_all_pixels([root / "imgs" / im["file_path"] for im in images], size, workers, progress)
    return pixels, targets(images)


def accuracy(rec: Recogniser, pixels: np.ndarray, y: np.ndarray, batch: int = 256) -> dict[str, float]:
    """Per-slot accuracy over all images (the unseen class counts as a class)."""
    correct = np.zeros(len(SLOT_NAMES))
    visible_correct = np.zeros(len(SLOT_NAMES))
    visible_total = np.zeros(len(SLOT_NAMES))
    rec.net.eval()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            logits = rec.net(to_input(pixels[i:i + batch]).to(rec.device))
            for j, s in enumerate(SLOT_NAMES):
                pred = logits[s].argmax(-1).cpu().numpy()
                yy = y[i:i + batch, j]
                correct[j] += (pred == yy).sum()
                seen = yy != len(slot_classes(s)) - 1
                visible_correct[j] += (pred[seen] == yy[seen]).sum()
                visible_total[j] += seen.sum()
    out = {s: round(float(correct[j] / len(pixels)), 4) for j, s in enumerate(SLOT_NAMES)}
    out["_visible"] = {s: round(float(visible_correct[j] / max(1, visible_total[j])), 4) for j, s in enumerate(SLOT_NAMES)}
    return out


def load_init(path: str | Path) -> tuple[AttributeNet, dict]:
    """The one network in a recogniser file to continue training from, and what it was trained on."""
    rec = Recogniser.load(path, "cpu")
    if len(rec.members) > 1:
        raise ValueError(f"{path}: an ensemble of {len(rec.members)} networks; --init takes one network's file")
    return rec.net.train(), {"file": Path(path).name, **provenance(rec.config)}


def fit_recogniser(root: str | Path, out: str | Path, epochs: int = 16, batch_size: int = 128, lr: float = 2e-3,
                   seed: int = 0, workers: int = 4, device: str | None = None, progress: bool = True,
                   extra_train: Sequence[str | Path] = (), net: AttributeNet | None = None,
                   init: dict | None = None) -> dict:
    """Train (or, given ``net``, go on training) a recogniser; ``init`` describes where ``net`` came from."""
    root = Path(root)
    ann = load_annotations(root)
    torch.manual_seed(seed)
    net = net or AttributeNet()
    size = tuple(net.config["input_size"])
    parts = [split_data(root, ann, "train", workers, progress, size)]
    for extra in extra_train:
        extra = Path(extra)
        if extra.resolve() == root.resolve():
            raise AnnotationError(f"{extra}: --extra-train names the main folder itself")
        parts.append(split_data(extra, load_annotations(extra), "train", workers, progress, size))
    train_x = np.concatenate([x for x, _ in parts]) if len(parts) > 1 else parts[0][0]
    train_y = np.concatenate([y for _, y in parts]) if len(parts) > 1 else parts[0][1]
    del parts
    if len(train_x) == 0:
        raise AnnotationError(f"{root}: no train images in attributes.json")
    n_train = len(train_x)
    log.info("training on %d photos", n_train)
    val_x, val_y = split_data(root, ann, "val", workers, progress, size)
    rec = Recogniser(net, device)
    # channels-last convolutions are ~1.3x faster on CPU (oneDNN) and no slower on CUDA
    net = rec.net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.02)
    steps = epochs * (n_train // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.1)
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    autocast = torch.autocast(rec.device.type, dtype=torch.bfloat16, enabled=rec.device.type == "cuda" or supported)
    best, history, t_start = -1.0, [], time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    if rec.device.type == "cuda":
        # the whole uint8 train set on the GPU (1 GB per 10k photos): the host would otherwise feed every batch
        torch.backends.cudnn.benchmark = True
        train_t = torch.from_numpy(train_x).to(rec.device)
        del train_x
        train_yt = torch.from_numpy(train_y).to(rec.device)
    else:
        train_t, train_yt = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(train_t))).to(rec.device)
        n_batches = len(order) // batch_size
        losses = []
        for b in tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress,
                      mininterval=2.0):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = augment(train_t[idx], gen)
            x = (x - 0.5) / 0.25
            y = train_yt[idx]
            with autocast:
                logits = net(x.contiguous(memory_format=torch.channels_last))
                loss = sum(F.cross_entropy(logits[s].float(), y[:, j]) for j, s in enumerate(SLOT_NAMES)) / len(SLOT_NAMES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        acc = accuracy(rec, val_x, val_y) if len(val_x) else {}
        mean_acc = float(np.mean([acc[s] for s in SLOT_NAMES])) if acc else float(epoch)
        history.append({"epoch": epoch + 1, "loss": round(float(torch.stack(losses).float().mean()), 4),
                        "val_mean_acc": round(mean_acc, 4), "elapsed_s": round(time.perf_counter() - t_start, 1)})
        log.info("epoch %d: %s", epoch + 1, history[-1])
        if mean_acc >= best:
            best = mean_acc
            rec.save(out, {"trained_on": [root.resolve().name] + [Path(e).resolve().name for e in extra_train],
                           "train_photos": n_train, "epochs": epochs, "seed": seed,
                           **({"init": init} if init else {})})
    test_x, test_y = split_data(root, ann, "test", workers, progress, size)
    final = Recogniser.load(out, device)
    report = {"out": str(out), "seconds": round(time.perf_counter() - t_start, 1), "best_val_mean_acc": round(best, 4),
              "history": history}
    if len(test_x):
        report["test_accuracy"] = accuracy(final, test_x, test_y)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.attributes", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", nargs="?", help="SynthPedes folder (not with --combine)")
    p.add_argument("--out", required=True, help="weights file (.safetensors; a .json config is written beside it)")
    p.add_argument("--extra-train", action="append", default=[], metavar="DIR",
                   help="another SynthPedes world whose train split is added to the training photos (repeatable; "
                        "generate one with python -m data.synthpedes --out DIR --seed S --val-ids 0 --test-ids 0)")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from this one-network recogniser file instead of random weights (to finish or "
                        "extend a schedule, e.g. one cut short on another machine); its config is kept under 'init'")
    p.add_argument("--device")
    p.add_argument("--workers", type=int, default=4, help="threads decoding photos (default 4)")
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument("--combine", nargs="+", metavar="WEIGHTS",
                   help="instead of training: write an ensemble of these recogniser files (trained with different "
                        "--seed) to --out; then fit its verifier with python -m eval.mllm DIR --split val --calibrate")
    p.add_argument("--presence", action="store_true",
                   help="instead of training the recogniser: train its person-presence head on DIR's photos against "
                        "drawn pictures with no person (the recogniser stays frozen); --out is the head's file")
    p.add_argument("--recogniser", default=str(DEFAULT_WEIGHTS),
                   help="--presence: the recogniser whose features the head reads (default: the shipped one); its JSON "
                        "is updated to load the head")
    p.add_argument("--photos", type=int, default=6000,
                   help="--presence: train photos (each also mirrored), and 1.5 times as many negatives")
    p.add_argument("--heldout", type=int, default=1000,
                   help="--presence: val photos (threshold) and test photos (report), each with as many negatives")
    p.add_argument("--min-positive-recall", type=float, default=0.999,
                   help="--presence: the threshold keeps this share of val photos as showing a person")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.combine:
        if args.dir:
            p.error("--combine takes no dataset folder")
        try:
            rec = combine(args.combine, args.out, args.device)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        print(json.dumps({"out": str(args.out), "members": len(rec.members), "seeds": rec.config.get("seeds")}))
        return 0
    if not args.dir:
        p.error("a SynthPedes folder is needed (or --combine)")
    if args.presence:
        from .presence import fit_presence

        if args.photos < 1 or args.heldout < 0 or not 0 < args.min_positive_recall <= 1:
            p.error("--photos must be >= 1, --heldout >= 0 and --min-positive-recall in (0, 1]")
        try:
            report = fit_presence(args.dir, args.out, args.recogniser, photos=args.photos,
                                  negatives_per_split=args.photos * 3 // 2, heldout=args.heldout, seed=args.seed,
                                  min_positive_recall=args.min_positive_recall, workers=args.workers,
                                  progress=not args.quiet)
        except (AnnotationError, ValueError, FileNotFoundError) as e:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        text = json.dumps(report, indent=2)
        if args.report:
            Path(args.report).write_text(text)
        print(text)
        return 0
    try:
        net, init = load_init(args.init) if args.init else (None, None)
        report = fit_recogniser(args.dir, args.out, args.epochs, args.batch_size, args.lr, args.seed,
                                workers=args.workers, device=args.device, progress=not args.quiet,
                                extra_train=args.extra_train, net=net, init=init)
    except (AnnotationError, ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
