"""The HTML report of a THI dialogue: settings, legend, "cannot tell" apart from "none",
thumbnails linking to the photos, the true person's rank, the stop reason, everything escaped;
and (slow, where Chromium is installed) that a browser renders it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphs.report import THUMB_HEIGHT, write_report

HOSTILE = '<script>alert("x")</script>'


def _photos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for n, name in enumerate(["a b.png", "it's \"odd\".png", "c.png", "d.png"]):
        path = folder / name
        Image.new("RGB", (128, 256), (40 * n, 200 - 40 * n, 90)).save(path)
        paths[f"id{n}"] = path
    return paths


def _state() -> dict:
    cands = [{"id": f"id{n}", "score": s} for n, s in enumerate([0.71, 0.69, 0.66, 0.60])]
    return {
        "query": f"a man in a red coat {HOSTILE}", "original_ranking": cands, "truncated": "",
        "stopped_because": "nothing new was learned",
        "rounds": [
            {"round": 1, "query": "q", "anchor": "id1", "rewritten_query": "a man in a red coat with a cap",
             "inspected": [{"id": "id0", "rank": 1, "match": False, "confidence": 0.9, "reason": f"colour {HOSTILE}"},
                           {"id": "id1", "rank": 2, "match": True, "confidence": 0.8, "reason": "fits"},
                           {"id": "id2", "rank": 3, "match": None, "confidence": 0.0, "reason": "abstained: no view"}],
             "answers": [{"slot": "hat", "question": "Is the person wearing a hat?", "value": None, "source": "mllm"},
                         {"slot": "bag", "question": "Is the person carrying a bag?", "value": "none",
                          "source": "mllm"}],
             "topk": [{"id": "id1", "score": 1.018}, {"id": "id0", "score": 0.6}, {"id": "id2", "score": 0.55},
                      {"id": "id3", "score": 0.5}],
             "target_rank": 1, "mllm_calls": 4, "ms": 12.5, "notes": [f"a note {HOSTILE}"]},
            {"round": 2, "query": "q", "anchor": "id1", "rewritten_query": None, "inspected": [], "answers": [],
             "topk": [{"id": "id1", "score": 1.018}, {"id": "id3", "score": 0.5}], "target_rank": 1, "mllm_calls": 0,
             "ms": 1.0, "notes": []}]}


@pytest.fixture()
def report(tmp_path) -> tuple[Path, str, dict[str, Path]]:
    photos = _photos(tmp_path / "photos dir")
    out = tmp_path / "r.html"
    write_report(out, _state(), photos.__getitem__, k=10, title="THI demo",
                 settings={"policy": "adaptive", "retrieval model": "synthpedes-small-v7", "MLLM backend": "offline",
                           "k": 10, "round limit": 5, "lambda (weight of the original similarity)": 0.9},
                 target_ranks=[3, 1, 1], above_one="the anchor's new similarity is set to 1",
                 target=lambda i: i == "id1")
    return out, out.read_text(), photos


def test_the_report_shows_settings_legend_answers_ranks_and_stop(report):
    _, page, _ = report
    for label in ("policy", "retrieval model", "MLLM backend", "round limit", "lambda (weight of the original similarity)"):
        assert f"<th>{label}</th>" in page
    assert '<section class="legend">' in page and "a score above 1" in page
    for cls in ("anchor", "yes", "no", "unsure"):
        assert f'<span class="swatch {cls}">' in page
    assert "a score above 1: the anchor&#x27;s new similarity is set to 1" in page
    # the answer it could not tell, apart from the real answer "none"
    assert 'hat? <span class="cannot-tell">cannot tell</span>' in page
    assert 'bag? <b class="answer">none</b>' in page and ">None<" not in page
    assert re.findall(r'<p class="rank">True person: rank <b>(\d+)</b>( \(was \d+\))?</p>', page) == \
        [("3", ""), ("1", " (was 3)"), ("1", "")]
    assert page.count('<b class="verdict">abstained</b>') == 1 and page.count('<figure class="unsure">') == 1
    assert page.count("<b>Stopped:</b> nothing new was learned") == 1 and "Went on to the next round." in page
    assert page.index("Went on to the next round.") < page.index("<b>Stopped:</b>")
    assert page.count('<figure class="anchor">') == 2 and page.count('<figure class="no">') == 1
    assert page.count('<b class="target">true person</b>') == 1 + 3  # the legend; id1 in rounds 0, 1 and 2


def test_scores_above_one_are_explained_only_when_shown(tmp_path):
    photos = _photos(tmp_path / "p")
    state = _state()
    for r in state["rounds"]:
        r["topk"] = [{**c, "score": min(c["score"], 0.99)} for c in r["topk"]]
    write_report(tmp_path / "r.html", state, photos.__getitem__, above_one="the anchor's new similarity is set to 1")
    page = (tmp_path / "r.html").read_text()
    assert "a score above 1" not in page and '<section class="legend">' in page


def test_everything_is_escaped_and_the_page_is_self_contained(report):
    _, page, _ = report
    assert "<script" not in page and page.count("&lt;script&gt;") == 3  # the query, a check's reason, a note
    assert not re.search(r'(src|href)="(https?:|//)', page)  # nothing from outside


def test_thumbnails_are_tall_and_link_to_the_photo_files(report):
    _, page, photos = report
    for path in photos.values():
        if path.name in ("a b.png", "it's \"odd\".png"):
            url = path.resolve().as_uri()
            assert " " not in url and '"' not in url
            assert f'href="{url.replace(chr(39), "&#x27;")}"' in page
    sources = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', page)
    assert sources
    with Image.open(io.BytesIO(base64.b64decode(sources[0]))) as im:
        assert im.size == (THUMB_HEIGHT // 2, THUMB_HEIGHT)  # 128 x 256 photos: 96 x 192
    assert f"img{{height:{THUMB_HEIGHT}px" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_chromium_renders_the_report(report, tmp_path):
    path, _, _ = report
    png = tmp_path / "shot.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(flags + [f"--screenshot={png}", "--window-size=1200,1600", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(png) as im:
        assert im.size == (1200, 1600)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10  # not a blank page
    # the photos are drawn: some pixels have the thumbnails' colours (green-dominant first photo)
    assert ((pixels[..., 1] > 150) & (pixels[..., 0] < 60) & (pixels[..., 2] < 130)).sum() > 1000
    dom = subprocess.run(flags + ["--dump-dom", path.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert '<section class="legend">' in dom and '<span class="cannot-tell">cannot tell</span>' in dom
