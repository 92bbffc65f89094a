"""eval.ablation end to end on a tiny world: RDA, two short trainings, baseline and THI rows."""

from __future__ import annotations

import json

from eval.ablation import main


def test_ablation_trains_both_models_and_writes_the_table(small_world, tmp_path, capsys):
    out = tmp_path / "ablation.json"
    args = [str(small_world), "--train", "--base-model", f"local-dir:{tmp_path / 'base'}",
            "--rda-model", f"local-dir:{tmp_path / 'rda'}", "--rda-out", str(tmp_path / "rda.json"),
            "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    table = json.loads(out.read_text())
    for row in ("shipped", "base", "rda", "thi", "rda+thi", "ceiling"):
        assert set(table[row]) == {"R1", "R5", "R10", "mAP", "mINP"}, row
    assert table["thi_baseline_same_queries"] == table["base"]  # THI starts from the base model's ranking
    assert any("--annotations" in c for c in table["settings"]["commands"])
    records = json.loads((tmp_path / "rda.json").read_text())
    assert any(r.get("diversity_captions") for r in records)
    # a finished run is not trained again; --restart trains both again
    model = tmp_path / "base" / "open_clip_model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert main(args) == 0
    assert model.stat().st_mtime_ns == stamp
    assert main(args + ["--restart"]) == 0
    assert model.stat().st_mtime_ns != stamp
    assert len((tmp_path / "base" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_failed_step_is_one_clear_error(small_world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main([str(small_world), "--train", "--rda-out", str(blocker / "rda.json"), "--out", str(tmp_path / "a.json"),
               "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: a training step failed: python -m graphs.rda")
    assert not (tmp_path / "a.json").exists()
