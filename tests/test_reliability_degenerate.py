"""Degenerate input: one clear line or a defined value, never NaN, an IndexError or a traceback."""

import json

import numpy as np
import pytest
from PIL import Image

from eval.benchmark import main as bench_main
from eval.metrics import NoMatchError, rank_metrics
from eval.thi import main as thi_bench_main
from graphs.thi.cli import main as thi_main
from tools.embedder import Embedder
from tools.gallery import Gallery, items_for
from tools.gallery import main as gallery_main

from .helpers import tiny_model_dir
from .test_readers import write_layout


@pytest.mark.parametrize("ties", ["stable", "expected"])
def test_no_query_with_a_true_match_is_one_clear_error(ties):
    with pytest.raises(NoMatchError, match="no query has a true match"):
        rank_metrics(np.array([[0.3, 0.1], [0.2, 0.9]]), np.array([5, 6]), np.array([1, 2]), ties=ties)


def test_bad_k_and_non_finite_similarities_are_refused():
    sim, qp, gp = np.array([[0.3, 0.1]]), np.array([1]), np.array([1, 2])
    for ks in ((0,), (-5,), (1, 2.5)):
        with pytest.raises(ValueError, match="k >= 1"):
            rank_metrics(sim, qp, gp, ks=ks)
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        rank_metrics(np.array([[np.nan, 0.1]]), qp, gp)


def test_a_single_image_and_a_two_image_gallery_by_hand():
    one = rank_metrics(np.array([[0.2]]), np.array([4]), np.array([4]))
    assert (one["R1"], one["R5"], one["R10"], one["mAP"], one["mINP"]) == (100.0, 100.0, 100.0, 100.0, 100.0)
    # query 1's match is ranked 2nd of 2 (AP 1/2, INP 1/2); query 2 has no match: skipped and counted
    two = rank_metrics(np.array([[0.1, 0.9], [0.5, 0.4]]), np.array([1, 9]), np.array([1, 2]))
    assert (two["R1"], two["R5"], two["mAP"], two["mINP"]) == (0.0, 100.0, 50.0, 50.0)
    assert two["num_queries"] == 1 and two["num_skipped"] == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return f"local-dir:{folder}", Embedder(f"local-dir:{folder}", device="cpu")


def test_thi_benchmark_whose_gallery_has_no_true_match_is_one_line(small_world, tiny, tmp_path, capsys):
    model, emb = tiny
    # the split's gallery indexed with person ids that match no caption's
    name, items = items_for(small_world, "test")
    for it in items:
        it.metadata["pid"] += 10_000
    Gallery.open(name, emb, data_dir=tmp_path / "db").index(items, emb, progress=False)
    rc = thi_bench_main([str(small_world), "--model", model, "--mllm", "oracle", "--data-dir", str(tmp_path / "db"),
                         "--limit", "4", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: no query has a true match in gallery")


def test_single_image_benchmark_gives_defined_metrics(tmp_path, tiny, capsys):
    model, _ = tiny
    root = write_layout(tmp_path / "one", "rstpreid")
    records = json.loads((root / "data_captions.json").read_text())
    (root / "data_captions.json").write_text(json.dumps([records[0], records[2]]))  # one test image, one train
    out = tmp_path / "b.json"
    assert bench_main([str(root), "--model", model, "--no-chroma", "--quiet", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_gallery"] == 1 and report["num_queries"] == 2
    assert all(report[k] == 100.0 for k in ("R1", "R5", "R10", "mAP", "mINP"))


@pytest.mark.parametrize("argv, pattern", [
    (["-k", "-5"], "argument -k: must be an integer >= 1"),
    (["-k", "0"], "argument -k: must be an integer >= 1"),
    (["--rounds", "0"], "argument --rounds: must be an integer >= 1"),
])
def test_thi_cli_refuses_k_and_rounds_below_one(argv, pattern, capsys):
    with pytest.raises(SystemExit) as exit_:
        thi_main(["--query", "a man in red"] + argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0]


def test_thi_on_an_empty_and_a_single_image_gallery(small_world, tiny, tmp_path, capsys):
    model, _ = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    base = ["--query", "a man in red", "--model", model, "--data-dir", str(tmp_path / "db"), "--quiet", "--index"]
    assert thi_main(base + ["--gallery", str(empty)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no image files found" in err[-1] and "pass --index" not in err[-1]
    one = tmp_path / "one"
    one.mkdir()
    Image.open(sorted((small_world / "imgs" / "test").glob("*.jpg"))[0]).save(one / "only.jpg")
    assert thi_main(base + ["--gallery", str(one), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in out["ranking"]] == ["only.jpg"]


@pytest.mark.parametrize("k", ["0", "-5"])
def test_gallery_query_with_k_below_one_is_one_line(small_world, tiny, tmp_path, capsys, k):
    model, _ = tiny
    base = ["--model", model, "--data-dir", str(tmp_path / "db")]
    assert gallery_main(base + ["index", str(small_world)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # a usage error, found by the argument parser
        gallery_main(base + ["query", "a man", "--gallery", str(small_world), "-k", k])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: argument -k: must be an integer >= 1")


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["-k", "-5"]])
def test_thi_benchmark_refuses_k_and_rounds_below_one(small_world, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        thi_bench_main([str(small_world)] + argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "must be an integer >= 1" in lines[0]
