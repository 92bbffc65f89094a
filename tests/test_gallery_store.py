"""A gallery at any size, always fresh, with one writer per local folder and many through a server:
paged reads, the memory-mapped copy, exact search, locks, sharded and concurrent indexing, and two
first runs at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data import read_dataset
from tools import gallery as gallery_module
from tools.embedder import Embedder
from tools.gallery import Gallery, GalleryError, record_items
from tools.store import FolderLock, forget_stores

from .helpers import chroma_server, tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]


class VectorEmbedder:
    """What Gallery asks of a model when embeddings come from elsewhere (no encoder)."""

    name = "vectors"
    fingerprint = "vectors-1"
    has_tse = False
    tse_dim = None
    synthetic_only = False

    def __init__(self, dim: int):
        self.dim = dim


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("THI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return Embedder(f"local-dir:{tiny_dir}", device="cpu", batch_size=8)


@pytest.fixture()
def items(small_world):
    ds = read_dataset(small_world)
    return record_items(ds.split("test"), ds.format)


def _rows(n: int, dim: int, seed: int = 0, prefix: str = "p"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"{prefix}{i:06d}" for i in range(n)]
    metas = [{"path": f"/photos/{i}.jpg", "pid": i // 4, "camera": i % 6, "split": "test"} for i in range(n)]
    return ids, x, metas


def _chunks(ids, x, metas, size=5000):
    return ((ids[s:s + size], {"bge": x[s:s + size]}, metas[s:s + size]) for s in range(0, len(ids), size))


def _drop_copies(g: Gallery) -> None:
    shutil.rmtree(g.cache_root(g.content_key()["collection"]), ignore_errors=True)


def _py(code: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, timeout=timeout,
                          cwd=ROOT)


def _lines(stream) -> list[str]:
    """The lines of a text stream, read by a thread as they come."""
    import threading

    out: list[str] = []
    threading.Thread(target=lambda: out.extend(iter(stream.readline, "")), daemon=True).start()
    return out


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "tools.gallery", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT)


def _assert_readable(db: Path, source: Path, n: int) -> None:
    """Every vector of the folder's collections reads back, as a new process would read them (this
    process's Chroma clients are closed first, so the folder is loaded from disk again)."""
    import chromadb
    from chromadb.config import Settings

    forget_stores()
    client = chromadb.PersistentClient(path=str(db), settings=Settings(anonymized_telemetry=False))
    try:
        for c in client.list_collections():
            col = client.get_collection(c.name if hasattr(c, "name") else c)
            got = col.get(include=["embeddings"])  # "Error getting embedding" on a corrupted folder
            assert len(got["ids"]) == col.count() == n
    finally:
        client.close()


# -- any size ---------------------------------------------------------------------------------


def test_a_gallery_above_sqlites_32766_variable_limit_opens_filters_and_lists(tmp_path, home):
    """One unbounded Chroma get of 32,767 rows fails ("too many SQL variables"); every bulk read is paged."""
    n = 32_800
    emb = VectorEmbedder(4)
    ids, x, metas = _rows(n, 4)
    g = Gallery.open("big", emb, data_dir=tmp_path / "db")
    assert g.add(_chunks(ids, x, metas)) == n
    written = np.array(g.embeddings()[1])  # the writer's copy: what Chroma stores, read back per chunk
    _drop_copies(g)  # read it back from Chroma, not from the writer's copy
    again = Gallery.open("big", emb, data_dir=tmp_path / "db", create=False)
    got_ids, got_x, got_meta = again.embeddings()
    assert len(got_ids) == n and list(got_ids) == ids and np.array_equal(np.asarray(got_x), written)
    assert np.allclose(written, x, atol=1e-6)  # Chroma's cosine index renormalises: last bits only
    assert got_meta[n - 1] == metas[n - 1]
    assert len(again.ids()) == n and again.count() == n
    rows = again.allowed_rows({"split": "test"})  # a filter matching every row: paged too
    assert len(rows) == n


def test_the_memory_mapped_copy_follows_the_collection(tmp_path, home, caplog):
    emb = VectorEmbedder(8)
    ids, x, metas = _rows(300, 8)
    g = Gallery.open("follow", emb, data_dir=tmp_path / "db")
    g.add(_chunks(ids[:200], x[:200], metas[:200]))
    first = g.snapshot()
    assert len(first) == 200 and first.key["count"] == 200
    kept = shutil.copytree(first.folder, tmp_path / "kept-200")  # published copies replace older ones
    # another writer adds rows: a reader opening the gallery later sees them (never a stale copy)
    other = Gallery(g.store, g.name, image_set="follow")
    other.add(_chunks(ids[200:], x[200:], metas[200:]))
    reader = Gallery.open("follow", emb, data_dir=tmp_path / "db", create=False)
    assert len(reader.snapshot()) == 300 and np.allclose(np.asarray(reader.embeddings()[1]), x, atol=1e-6)
    full = np.array(reader.embeddings()[1])
    # a copy that fell behind (here: the writer's copy removed) is brought up to date incrementally
    root = g.cache_root(g.content_key()["collection"])
    newest = max(root.glob("v-*"), key=lambda p: json.loads((p / "header.json").read_text())["rows"])
    shutil.rmtree(newest)
    shutil.copytree(kept, root / first.folder.name)  # only the 200-row copy is left
    with caplog.at_level("INFO", logger="tools.gallery"):
        late = Gallery.open("follow", emb, data_dir=tmp_path / "db", create=False).snapshot()
    assert "adding 100 new rows" in caplog.text and len(late) == 300 and list(late.ids) == ids
    assert np.array_equal(np.asarray(late.features["bge"]), full) and late.metadata[250] == metas[250]
    # rows added behind the project's back (no version token) change the count: rebuilt, not stale
    raw = reader.collection
    raw.add(ids=["zzz-raw"], embeddings=np.ones((1, 8), np.float32) / np.sqrt(8), metadatas=[{"path": "/x.jpg"}])
    fresh = Gallery.open("follow", emb, data_dir=tmp_path / "db", create=False)
    assert len(fresh.snapshot()) == 301 and fresh.snapshot().ids[300] == "zzz-raw"


def test_search_is_exact_and_approximate_is_answered_exactly(tmp_path, home, caplog, monkeypatch):
    monkeypatch.setattr("tools.gallery._warned_approximate", False)  # said once per process
    emb = VectorEmbedder(16)
    ids, x, metas = _rows(2000, 16, seed=3)
    x[7] = x[3]  # a tie: broken by id
    g = Gallery.open("search", emb, data_dir=tmp_path / "db")
    g.add(_chunks(ids, x, metas))
    q = x[3] + 0.01
    exact = x @ q
    order = np.lexsort((np.arange(len(ids)), -exact))[:25]
    hits = g.search(q, k=25)
    assert [h for h, _ in hits] == [ids[i] for i in order]
    assert np.allclose([s for _, s in hits], exact[order], atol=1e-6)
    with caplog.at_level("WARNING", logger="tools.gallery"):
        assert g.search(q, k=25, approximate=True) == hits  # the old flag: the same exact answer, and a warning
    assert "no longer used" in caplog.text
    one = g.search(q, k=50, where={"camera": 2})
    assert one and all(g.metadata(h)["camera"] == 2 for h, _ in one)
    allowed = [i for i in range(len(ids)) if metas[i]["camera"] == 2]
    assert [h for h, _ in one] == [ids[i] for i in sorted(allowed, key=lambda i: (-exact[i], i))][:50]


# -- one writer per local folder ------------------------------------------------------------------


def test_a_second_local_writer_waits_and_the_folder_stays_readable(tmp_path, home, small_world, tiny_dir, items):
    db = tmp_path / "db"
    db.mkdir()
    model = f"local-dir:{tiny_dir}"
    lock = FolderLock(db)
    with lock.hold("test holding the folder"):
        procs = [_cli("--model", model, "--data-dir", str(db), "index", str(small_world)) for _ in range(2)]
        errs = [_lines(p.stderr) for p in procs]
        deadline = time.time() + 240
        while not all(any("waiting for Chroma folder" in ln for ln in e) for e in errs) and time.time() < deadline:
            assert all(p.poll() is None for p in procs)  # nobody gets past the held folder
            time.sleep(0.5)
        for e in errs:  # both wait, and say who holds the folder
            assert any(f"being written by pid {os.getpid()} on " in ln for ln in e), e
    outs = [(p.stdout.read(), p.wait(timeout=300)) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    added = [json.loads(out.strip().splitlines()[-1])["added"] for out, _ in outs]
    assert sorted(added) == [0, len(items)]  # the second found everything present
    _assert_readable(db, small_world, len(items))


def test_a_busy_local_folder_refuses_in_one_line_naming_the_holder(tmp_path, home, small_world, tiny_dir):
    db = tmp_path / "db"
    db.mkdir()
    model = f"local-dir:{tiny_dir}"
    with FolderLock(db).hold("indexing"):
        procs = [_cli("--model", model, "--data-dir", str(db), "--lock-timeout", "0", *args)
                 for args in (["index", str(small_world)], ["query", "a man", "--gallery", str(small_world)])]
        for p in procs:
            out, err = p.communicate(timeout=300)
            lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
            assert p.returncode == 1 and len(lines) == 1, err[-500:]
            assert f"being written by pid {os.getpid()} on " in lines[0] and "not indexed" not in lines[0]


def test_a_process_that_read_before_another_wrote_writes_without_corrupting(tmp_path, home, small_world, tiny,
                                                                           tiny_dir, items):
    """chromadb keeps each collection's HNSW index in memory: a process whose copy predates another
    process's write reads "Error finding id" and its next write loses the other's vectors. The
    store reopens its client when another process wrote since."""
    db = tmp_path / "db"
    name = gallery_module.image_set_name(small_world, "test")
    g = Gallery.open(name, tiny, data_dir=db)
    g.index(items[:10], tiny, progress=False)
    assert g.count() == 10 and len(g.snapshot()) == 10  # this process has read the collection
    other = _py("import sys\nfrom tools.embedder import Embedder\nfrom tools.gallery import Gallery, items_for\n"
                "e = Embedder(sys.argv[1], device='cpu'); name, items = items_for(sys.argv[2], 'test')\n"
                "g = Gallery.open(name, e, data_dir=sys.argv[3]); print(g.index(items[10:20], e, progress=False))",
                f"local-dir:{tiny_dir}", str(small_world), str(db))
    assert other.returncode == 0, other.stderr[-500:]
    g._snapshot = None
    assert g.count() == 20 and len(g.snapshot()) == 20  # reads after the other's write work
    g.index(items, tiny, progress=False)  # and so does this process's next write
    _assert_readable(db, small_world, len(items))


# -- several writers through a Chroma server -------------------------------------------------------


def _server_contents(url: str, embedder, source) -> tuple[list[str], np.ndarray, list[dict]]:
    name, _ = gallery_module.items_for(source, "test")
    g = Gallery.open(name, embedder, url=url, create=False)
    ids, x, metas = g.embeddings()
    return list(ids), np.asarray(x), list(metas)


def test_two_shards_index_one_server_like_a_single_indexer(tmp_path, home, small_world, tiny, tiny_dir, items):
    model = f"local-dir:{tiny_dir}"
    single = Gallery.open(gallery_module.image_set_name(small_world, "test"), tiny, data_dir=tmp_path / "local")
    single.index(items, tiny, progress=False)
    want_ids, want_x, want_meta = single.embeddings()
    with chroma_server(tmp_path / "srv") as url:
        procs = [_cli("--model", model, "--url", url, "index", str(small_world), "--shard", f"{i}/2") for i in (1, 2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
        assert {r["shard"] for r in reports} == {"1/2", "2/2"}
        assert sum(r["added"] for r in reports) == len(items) and all(r["added"] > 0 for r in reports)
        forget_stores()
        ids, x, metas = _server_contents(url, tiny, small_world)
    assert ids == list(want_ids) and np.allclose(x, np.asarray(want_x), atol=1e-5)
    assert metas == list(want_meta)
    p = _cli("--model", model, "--url", "http://127.0.0.1:9", "index", str(small_world), "--shard", "3/2")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.strip().splitlines()[-1].startswith("error: --shard takes I/N")


def _concurrent_writers(tmp_path, source, n_writers: int, model: str, embedder, expected: int):
    with chroma_server(tmp_path / "srv") as url:
        procs = [_cli("--model", model, "--url", url, "index", str(source)) for _ in range(n_writers)]
        outs = [p.communicate(timeout=1800) for p in procs]
        assert [p.returncode for p in procs] == [0] * n_writers, [o[1][-500:] for o in outs]
        forget_stores()
        name, _ = gallery_module.items_for(source, "test")
        g = Gallery.open(name, embedder, url=url, create=False)
        raw = g.collection
        got = []
        while True:
            page = raw.get(include=[], limit=5000, offset=len(got))["ids"]
            got.extend(page)
            if len(page) < 5000:
                break
        ids, x, metas = g.embeddings()
    assert len(got) == len(set(got)) == expected  # no duplicate, no loss
    return list(ids), np.asarray(x), list(metas)


def test_three_concurrent_writers_through_a_server_index_each_photo_once(tmp_path, home, small_world, tiny, tiny_dir, items):
    ids, x, metas = _concurrent_writers(tmp_path, small_world, 3, f"local-dir:{tiny_dir}", tiny, len(items))
    single = Gallery.open("single", tiny, data_dir=tmp_path / "local")
    single.index(items, tiny, progress=False)
    want_ids, want_x, _ = single.embeddings()
    assert ids == list(want_ids) and np.allclose(x, np.asarray(want_x), atol=1e-5)


@pytest.mark.slow
def test_ten_concurrent_writers_through_a_server_index_3000_photos_once(tmp_path, home, tiny, tiny_dir):
    """Ten writers, the same 3,000+ photos (a generated world's test split: 1,000 people, as many as the
    default world's; photos per person vary with the generator)."""
    from data.synthpedes import WorldConfig, generate

    world = tmp_path / "world"
    generate(world, WorldConfig(seed=11, train_ids=0, val_ids=0, test_ids=1000), workers=2, progress=False)
    ds = read_dataset(world)
    its = record_items(ds.split("test"), ds.format)
    assert len(its) >= 3000
    ids, x, _ = _concurrent_writers(tmp_path, world, 10, f"local-dir:{tiny_dir}", tiny, len(its))
    single = Gallery.open("single", tiny, data_dir=tmp_path / "local")
    single.index(its, tiny, progress=False)
    want_ids, want_x, _ = single.embeddings()
    assert ids == list(want_ids) and np.allclose(x, np.asarray(want_x), atol=1e-5)


# -- two first runs at once ---------------------------------------------------------------------


FIRST_RUN = """
import sys
from pathlib import Path
from data.synthpedes import WorldConfig
from graphs.demo import ensure_demo_world, open_gallery
from tools.embedder import Embedder
home = Path(sys.argv[2])
folder = ensure_demo_world(home, progress=False, world=WorldConfig(seed=5, train_ids=0, val_ids=0, test_ids=6))
e = Embedder(sys.argv[1], device="cpu")
g, _ = open_gallery(folder, e, data_dir=home / "chroma", progress=False)
print(g.count())
"""


def test_two_first_runs_at_once_generate_and_index_the_demo_gallery_once(tmp_path, tiny_dir):
    home = tmp_path / "home"
    e = {**os.environ, "PYTHONPATH": str(ROOT), "THI_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_RUN, f"local-dir:{tiny_dir}", str(home)], cwd=ROOT,
                              env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outs]
    folder = home / "synthpedes-demo"
    ds = read_dataset(folder)
    n = len(ds.split("test"))
    assert n >= 6 and [o[0].split()[-1] for o in outs] == [str(n)] * 2
    assert not list(folder.rglob("*.tmp"))  # nothing half-written left behind


# -- threads ------------------------------------------------------------------------------------


def test_one_thread_policy_for_torch_and_blas():
    code = ("import json, torch\nfrom threadpoolctl import threadpool_info\nfrom tools.threads import "
            "apply_thread_policy, usable_cores\np = apply_thread_policy('query')\n"
            "blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "print(json.dumps([p['torch'], p['blas'], torch.get_num_threads(), blas, usable_cores()]))")
    got = json.loads(_py(code).stdout.strip().splitlines()[-1])  # per-query work: one torch thread
    assert got[0] == got[2] == 1 and got[1] == 1 and set(got[3]) == {1}
    got = json.loads(_py(code.replace("'query'", "'index'")).stdout.strip().splitlines()[-1])  # batches: every core
    assert got[0] == got[2] == got[4] and got[1] == 1 and set(got[3]) == {1}
    got = json.loads(_py(code, env={"THI_BLAS_THREADS": "2", "THI_TORCH_THREADS": "1"}).stdout.strip().splitlines()[-1])
    assert got[0] == got[2] == 1 and got[1] == 2 and set(got[3]) == {2}


def test_the_thread_policy_refuses_an_unknown_workload():
    from tools.threads import WORKLOADS, apply_thread_policy

    assert WORKLOADS == ("index", "benchmark", "query")
    with pytest.raises(ValueError, match="unknown workload 'serve'"):
        apply_thread_policy("serve")


def test_a_gallery_opened_without_the_model_names_who_is_indexing_it(tmp_path, home, tiny):
    """A reader never takes a collection being indexed by another process for "not indexed"."""
    db = tmp_path / "db"
    db.mkdir()
    code = ("import sys, time\nfrom pathlib import Path\nfrom tools.store import FolderLock\n"
            "with FolderLock(Path(sys.argv[1])).hold('indexing'):\n    print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GalleryError, match=f"being written by pid {holder.pid}"):
            Gallery.open("never-indexed", tiny, data_dir=db, create=False, lock_timeout=0)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(GalleryError, match="not indexed with model"):  # nobody writes: the real reason
        Gallery.open("never-indexed", tiny, data_dir=db, create=False, lock_timeout=0)
