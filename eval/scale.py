"""python -m eval.scale: how the gallery and THI behave as the gallery grows to a million photos.

There is no million-photo pedestrian dataset here, so galleries are grown from real photo
embeddings. **Construction**: the base is a SynthPedes test split indexed with the model (default:
the demo gallery, about 3,200 photos of 1,000 people). A gallery of N photos holds every base photo
as it is, plus N - B noisy copies: copy j of base photo i (i = j mod B) is
``normalize(x_i + s * g / sqrt(D))`` with ``g ~ N(0, I_D)`` drawn from a fixed seed and ``s`` =
``--noise`` (0.2: cosine about 0.98 to its original), id ``<base id>#<j>``, the original's path,
camera and split (so the MLLM can inspect it), and a person id of its own (a new distractor
person: only the base photos match a caption's person). Rows are written through
``Gallery.add`` in chunks of the client's batch size, the way ``tools.gallery`` writes indexed
photos (TSE-free model; version tokens; the memory-mapped copy updated incrementally). The
galleries are nested: one collection grows from size to size. Dense clusters of near-duplicates
are a hard case for approximate (HNSW) search.

Per size it prints:

* ``build s``: the one-time copy of the collection into its memory-mapped arrays (paged Chroma
  reads), done by a fresh process with the copy deleted;
* ``open s``: a fresh process opening the gallery index with the copy present (the model already
  loaded), and ``first q ms``: its first query (the matrix paged in from the page cache or disk);
* ``index B/photo``: that process's resident memory growth per photo from opening the index and
  running the exact queries (the matrix paged in by them included; THI's models and any HNSW
  search excluded: ``rss_bytes`` in the JSON has the total after THI); ``disk MB``: the Chroma
  folder + the memory-mapped copy;
* ``exact ms``: one query's matrix-vector product and top-10 selection (p50, text encoded
  beforehand); ``search ms`` / ``search R@10``: the product's search (``Gallery.search``, exact),
  its recall measured against that product, not assumed; ``hnsw ms`` / ``hnsw R@10``: Chroma's
  HNSW top-10, which the product does not use, for the record (the JSON also has
  ``hnswC_recall10``: the share of the exact top-10 among C = 100, 1,000, 3,000 HNSW candidates,
  and its time: what re-scoring an over-fetched HNSW list would keep);
* ``THI p50/p95 ms``: THI's overhead per query (latency minus a plain retrieval, as ``eval.thi``
  reports it) with the offline MLLM and the adaptive policy, after one untimed dialogue, with the
  recogniser's per-photo outputs memoised (its answers are not): THI's own cost, as in a long
  ``eval.thi`` run; ``beyond passes ms``: the same overhead without the time spent in
  full-gallery passes (the matrix-vector products of the query, its rewrites and the anchor
  photo, one per distinct vector; the JSON has their mean count per dialogue), i.e. THI's
  per-round cost beyond them; ``cold ms``: the same captions the first time, the recogniser meeting each
  photo it inspects for the first time (a constant cost per photo inspected, not per gallery
  photo; the JSON has the recogniser's share).

Each size is measured in a child process (``--probe``); the machine's load average is printed
with it. ``--sizes`` picks the sizes (e.g. ``3k,30k``; a size below the base is the base).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tools.cliargs import ArgumentParser, add_output_arguments, float_in, int_at_least, legacy_json_file

log = logging.getLogger(__name__)

IMAGE_SET = "scale-growth"
DEFAULT_SIZES = "3k,30k,100k,300k,1M"


def parse_sizes(text: str) -> list[int]:
    """``"3k,30k,1M"`` -> [3000, 30000, 1000000] (ValueError on a bad size)."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            raise ValueError(f"an empty size in {text!r} (sizes are comma-separated, e.g. 3k,30k,1M)")
        mult = {"k": 1_000, "m": 1_000_000}.get(p[-1], 1)
        try:
            num = float(p[:-1] if p[-1] in "km" else p)
        except ValueError:
            raise ValueError(f"not a size: {part.strip()!r} (e.g. 3000, 3k, 1M)") from None
        if not math.isfinite(num) or num * mult > 1e12:
            raise ValueError(f"not a size: {part.strip()!r} (too large)")
        if num * mult < 1:
            raise ValueError(f"sizes must be at least 1, not {part.strip()!r}")
        out.append(int(round(num * mult)))
    return sorted(set(out))


def sizes_arg(text: str) -> str:
    """argparse type of ``--sizes``: checked, kept as written."""
    try:
        parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_size(text: str) -> int:
    """``"100k"`` -> 100000 (argparse type)."""
    try:
        sizes = parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError(f"one size, not {text!r}")
    return sizes[0]


def json_object(text: str) -> dict:
    """A JSON object (argparse type): ``'{"max_neighbors": 48}'`` -> dict."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"max_neighbors\": 48}'")
    return value


def _rss() -> int:
    """This process's resident memory in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _du(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# -- growing the gallery ------------------------------------------------------------------------


def _copies(base_ids, base_emb: np.ndarray, base_metas, start: int, stop: int, noise: float, seed: int,
            chunk: int):
    """Chunks (ids, {"bge": float32}, metadatas) of noisy copies ``start`` .. ``stop - 1``."""
    b, d = base_emb.shape
    for s in range(start, stop, chunk):
        e = min(stop, s + chunk)
        j = np.arange(s, e)
        src = j % b
        rng = np.random.default_rng([seed, s])
        x = base_emb[src] + (noise / np.sqrt(d)) * rng.standard_normal((e - s, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"{base_ids[i]}#{k}" for i, k in zip(src, j)]
        metas = []
        for i, k in zip(src, j):
            m = {key: v for key, v in base_metas[i].items() if key != "pid"}
            m["pid"] = 10_000_000 + int(k)  # a distractor person of its own
            metas.append(m)
        yield ids, {"bge": x.astype(np.float32)}, metas


def grow(gallery, base, size: int, noise: float, seed: int, progress: bool) -> int:
    """Add rows until the gallery holds ``size`` photos (the base first, then copies). Returns
    the size reached."""
    base_ids, base_emb, base_metas = base
    have = gallery.count()
    b = len(base_ids)
    chunk = max(1, min(5000, gallery.store.max_batch()))
    if have == 0:
        gallery.add(((list(base_ids[s:s + chunk]), {"bge": np.asarray(base_emb[s:s + chunk])},
                      [dict(m) for m in base_metas[s:s + chunk]]) for s in range(0, b, chunk)))
        have = b
    target = max(size, b)
    if have < target:
        gallery.add(_copies(base_ids, base_emb, base_metas, have - b, target - b, noise, seed, chunk),
                    progress=progress, total=target - have)
    return gallery.count()


# -- measuring (in a child process) -------------------------------------------------------------


def probe(args) -> dict:
    """Open the grown gallery in this (fresh) process and measure it; see the module docstring."""
    from graphs.config import THIConfig, THIContext
    from graphs.server import make_backend, register, unregister
    from graphs.thi import build_graph, recursion_limit
    from tools.embedder import Embedder
    from tools.gallery import Gallery
    from tools.index import GalleryIndex
    from tools.threads import apply_thread_policy

    policy = apply_thread_policy("query")  # per-query work, as the CLI and the service run it
    out: dict = {"load_start": _load(), "threads": policy}
    embedder = Embedder(args.model, device="cpu")
    spec = json.loads(Path(args.probe).read_text())
    queries = spec["queries"]
    gallery = Gallery.open(IMAGE_SET, embedder, data_dir=args.root, create=False)
    feats = {q: embedder.encode_texts([q], progress=False)[0] for q in queries}
    if spec.get("rebuild"):
        for d in gallery.cache_root(gallery.content_key()["collection"]).glob("v-*"):
            shutil.rmtree(d)
        t0 = time.perf_counter()
        gallery.snapshot()
        out["build_s"] = round(time.perf_counter() - t0, 2)
        return out
    rss0 = _rss()
    t0 = time.perf_counter()
    index = GalleryIndex(gallery, embedder)
    out["open_s"] = round(time.perf_counter() - t0, 3)
    n = len(index)
    out["n"] = n
    out["rss_open_bytes"] = _rss() - rss0

    def exact_top(q: np.ndarray, k: int = 10) -> np.ndarray:
        s = index.embeddings @ q
        part = np.argpartition(-s, k - 1)[:k]
        return part[np.argsort(-s[part], kind="stable")]

    times, tops = [], {}
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        tops[q] = exact_top(feats[q])
        times.append((time.perf_counter() - t0) * 1000)
    out["rss_index_bytes"] = _rss() - rss0  # the open index and its queries' pages, before THI's models
    out["rss_index_bytes_per_photo"] = round(out["rss_index_bytes"] / n, 1)
    out["first_query_ms"] = round(times[0], 2)
    out["exact_ms_p50"] = round(float(np.percentile(times[1:] or times, 50)), 3)
    out["exact_ms_p95"] = round(float(np.percentile(times[1:] or times, 95)), 3)

    # THI: latency minus a plain retrieval, as eval.thi reports it. One dialogue first, untimed
    # (first calls of the graph, parser and recogniser); then every caption twice: "cold", the
    # offline MLLM's recogniser meeting the photos it inspects for the first time (its time is
    # recorded apart), and "warm", the recogniser's per-photo outputs memoised (answers are not:
    # MLLM.clear_cache before each dialogue), which is THI's own cost per query.
    mllm = make_backend("offline", device="cpu")

    def timed(fn, meter: list):
        """``fn`` adding its milliseconds to ``meter[0]`` and counting its calls in ``meter[1]``."""
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                meter[0] += (time.perf_counter() - t) * 1000
                meter[1] += 1
        return call

    recogniser_ms = [0.0, 0]
    mllm.recogniser.predict_with_presence = timed(mllm.recogniser.predict_with_presence, recogniser_ms)
    # time in full-gallery passes (the matrix-vector products), to report THI's cost beyond them
    pass_ms = [0.0, 0]
    index._similarity = timed(index._similarity, pass_ms)
    graph = build_graph()
    cfg = THIConfig(policy="adaptive")
    resources = register(index=index, mllm=mllm)
    ctx0 = THIContext.from_config(cfg, resources=resources)

    def dialogue(text: str, pid: int) -> tuple[float, float, int, float, float, int]:
        ctx = replace(ctx0, target_pid=int(pid))
        pass_ms[:] = [0.0, 0]
        t0 = time.perf_counter()
        index.scores(text, cache=False)
        base_ms = (time.perf_counter() - t0) * 1000
        base_pass_ms = pass_ms[0]
        mllm.clear_cache()
        calls0 = mllm.stats.total_calls
        recogniser_ms[:] = [0.0, 0]
        pass_ms[:] = [0.0, 0]
        t0 = time.perf_counter()
        graph.invoke({"query": text}, context=ctx, config={"recursion_limit": recursion_limit(cfg)})
        ms = (time.perf_counter() - t0) * 1000
        beyond = (ms - pass_ms[0]) - (base_ms - base_pass_ms)  # THI's overhead beyond the gallery passes
        return ms - base_ms, ms, mllm.stats.total_calls - calls0, recogniser_ms[0], beyond, pass_ms[1]

    try:
        dialogue(*spec["warmup"])
        cold = [dialogue(text, pid) for text, pid in spec["thi"]]
        warm = [dialogue(text, pid) for text, pid in spec["thi"]]
    finally:
        unregister(resources)

    def pct(rows, i, q):
        return round(float(np.percentile([r[i] for r in rows], q)), 1)

    out["thi_overhead_ms_p50"], out["thi_overhead_ms_p95"] = pct(warm, 0, 50), pct(warm, 0, 95)
    out["thi_latency_ms_p50"] = pct(warm, 1, 50)
    out["thi_beyond_passes_ms_p50"], out["thi_beyond_passes_ms_p95"] = pct(warm, 4, 50), pct(warm, 4, 95)
    out["thi_passes_mean"] = round(float(np.mean([r[5] for r in warm])), 2)
    out["thi_mllm_calls_mean"] = round(float(np.mean([r[2] for r in warm])), 2)
    out["thi_cold_overhead_ms_p50"], out["thi_cold_overhead_ms_p95"] = pct(cold, 0, 50), pct(cold, 0, 95)
    out["thi_cold_recogniser_ms_p50"] = pct(cold, 3, 50)
    out["thi_cold_recogniser_ms_mean"] = round(float(np.mean([r[3] for r in cold])), 1)
    out["thi_cold_minus_recogniser_ms_p50"] = round(float(np.percentile([r[0] - r[3] for r in cold], 50)), 1)
    out["rss_bytes"] = _rss() - rss0
    out["rss_bytes_per_photo"] = round(out["rss_bytes"] / n, 1)
    out["snapshot_bytes"] = index.gallery.snapshot().nbytes

    # the product's search (exact: checked, not assumed) and, for the record, Chroma's HNSW alone
    col = gallery.collection
    t0 = time.perf_counter()
    col.query(query_embeddings=feats[queries[0]].reshape(1, -1), n_results=10, include=[])
    out["hnsw_load_s"] = round(time.perf_counter() - t0, 2)
    for name, run in (("hnsw", lambda q: [index.position[i] for i in col.query(
            query_embeddings=feats[q].reshape(1, -1), n_results=10, include=[])["ids"][0]]),
                      ("search", lambda q: [index.position[i] for i, _ in gallery.search(feats[q], k=10)])):
        rec, ms = [], []
        for q in queries:
            t0 = time.perf_counter()
            got = run(q)
            ms.append((time.perf_counter() - t0) * 1000)
            rec.append(len(set(got) & set(int(r) for r in tops[q])) / 10)
        out[f"{name}_ms_p50"] = round(float(np.percentile(ms, 50)), 2)
        out[f"{name}_recall10"] = round(float(np.mean(rec)), 4)
    # the trade-off: how many HNSW candidates hold the exact top-10, and what asking for them costs
    for n_cand in (100, 1000, 3000):
        rec, ms = [], []
        for q in queries:
            t0 = time.perf_counter()
            got = {index.position[i] for i in col.query(query_embeddings=feats[q].reshape(1, -1),
                                                         n_results=min(n_cand, n), include=[])["ids"][0]}
            ms.append((time.perf_counter() - t0) * 1000)
            rec.append(len(got & set(int(r) for r in tops[q])) / 10)
        out[f"hnsw{n_cand}_ms_p50"] = round(float(np.percentile(ms, 50)), 2)
        out[f"hnsw{n_cand}_recall10"] = round(float(np.mean(rec)), 4)
    out["load_end"] = _load()
    return out


def indexing_speed(args) -> dict:
    """Images per second of the image encoder alone (photos decoded beforehand) and of indexing end
    to end (decode, encode, write to a new local Chroma folder) on the same photos, with the CPU
    time per photo of each (this process, all threads).

    ``end_to_end_share_of_encoder`` divides the end-to-end speed by the encoder's best measured
    speed (it is measured before and after, as the machine's speed drifts). Decoding a photo and
    encoding it both take CPU time, and a machine has only so many cores: end to end cannot run
    faster than ``cores / (encoder CPU + decode CPU per photo)`` (writes left out), so the share
    cannot exceed ``share_bound`` = that / the encoder's speed, printed with it. When the encoder
    alone keeps every core busy (CPU-only indexing on a small machine) the bound is below 1; with
    the encoder on a GPU it is not.
    """
    import tempfile

    from data.readers import read_dataset
    from graphs.demo import ensure_demo_world
    from tools.embedder import Embedder
    from tools.gallery import Gallery, record_items
    from tools.threads import apply_thread_policy, usable_cores

    policy = apply_thread_policy("index")
    folder = Path(args.base) if args.base else ensure_demo_world(progress=not args.quiet)
    ds = read_dataset(folder)
    items = record_items(ds.split("test"), ds.format)[: args.indexing]
    out: dict = {"photos": len(items), "threads": policy, "load_start": _load()}

    def timed(fn) -> tuple[float, float]:
        """(images/s, CPU-seconds per image) of ``fn()`` over every photo."""
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return len(items) / wall, cpu / len(items)

    encoder_runs = []
    for fold in (False, True):
        embedder = Embedder(args.model, device="cpu", fold_batchnorm=fold)
        pixels = np.stack([embedder.load_pixels(it.path) for it in items])
        bs = embedder.batch_size

        def encode_all():
            for s in range(0, len(pixels), bs):
                embedder.encode_pixels(pixels[s:s + bs])

        embedder.encode_pixels(pixels[:bs])  # warm-up
        speed, cpu = timed(encode_all)
        out[f"encoder_{'folded' if fold else 'unfolded'}_img_s"] = round(speed, 1)
        if fold:
            encoder_runs.append((speed, cpu))
    speed, cpu = timed(lambda: [embedder.load_pixels(it.path) for it in items])
    out["decode_img_s"], out["decode_cpu_ms_per_img"] = round(speed, 1), round(cpu * 1000, 3)
    with tempfile.TemporaryDirectory(prefix="thi-index-speed-") as tmp:
        g = Gallery.open("indexing-speed", embedder, data_dir=tmp)
        e2e, e2e_cpu = timed(lambda: g.index(items, embedder, progress=False, decoders=args.decoders))
    out["end_to_end_img_s"], out["end_to_end_cpu_ms_per_img"] = round(e2e, 1), round(e2e_cpu * 1000, 3)
    encoder_runs.append(timed(encode_all))  # the encoder once more: the machine's speed drifts
    out["encoder_folded_img_s_after"] = round(encoder_runs[-1][0], 1)
    best, best_cpu = max(encoder_runs)
    out["encoder_cpu_ms_per_img"] = round(best_cpu * 1000, 3)
    out["encoder_cores_busy"] = round(best * best_cpu, 2)
    out["end_to_end_cores_busy"] = round(e2e * e2e_cpu, 2)
    out["end_to_end_share_of_encoder"] = round(e2e / best, 3)
    out["cores"] = cores = usable_cores()
    out["share_bound"] = round(min(1.0, cores / (best_cpu + out["decode_cpu_ms_per_img"] / 1000) / best), 3)
    slow, fast = min(r[0] for r in encoder_runs), max(r[0] for r in encoder_runs)
    if out["end_to_end_share_of_encoder"] > out["share_bound"] or fast > 1.25 * slow:
        out["warning"] = (f"the encoder alone ran at {slow:.0f} to {fast:.0f} img/s: the machine's speed changed "
                          f"during the measurement (other jobs, or a short run still warming up); measure again, "
                          f"with more photos")
        log.warning(out["warning"])
    out["load_end"] = _load()
    return out


def pass_costs(args) -> dict:
    """What one full-gallery pass (a query's score for every photo) costs on the grown gallery at
    its current size, by kernel and thread count, and how much of the gallery a certified cluster
    search would still have to score.

    * ``pass_ms``: p50 of 5 runs of ``embeddings @ q`` (numpy float32, OpenBLAS), the same with the
      matrix in bfloat16 (torch), and with int8 rows and a per-row scale (torch's weight-only int8
      kernel, where this torch has it), on 1 and on 2 threads. A lower-precision pass only
      *proposes* rows: staying exact means re-scoring them in float32 within an error bound.
    * ``cluster_scored_share``: spherical k-means (``--clusters`` centres fitted on 100,000 rows)
      bounds every member x of a cluster with centre c and radius r by ``q . x <= q . c + |q| r``;
      a search that certifies its top m must score every cluster whose bound reaches the m-th best
      score. The mean share of the gallery in those clusters, for caption queries and for photo
      queries (an anchor's look), at m = 10 and at THI's shortlist depth.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from data.readers import read_dataset
    from eval.benchmark import sample_indices, split_queries
    from graphs.demo import open_gallery
    from graphs.thi.scoring import SHORTLIST
    from tools.embedder import Embedder
    from tools.gallery import Gallery

    embedder = Embedder(args.model, device="cpu")
    gallery = Gallery.open(IMAGE_SET, embedder, data_dir=args.root, create=False,
                           index_command=f"python -m eval.scale --sizes SIZE --root {args.root} (it grows one)")
    x = np.array(gallery.snapshot().features["bge"], dtype=np.float32)  # a writable copy torch can wrap
    n, d = x.shape
    _, folder = open_gallery(args.base, embedder, "test", progress=False)
    texts, _, _ = split_queries(read_dataset(folder).split("test"))
    captions = [texts[i] for i in sample_indices(len(texts), args.queries, args.seed)]
    text_q = embedder.encode_texts(captions, progress=False).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    photo_q = x[rng.choice(n, min(args.queries, n), replace=False)]
    out: dict = {"n": n, "dim": d, "load_start": _load()}

    def p50(fn, runs: int = 5) -> float:
        fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return round(float(np.median(times)), 2)

    q = text_q[0]
    xt = torch.from_numpy(x)
    xb, qb = xt.to(torch.bfloat16), torch.from_numpy(q).to(torch.bfloat16).view(1, -1)
    scale = xt.abs().amax(dim=1) / 127
    x8 = torch.round(xt / scale[:, None]).to(torch.int8)
    int8 = getattr(torch, "_weight_int8pack_mm", None)
    threads0 = torch.get_num_threads()
    costs = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            with threadpool_limits(t):
                costs[f"float32 numpy, {t} thread(s)"] = p50(lambda: x @ q)
                costs[f"bfloat16 torch, {t} thread(s)"] = p50(lambda: xb @ qb.T)
                if int8 is not None:
                    costs[f"int8 rows torch, {t} thread(s)"] = p50(lambda: int8(qb, x8, scale.to(torch.bfloat16)))
    finally:
        torch.set_num_threads(threads0)
    out["pass_ms"] = costs
    del xb, x8

    # spherical k-means on a sample, then every row to its nearest centre
    c = min(args.clusters, n)
    sample = x[np.sort(rng.choice(n, min(n, 100_000), replace=False))]
    centres = sample[rng.choice(len(sample), c, replace=False)].copy()
    for _ in range(5):
        assign = np.argmax(sample @ centres.T, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centres)
    assign = np.concatenate([np.argmax(x[s:s + 50_000] @ centres.T, axis=1) for s in range(0, n, 50_000)])
    order = np.argsort(assign, kind="stable")
    counts = np.bincount(assign, minlength=c)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    means = np.zeros((c, d), dtype=np.float64)
    np.add.at(means, assign, x)
    means = (means / np.maximum(counts, 1)[:, None]).astype(np.float32)
    dist = np.concatenate([np.linalg.norm(x[order[s:s + 50_000]] - means[assign[order[s:s + 50_000]]], axis=1)
                           for s in range(0, n, 50_000)])
    radius = np.zeros(c, dtype=np.float32)
    nonempty = counts > 0
    radius[nonempty] = np.maximum.reduceat(dist, starts[nonempty]) + 1e-5  # float32 rounding slack
    out["cluster_radius_p50"] = round(float(np.median(radius[nonempty])), 3)
    shares = {}
    depths = (min(10, n), min(SHORTLIST, n))
    for kind, qs in (("caption", text_q), ("photo", photo_q)):
        part = {m: [] for m in depths}
        for qv in qs:
            v = x @ qv  # one pass per query serves both depths
            bound = means @ qv + np.linalg.norm(qv) * radius
            for m in depths:
                best = np.partition(v, n - m)[n - m]  # the m-th best score
                part[m].append(float(counts[(bound >= best) & nonempty].sum()) / n)
        for m in depths:
            shares[f"{kind} queries, top {m}"] = round(float(np.mean(part[m])), 3)
    out["cluster_scored_share"] = shares
    # what scoring those rows costs when they are gathered from the matrix (the first caption's
    # shortlist clusters), against the full pass on one thread
    m = min(SHORTLIST, n)
    best = np.partition(x @ q, n - m)[n - m]
    need = np.flatnonzero((means @ q + np.linalg.norm(q) * radius >= best) & nonempty)
    rows = np.sort(np.concatenate([order[starts[j]:starts[j] + counts[j]] for j in need]))
    with threadpool_limits(1):
        out["gathered_rows"] = int(len(rows))
        out["gathered_ms"] = p50(lambda: x[rows] @ q)
        out["full_pass_ms"] = p50(lambda: x @ q)
    out["clusters"] = c
    out["load_end"] = _load()
    return out


def hnsw_trial(args) -> dict:
    """Top-10 recall of a Chroma HNSW index built with ``--hnsw-config`` on a gallery grown to
    ``--hnsw-trial`` photos (the construction above; a temporary folder), against exact search,
    asking for 10 and for 1,000 candidates (re-scored exactly), ``--queries`` captions. What tuning
    HNSW could buy. JSON keys: ``build_s``, ``recall10_<asked>``, ``query_ms_p50_<asked>``."""
    import tempfile

    import chromadb

    from data.readers import read_dataset
    from eval.benchmark import sample_indices, split_queries
    from graphs.demo import open_gallery
    from tools.embedder import Embedder

    config = dict(args.hnsw_config)
    embedder = Embedder(args.model, device="cpu")
    base_gallery, folder = open_gallery(args.base, embedder, "test", progress=False)
    base_ids, base_emb, base_metas = base_gallery.embeddings()
    base_ids, base_emb = list(base_ids), np.asarray(base_emb)
    texts, _, _ = split_queries(read_dataset(folder).split("test"))
    queries = embedder.encode_texts([texts[i] for i in sample_indices(len(texts), args.queries, args.seed)],
                                    progress=False).astype(np.float32)
    size = max(args.hnsw_trial, len(base_ids))
    out: dict = {"n": size, "config": config, "load_start": _load()}
    with tempfile.TemporaryDirectory(prefix="thi-hnsw-") as tmp:
        client = chromadb.PersistentClient(path=tmp)
        try:
            col = client.create_collection("trial", configuration={"hnsw": {"space": "ip", **config}})
        except Exception as e:  # Chroma's own validation (unknown key, bad value)
            raise ValueError(f"Chroma refused --hnsw-config {json.dumps(config)}: {str(e).splitlines()[0]}") from None
        rows = [np.asarray(base_emb)]
        ids = list(base_ids)
        for chunk_ids, feats, _ in _copies(base_ids, base_emb, [{}] * len(base_ids), 0, size - len(base_ids),
                                           args.noise, args.seed, 5000):
            rows.append(feats["bge"])
            ids.extend(chunk_ids)
        x = np.concatenate(rows)
        t0 = time.perf_counter()
        batch = client.get_max_batch_size()
        for s in tqdm(range(0, size, batch), desc="HNSW trial: adding", disable=args.quiet):
            col.add(ids=ids[s:s + batch], embeddings=x[s:s + batch])
        out["build_s"] = round(time.perf_counter() - t0, 1)
        position = {i: n for n, i in enumerate(ids)}
        scores = [x @ q for q in queries]  # exact search, once per caption
        exact = [set(np.argpartition(-s, 9)[:10].tolist()) for s in scores]
        for n_cand in (10, 1000):
            rec, ms = [], []
            for q, s, top in zip(queries, scores, exact):
                t0 = time.perf_counter()
                got = col.query(query_embeddings=q.reshape(1, -1), n_results=min(n_cand, size), include=[])["ids"][0]
                ms.append((time.perf_counter() - t0) * 1000)
                rows_got = [position[i] for i in got]
                if n_cand > 10:  # re-scored exactly, the best 10 kept
                    rows_got = sorted(rows_got, key=lambda r: -s[r])[:10]
                rec.append(len(top & set(rows_got)) / 10)
            out[f"recall10_{n_cand}"] = round(float(np.mean(rec)), 4)
            out[f"query_ms_p50_{n_cand}"] = round(float(np.percentile(ms, 50)), 2)
    out["load_end"] = _load()
    return out


def _child(args, spec: dict, rebuild: bool = False) -> dict:
    spec_path = Path(args.root) / "probe.json"
    spec_path.write_text(json.dumps({**spec, "rebuild": rebuild}))
    cmd = [sys.executable, "-m", "eval.scale", "--probe", str(spec_path), "--root", str(args.root),
           "--model", args.model]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"probe failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["child_wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def run(args) -> list[dict]:
    from data.readers import read_dataset
    from eval.benchmark import sample_indices, split_queries
    from graphs.demo import open_gallery
    from tools.embedder import Embedder
    from tools.gallery import Gallery
    from tools.threads import apply_thread_policy

    apply_thread_policy("benchmark")
    sizes = parse_sizes(args.sizes)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    embedder = Embedder(args.model, device="cpu")
    base_gallery, folder = open_gallery(args.base, embedder, "test", progress=not args.quiet)
    base_ids, base_emb, base_metas = base_gallery.embeddings()
    base = (list(base_ids), np.asarray(base_emb), [dict(m) for m in base_metas])
    records = read_dataset(folder).split("test")
    texts, qpids, _ = split_queries(records)
    pick = sample_indices(len(texts), args.queries, args.seed)
    queries = [texts[i] for i in pick]
    thi = [(texts[i], int(qpids[i])) for i in sample_indices(len(texts), args.thi_queries + 1, args.seed + 1)]
    spec = {"queries": queries, "thi": thi[1:], "warmup": thi[0]}
    gallery = Gallery.open(IMAGE_SET, embedder, data_dir=root)
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        n = grow(gallery, base, size, args.noise, args.seed, not args.quiet)
        grow_s = time.perf_counter() - t0
        row = {"size": size, "n": n, "grow_s": round(grow_s, 1), "load": _load()}
        if not args.no_build:
            row.update(_child(args, spec, rebuild=True))
        row.update(_child(args, spec))
        chroma_bytes = _du(root) - _du(root / "thi-index")
        row["disk_chroma_mb"] = round(chroma_bytes / 2**20, 1)
        row["disk_snapshot_mb"] = round(row.get("snapshot_bytes", 0) / 2**20, 1)
        rows.append(row)
        if not args.json:
            print(format_row(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"rows": rows, "settings": vars(args) | {"construction": __doc__}},
                                                 indent=2, default=str))
    return rows


HEADER = (f"{'N':>9s} {'build s':>8s} {'open s':>7s} {'first q ms':>10s} {'index B/photo':>13s} {'disk MB':>12s} "
          f"{'exact ms':>9s} {'search ms':>9s} {'search R@10':>11s} {'hnsw ms':>8s} {'hnsw R@10':>9s} "
          f"{'THI p50/p95 ms':>15s} {'beyond passes':>13s} {'cold p50/p95 ms':>15s} {'load':>5s}")


def format_row(r: dict) -> str:
    disk = f"{r['disk_chroma_mb']:.0f}+{r['disk_snapshot_mb']:.0f}"
    return (f"{r['n']:9d} {r.get('build_s', float('nan')):8.2f} {r['open_s']:7.3f} {r['first_query_ms']:10.1f} "
            f"{r['rss_index_bytes_per_photo']:13.0f} {disk:>12s} {r['exact_ms_p50']:9.2f} {r['search_ms_p50']:9.2f} "
            f"{r['search_recall10']:11.3f} {r['hnsw_ms_p50']:8.2f} {r['hnsw_recall10']:9.3f} "
            f"{r['thi_overhead_ms_p50']:7.0f}/{r['thi_overhead_ms_p95']:<7.0f} {r['thi_beyond_passes_ms_p50']:13.1f} "
            f"{r.get('thi_cold_overhead_ms_p50', float('nan')):7.0f}/{r.get('thi_cold_overhead_ms_p95', float('nan')):<7.0f} "
            f"{r['load_end']:5.1f}")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=sizes_arg, default=DEFAULT_SIZES,
                   help="gallery sizes, comma-separated, k and M allowed (default %(default)s)")
    p.add_argument("--base", help="the SynthPedes folder whose test photos are the base (default: the demo gallery)")
    p.add_argument("--root", help="Chroma folder of the grown gallery (default $THI_HOME/scale)")
    p.add_argument("--model", default=None, help="retrieval model (default: the shipped one)")
    p.add_argument("--noise", type=float_in(0, math.inf, low_open=True), default=0.2, help="norm of the noise added to each copy (default %(default)s)")
    p.add_argument("--queries", type=int_at_least(1), default=50, help="captions for the search measurements (default %(default)s)")
    p.add_argument("--thi-queries", type=int_at_least(1), default=30, help="captions for the THI overhead (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the captions picked (default %(default)s)")
    p.add_argument("--no-build", action="store_true", help="skip the one-time copy measurement")
    add_output_arguments(p, "the rows (written after each size)", legacy_json=True)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--indexing", type=int_at_least(1), metavar="PHOTOS",
                   help="instead: measure indexing throughput against the encoder alone on this many base photos")
    p.add_argument("--decoders", type=int_at_least(1), default=2, help="--indexing: decoding threads (default %(default)s)")
    p.add_argument("--passes", action="store_true",
                   help="instead: what one full-gallery pass costs on the grown gallery (by kernel and thread count) "
                        "and how much of it a certified cluster search would still score")
    p.add_argument("--clusters", type=int_at_least(1), default=2048, help="--passes: k-means centres (default %(default)s)")
    p.add_argument("--hnsw-trial", type=parse_size, metavar="SIZE",
                   help="instead: build a Chroma HNSW index of a gallery grown to SIZE in a temporary folder with "
                        "--hnsw-config and print its top-10 recall against exact search")
    p.add_argument("--hnsw-config", type=json_object,
                   default='{"max_neighbors": 16, "ef_construction": 100, "ef_search": 100}',
                   help="--hnsw-trial: Chroma's HNSW settings as JSON (default: Chroma's own, %(default)s)")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    from tools.embedder import DEFAULT_MODEL, default_home

    args.model = args.model or DEFAULT_MODEL
    args.root = args.root or str(default_home() / "scale")
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    if args.probe:
        print(json.dumps(probe(args)))
        return 0
    try:
        if args.indexing or args.passes or args.hnsw_trial:
            r = indexing_speed(args) if args.indexing else pass_costs(args) if args.passes else hnsw_trial(args)
            print(json.dumps(r, indent=2))
            if args.out:
                Path(args.out).write_text(json.dumps(r, indent=2))
            return 0
        if not args.json:
            print(f"eval.scale: sizes {args.sizes}, noise {args.noise}, {os.cpu_count()} CPUs, load {_load()}",
                  flush=True)
            print(HEADER, flush=True)
        rows = run(args)
    except (RuntimeError, OSError, ValueError) as e:  # GalleryError; EmbedderError, DatasetError, bad settings
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"rows": rows, "settings": vars(args) | {"construction": __doc__}}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
