"""THI's shortlist scoring (graphs/thi/scoring.py) gives the full-gallery computation's top-n and
target rank exactly, and each query's gallery scores are computed once per dialogue."""

from __future__ import annotations

import zlib
import numpy as np
import pytest

from graphs.config import THIConfig
from graphs.server import live_context, unregister
from graphs.thi import build_graph, final_scores, recursion_limit
from graphs.thi import scoring
from graphs.thi.scoring import Fusion, Term
from tools.gallery import Gallery, record_items
from tools.index import GalleryIndex


class HashTextEmbedder:
    """Text features from a hash of the text (no model): what GalleryIndex asks of an embedder."""

    name = "hash-text"
    fingerprint = "hash-text-1"
    has_tse = False
    tse_dim = None
    synthetic_only = False

    def __init__(self, dim: int):
        self.dim = dim

    def resolve_score(self, score):
        return score or "bge"

    def text_features(self, texts, progress=None):
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts])
        return {"bge": (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)}


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Near-duplicate clusters, some rows exact duplicates (ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
    x[5::97] = x[4::97][: len(x[5::97])]  # exact duplicates: equal scores everywhere
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    n, dim = 3000, 16
    x = _clustered(n, dim, 0)
    emb = HashTextEmbedder(dim)
    g = Gallery.open("scoring", emb, data_dir=tmp_path_factory.mktemp("db"))
    ids = [f"img{i:05d}" for i in range(n)]
    metas = [{"path": f"/nowhere/{i}.jpg", "pid": i // 3} for i in range(n)]
    g.add((ids[s:s + 1000], {"bge": x[s:s + 1000]}, metas[s:s + 1000]) for s in range(0, n, 1000))
    return GalleryIndex(g, emb)


def _full_top(fusion, index, n, rows_filter=None):
    s = scoring.full(fusion, index, rows_filter)
    order = np.lexsort((np.arange(len(s)), -s))
    order = order[np.isfinite(s[order])][:n]
    return order, s[order]


def _full_rank(fusion, index, pid, rows_filter=None):
    s = scoring.full(fusion, index, rows_filter)
    hit = index.pids == pid
    return int((s > s[hit].max()).sum()) + 1


def _random_fusion(index, rng) -> Fusion:
    texts = [f"query {rng.integers(1e9)}" for _ in range(2)]
    rows = rng.integers(0, len(index), 6)
    terms = [Term(float(rng.uniform(0.3, 1.0)), ("text", texts[0]))]
    if rng.random() < 0.8:
        terms.append(Term(float(rng.uniform(0.0, 0.7)), ("text", texts[1]), {int(rows[0]): 1.0}))
    if rng.random() < 0.7:
        terms.append(Term(float(rng.uniform(0.0, 0.5)), ("image", index.ids[int(rows[1])])))
    moves = [(int(r), float(rng.uniform(-0.3, 0.3))) for r in rows[2:]] + [(int(rows[2]), 0.05)]
    return Fusion(terms, moves)


@pytest.mark.parametrize("m", [4, 16, 64])
def test_shortlist_top_and_target_rank_equal_the_full_computation(index, m):
    rng = np.random.default_rng(m)
    allowed = frozenset(index.ids[i] for i in range(0, len(index), 3))
    for trial in range(12):
        fusion = _random_fusion(index, rng)
        filt = index.row_filter(allowed) if trial % 3 == 0 else None
        for n in (1, 10, 100):
            rows, scores = scoring.top(fusion, index, n, filt, m=m)
            want_rows, want_scores = _full_top(fusion, index, n, filt)
            assert rows.tolist() == want_rows.tolist(), (trial, n)
            assert np.array_equal(scores, want_scores)  # bit for bit
        for pid in rng.integers(0, len(index) // 3, 4):
            assert scoring.target_rank(fusion, index, int(pid), filt, m=m) == _full_rank(fusion, index, int(pid), filt)


def test_the_anchor_photo_term_lifts_an_image_from_outside_every_query_shortlist(index):
    """Photos far down the query ranking that look like the anchor enter the top 10 through the
    image term; the shortlist holds the image term's best rows, so they are found."""
    q = ("text", "a person in a red coat")
    orig = index.vector(q)
    far = int(np.argsort(orig)[len(orig) // 2])  # the middle of the query ranking
    fusion = Fusion([Term(0.9, q), Term(1.0, ("image", index.ids[far]))])
    rows, _ = scoring.top(fusion, index, 10, m=4)
    lifted = set(rows.tolist()) - set(np.argsort(-orig)[:100].tolist())
    assert far in set(np.flatnonzero(index.vector(("image", index.ids[far])) > 0.9)) and len(lifted) >= 5
    assert rows.tolist() == _full_top(fusion, index, 10)[0].tolist()


# -- real THI dialogues on a grown gallery: shortlist == full -------------------------------------


@pytest.fixture(scope="module")
def grown(small_world, tmp_path_factory):
    """The small world's test photos indexed with the shipped model, plus 2,500 noisy copies (the
    construction of eval.scale)."""
    from data import read_dataset
    from eval.scale import _copies
    from tools.embedder import Embedder

    emb = Embedder(device="cpu")
    ds = read_dataset(small_world)
    g = Gallery.open("grown", emb, data_dir=tmp_path_factory.mktemp("grown"))
    g.index(record_items(ds.split("test"), ds.format), emb, progress=False)
    ids, x, metas = g.embeddings()
    base = (list(ids), np.asarray(x), [dict(m) for m in metas])
    g.add(_copies(*base, 0, 2500, 0.2, 0, 1000))
    return GalleryIndex(g, emb), ds


SCENARIOS = [("paper", THIConfig(policy="paper"), False), ("adaptive", THIConfig(policy="adaptive"), False),
             ("batch", THIConfig(policy="adaptive", anchor_search="batch"), False),
             ("user", THIConfig(policy="adaptive", rounds=2), True)]


@pytest.mark.parametrize("name,cfg,with_user", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_thi_dialogues_rank_the_same_top_100_on_the_shortlist_as_on_the_whole_gallery(grown, monkeypatch, name,
                                                                                     cfg, with_user):
    from agents.users import SimulatedUser
    from tools.mllm import make_mllm

    index, ds = grown
    records = ds.split("test")
    mllm = make_mllm("offline", device="cpu")
    graph = build_graph()

    real_shortlist = scoring.shortlist
    shortlists = []

    def counted(*a, **k):
        shortlists.append(a[2])
        return real_shortlist(*a, **k)

    monkeypatch.setattr(scoring, "shortlist", counted)

    def dialogue(shortlist_m: int):
        monkeypatch.setattr(scoring, "SHORTLIST", shortlist_m)
        shortlists.clear()
        out = []
        for r in records[:4]:
            user = SimulatedUser(mllm, index.image(r.image)) if with_user else None
            ctx = live_context(index, mllm, cfg, user=user, target_pid=r.pid)
            mllm.clear_cache()
            index.clear()
            try:
                state = graph.invoke({"query": r.captions[0]}, context=ctx,
                                     config={"recursion_limit": recursion_limit(cfg)})
                full = final_scores(state, ctx)
            finally:
                unregister(ctx.resources)
            out.append((state, full))
        return out, list(shortlists)

    short, used = dialogue(100)  # 100 * 4 < N: the shortlist path, m doubled until the certificate holds
    assert used and min(used) == 100 and max(used) * 4 < len(index)  # ranked on shortlists, not the gallery
    whole, used = dialogue(10 ** 9)  # the whole gallery every time
    assert not used
    for (s, fs), (w, fw) in zip(short, whole):
        assert [c["id"] for c in s["ranking"]] == [c["id"] for c in w["ranking"]] and len(s["ranking"]) == 100
        def same(r):  # a round's record without its times (work, MLLM calls, a person's wait)
            return {k: v for k, v in r.items() if k not in ("ms", "mllm_ms", "wait_ms")}

        assert s["ranking"] == w["ranking"]  # scores too
        assert [same(r) for r in s["rounds"]] == [same(r) for r in w["rounds"]]  # checks, top-k, target ranks
        assert np.array_equal(fs, fw)
        order = np.lexsort((np.arange(len(fw)), -fw))[:100]
        assert [index.ids[int(i)] for i in order] == [c["id"] for c in w["ranking"]]


def test_a_dialogue_scores_the_gallery_once_per_distinct_text_and_anchor(grown):
    from tools.mllm import make_mllm

    index, ds = grown
    r = ds.split("test")[0]
    mllm = make_mllm("offline", device="cpu")
    cfg = THIConfig(policy="adaptive")
    calls = []
    real = index._similarity

    def counted(query):
        calls.append(1)
        return real(query)

    index.clear()
    index._similarity = counted
    store = index.gallery.store

    def no_chroma(*a, **k):
        raise AssertionError("a dialogue touched Chroma")

    store.session = no_chroma  # no search, count or read of the collection per query
    ctx = live_context(index, mllm, cfg, target_pid=r.pid)
    try:
        state = build_graph().invoke({"query": r.captions[0]}, context=ctx,
                                     config={"recursion_limit": recursion_limit(cfg)})
    finally:
        unregister(ctx.resources)
        del index._similarity, store.session
    texts = {state["query"]} | {x["rewritten_query"] for x in state["rounds"] if x["rewritten_query"]}
    anchors = {state["anchor"]} - {None}
    assert len(state["rounds"]) >= 1 and anchors and len(texts) == 2
    assert len(calls) == len(texts) + len(anchors)  # one matrix-vector product each, whatever the rounds
