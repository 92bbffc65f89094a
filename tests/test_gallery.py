import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from data import read_dataset
from tools.embedder import Embedder
from tools.gallery import Gallery, GalleryError, folder_items, items_for, record_items
from tools.gallery import main as gallery_main

from .helpers import chroma_server as start_chroma_server
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
    with pytest.raises(GalleryError, match="no folder .*index it with: python -m tools.gallery index DIR"):
        Gallery.open("never-indexed", tiny, data_dir=tmp_path / "no-db", create=False)
    with pytest.raises(GalleryError, match="no Chroma database in .*index it with: python -m tools.gallery index DIR"):
        Gallery.open("never-indexed", tiny, data_dir=tmp_path, create=False)
    assert not (tmp_path / "no-db").exists() and not (tmp_path / "chroma.sqlite3").exists()  # reading made nothing
    Gallery.open("made", tiny, data_dir=tmp_path / "db")  # a folder with a database: the collection is looked up
    with pytest.raises(GalleryError, match="not indexed with model"):
        Gallery.open("never-indexed", tiny, data_dir=tmp_path / "db", create=False)


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


@pytest.fixture()
def chroma_server(tmp_path, monkeypatch):
    monkeypatch.setenv("THI_HOME", str(tmp_path / "home"))  # the server's memory-mapped copies go there
    with start_chroma_server(tmp_path / "srv") as url:
        yield url


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


# -- TSE storage, scores, scope -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rde(tmp_path_factory):
    from tests.research_checkpoints import make_checkpoint

    path = make_checkpoint(tmp_path_factory.mktemp("rde") / "best.pth", "rde", seed=5, vision_width=64,
                           vision_layers=1, patch=16, image_size=(96, 32), text_width=64, text_layers=1,
                           embed_dim=32, tse_dim=48)
    return Embedder(pretrained=str(path), device="cpu", batch_size=8)


def test_tse_embeddings_are_stored_beside_bge_and_ranked_fused(tmp_path, rde, test_items):
    from tools.tse import similarity

    g = Gallery.open("world-tse", rde, data_dir=tmp_path)
    assert g.has_tse and g.kinds == ("bge", "tse") and g.tse_collection.name.endswith("--tse")
    g.index(test_items, rde, progress=False)
    ids, feats, metas = g.features()
    assert ids == sorted(it.id for it in test_items)
    assert feats["bge"].shape == (len(ids), 32) and feats["tse"].shape == (len(ids), 48)
    assert g.embeddings("tse")[0] == ids
    paths = [Path(m["path"]) for m in metas]
    direct = rde.image_features(paths)
    assert np.allclose(direct["bge"], feats["bge"], atol=1e-5) and np.allclose(direct["tse"], feats["tse"], atol=1e-5)
    q = rde.text_features(["a woman in a red coat with a black backpack"])
    want = similarity({"bge": q["bge"][0], "tse": q["tse"][0]}, direct, "fused")
    assert np.allclose(want, (direct["bge"] @ q["bge"][0] + direct["tse"] @ q["tse"][0]) / 2)
    hits = g.search(q["bge"][0], k=5, text_tse=q["tse"][0], score="fused")
    assert [h for h, _ in hits] == [ids[i] for i in np.argsort(-want, kind="stable")[:5]]
    assert np.allclose([s for _, s in hits], np.sort(want)[::-1][:5], atol=1e-5)
    tse_only = g.search(q["bge"][0], k=5, text_tse=q["tse"][0], score="tse")
    assert [h for h, _ in tse_only] == [ids[i] for i in np.argsort(-(direct["tse"] @ q["tse"][0]), kind="stable")[:5]]
    one_pid = g.search(q["bge"][0], k=50, text_tse=q["tse"][0], score="fused", where={"pid": int(metas[0]["pid"])})
    assert 0 < len(one_pid) < len(ids) and all(g.metadata(h)["pid"] == metas[0]["pid"] for h, _ in one_pid)
    with pytest.raises(GalleryError, match="needs TSE"):
        g.similarity(q["bge"][0], None, score="fused")


def test_a_killed_tse_index_resumes_with_both_collections_in_step(tmp_path, rde, test_items, monkeypatch):
    g = Gallery.open("kill-tse", rde, data_dir=tmp_path)
    calls = {"n": 0}
    real = g.collection.upsert

    def dying_upsert(**kw):  # the BGE write of the second chunk dies, after its TSE write
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(**kw)

    monkeypatch.setattr(g.collection, "upsert", dying_upsert)
    with pytest.raises(KeyboardInterrupt):
        g.index(test_items, rde, chunk_size=5, progress=False)
    assert g.count() == 5 and g.tse_collection.count() == 10  # the half-written chunk does not count
    assert len(g.embeddings("tse")[0]) == 5
    monkeypatch.undo()
    again = Gallery.open("kill-tse", rde, data_dir=tmp_path)
    result = again.index(test_items, rde, chunk_size=5, progress=False)
    assert result["present"] == 5 and again.count() == len(test_items) == again.tse_collection.count()
    ids, feats, _ = again.features()
    fresh = Gallery.open("fresh-tse", rde, data_dir=tmp_path)
    fresh.index(test_items, rde, progress=False)
    f_ids, f_feats, _ = fresh.features()
    assert ids == f_ids and np.allclose(feats["tse"], f_feats["tse"], atol=1e-6)


def test_a_shipped_model_warns_once_on_galleries_that_are_not_synthpedes(tmp_path, small_world, caplog):
    from tests.test_readers import write_layout

    shipped = Embedder("synthpedes-small-v7", device="cpu")
    assert shipped.synthetic_only
    real = write_layout(tmp_path / "cuhk", "cuhk-pedes")
    name, items = items_for(real, "test")
    with caplog.at_level(logging.WARNING):
        g = Gallery.open(name, shipped, data_dir=tmp_path / "db")
        g.index(items, shipped, progress=False)
        g.index(items, shipped, progress=False)
        Gallery.open(name, shipped, data_dir=tmp_path / "db", create=False)
    scope = [r.getMessage() for r in caplog.records if "SynthPedes renders only" in r.getMessage()]
    assert len(scope) == 1 and "cuhk-pedes dataset" in scope[0] and "--pretrained best.pth" in scope[0]
    caplog.clear()
    world_name, world_items = items_for(small_world, "test")
    with caplog.at_level(logging.WARNING):
        w = Gallery.open(world_name, shipped, data_dir=tmp_path / "db")
        w.index(world_items[:4], shipped, progress=False)
    assert "SynthPedes renders only" not in caplog.text
    # searching an image folder indexed earlier (a new process would warn again: the set is per process)
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    for i in range(3):
        shutil.copy(world_items[i].path, folder / "a" / f"{i}.jpg")
    fname, fitems = items_for(folder)
    Gallery.open(fname, shipped, data_dir=tmp_path / "db").index(fitems, shipped, progress=False)
    import tools.gallery as tg

    tg._SCOPE_WARNED.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Gallery.open(fname, shipped, data_dir=tmp_path / "db", create=False)
    assert "a folder of images" in caplog.text and "SynthPedes renders only" in caplog.text
    # a real checkpoint never warns
    assert not Embedder(f"local-dir:{tiny_model_dir(tmp_path)}", device="cpu").synthetic_only


def test_cli_scores_and_bad_input(tmp_path, small_world, rde, capsys):
    from tests.test_readers import write_layout

    ckpt = rde.loaded.source
    base = ["--pretrained", ckpt, "--data-dir", str(tmp_path / "db")]
    assert gallery_main(base + ["index", str(small_world)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["embeddings"] == ["bge", "tse"] and "RDE/ICL checkpoint" in out.err
    for score in ("fused", "bge", "tse", None):
        extra = ["--score", score] if score else []
        assert gallery_main(base + ["query", "a man in a blue jacket", "--gallery", str(small_world), "-k", "3"] + extra) == 0
        out = capsys.readouterr()
        assert len(out.out.strip().splitlines()) == 3 and f"score: {score or 'fused'}" in out.err
    tiny = ["--model", f"local-dir:{tiny_model_dir(tmp_path)}", "--data-dir", str(tmp_path / "db")]
    assert gallery_main(tiny + ["index", str(small_world)]) == 0
    capsys.readouterr()
    assert gallery_main(tiny + ["query", "a man", "--gallery", str(small_world), "--score", "fused"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: score fused needs TSE heads") and sum(l.startswith("error") for l in err) == 1
    # missing images: one line and exit 1, or skipped with --skip-missing
    holes = write_layout(tmp_path / "holes", "cuhk-pedes", drop_image="CUHK01/0363004.png")
    assert gallery_main(tiny + ["index", str(holes)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 2 image files of split test do not exist" in err[0] and "--skip-missing" in err[0]
    assert gallery_main(tiny + ["index", str(holes), "--skip-missing"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    # random weights refused in one line
    from tests.helpers import tiny_arch

    arch = tiny_arch(tmp_path)
    assert gallery_main(["--model", arch, "--data-dir", str(tmp_path / "db"), "index", str(small_world)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RANDOM weights" in err[0]
