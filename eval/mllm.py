"""python -m eval.mllm DIR: how good is an MLLM backend's perception and verification?

* Per-attribute accuracy of the backend's answers (``ask``) on a split's photos: over the slots
  visible in each photo (and, separately, how often it says "cannot tell" there).
* Yes/no verification, ICL's construction: positives are (caption, its own photo); negatives are
  (caption, the best-ranked photo of *another* identity in the retrieval model's top 10 that
  contradicts something the caption states, by the annotations). Negatives the caption also fits
  are left out: no backend can reject them. Balanced accuracy = mean of the two recalls.
* ``--calibrate`` (offline backend): fit the verifier's per-attribute weights and threshold and
  store them beside the recogniser's weights. Run it on the validation split: on the train split
  the recogniser has seen the photos and is far more accurate than on new ones, and a verifier
  fitted there trusts it too much.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.readers import DatasetError, read_dataset
from data.synthpedes.ceiling import AnnotationError, load_annotations
from graphs.server import make_backend
from tools.attributes import SLOT_NAMES
from tools.cliargs import (ArgumentParser, add_output_arguments, legacy_json_file, non_negative_int, positive_float,
                           positive_int)
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.mllm import MLLM, MLLMError
from tools.mllm.base import ImageRef
from tools.mllm.offline import CONTRADICTION_FEATURES, LOG_EPS, verifier_features, verifier_weights
from tools.text import printable

from .benchmark import sample_indices, split_queries

log = logging.getLogger(__name__)


def verification_pairs(root: str | Path, split: str, embedder: Embedder, limit: int | None = None,
                       seed: int = 0) -> list[tuple[str, ImageRef, bool]]:
    """(caption, photo, is-positive) pairs: each caption with its own photo and its hardest
    contradicting other-identity photo from the retrieval model's top 10."""
    records = read_dataset(root).split(split)
    ann = {im["file_path"]: im for im in load_annotations(root)["images"] if im["split"] == split}
    texts, qpids, owner = split_queries(records)
    stated = [c["stated"] for r in records for c in ann[r.image]["captions"]]
    order = sample_indices(len(texts), limit, seed)
    img = embedder.encode_images([r.image_path for r in records], progress=False)
    txt = embedder.encode_texts([texts[q] for q in order], progress=False)
    sim = txt @ img.T
    pairs = []
    for row, q in enumerate(order):
        own = records[owner[q]]
        pairs.append((texts[q], ImageRef(own.image, own.image_path), True))
        for g in np.argsort(-sim[row])[:10]:
            cand = records[g]
            if cand.pid == qpids[q]:
                continue
            a = ann[cand.image]
            if any(a["visible"].get(s) and a["attributes"].get(s) not in (None, v) for s, v in stated[q].items()):
                pairs.append((texts[q], ImageRef(cand.image, cand.image_path), False))
                break
    return pairs


def verification_scores(mllm: MLLM, pairs: list[tuple[str, ImageRef, bool]], progress: bool = True) -> dict:
    tp = fn = tn = fp = failed = abstained = 0
    for text, image, positive in tqdm(pairs, desc="verifying", unit="pair", disable=not progress, mininterval=2):
        try:
            match = mllm.verify(image, text).match
        except MLLMError:
            failed += 1
            continue
        if match is None:  # an abstention is neither a right yes nor a right no: it counts as wrong (and is reported apart)
            abstained += 1
            fn += positive
            fp += not positive
            continue
        if positive:
            tp += match
            fn += not match
        else:
            tn += not match
            fp += match
    pos_recall = tp / max(1, tp + fn)
    neg_recall = tn / max(1, tn + fp)
    return {"positives": tp + fn, "negatives": tn + fp, "positive_recall": round(pos_recall, 4),
            "negative_recall": round(neg_recall, 4), "balanced_accuracy": round((pos_recall + neg_recall) / 2, 4),
            "failed": failed, "abstained": abstained}


def attribute_accuracy(mllm: MLLM, root: str | Path, split: str, limit: int | None = None, seed: int = 0,
                       progress: bool = True) -> dict:
    images = [im for im in load_annotations(root)["images"] if im["split"] == split]
    images = [images[i] for i in sample_indices(len(images), limit, seed)]
    root = Path(root)
    right = {s: 0 for s in SLOT_NAMES}
    seen = {s: 0 for s in SLOT_NAMES}
    unsure = {s: 0 for s in SLOT_NAMES}
    failed = 0
    for im in tqdm(images, desc="asking", unit="img", disable=not progress, mininterval=2):
        try:
            answers = mllm.ask(ImageRef(im["file_path"], root / "imgs" / im["file_path"]), list(SLOT_NAMES))
        except MLLMError:  # one photo the backend could not answer about: counted, the rest go on
            failed += 1
            continue
        for a in answers:
            truth = im["attributes"].get(a.slot)
            if truth is None or not im["visible"].get(a.slot):
                continue
            seen[a.slot] += 1
            right[a.slot] += a.value == truth
            unsure[a.slot] += a.value is None
    acc = {s: round(right[s] / seen[s], 4) for s in SLOT_NAMES if seen[s]}
    return {"accuracy": acc, "cannot_tell": {s: round(unsure[s] / seen[s], 4) for s in SLOT_NAMES if seen[s]},
            "mean_accuracy": round(float(np.mean(list(acc.values()))), 4) if acc else None,
            "images": len(images), "failed": failed}


def fit_verifier(mllm, pairs: list[tuple[str, ImageRef, bool]], l2: float = 1e-3, steps: int = 4000,
                 eps: float = LOG_EPS) -> dict:
    """Fit the offline verifier: logistic regression of match/no-match on
    ``tools.mllm.offline.verifier_features`` of the per-attribute contradiction probabilities
    (non-negative weights on the contradictions, either sign on which slots are stated; balanced
    classes), then the threshold with the best balanced accuracy."""
    from tools.mllm.parser import parse

    probs = mllm.probabilities([image for _, image, _ in pairs])
    x = np.stack([verifier_features(mllm.contradictions(p, parse(text).constraints), eps)
                  for (text, _, _), p in zip(pairs, probs)])
    y = np.asarray([positive for _, _, positive in pairs], dtype=float)
    sample_w = np.where(y == 1, 0.5 / max(1, y.sum()), 0.5 / max(1, (1 - y).sum()))
    evidence = CONTRADICTION_FEATURES  # their weights stay >= 0; the stated-slot ones may take either sign
    w = np.concatenate([np.full(evidence, 1.0), np.zeros(x.shape[1] - evidence)])
    b = 3.0
    lr = 2.0
    for _ in range(steps):
        logit = b - x @ w
        p = 1 / (1 + np.exp(-np.clip(logit, -50, 50)))
        g = (p - y) * sample_w  # d loss / d logit
        b -= lr * g.sum()
        w -= lr * (-(x.T @ g) + l2 * w)
        w[:evidence] = np.maximum(w[:evidence], 0.0)
    logit = b - x @ w
    p = 1 / (1 + np.exp(-np.clip(logit, -50, 50)))
    best = (0.5, 0.0)
    for t in np.linspace(0.05, 0.95, 91):
        acc = ((p[y == 1] >= t).mean() + (p[y == 0] < t).mean()) / 2
        if acc > best[1]:
            best = (float(round(t, 3)), float(acc))
    return {"bias": round(float(b), 4), **verifier_weights(w), "eps": eps,
            "threshold": best[0], "fit_balanced_accuracy": round(best[1], 4), "pairs": len(pairs)}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.mllm", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="SynthPedes folder (needs attributes.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--mllm", default="offline", help="offline (default), oracle, openai, transformers")
    p.add_argument("--mllm-url", help="openai: base URL of an OpenAI-compatible server (or $THI_MLLM_BASE_URL)")
    p.add_argument("--mllm-model", help="openai: model name (or $THI_MLLM_MODEL)")
    p.add_argument("--mllm-path", help="transformers: folder of a local image-text-to-text model")
    p.add_argument("--mllm-protocol", help="chat backends: ours (default), icl, or a protocol JSON file")
    p.add_argument("--mllm-timeout", type=positive_float, default=60.0,
                   help="chat backends: seconds one MLLM call may take in all (default %(default)s)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="retrieval model that picks the hard negatives")
    p.add_argument("--limit", type=positive_int, help="captions (and photos) sampled")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--calibrate", action="store_true",
                   help="offline: choose the verification threshold on this split and save it with the recogniser")
    p.add_argument("--device")
    add_output_arguments(p, "the report", legacy_json=True, always_json=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    logging.basicConfig(level=logging.ERROR)
    root = Path(args.dir)
    try:
        options: dict = {}
        if args.mllm == "openai":
            options.update({k: v for k, v in (("base_url", args.mllm_url), ("model", args.mllm_model)) if v})
            options["timeout"] = args.mllm_timeout
        if args.mllm == "transformers":
            if not args.mllm_path:
                raise ValueError("--mllm transformers needs --mllm-path FOLDER")
            options.update(path=args.mllm_path, device=args.device, timeout=args.mllm_timeout)
        mllm = make_backend(args.mllm, root, protocol=args.mllm_protocol, **options)
        mllm.preflight()  # a server that cannot answer fails here, before the retrieval model loads
        embedder = Embedder(args.model, device=args.device)
        if not args.quiet:
            print(embedder.describe(), file=sys.stderr)
        pairs = verification_pairs(root, args.split, embedder, args.limit, args.seed)
        report: dict = {"mllm": mllm.name, "split": args.split, "retrieval_model": embedder.name}
        if args.calibrate:
            if args.mllm != "offline":
                raise ValueError("--calibrate applies to the offline backend")
            verifier = fit_verifier(mllm, pairs)
            verifier["fitted_on"] = f"{root.name}/{args.split}"
            mllm.recogniser.save_config({"verifier": verifier})
            mllm.use_verifier(verifier)
            report["verifier"] = verifier
        report["verification"] = verification_scores(mllm, pairs, not args.quiet)
        report["attributes"] = attribute_accuracy(mllm, root, args.split, args.limit, args.seed, not args.quiet)
        if mllm.protocol is not None:
            report["protocol"] = mllm.protocol.name
        report["mllm_calls"] = mllm.stats.snapshot()
        if mllm.unavailable is not None:  # the server could not be used: the figures above mean nothing
            raise mllm.unavailable
    except (DatasetError, AnnotationError, EmbedderError, MLLMError, ValueError, FileNotFoundError) as e:
        print(f"error: {printable(str(e).splitlines()[0] if str(e) else e)}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
