"""python -m eval.benchmark DIR: text-to-image retrieval benchmark under IRRA's protocol.

Encodes a split's images and captions, ranks every image for every caption by exact cosine
similarity, and prints R1/R5/R10/mAP/mINP (percent). For SynthPedes folders it adds the
caption-only ceiling. It also runs the same ranking through the Chroma gallery (HNSW) and reports
its top-10 recall against exact search, query latency and indexing time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.readers import FORMAT_NAMES, DatasetError, read_dataset
from tools.embedder import DEFAULT_MODEL, Embedder, EmbedderError
from tools.gallery import Gallery, GalleryError, image_set_name, record_items
from tools.paraphraser import rephrase

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
                  embedder: Embedder | None = None, rephrase_seed: int | None = None
                  ) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (report, similarity [Q, G], query pids, gallery pids).

    ``rephrase_seed``: query with every caption rewritten the way RDA rewrites training captions
    (``tools.paraphraser.rephrase``), to measure robustness to phrasing the captions were not written in."""
    ds = read_dataset(root, format)
    records = ds.split(split)
    if not records:
        raise DatasetError(f"{root}: split {split!r} is empty (splits: {', '.join(ds.splits)})")
    emb = embedder or Embedder(model, pretrained, device=device)
    texts, qp, _ = split_queries(records)
    if rephrase_seed is not None:
        texts = [rephrase(t, np.random.default_rng([rephrase_seed, i])) for i, t in enumerate(texts)]
    gp = np.asarray([r.pid for r in records])

    t0 = time.perf_counter()
    img = emb.encode_images([r.image_path for r in records], progress=progress)
    t_img = time.perf_counter() - t0
    t0 = time.perf_counter()
    txt = emb.encode_texts(texts, progress=progress)
    t_txt = time.perf_counter() - t0
    sim = txt @ img.T
    metrics = rank_metrics(sim, qp, gp)
    report: dict = summary(metrics) | {"num_queries": metrics["num_queries"], "num_gallery": metrics["num_gallery"]}
    report["model"] = emb.name
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
        report["chroma"] = _chroma_check(records, emb, txt, sim, data_dir, url, progress, root, split)
    return report, sim.astype(np.float32), qp, gp


def _chroma_check(records, emb, txt, sim, data_dir, url, progress, root, split) -> dict:
    tmp = None
    if data_dir is None and url is None:
        tmp = tempfile.TemporaryDirectory(prefix="thi-bench-chroma-")
        data_dir = tmp.name
    try:
        gallery = Gallery.open(image_set_name(root, split), emb, data_dir, url)
        t0 = time.perf_counter()
        indexed = gallery.index(record_items(records), emb, progress=progress)
        index_seconds = time.perf_counter() - t0
        ids = [r.image for r in records]
        exact_top = np.argsort(-sim, axis=1)[:, :10]
        recalls, latency = [], []
        for q in range(len(txt)):
            t0 = time.perf_counter()
            hits = gallery.search(txt[q], k=10)
            latency.append((time.perf_counter() - t0) * 1000)
            got = {h for h, _ in hits}
            recalls.append(len(got & {ids[i] for i in exact_top[q]}) / 10)
        return {"top10_recall_vs_exact": round(float(np.mean(recalls)), 4),
                "query_ms_p50": round(float(np.percentile(latency, 50)), 3),
                "query_ms_p95": round(float(np.percentile(latency, 95)), 3),
                "index_seconds": round(index_seconds, 2), "indexed": indexed["total"],
                "newly_indexed": indexed["added"]}
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_table(report: dict) -> str:
    rows = [("model", *[report[k] for k in METRIC_KEYS])]
    if "ceiling" in report:
        rows.append(("caption-only ceiling", *[report["ceiling"][k] for k in METRIC_KEYS]))
    head = f"{'':24s}" + "".join(f"{k:>8s}" for k in METRIC_KEYS)
    lines = [head] + [f"{name:24s}" + "".join(f"{v:8.2f}" for v in vals) for name, *vals in rows]
    lines.append(f"queries {report['num_queries']}, gallery {report['num_gallery']}, model {report['model']}; "
                 f"{report['speed']['images_per_s']} images/s, {report['speed']['texts_per_s']} texts/s "
                 f"on {report['speed']['device']}")
    if "chroma" in report:
        c = report["chroma"]
        lines.append(f"chroma: top-10 recall vs exact {c['top10_recall_vs_exact']:.4f}, query p50 {c['query_ms_p50']} ms "
                     f"(p95 {c['query_ms_p95']} ms), indexing {c['index_seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES)
    p.add_argument("--split", default="test")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or local-dir:PATH (default %(default)s)")
    p.add_argument("--pretrained", help="pretrained tag or checkpoint file for --model")
    p.add_argument("--device", help="cpu, cuda, ...")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--dump-similarity", metavar="OUT.npz", help="write similarity [queries x gallery] and pids")
    p.add_argument("--no-chroma", action="store_true", help="skip the Chroma gallery check")
    p.add_argument("--data-dir", help="Chroma folder for the gallery check (default: a temporary one)")
    p.add_argument("--url", help="Chroma server URL for the gallery check")
    p.add_argument("--rephrase", type=int, metavar="SEED",
                   help="rewrite every query the way RDA rewrites training captions (one attribute per sentence, "
                        "random paraphrases and order; what the parser does not read is dropped), with this seed")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        report, sim, qp, gp = run_benchmark(args.dir, args.split, args.format, args.model, args.pretrained, args.device,
                                            not args.no_chroma, args.data_dir, args.url, not args.quiet,
                                            rephrase_seed=args.rephrase)
    except (DatasetError, EmbedderError, GalleryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.dump_similarity:
        np.savez_compressed(args.dump_similarity, similarity=sim, query_pids=qp, gallery_pids=gp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
