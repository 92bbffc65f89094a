"""python -m eval.benchmark DIR: text-to-image retrieval benchmark under IRRA's protocol.

Encodes a split's images and captions, ranks every image for every caption by exact similarity, and
prints R1/R5/R10/mAP/mINP (percent). The similarity is the cosine of the BGE embeddings, or with a
checkpoint that has TSE heads (RDE, ICL) ``(BGE + TSE) / 2`` by default, as their evaluation
ranks (``--score``). For SynthPedes folders it adds the caption-only ceiling. It also runs the same
ranking through the Chroma gallery and reports its search's top-10 recall against the benchmark's
own ranking (a check of the product's search path: 1.0 unless it is wrong), the query latency and
the indexing time.
It prints which model, checkpoint format and score it used.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.readers import FORMAT_NAMES, DatasetError, read_dataset
from tools.cliargs import ArgumentParser, add_output_arguments, legacy_json_file, non_negative_int
from tools.checkpoints import TRUST_ENV
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError, add_model_arguments
from tools.gallery import Gallery, GalleryError, check_scope, image_set_name, record_items
from tools.paraphraser import rephrase
from tools.text import printable
from tools.threads import apply_thread_policy
from tools.tse import similarity

from .metrics import METRIC_KEYS, rank_metrics, summary

log = logging.getLogger(__name__)


def split_queries(records) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(captions, query pids, index of each caption's image) of a split."""
    texts, pids, owner = [], [], []
    for i, r in enumerate(records):
        for c in r.captions:
            texts.append(c)
            pids.append(r.pid)
            owner.append(i)
    return texts, np.asarray(pids), np.asarray(owner)


def sample_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """All of ``range(n)``, or a fixed random sample of ``limit`` of them in increasing order."""
    if limit and limit < n:
        return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return np.arange(n)


def run_benchmark(root: str | Path, split: str = "test", format: str = "auto", model: str = DEFAULT_MODEL,
                  pretrained: str | None = None, device: str | None = None, chroma: bool = True,
                  data_dir: str | Path | None = None, url: str | None = None, progress: bool = True,
                  embedder: Embedder | None = None, rephrase_seed: int | None = None, score: str | None = None,
                  skip_missing: bool = False, image_size: tuple[int, int] | None = None,
                  allow_random: bool = False) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (report, similarity [Q, G], query pids, gallery pids).

    ``score``: ``bge``, ``tse`` or ``fused`` (default: fused where the model has TSE heads, else bge).
    ``rephrase_seed``: query with every caption rewritten the way RDA rewrites training captions
    (``tools.paraphraser.rephrase``), to measure robustness to phrasing the captions were not written in.

    Raises:
        DatasetError, EmbedderError, GalleryError: one-line reasons (missing images without
            ``skip_missing``, a score the model cannot give, ...).
    """
    ds = read_dataset(root, format, skip_missing=skip_missing, splits=[split])
    records = ds.split(split)
    if not records:
        raise DatasetError(f"{root}: split {split!r} is empty (splits: {', '.join(ds.all_splits)})")
    emb = embedder or Embedder(model, pretrained, device=device, image_size=image_size, allow_random=allow_random)
    score = emb.resolve_score(score)
    check_scope(emb, ds.format, f"gallery {image_set_name(root, split)!r}")  # the words the gallery uses: one warning
    texts, qp, _ = split_queries(records)
    if rephrase_seed is not None:
        texts = [rephrase(t, np.random.default_rng([rephrase_seed, i])) for i, t in enumerate(texts)]
    gp = np.asarray([r.pid for r in records])

    t0 = time.perf_counter()
    img = emb.image_features([r.image_path for r in records], progress=progress)
    t_img = time.perf_counter() - t0
    t0 = time.perf_counter()
    txt = emb.text_features(texts, progress=progress)
    t_txt = time.perf_counter() - t0
    sim = similarity(txt, img, score)
    metrics = rank_metrics(sim, qp, gp)
    report: dict = summary(metrics) | {"num_queries": metrics["num_queries"], "num_gallery": metrics["num_gallery"]}
    report["model"] = emb.name
    report["score"] = score
    report["checkpoint"] = emb.info
    report["model_line"] = emb.describe()
    if emb.has_tse and score == "fused":  # the two parts, as RDE's evaluation prints them
        report["parts"] = {part: summary(rank_metrics(similarity(txt, img, part), qp, gp)) for part in ("bge", "tse")}
    if rephrase_seed is not None:
        report["queries"] = f"rephrased RDA-style (tools.paraphraser.rephrase, seed {rephrase_seed})"
    report["dataset"] = {"root": str(Path(root).resolve()), "format": ds.format, "split": split}
    report["speed"] = {"images_per_s": round(len(records) / t_img, 1), "texts_per_s": round(len(texts) / t_txt, 1),
                       "device": str(emb.device)}

    if ds.format == "synthpedes":
        from data.synthpedes.ceiling import ceiling_scores, load_annotations, split_annotations

        sa = split_annotations(load_annotations(root), split)
        scores, cqp, cgp = ceiling_scores(sa)
        if sa.file_paths != [r.image for r in records]:
            raise DatasetError(f"{root}: attributes.json and reid_raw.json disagree on the {split} images")
        report["ceiling"] = summary(rank_metrics(scores, cqp, cgp, ties="expected"))
        report["share_of_ceiling"] = {k: round(report[k] / report["ceiling"][k], 3) for k in ("R1", "R5", "R10")}

    if chroma:
        report["chroma"] = _chroma_check(records, emb, txt, sim, data_dir, url, progress, root, split, score,
                                         ds.format)
    return report, sim.astype(np.float32), qp, gp


def _chroma_check(records, emb, txt, sim, data_dir, url, progress, root, split, score="bge", fmt=None) -> dict:
    tmp = None
    if data_dir is None and url is None:
        tmp = tempfile.TemporaryDirectory(prefix="thi-bench-chroma-")
        data_dir = tmp.name
    try:
        gallery = Gallery.open(image_set_name(root, split), emb, data_dir, url)
        t0 = time.perf_counter()
        indexed = gallery.index(record_items(records, fmt), emb, progress=progress)
        index_seconds = time.perf_counter() - t0
        ids = [r.image for r in records]
        exact_top = np.argsort(-sim, axis=1)[:, :10]
        out: dict = {"index_seconds": round(index_seconds, 2), "indexed": indexed["total"],
                     "newly_indexed": indexed["added"]}
        recalls, latency = [], []
        for q in range(len(txt["bge"])):
            t0 = time.perf_counter()
            hits = gallery.search(txt["bge"][q], k=10, text_tse=txt["tse"][q] if "tse" in txt else None, score=score)
            latency.append((time.perf_counter() - t0) * 1000)
            got = {h for h, _ in hits}
            recalls.append(len(got & {ids[i] for i in exact_top[q]}) / 10)
        out.update({"top10_recall_vs_exact": round(float(np.mean(recalls)), 4),
                    "query_ms_p50": round(float(np.percentile(latency, 50)), 3),
                    "query_ms_p95": round(float(np.percentile(latency, 95)), 3), "search": "exact"})
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_table(report: dict) -> str:
    rows = [(f"score {report.get('score', 'bge')}", *[report[k] for k in METRIC_KEYS])]
    for part, values in report.get("parts", {}).items():
        rows.append((f"  {part} alone", *[values[k] for k in METRIC_KEYS]))
    if "ceiling" in report:
        rows.append(("caption-only ceiling", *[report["ceiling"][k] for k in METRIC_KEYS]))
    head = f"{'':24s}" + "".join(f"{k:>8s}" for k in METRIC_KEYS)
    lines = []
    if "model_line" in report:
        lines.append(f"{report['model_line']}; score {report['score']}")
    lines += [head] + [f"{name:24s}" + "".join(f"{v:8.2f}" for v in vals) for name, *vals in rows]
    lines.append(f"queries {report['num_queries']}, gallery {report['num_gallery']}, model {report['model']}; "
                 f"{report['speed']['images_per_s']} images/s, {report['speed']['texts_per_s']} texts/s "
                 f"on {report['speed']['device']}")
    if "chroma" in report:
        c = report["chroma"]
        lines.append(f"gallery search (exact): top-10 recall vs this ranking {c['top10_recall_vs_exact']:.4f}, "
                     f"query p50 {c['query_ms_p50']} ms (p95 {c['query_ms_p95']} ms), indexing {c['index_seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES)
    p.add_argument("--split", default="test")
    add_model_arguments(p)
    p.add_argument("--skip-missing", action="store_true", help="leave out records whose image file is missing (warns)")
    add_output_arguments(p, "the report", legacy_json=True)
    p.add_argument("--dump-similarity", metavar="OUT.npz", help="write similarity [queries x gallery] and pids")
    p.add_argument("--no-chroma", action="store_true", help="skip the Chroma gallery check")
    p.add_argument("--data-dir", help="Chroma folder for the gallery check (default: a temporary one)")
    p.add_argument("--url", help="Chroma server URL for the gallery check")
    p.add_argument("--rephrase", type=non_negative_int, metavar="SEED",
                   help="rewrite every query the way RDA rewrites training captions (one attribute per sentence, "
                        "random paraphrases and order; what the parser does not read is dropped), with this seed")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    if args.trust_checkpoint:
        os.environ[TRUST_ENV] = "1"
    apply_thread_policy("benchmark")
    try:
        report, sim, qp, gp = run_benchmark(args.dir, args.split, args.format, args.model, args.pretrained, args.device,
                                            not args.no_chroma, args.data_dir, args.url, not (args.quiet or args.json),
                                            rephrase_seed=args.rephrase, score=args.score,
                                            skip_missing=args.skip_missing,
                                            image_size=tuple(args.image_size) if args.image_size else None,
                                            allow_random=args.random_weights)
    except (DatasetError, EmbedderError, GalleryError, ValueError) as e:  # ValueError: NoMatchError, bad values
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report) if args.json else format_table(report))
    if args.dump_similarity:
        np.savez_compressed(args.dump_similarity, similarity=sim, query_pids=qp, gallery_pids=gp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
