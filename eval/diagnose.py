"""python -m eval.diagnose DIR {probe,text,fusion}: where does the retriever lose? (SynthPedes folders)

* ``probe``: how well each attribute can be read *linearly* from the retrieval model's image
  embeddings (one softmax probe per slot, fitted on the train split, scored on ``--split``), beside
  the offline MLLM's recogniser on the same labels (a slot's value when the photo shows it, else
  "unseen"). A retriever cannot rank by what its image embedding does not hold.
* ``text``: the same for the text side: per slot, how well a linear probe on the retriever's
  caption embeddings reads the value a caption states (or that it states none), fitted on the train
  split's captions, scored on ``--split``'s. A detail the text embedding drops cannot be matched.
* ``fusion``: retrieval metrics of (a) the retriever's similarity, (b) the recogniser's
  log-probability that a photo is compatible with every attribute the caption states (as parsed by
  the offline query parser) and (c) their sum ``similarity + weight * (b)``: how much the retriever
  would gain from the recogniser's eyes. Diagnostic only: THI's verifier uses the same recogniser,
  so shipping this fusion would make the verifier judge a ranking made with its own eyes.

    python -m eval.diagnose synthpedes probe
    python -m eval.diagnose synthpedes text
    python -m eval.diagnose synthpedes fusion --weight 0.05
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from data.readers import DatasetError, read_dataset
from data.synthpedes.ceiling import AnnotationError, load_annotations
from tools.attributes import SLOT_NAMES
from tools.cliargs import ArgumentParser, add_output_arguments, legacy_json_file, positive_int
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.text import printable

from .benchmark import sample_indices, split_queries
from .metrics import rank_metrics, summary

log = logging.getLogger(__name__)

#: unit-norm embeddings times this are the probes' inputs (softmax needs a wider range than +-1)
PROBE_SCALE = 10.0


def _split_images(root: Path, split: str, limit: int | None = None, seed: int = 0) -> list[dict]:
    images = [im for im in load_annotations(root)["images"] if im["split"] == split]
    if not images:
        raise AnnotationError(f"{root}: no annotated images in split {split!r}")
    return [images[i] for i in sample_indices(len(images), limit, seed)]


def fit_linear_probe(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-4,
                     steps: int = 200) -> torch.nn.Linear:
    """A softmax classifier on ``PROBE_SCALE`` x (unit-norm) features, fitted with L-BFGS."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32) * PROBE_SCALE, torch.as_tensor(y)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_report(root: str | Path, embedder: Embedder, split: str = "test", train_limit: int | None = None,
                 progress: bool = True) -> dict:
    """Per-slot accuracy of linear probes on the retriever's image embeddings and of the recogniser."""
    from tools.mllm.recogniser import Recogniser, slot_classes
    from train.attributes import targets

    root = Path(root)
    train, test = _split_images(root, "train", train_limit), _split_images(root, split)
    paths = lambda images: [root / "imgs" / im["file_path"] for im in images]  # noqa: E731
    x_train = embedder.encode_images(paths(train), progress=progress)
    x_test = embedder.encode_images(paths(test), progress=progress)
    y_train, y_test = targets(train), targets(test)
    probs = Recogniser.load().predict(paths(test))
    probe, recogniser = {}, {}
    with torch.inference_mode(False), torch.enable_grad():
        for j, slot in enumerate(SLOT_NAMES):
            classes = slot_classes(slot)
            lin = fit_linear_probe(x_train, y_train[:, j], len(classes))
            with torch.no_grad():
                pred = lin(torch.as_tensor(x_test, dtype=torch.float32) * PROBE_SCALE).argmax(-1).numpy()
            probe[slot] = round(float((pred == y_test[:, j]).mean()), 4)
            seen = np.asarray([classes.index(max(p[slot], key=p[slot].get)) for p in probs])
            recogniser[slot] = round(float((seen == y_test[:, j]).mean()), 4)
    return {"split": split, "train_images": len(train), "test_images": len(test), "model": embedder.name,
            "probe": probe, "probe_mean": round(float(np.mean(list(probe.values()))), 4),
            "recogniser": recogniser, "recogniser_mean": round(float(np.mean(list(recogniser.values()))), 4)}


def text_probe_report(root: str | Path, embedder: Embedder, split: str = "test", train_limit: int | None = None,
                      progress: bool = True) -> dict:
    """Per-slot accuracy of linear probes on the retriever's caption embeddings, on the captions
    that state the slot (``stated``) and on those that do not (``not_stated``)."""
    from train.pretrain import stated_captions, text_classes

    root = Path(root)
    x_train_texts, y_train = stated_captions(root, "train")
    x_test_texts, y_test = stated_captions(root, split)
    keep = sample_indices(len(x_train_texts), train_limit, 0)
    x_train = embedder.encode_texts([x_train_texts[i] for i in keep], progress=progress)
    y_train = y_train[keep]
    x_test = embedder.encode_texts(x_test_texts, progress=progress)
    stated, not_stated, counts = {}, {}, {}
    with torch.inference_mode(False), torch.enable_grad():
        for j, slot in enumerate(SLOT_NAMES):
            none = len(text_classes(slot)) - 1
            lin = fit_linear_probe(x_train, y_train[:, j], none + 1)
            with torch.no_grad():
                pred = lin(torch.as_tensor(x_test, dtype=torch.float32) * PROBE_SCALE).argmax(-1).numpy()
            said = y_test[:, j] != none
            counts[slot] = int(said.sum())
            if said.any():
                stated[slot] = round(float((pred[said] == y_test[said, j]).mean()), 4)
            not_stated[slot] = round(float((pred[~said] == none).mean()), 4) if (~said).any() else None
    return {"split": split, "train_captions": len(keep), "test_captions": len(x_test_texts), "model": embedder.name,
            "stated": stated, "stated_mean": round(float(np.mean(list(stated.values()))), 4),
            "not_stated": not_stated, "captions_stating": counts}


def fusion_report(root: str | Path, embedder: Embedder, split: str = "test", weight: float = 0.05,
                  limit: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Retrieval metrics of the similarity, the recogniser's caption compatibility, and their sum."""
    from tools.mllm.offline import LOG_EPS
    from tools.mllm.parser import parse
    from tools.mllm.recogniser import UNSEEN, Recogniser, slot_classes

    records = read_dataset(root).split(split)
    if not records:
        raise DatasetError(f"{root}: split {split!r} is empty")
    texts, qpids, _ = split_queries(records)
    order = sample_indices(len(texts), limit, seed)
    gpids = np.asarray([r.pid for r in records])
    probs = Recogniser.load().predict([r.image_path for r in records])
    # compatible = shows the stated value, or does not show the slot at all (1 - the offline MLLM's
    # contradiction), floored like its verifier's log feature so one confident error is not -inf
    compatible = {s: {v: np.log(np.asarray([p[s][v] + p[s][UNSEEN] for p in probs]).clip(0, 1) + LOG_EPS)
                      for v in slot_classes(s)} for s in SLOT_NAMES}
    attribute = np.zeros((len(order), len(records)), np.float32)
    for row, q in enumerate(order):
        for slot, value in parse(texts[q]).constraints.items():
            if value in compatible[slot]:
                attribute[row] += compatible[slot][value]
    img = embedder.encode_images([r.image_path for r in records], progress=progress)
    sim = embedder.encode_texts([texts[q] for q in order], progress=progress) @ img.T
    qp = qpids[order]
    return {"split": split, "queries": len(order), "model": embedder.name, "weight": weight,
            "similarity": summary(rank_metrics(sim, qp, gpids)),
            "recogniser": summary(rank_metrics(attribute, qp, gpids)),
            "fused": summary(rank_metrics(sim + weight * attribute, qp, gpids))}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.diagnose", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("dir", help="SynthPedes folder (needs attributes.json)")
    p.add_argument("what", choices=("probe", "text", "fusion"))
    p.add_argument("--split", default="test")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--weight", type=float, default=0.05, help="fusion: weight of the recogniser term")
    p.add_argument("--limit", type=positive_int,
                   help="probe: train photos used; text: train captions used; fusion: captions used (default: all)")
    add_output_arguments(p, "the report", legacy_json=True, always_json=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    logging.basicConfig(level=logging.ERROR)
    try:
        embedder = Embedder(args.model)
        if not args.quiet:
            print(embedder.describe(), file=sys.stderr)
        if args.what == "probe":
            report = probe_report(args.dir, embedder, args.split, args.limit, progress=not args.quiet)
        elif args.what == "text":
            report = text_probe_report(args.dir, embedder, args.split, args.limit, progress=not args.quiet)
        else:
            report = fusion_report(args.dir, embedder, args.split, args.weight, args.limit, progress=not args.quiet)
    except (AnnotationError, DatasetError, EmbedderError, FileNotFoundError) as e:
        print(f"error: {printable(str(e).splitlines()[0] if str(e) else e)}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
