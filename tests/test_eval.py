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
    assert benchmark_main([str(small_world), "--model", model, "--out", str(out), "--dump-similarity", str(npz),
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
                   "--data-dir", str(tmp_path / "db"), "--out", str(out), "--plot", str(png), "--quiet"])
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
                   "--data-dir", str(tmp_path / "db"), "--out", str(out), "--quiet",
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


# -- the authors' checkpoints, and bad input ----------------------------------------------------


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    from tests.research_checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("research")
    small = dict(vision_width=64, vision_layers=1, patch=16, image_size=(96, 32), text_width=64, text_layers=1,
                 embed_dim=32, tse_dim=48)
    return {fmt: make_checkpoint(root / fmt / "best.pth", fmt, seed=i, **small)
            for i, fmt in enumerate(("irra", "rde", "icl", "icl168"))}


@pytest.mark.parametrize("fmt,label,score", [("irra", "IRRA checkpoint", "bge"), ("rde", "RDE/ICL checkpoint", "fused"),
                                             ("icl", "RDE/ICL checkpoint", "fused"),
                                             ("icl168", "RDE/ICL checkpoint", "fused")])
def test_benchmark_with_only_pretrained_best_pth(small_world, research, tmp_path, capsys, fmt, label, score):
    from eval.benchmark import run_benchmark
    from tools.tse import similarity

    out = tmp_path / "r.json"
    assert benchmark_main([str(small_world), "--pretrained", str(research[fmt]), "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert label in first and "QuickGELU" in first and "96x32" in first and "bilinear" in first
    assert first.endswith(f"score {score}") and f"context {168 if fmt == 'icl168' else 77}" in first
    report = json.loads(out.read_text())
    assert report["score"] == score and report["checkpoint"]["format"] == ("irra" if fmt == "irra" else "rde")
    if score == "fused":  # the fused ranking is its own, and its parts are reported beside it
        assert set(report["parts"]) == {"bge", "tse"} and "bge alone" in printed
        assert report["chroma"]["search"] == "exact" and report["chroma"]["top10_recall_vs_exact"] == 1.0
        _, sim, *_ = run_benchmark(small_world, pretrained=str(research[fmt]), chroma=False, progress=False,
                                   score="bge")
        _, fused, *_ = run_benchmark(small_world, pretrained=str(research[fmt]), chroma=False, progress=False)
        assert not np.allclose(sim, fused)
        from tools.embedder import Embedder

        emb = Embedder(pretrained=str(research[fmt]))
        assert emb.default_score == "fused"
        from data.readers import read_dataset

        recs = read_dataset(small_world).split("test")
        texts = [c for r in recs for c in r.captions]
        assert np.allclose(fused, similarity(emb.text_features(texts), emb.image_features([r.image_path for r in recs]),
                                             "fused"), atol=1e-5)
    else:
        assert benchmark_main([str(small_world), "--pretrained", str(research[fmt]), "--score", "fused",
                               "--quiet"]) == 1
        assert "needs TSE heads" in capsys.readouterr().err


def test_benchmark_bad_input_is_one_line_and_a_non_zero_exit(small_world, research, tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from tests.helpers import PREPROCESS, TINY_CFG
    from tests.test_readers import write_layout

    unknown = write_layout(tmp_path / "unknown", "cuhk-pedes")
    (unknown / "reid_raw.json").rename(unknown / "annotations.json")
    holes = write_layout(tmp_path / "holes", "cuhk-pedes", drop_image="CUHK01/0363004.png")
    only_pt = tmp_path / "only-pt"
    only_pt.mkdir()
    (only_pt / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS}))
    torch.save({"x": torch.zeros(1)}, only_pt / "weights.pt")
    data = torch.load(research["rde"], weights_only=False)
    del data["model"]["base_model.transformer.resblocks.0.ln_2.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(data, broken)
    cases = {
        "unrecognised layout": ([str(unknown), "--model", f"local-dir:{tiny_model_dir(tmp_path)}"],
                                "annotations.json: looks like an annotation file"),
        "missing images": ([str(holes), "--model", f"local-dir:{tiny_model_dir(tmp_path)}"],
                           "1 of 2 image files of split test do not exist"),
        "random weights": ([str(small_world), "--model", "RN50"], "RANDOM weights"),
        ".pt in local-dir": ([str(small_world), "--model", f"local-dir:{only_pt}"], "holds only weights.pt"),
        "keys that do not fit": ([str(small_world), "--pretrained", str(broken)],
                                 "does not fit .* \\(assumed RDE/ICL checkpoint.*missing 1 keys: transformer.resblocks.0.ln_2.weight"),
    }
    for case, (args, pattern) in cases.items():
        proc = subprocess.run([sys.executable, "-m", "eval.benchmark", *args, "--quiet", "--no-chroma"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, (case, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), (case, lines)
