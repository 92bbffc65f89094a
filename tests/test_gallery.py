import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from data import read_dataset
from tools.embedder import Embedder
from tools.gallery import Gallery, GalleryError, folder_items, items_for, record_items
from tools.gallery import main as gallery_main

from .helpers import tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Embedder(f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('m'))}", device="cpu", batch_size=8)


@pytest.fixture()
def test_items(small_world):
    return record_items(read_dataset(small_world).split("test"))


def test_index_is_incremental_with_metadata(tmp_path, tiny, test_items):
    g = Gallery.open("world-test", tiny, data_dir=tmp_path)
    first = g.index(test_items, tiny, progress=False)
    assert first["added"] == len(test_items) and g.count() == len(test_items)
    again = g.index(test_items, tiny, progress=False)
    assert again["added"] == 0 and again["present"] == len(test_items)
    meta = g.metadata(test_items[0].id)
    assert meta["pid"] == test_items[0].metadata["pid"] and meta["split"] == "test"
    assert "camera" in meta and Path(meta["path"]).is_file()
    # the same collection is found again from a new client, cosine space
    reopened = Gallery.open("world-test", tiny, data_dir=tmp_path, create=False)
    assert reopened.count() == len(test_items)
    assert reopened.collection.configuration["hnsw"]["space"] == "cosine"


def test_killed_index_resumes_to_exactly_one_entry_per_image(tmp_path, tiny, test_items, monkeypatch):
    g = Gallery.open("kill", tiny, data_dir=tmp_path)
    calls = {"n": 0}
    real = g.collection.upsert

    def dying_upsert(**kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(**kw)

    monkeypatch.setattr(g.collection, "upsert", dying_upsert)
    with pytest.raises(KeyboardInterrupt):
        g.index(test_items, tiny, chunk_size=5, progress=False)
    assert g.count() == 5
    monkeypatch.setattr(g.collection, "upsert", real)
    result = g.index(test_items, tiny, chunk_size=5, progress=False)
    assert result["present"] == 5 and g.count() == len(test_items)
    assert sorted(g.ids()) == sorted(it.id for it in test_items)


def test_search_and_scores_agree_with_exact_similarity(tmp_path, tiny, test_items):
    g = Gallery.open("search", tiny, data_dir=tmp_path)
    g.index(test_items, tiny, progress=False)
    q = tiny.encode_texts(["a woman in a red coat"])[0]
    ids, emb, _ = g.embeddings()
    exact = emb @ q
    hits = g.search(q, k=5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    top_exact = [ids[i] for i in np.argsort(-exact)[:5]]
    assert len(set(top_exact) & {i for i, _ in hits}) >= 4
    pick = [ids[3], ids[0]]
    assert np.allclose(g.scores(q, pick), exact[[3, 0]], atol=1e-5)
    assert np.allclose(dict(hits)[hits[0][0]], exact[ids.index(hits[0][0])], atol=1e-4)
    pid = test_items[0].metadata["pid"]
    filtered = g.search(q, k=50, where={"pid": pid})
    assert filtered and all(g.metadata(i)["pid"] == pid for i, _ in filtered)


def test_folder_with_corrupt_and_non_image_files(tmp_path, tiny, small_world, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((small_world / "imgs" / "test").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        name, items = items_for(folder)
        g = Gallery.open(name, tiny, data_dir=tmp_path / "db")
        result = g.index(items, tiny, progress=False)
    assert result["added"] == 3 and result["skipped"] == [str((folder / "broken.jpg").resolve())]
    assert "broken.jpg" in caplog.text and "notes.txt" in caplog.text
    assert g.count() == 3


def test_bad_galleries_give_clear_errors(tmp_path, tiny):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GalleryError, match="no image files found"):
        items_for(empty)
    with pytest.raises(GalleryError, match="gallery folder not found"):
        folder_items(tmp_path / "nowhere")
    with pytest.raises(GalleryError, match="not indexed with model .*index it with"):
        Gallery.open("never-indexed", tiny, data_dir=tmp_path, create=False)


def test_cli_index_and_query(tmp_path, small_world, capsys):
    model = f"local-dir:{tiny_model_dir(tmp_path)}"
    base = ["--model", model, "--data-dir", str(tmp_path / "db")]
    assert gallery_main(base + ["index", str(small_world), "--split", "test"]) == 0
    assert '"added"' in capsys.readouterr().out
    assert gallery_main(base + ["query", "a man in a blue jacket", "--gallery", str(small_world), "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].strip().startswith("1")
    assert gallery_main(base + ["index", str(tmp_path / "nothing-here")]) == 1
    assert "error:" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def chroma_server(tmp_path):
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = _free_port()
    proc = subprocess.Popen([exe, "run", "--path", str(tmp_path / "srv"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("chroma server exited at start")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("chroma server did not start in 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_http_client_against_a_real_chroma_server(chroma_server, tiny, test_items):
    g = Gallery.open("remote", tiny, url=chroma_server)
    g.index(test_items, tiny, progress=False)
    assert g.count() == len(test_items)
    q = tiny.encode_texts(["a person walking"])[0]
    hits = g.search(q, k=3)
    assert len(hits) == 3
    assert Gallery.open("remote", tiny, url=chroma_server, create=False).count() == len(test_items)
    with pytest.raises(GalleryError, match="cannot reach the Chroma server"):
        Gallery.open("remote", tiny, url="http://127.0.0.1:9")
