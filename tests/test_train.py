"""Training: outputs, resume after a kill, RDA captions, attribute pre-training, bad input."""

import json

import numpy as np
import pytest

import train.loop as loop
from data.synthpedes import WorldConfig, generate
from graphs.rda import run_rda
from tools.embedder import Embedder
from graphs.server import oracle_annotations
from tools.mllm.oracle import OracleMLLM
from train.loop import TrainConfig, TrainingError, fit

from .helpers import tiny_model_dir

CFG = TrainConfig(epochs=2, batch_size=8, workers=1, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('train'))}"


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fit_writes_a_loadable_model_and_metrics(small_world, model, tmp_path):
    out = tmp_path / "run"
    summary = fit(small_world, out, CFG, model=model, scratch=True, progress=False)
    metrics = _lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) and 0 <= m["val"]["R1"] <= 100 for m in metrics)
    assert summary["best"]["val"]["R1"] == max(m["val"]["R1"] for m in metrics)
    emb = Embedder(f"local-dir:{out}")
    feats = emb.encode_texts(["a man in a red coat", "a woman with a black backpack"])
    assert feats.shape == (2, 32) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)


def test_a_killed_run_resumes_where_it_stopped(small_world, model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = loop.evaluate_split
    calls = {"n": 0}

    def dies_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during epoch 2's validation: epoch 2 is not saved
        return real(*a, **k)

    monkeypatch.setattr(loop, "evaluate_split", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        fit(small_world, out, CFG, model=model, scratch=True, progress=False)
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1]
    monkeypatch.setattr(loop, "evaluate_split", real)
    fit(small_world, out, CFG, model=model, scratch=True, progress=False)
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1, 2]  # epoch 1 not redone, nothing twice
    # the same folder with other settings is refused instead of mixing two runs
    with pytest.raises(TrainingError, match="different training run"):
        fit(small_world, out, TrainConfig(epochs=3, batch_size=8, workers=1), model=model, scratch=True, progress=False)


def test_rda_captions_enter_the_loss(small_world, model, tmp_path, monkeypatch):
    rda = tmp_path / "rda.json"
    run_rda(small_world, rda, OracleMLLM(oracle_annotations(small_world)), m=3, progress=False)
    seen = []
    real = TrainConfig.rda_weight
    monkeypatch.setattr(TrainConfig, "rda_weight", lambda self, epoch: seen.append(epoch) or real(self, epoch))
    fit(small_world, tmp_path / "run", TrainConfig(epochs=1, batch_size=8, workers=1), model=model, scratch=True,
        annotation_file=rda, progress=False)
    assert seen and real(TrainConfig(), 0) == 1.0 and real(TrainConfig(), 40) == pytest.approx(0.1)
    # the finished run resumes with other loader threads, but not with other captions under the same path
    fit(small_world, tmp_path / "run", TrainConfig(epochs=1, batch_size=8, workers=2), model=model, scratch=True,
        annotation_file=rda, progress=False)
    records = json.loads(rda.read_text())
    first = next(r for r in records if r.get("diversity_captions"))
    first["diversity_captions"] = first["diversity_captions"][:1]
    rda.write_text(json.dumps(records))
    with pytest.raises(TrainingError, match="different training run"):
        fit(small_world, tmp_path / "run", TrainConfig(epochs=1, batch_size=8, workers=1), model=model, scratch=True,
            annotation_file=rda, progress=False)
    # without diversity captions the RDA term is never computed
    seen.clear()
    fit(small_world, tmp_path / "plain", TrainConfig(epochs=1, batch_size=8, workers=1), model=model, scratch=True,
        progress=False)
    assert not seen


def test_attribute_pretraining_on_another_world(small_world, model, tmp_path):
    other = tmp_path / "pretrain-world"
    generate(other, WorldConfig(seed=99, train_ids=10, val_ids=0, test_ids=0), workers=1, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=8, workers=1, pretrain_world=str(other), pretrain_epochs=1)
    summary = fit(small_world, tmp_path / "run", cfg, model=model, scratch=True, progress=False)
    images = len(json.loads((other / "reid_raw.json").read_text()))
    assert summary["pretrain"]["epochs"] == 1 and summary["pretrain"]["images"] == images > 0
    # pre-training on the very dataset being trained and evaluated on would leak its labels, also in a list
    for leak in (str(small_world), [str(other), str(small_world)]):
        same = TrainConfig(epochs=1, batch_size=8, workers=1, pretrain_world=leak, pretrain_epochs=1)
        with pytest.raises(TrainingError, match="must not be the dataset"):
            fit(small_world, tmp_path / "leak", same, model=model, scratch=True, progress=False, restart=True)


def test_attribute_pretraining_on_several_worlds(small_world, model, tmp_path):
    worlds = [tmp_path / "w1", tmp_path / "w2"]
    for seed, w in zip((98, 99), worlds):
        generate(w, WorldConfig(seed=seed, train_ids=6, val_ids=0, test_ids=0), workers=1, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=8, workers=1, pretrain_world=[str(w) for w in worlds], pretrain_epochs=1)
    summary = fit(small_world, tmp_path / "run", cfg, model=model, scratch=True, progress=False)
    images = sum(len(json.loads((w / "reid_raw.json").read_text())) for w in worlds)
    assert summary["pretrain"]["images"] == images
    assert all(str(w) in summary["pretrain"]["world"] for w in worlds)


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    from train.__main__ import main

    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]


def test_cli_pretrain_world_repeats():
    from train.__main__ import build_parser

    args = build_parser().parse_args(["d", "--out", "o", "--pretrain-world", "a", "--pretrain-world", "b"])
    assert args.pretrain_world == ["a", "b"]


def test_stated_captions_label_what_each_caption_says(small_world):
    from tools.attributes import SLOT_NAMES
    from train.pretrain import NOT_STATED, stated_captions, text_classes

    texts, y = stated_captions(small_world)
    ann = json.loads((small_world / "attributes.json").read_text())["images"]
    raw = {r["file_path"]: r["captions"] for r in json.loads((small_world / "reid_raw.json").read_text())}
    want = [(text, cap["stated"]) for im in ann for text, cap in zip(raw[im["file_path"]], im["captions"])]
    assert len(texts) == len(want) == len(y)
    for i in (0, len(want) // 2, len(want) - 1):
        text, stated = want[i]
        assert texts[i] == text
        labels = {s: text_classes(s)[y[i, j]] for j, s in enumerate(SLOT_NAMES)}
        assert {s: v for s, v in labels.items() if v != NOT_STATED} == stated


def test_text_pretraining_learns_and_leaves_the_image_tower_alone(small_world, model, tmp_path):
    import torch

    from tools.embedder import load_clip
    from train.pretrain import pretrain_text

    torch.manual_seed(0)
    loaded = load_clip(model)
    visual_before = {k: v.clone() for k, v in loaded.model.visual.state_dict().items()}
    report = pretrain_text(loaded.model, small_world, loaded.tokenizer, epochs=6, batch_size=16, lr=3e-3,
                           progress=False)
    hist = report["history"]
    records = json.loads((small_world / "reid_raw.json").read_text())
    assert report["captions"] == sum(len(r["captions"]) for r in records)
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["train_accuracy"] > hist[0]["train_accuracy"]
    for k, v in loaded.model.visual.state_dict().items():
        assert torch.equal(v, visual_before[k]), k


def test_text_pretraining_in_fit_and_cli(small_world, model, tmp_path, capsys):
    from train.__main__ import main

    other = tmp_path / "pretrain-world"
    generate(other, WorldConfig(seed=97, train_ids=6, val_ids=0, test_ids=0), workers=1, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=8, workers=1, pretrain_world=str(other), pretrain_epochs=1,
                      text_pretrain_epochs=1)
    summary = fit(small_world, tmp_path / "run", cfg, model=model, scratch=True, progress=False)
    captions = sum(len(r["captions"]) for r in json.loads((other / "reid_raw.json").read_text()))
    assert summary["pretrain"]["text"]["captions"] == captions
    # without a world there are no captions to pre-train on: one clear line, nothing trained
    assert main([str(small_world), "--out", str(tmp_path / "o"), "--text-pretrain-epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pretrain-world" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_run_saved_before_a_setting_existed_still_resumes():
    identity = {"dataset": "d", "config": loop.asdict(CFG)}
    older = {"dataset": "d", "config": {k: v for k, v in loop.asdict(CFG).items() if k != "text_pretrain_epochs"}}
    assert loop._same_run(older, identity)
    changed = {"dataset": "d", "config": {**loop.asdict(CFG), "text_pretrain_epochs": 2}}
    assert not loop._same_run(changed, identity)


def test_extra_worlds_join_training_with_their_people_kept_apart(small_world, tmp_path):
    from data.readers import read_dataset
    from train.loop import extra_train_records

    worlds = [tmp_path / "w1", tmp_path / "w2"]
    for seed, w in zip((98, 99), worlds):
        generate(w, WorldConfig(seed=seed, train_ids=5, val_ids=2, test_ids=0), workers=1, progress=False)
    main = read_dataset(small_world, "auto")
    first = max(r.pid for r in main.records) + 1
    extra = extra_train_records([str(w) for w in worlds], "train", small_world, first)
    per_world = [read_dataset(w, "auto").split("train") for w in worlds]
    assert len(extra) == sum(len(r) for r in per_world)
    # the same person in a world stays one person; no person is shared with the main set or between worlds
    assert len({r.pid for r in extra}) == sum(len({r.pid for r in recs}) for recs in per_world)
    assert min(r.pid for r in extra) >= first
    moved = extra[:len(per_world[0])]
    assert [r.image_path for r in moved] == [r.image_path for r in per_world[0]]
    assert len({(a.pid - b.pid) for a, b in zip(moved, per_world[0])}) == 1
    assert all(r.split == "train" for r in extra)
    with pytest.raises(TrainingError, match="must not be the dataset"):
        extra_train_records([str(small_world)], "train", small_world, first)
    with pytest.raises(TrainingError, match="extra world"):
        extra_train_records([str(tmp_path / "missing")], "train", small_world, first)
    # WORLD=FILE reads that world's records from another annotation file (e.g. its RDA output)
    raw = json.loads((worlds[0] / "reid_raw.json").read_text())
    raw[0]["captions"] = ["a marker caption only the other file has"]
    (tmp_path / "other.json").write_text(json.dumps(raw))
    swapped = extra_train_records([f"{worlds[0]}={tmp_path / 'other.json'}"], "train", small_world, first)
    assert any("a marker caption only the other file has" in r.captions for r in swapped)
    assert not any("a marker caption only the other file has" in r.captions for r in extra)
    with pytest.raises(TrainingError, match="extra world"):
        extra_train_records([f"{worlds[0]}={tmp_path / 'missing.json'}"], "train", small_world, first)


def test_fit_trains_on_the_extra_worlds_too(small_world, model, tmp_path, capsys):
    from train.__main__ import main

    other = tmp_path / "other"
    generate(other, WorldConfig(seed=97, train_ids=6, val_ids=0, test_ids=0), workers=1, progress=False)
    alone = fit(small_world, tmp_path / "alone", TrainConfig(epochs=1, batch_size=8, workers=1), model=model,
                scratch=True, progress=False)
    both = fit(small_world, tmp_path / "both", TrainConfig(epochs=1, batch_size=8, workers=1, extra_world=str(other)),
               model=model, scratch=True, progress=False)
    added = len(json.loads((other / "reid_raw.json").read_text()))
    assert both["train_images"] == alone["train_images"] + added
    assert both["train_ids"] == alone["train_ids"] + 6
    assert main([str(small_world), "--out", str(tmp_path / "o"), "--extra-world", str(small_world)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extra world" in err[0]


def test_same_person_weight_reaches_both_losses_and_is_checked(small_world, model, tmp_path, monkeypatch, capsys):
    from train.__main__ import main

    seen = []
    for name in ("sdm", "identity_itc"):
        real = getattr(loop, name)
        monkeypatch.setattr(loop, name, lambda *a, _real=real, _name=name: seen.append((_name, a[-1])) or _real(*a))
    fit(small_world, tmp_path / "run", TrainConfig(epochs=1, batch_size=8, workers=1, same_person_weight=0.25),
        model=model, scratch=True, progress=False)
    assert seen and {w for _, w in seen} == {0.25} and {n for n, _ in seen} == {"sdm", "identity_itc"}
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["config"]["same_person_weight"] == 0.25  # another weight is another run (no silent resume)
    with pytest.raises(SystemExit) as exit_:  # refused by the flag's type
        main([str(small_world), "--out", str(tmp_path / "o"), "--same-person-weight", "1.5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--same-person-weight" in err[0]
    assert not (tmp_path / "o").exists()


def _copy_world(small_world, dest):
    import shutil

    shutil.copytree(small_world, dest)
    return dest


def test_missing_images_only_matter_in_the_splits_training_reads(small_world, model, tmp_path, capsys):
    from data.readers import DatasetError
    from train.__main__ import main

    world = _copy_world(small_world, tmp_path / "world")
    records = json.loads((world / "reid_raw.json").read_text())
    test_image = next(r for r in records if r["split"] == "test")["file_path"]
    (world / "imgs" / test_image).unlink()
    one = TrainConfig(epochs=1, batch_size=8, workers=1)
    summary = fit(world, tmp_path / "a", one, model=model, scratch=True, progress=False)
    assert summary["epochs"] == 1  # a test image missing does not stop training
    train_image = next(r for r in records if r["split"] == "train")["file_path"]
    (world / "imgs" / train_image).unlink()
    with pytest.raises(DatasetError, match="1 of .* image files of split train, val do not exist"):
        fit(world, tmp_path / "b", one, model=model, scratch=True, progress=False)
    base = [str(world), "--model", model, "--scratch", "--epochs", "1", "--batch-size", "8", "--workers", "1", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--skip-missing" in err[0]
    assert main(base + ["--out", str(tmp_path / "d"), "--skip-missing"]) == 0
    assert json.loads(capsys.readouterr().out)["train_images"] == sum(r["split"] == "train" for r in records) - 1


def test_plain_string_rda_entries_are_one_caption_each(small_world, tmp_path):
    from data.readers import read_dataset
    from train.pairs import PairSet, reorganised_caption

    rng = np.random.default_rng(0)
    assert reorganised_caption("A woman in a red coat walks a dog.", rng) == "A woman in a red coat walks a dog."
    mixed = reorganised_caption([["A woman.", "A lady."], "She wears a red coat."], np.random.default_rng(1))
    assert "She wears a red coat." in mixed and ("A woman." in mixed or "A lady." in mixed)
    assert reorganised_caption(["", []], rng) is None and reorganised_caption(7, rng) is None
    # through the batches: ICL-style string entries reach the RDA loss whole, never letter by letter
    tokenizer = Embedder(f"local-dir:{tiny_model_dir(tmp_path)}").tokenizer
    records = read_dataset(small_world).split("train")[:4]
    from dataclasses import replace

    records = [replace(r, extra={**r.extra, "diversity_captions": [f"plain rewrite {i} {j}" for j in range(len(r.captions))]})
               for i, r in enumerate(records)]
    pairs = PairSet(records, (64, 32), tokenizer, workers=1, progress=False)
    batch = next(pairs.batches(4, np.random.default_rng(0)))
    texts = {tokenizer.decode([t for t in row.tolist() if t not in (0, 49406, 49407)]).strip()
             for row in batch.rda_tokens}
    assert all(t.startswith("plain rewrite ") and len(t.split()) == 4 for t in texts), texts


def test_a_model_without_weights_is_refused(tmp_path, small_world):
    from .helpers import tiny_arch

    with pytest.raises(TrainingError, match="has no weights: give --init"):
        fit(small_world, tmp_path / "r", CFG, model=tiny_arch(tmp_path), progress=False)
