"""One meaning per flag across the command lines: bad values refused with one line by shared
types, --json a switch that prints JSON (--out writes the file; --json FILE still read as --out
for one release), the same default round limit, defaults that work from a clone, hints that fit."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from data.stats import main as stats_main
from data.synthpedes.__main__ import main as synthpedes_main
from eval.ablation import main as ablation_main
from eval.benchmark import main as benchmark_main
from eval.diagnose import main as diagnose_main
from eval.mllm import main as mllm_main
from eval.thi import main as eval_thi_main
from eval.tune_thi import main as tune_main
from graphs.config import THIConfig
from graphs.rda import main as rda_main
from graphs.thi.cli import main as thi_main
from tools.cliargs import cosine, float_in, int_at_least, non_negative_int, positive_int, unit_float
from tools.gallery import main as gallery_main
from train.__main__ import main as train_main

from .helpers import tiny_model_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('flags'))}"


def test_the_shared_types_accept_the_range_and_refuse_the_rest():
    assert positive_int("3") == 3 and non_negative_int("0") == 0
    assert unit_float("0") == 0.0 and unit_float("1") == 1.0 and cosine("-1") == -1.0
    assert int_at_least(2)("2") == 2 and float_in(0, 1, low_open=True)("0.5") == 0.5
    for check, text, words in [(positive_int, "0", "integer >= 1"), (positive_int, "-2", "integer >= 1"),
                               (positive_int, "1.5", "an integer"), (non_negative_int, "x", "an integer"),
                               (unit_float, "1.01", "within [0, 1]"), (unit_float, "nan", "finite"),
                               (cosine, "-1.5", "within [-1, 1]"), (float_in(0, 1, low_open=True), "0", "(0, 1]")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words.replace("[", r"\[").replace("(", r"\(")):
            check(text)


D = "some-folder"  # never read: the value is refused first
BAD_VALUES = [
    (thi_main, ["--query", "a man", "-k", "0"], "-k"),
    (thi_main, ["--query", "a man", "--rounds", "0"], "--rounds"),
    (thi_main, ["--query", "a man", "--xi", "1.5"], "--xi"),
    (thi_main, ["--query", "a man", "--lam", "-0.1"], "--lam"),
    (thi_main, ["--demo", "--seed", "x"], "--seed"),
    (thi_main, ["--demo", "--seed", "-1"], "--seed"),
    (eval_thi_main, [D, "--limit", "-5"], "--limit"),
    (eval_thi_main, [D, "--rounds", "0"], "--rounds"),
    (eval_thi_main, [D, "-k", "0"], "-k"),
    (eval_thi_main, [D, "--flip", "2"], "--flip"),
    (eval_thi_main, [D, "--seed", "1.5"], "--seed"),
    (eval_thi_main, [D, "--policy", "papers"], "--policy"),
    (eval_thi_main, [D, "--lam", "2"], "--lam"),
    (benchmark_main, [D, "--rephrase", "-1"], "--rephrase"),
    (mllm_main, [D, "--limit", "0"], "--limit"),
    (diagnose_main, [D, "probe", "--limit", "-1"], "--limit"),
    (tune_main, [D, "--limit", "0"], "--limit"),
    (ablation_main, [D, "--limit", "-1"], "--limit"),
    (ablation_main, [D, "--seed", "x"], "--seed"),
    (gallery_main, ["query", "a man", "--gallery", D, "-k", "0"], "-k"),
    (rda_main, [D, "--out", "x.json", "--m", "0"], "--m"),
    (rda_main, [D, "--out", "x.json", "--workers", "0"], "--workers"),
    (rda_main, [D, "--out", "x.json", "--min-confidence", "1.5"], "--min-confidence"),
    (train_main, [D, "--out", "x", "--epochs", "0"], "--epochs"),
    (train_main, [D, "--out", "x", "--batch-size", "1"], "--batch-size"),
    (train_main, [D, "--out", "x", "--lr", "0"], "--lr"),
    (train_main, [D, "--out", "x", "--same-person-weight", "1.5"], "--same-person-weight"),
    (synthpedes_main, ["--out", D, "--test-ids", "-1"], "--test-ids"),
    (synthpedes_main, ["--out", D, "--noise", "2"], "--noise"),
]


@pytest.mark.parametrize("main,argv,flag", BAD_VALUES, ids=[f"{m.__module__}:{' '.join(a[-2:])}" for m, a, _ in BAD_VALUES])
def test_a_bad_value_is_refused_with_one_line(main, argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0].startswith(f"error: argument {flag}") and "--help)" in err[0], err


def test_demo_and_query_exclude_each_other_and_seed_needs_the_demo(capsys):
    for argv, words in [(["--demo", "--query", "a man"], "not allowed with"),
                        ([], "give --query TEXT or --demo"),
                        (["--query", "a man", "--seed", "3"], "--seed chooses the --demo caption")]:
        with pytest.raises(SystemExit) as exit_:
            thi_main(argv)
        err = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and words in err[0], err


def _default_of(main, flag: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    after = text.split(flag + " ", 1)[1]
    return after.split("(default ", 1)[1].split(")", 1)[0]


def test_every_cli_defaults_to_the_same_round_limit_and_k(capsys):
    d = THIConfig()
    assert _default_of(thi_main, "--rounds ROUNDS", capsys) == str(d.rounds)
    assert _default_of(eval_thi_main, "--rounds ROUNDS", capsys) == str(d.rounds)
    assert _default_of(thi_main, "-k K", capsys) == str(d.k)
    assert _default_of(eval_thi_main, "-k K", capsys) == str(d.k)


def test_json_prints_one_object_and_out_writes_the_file(small_world, model, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert benchmark_main([str(small_world), "--model", model, "--no-chroma", "--quiet", "--json",
                           "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert printed == json.loads(out.read_text()) and {"R1", "mAP", "num_queries"} <= set(printed)


def test_the_old_json_file_form_still_writes_the_file_with_a_warning(small_world, model, tmp_path, capsys):
    out = tmp_path / "old.json"
    assert benchmark_main([str(small_world), "--model", model, "--no-chroma", "--quiet", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "R1" in json.loads(out.read_text())
    assert "caption-only ceiling" in captured.out  # the table, as before: not JSON on stdout
    assert f"--json FILE is deprecated: use --out {out}" in captured.err
    with pytest.raises(SystemExit):
        benchmark_main([str(small_world), "--json", str(out), "--out", str(out)])
    assert "give --out only" in capsys.readouterr().err


def test_ablation_without_trained_models_says_how_to_get_them(small_world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fresh clone: no runs/ folder
    assert ablation_main([str(small_world), "--out", str(tmp_path / "a.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --base-model runs/synthpedes-small-cont and --rda-model")
    assert "--train" in err[0] and not (tmp_path / "a.json").exists()


def test_hints_fit_the_situation(small_world, model, tmp_path, capsys):
    a_file = small_world / "reid_raw.json"
    assert stats_main([str(a_file)]) == 1
    assert "a file, not a dataset folder" in capsys.readouterr().err
    db = ["--model", model, "--data-dir", str(tmp_path / "db"), "--quiet"]
    assert thi_main(["--query", "a man", "--gallery", str(a_file)] + db) == 1
    err = capsys.readouterr().err
    assert "a file, not a folder of images" in err and "not found" not in err
    # not indexed: --index is the fix, and it is named
    assert thi_main(["--query", "a man", "--gallery", str(small_world), "--split", "val"] + db) == 1
    assert "is not indexed" in (err := capsys.readouterr().err) and "pass --index" in err
    # --index was given and the folder has no images: no advice to pass --index
    empty = tmp_path / "empty"
    empty.mkdir()
    assert thi_main(["--query", "a man", "--gallery", str(empty), "--index"] + db) == 1
    err = capsys.readouterr().err
    assert "no image files found" in err and "--index" not in err


def test_skip_missing_and_the_model_line_reach_the_thi_commands(small_world, model, tmp_path, capsys):
    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    records = json.loads((world / "reid_raw.json").read_text())
    gone = next(r for r in records if r["split"] == "test")
    (world / "imgs" / gone["file_path"]).unlink()
    base = ["--gallery", str(world), "--index", "--model", model, "--data-dir", str(tmp_path / "db"), "--mllm", "oracle"]
    assert thi_main(["--query", "a man in a blue jacket"] + base) == 1
    assert "--skip-missing" in capsys.readouterr().err
    assert thi_main(["--query", "a man in a blue jacket", "--json", "--skip-missing"] + base) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ranking"]
    assert [x for x in captured.err.splitlines() if x.startswith("model ")] == [captured.err.splitlines()[0]]
    assert eval_thi_main([str(world), "--model", model, "--mllm", "oracle", "--limit", "2", "--quiet",
                          "--data-dir", str(tmp_path / "db")]) == 1
    assert "--skip-missing" in capsys.readouterr().err
    assert eval_thi_main([str(world), "--model", model, "--mllm", "oracle", "--limit", "2", "--quiet", "--json",
                          "--skip-missing", "--data-dir", str(tmp_path / "db")]) == 0
    report = json.loads(capsys.readouterr().out)
    test_images = {r["file_path"] for r in records if r["split"] == "test"}
    assert report["num_queries"] == 2 and report["num_gallery"] == len(test_images) - 1
