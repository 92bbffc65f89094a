"""Photos as they are: one reader (EXIF orientation, 16-bit grey) everywhere; photos that changed or
vanished after indexing are skipped by THI with a note and refreshed by indexing; file names that
are not UTF-8 or carry escape codes never block indexing nor reach the terminal raw."""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphs.report import write_report, write_trace
from graphs.server import live_context
from graphs.thi import run
from graphs.thi.cli import main as thi_main
from tools.embedder import Embedder, load_pixels
from tools.gallery import Gallery, folder_items, items_for
from tools.gallery import main as gallery_main
from tools.index import GalleryIndex
from tools.mllm import make_mllm
from tools.mllm.base import ImageRef
from tools.photos import PhotoError, read_photo

from .helpers import tiny_model_dir


def huge_png(path: Path, side: int = 60_000) -> None:
    """A PNG whose header says side x side pixels (3.6 billion): what Pillow refuses as a
    decompression bomb when it opens it (the file itself is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def shipped():
    return Embedder(device="cpu")  # the default shipped model


def test_exif_rotated_and_16_bit_photos_embed_like_their_upright_8_bit_versions(small_world, shipped, tmp_path):
    photos = sorted((small_world / "imgs" / "test").glob("*.jpg"))[:3]
    for n, src in enumerate(photos):
        upright = Image.open(src).convert("RGB")
        upright.save(tmp_path / f"up{n}.png")
        # stored lying on its side, with the EXIF tag that tells viewers to turn it upright
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / f"rot{n}.png", exif=exif)
        grey8 = np.asarray(upright.convert("L"))
        Image.fromarray(grey8).save(tmp_path / f"grey8_{n}.png")
        Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / f"grey16_{n}.png")  # 0-65535
        assert Image.open(tmp_path / f"grey16_{n}.png").mode.startswith("I")
        e = shipped.encode_images([tmp_path / f"up{n}.png", tmp_path / f"rot{n}.png",
                                   tmp_path / f"grey8_{n}.png", tmp_path / f"grey16_{n}.png"])
        assert _cos(e[0], e[1]) >= 0.99, f"EXIF-rotated photo {n}: cosine {_cos(e[0], e[1]):.3f}"
        assert _cos(e[2], e[3]) >= 0.99, f"16-bit grey photo {n}: cosine {_cos(e[2], e[3]):.3f}"
    # the recogniser and training read through the same function
    assert np.array_equal(load_pixels(tmp_path / "rot0.png", (64, 32)), load_pixels(tmp_path / "up0.png", (64, 32)))


def test_unreadable_photos_raise_one_line_naming_the_file(tmp_path):
    open(tmp_path / "empty.jpg", "w").close()
    huge_png(tmp_path / "huge.png")
    cases = {"empty.jpg": "cannot identify", "missing.jpg": "No such file", "huge.png": "decompression bomb"}
    for name, reason in cases.items():
        with pytest.raises(PhotoError) as err:
            read_photo(tmp_path / name)
        assert name in str(err.value) and reason in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, OSError)


# -- a gallery that changes under the index -----------------------------------------------------


@pytest.fixture()
def folder_gallery(small_world, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(small_world / "imgs" / "test", folder)
    emb = Embedder(f"local-dir:{tiny_model_dir(tmp_path)}", device="cpu")
    name, items = items_for(folder)
    g = Gallery.open(name, emb, data_dir=tmp_path / "db")
    g.index(items, emb, progress=False)
    return folder, emb, g


def _break(folder: Path, ids: list[str]) -> dict[str, str]:
    deleted, emptied, huge = ids[:3]
    (folder / deleted).unlink()
    open(folder / emptied, "w").close()
    huge_png(folder / huge)
    return {deleted: "gone", emptied: "empty", huge: "changed"}


QUERY = "A man with short black hair in a blue jacket and grey trousers, carrying a black backpack."


@pytest.mark.parametrize("stamped", [True, False], ids=["indexed-with-stamps", "indexed-before-stamps"])
def test_thi_skips_photos_deleted_emptied_or_replaced_after_indexing(folder_gallery, tmp_path, stamped):
    folder, emb, g = folder_gallery
    index = GalleryIndex(g, emb)
    if not stamped:  # a gallery indexed before sizes and times were recorded: the read itself fails
        unstamped = index.image
        index.image = lambda image_id: ImageRef(image_id, unstamped(image_id).path)
    top = [i for i, _ in sorted(zip(index.ids, index.scores(QUERY)), key=lambda x: -x[1])][:10]
    broken = _break(folder, top)
    mllm = make_mllm("offline")  # reads the photos itself (the recogniser)
    state = run(QUERY, live_context(index, mllm))  # never a traceback
    inspected = {i["id"]: i for r in state["rounds"] for i in r["inspected"]}
    notes = " ".join(n for r in state["rounds"] for n in r["notes"])
    for image_id, how in broken.items():
        assert inspected[image_id]["match"] is None  # no verdict, no move
        kind = "stale-image" if stamped else "bad-image"
        assert f"skipped: {kind}" in inspected[image_id]["reason"], inspected[image_id]["reason"]
        assert f"verification of {image_id} skipped" in notes
        if stamped:
            assert how in inspected[image_id]["reason"]
    assert any(i["match"] is not None for i in inspected.values())  # the search went on past them
    # the trace and the report are written, the broken thumbnails left blank
    write_trace(tmp_path / "t.jsonl", [state])
    write_report(tmp_path / "r.html", state, lambda i: index.image(i).path)
    assert (tmp_path / "r.html").stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert any("stale-image" in n or "bad-image" in n for r in rows for n in r["notes"])


def test_indexing_again_refreshes_changed_and_vanished_photos(folder_gallery, tmp_path):
    folder, emb, g = folder_gallery
    before = len(g.ids())
    ids = sorted(g.ids())
    replaced, deleted, emptied = ids[:3]
    other = folder / ids[5]
    shutil.copyfile(other, folder / replaced)  # another photo under the same name
    os.utime(folder / replaced, ns=(1, 1))  # and another time, whatever the copy kept
    (folder / deleted).unlink()
    open(folder / emptied, "w").close()
    name, items = items_for(folder)
    result = g.index(items, emb, progress=False)
    assert result["refreshed"] == 3
    assert result["added"] == 1  # the replaced photo, embedded again; the emptied one is unreadable
    assert [Path(s).name for s in result["skipped"]] == [emptied]
    assert g.ids() == set(ids) - {deleted, emptied} and g.count() == before - 2
    got = g.collection.get(ids=[replaced], include=["embeddings", "metadatas"])
    assert np.allclose(got["embeddings"][0], emb.encode_images([other])[0], atol=1e-5)
    assert got["metadatas"][0]["bytes"] == other.stat().st_size and got["metadatas"][0]["mtime_ns"] == 1
    # nothing changed since: a third run re-embeds nothing
    again = g.index(folder_items(folder)[0], emb, progress=False)
    assert again["added"] == 0 and again["refreshed"] == 0


def test_file_names_that_are_not_utf8_or_carry_escape_codes_never_block_indexing(small_world, tmp_path, capsys,
                                                                                  caplog):
    folder = tmp_path / "odd"
    folder.mkdir()
    sources = sorted((small_world / "imgs" / "test").glob("*.jpg"))[:6]
    for n, src in enumerate(sources[:4]):
        shutil.copyfile(src, folder / f"p{n}.jpg")
    bad = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    shutil.copyfile(sources[4], bad)
    evil = "evil\x1b]0;pwned\x07\x1b[2J.jpg"  # sets the window title and clears the screen if printed raw
    shutil.copyfile(sources[5], folder / evil)
    base = ["--model", f"local-dir:{tiny_model_dir(tmp_path)}", "--data-dir", str(tmp_path / "db")]
    assert gallery_main(base + ["index", str(folder)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["total"] == 5 and result["skipped"] == [str(folder / "caf\\xe9.jpg")]
    assert "caf\\xe9.jpg" in caplog.text and "not valid UTF-8" in caplog.text  # the warning names it
    assert "\x1b" not in captured.err + caplog.text
    # the escape-code name is indexed and printed inert
    assert gallery_main(base + ["query", "a person", "--gallery", str(folder), "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "  evil.jpg  " in out and "\x1b" not in out and "\x07" not in out  # the sequences are removed whole


def test_a_surrogate_query_is_traced_reported_and_printed(small_world, tmp_path, capsys):
    # what Python makes of a query typed in Latin-1 on a UTF-8 system: a lone surrogate
    query = os.fsdecode(b"a man in a red \xe9 coat")
    model = f"local-dir:{tiny_model_dir(tmp_path)}"
    args = ["--query", query, "--gallery", str(small_world), "--index", "--model", model, "--data-dir",
            str(tmp_path / "db"), "--trace", str(tmp_path / "t.jsonl"), "--report", str(tmp_path / "r.html"),
            "--quiet", "--rounds", "1"]
    assert thi_main(args) == 0
    out = capsys.readouterr().out
    assert "query: a man in a red \ufffd coat" in out
    assert json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])["original_query"] == query
    assert "a man in a red" in (tmp_path / "r.html").read_text(encoding="utf-8")
