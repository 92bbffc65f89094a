import json

import numpy as np
import pytest

from eval.benchmark import main as benchmark_main
from eval.thi import NoisyVerifier, plot_rounds
from eval.thi import main as thi_main
from tools.mllm.base import ImageRef
from graphs.server import oracle_annotations
from tools.mllm.oracle import OracleMLLM

from .helpers import tiny_model_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('bench'))}"


def test_benchmark_json_ceiling_chroma_and_similarity_dump(small_world, model, tmp_path, capsys):
    out, npz = tmp_path / "b.json", tmp_path / "s.npz"
    assert benchmark_main([str(small_world), "--model", model, "--json", str(out), "--dump-similarity", str(npz),
                           "--quiet"]) == 0
    report = json.loads(out.read_text())
    for key in ("R1", "R5", "R10", "mAP", "mINP", "num_queries", "num_gallery"):
        assert key in report
    assert report["num_queries"] == 2 * report["num_gallery"]
    assert set(report["ceiling"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    assert 0.0 <= report["chroma"]["top10_recall_vs_exact"] <= 1.0 and report["chroma"]["query_ms_p50"] > 0
    d = np.load(npz)
    assert d["similarity"].shape == (report["num_queries"], report["num_gallery"]) and d["similarity"].dtype == np.float32
    assert len(d["query_pids"]) == report["num_queries"] and len(d["gallery_pids"]) == report["num_gallery"]
    assert "caption-only ceiling" in capsys.readouterr().out
    assert benchmark_main([str(tmp_path / "missing"), "--model", model]) == 1


def test_benchmark_can_rephrase_the_queries(small_world, model):
    from eval.benchmark import run_benchmark

    plain, sim_plain, *_ = run_benchmark(small_world, model=model, chroma=False, progress=False)
    again, sim_again, *_ = run_benchmark(small_world, model=model, chroma=False, progress=False, rephrase_seed=3)
    assert "queries" not in plain and "seed 3" in again["queries"]
    assert again["num_queries"] == plain["num_queries"]
    assert not np.allclose(sim_plain, sim_again)  # other texts, other similarities


def test_thi_benchmark_keys_rounds_and_plot(small_world, model, tmp_path):
    out, png = tmp_path / "t.json", tmp_path / "r1.png"
    rc = thi_main([str(small_world), "--model", model, "--mllm", "oracle", "--policy", "paper,adaptive", "--xi", "-1",
                   "--data-dir", str(tmp_path / "db"), "--json", str(out), "--plot", str(png), "--quiet"])
    assert rc == 0
    reports = json.loads(out.read_text())
    assert [r["policy"] for r in reports] == ["paper", "adaptive"]
    for r in reports:
        assert set(r) >= {"baseline", "final", "rounds", "mllm_calls", "latency_ms", "ceiling"}
        assert len(r["rounds"]) == 5 and r["rounds"][-1] == r["final"]
        assert set(r["mllm_calls"]) == {"mean", "max"} and set(r["latency_ms"]) == {"p50", "p95"}
        assert r["oracle"] is True
    assert png.stat().st_size > 1000
    # a simulated user answering about the target
    rc = thi_main([str(small_world), "--model", model, "--mllm", "oracle", "--user", "simulated", "--limit", "6",
                   "--data-dir", str(tmp_path / "db"), "--json", str(out), "--quiet",
                   "--config", '{"questions_from": "probe", "user_verify_budget": 4}'])
    report = json.loads(out.read_text())
    assert rc == 0 and report["user"].startswith("simulated")
    assert report["config"]["questions_from"] == "probe" and report["config"]["user_verify_budget"] == 4


def test_thi_benchmark_refuses_a_bad_config(small_world, capsys):
    assert thi_main([str(small_world), "--config", '{"no_such_knob": 1}']) == 2
    assert "bad --config" in capsys.readouterr().err
    assert thi_main([str(small_world), "--config", '{"user_check": "maybe"}']) == 2
    assert "user_check" in capsys.readouterr().err


def test_noisy_verifier_flips_answers(small_world):
    from data import read_dataset

    rec = read_dataset(small_world).split("test")[0]
    image = ImageRef(rec.image, rec.image_path)
    inner = OracleMLLM(oracle_annotations(small_world))
    always = NoisyVerifier(inner, flip=1.0)
    never = NoisyVerifier(OracleMLLM(oracle_annotations(small_world)), flip=0.0)
    assert always.verify(image, rec.captions[0]).match != never.verify(image, rec.captions[0]).match


def test_tuning_refuses_the_test_split_and_bad_settings(small_world, capsys):
    from eval.tune_thi import main as tune_main

    assert tune_main([str(small_world), "--split", "test"]) == 2
    assert "validation split" in capsys.readouterr().err
    assert tune_main([str(small_world), '{"no_such_knob": 1}']) == 2
    assert "bad setting" in capsys.readouterr().err


def test_tuning_with_a_simulated_user_answering_from_the_annotations(small_world, model, capsys, tmp_path,
                                                                      monkeypatch):
    from eval.tune_thi import main as tune_main

    monkeypatch.setenv("THI_HOME", str(tmp_path))  # its gallery index goes here, not under the user's home

    assert tune_main([str(small_world), "--model", model, "--limit", "3",
                      '{"user": "simulated", "user_mllm": "oracle", "user_verify_budget": 4}']) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["user"].startswith("simulated (oracle") and line["setting"] == {"user_verify_budget": 4}
    assert line["mllm_calls"]["max"] >= 1
