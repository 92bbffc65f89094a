"""The offline MLLM's attribute recogniser: training (train.attributes), loading, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.synthpedes import WorldConfig, generate
from tools.attributes import SLOT_NAMES
from tools.mllm.recogniser import UNSEEN, AttributeNet, Recogniser
from train.attributes import fit_recogniser, main
from train.pairs import augment


def tiny_net(stem: int = 8) -> AttributeNet:
    return AttributeNet(widths=(8, 16), hidden=32, input_size=(64, 32), stem=stem)


@pytest.fixture(scope="module")
def extra_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("extra") / "synthpedes-extra"
    generate(out, WorldConfig(seed=8, train_ids=6, val_ids=0, test_ids=0), workers=1, progress=False)
    return out


def count_train(root) -> int:
    return sum(im["split"] == "train" for im in json.loads((root / "attributes.json").read_text())["images"])


def test_fit_with_an_extra_world_writes_loadable_weights(small_world, extra_world, tmp_path):
    out = tmp_path / "rec.safetensors"
    report = fit_recogniser(small_world, out, epochs=1, batch_size=16, progress=False, extra_train=[extra_world],
                            net=tiny_net())
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["train_photos"] == count_train(small_world) + count_train(extra_world)
    assert config["stem"] == 8 and config["input_size"] == [64, 32]
    assert len(config["trained_on"]) == 2
    assert set(report["test_accuracy"]) == set(SLOT_NAMES) | {"_visible"}
    rec = Recogniser.load(out)
    photo = next((small_world / "imgs").rglob("*.jpg"))
    probs = rec.predict([photo])[0]
    assert set(probs) == set(SLOT_NAMES)
    for slot in SLOT_NAMES:
        assert UNSEEN in probs[slot]
        assert sum(probs[slot].values()) == pytest.approx(1.0, abs=1e-4)


def test_weights_saved_before_the_stem_existed_still_load(tmp_path):
    net = tiny_net(stem=0)
    path = tmp_path / "old.safetensors"
    Recogniser(net).save(path)
    config = json.loads(path.with_suffix(".json").read_text())
    del config["stem"]  # the key older weight files lack
    path.with_suffix(".json").write_text(json.dumps(config))
    rec = Recogniser.load(path)
    assert len(rec.net.features) == 2 and rec.net.config["stem"] == 0  # the two blocks, no stem in front
    x = torch.zeros(1, 3, 64, 32)
    assert torch.allclose(rec.net(x)["gender"], net.eval()(x)["gender"])


def test_extra_world_must_not_be_the_main_one(small_world, tmp_path, capsys):
    assert main([str(small_world), "--out", str(tmp_path / "r.safetensors"), "--extra-train", str(small_world),
                 "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "main folder" in err[0]


def test_init_continues_from_the_given_network_and_records_it(small_world, tmp_path):
    first = tmp_path / "first.safetensors"
    fit_recogniser(small_world, first, epochs=1, batch_size=16, progress=False, net=tiny_net(), seed=3)
    start = Recogniser.load(first).net.state_dict()
    second = tmp_path / "second.safetensors"
    # lr 0: the weights stay the file's (only batch-norm statistics move), so training started from them
    assert main([str(small_world), "--init", str(first), "--out", str(second), "--epochs", "1", "--lr", "0",
                 "--batch-size", "16", "--quiet"]) == 0
    after = Recogniser.load(second)
    for name, value in after.net.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, start[name]), name
    config = json.loads(second.with_suffix(".json").read_text())
    assert config["init"]["file"] == "first.safetensors" and config["init"]["seed"] == 3
    assert config["input_size"] == [64, 32]  # the architecture comes from the file


def test_init_refuses_an_ensemble(small_world, tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    Recogniser(tiny_net()).save(a)
    Recogniser(tiny_net()).save(b)
    assert main(["--combine", str(a), str(b), "--out", str(tmp_path / "ens.safetensors")]) == 0
    capsys.readouterr()
    assert main([str(small_world), "--init", str(tmp_path / "ens.safetensors"),
                 "--out", str(tmp_path / "c.safetensors"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ensemble" in err[0]
    assert not (tmp_path / "c.safetensors").exists()


def test_cli_rejects_a_folder_without_annotations(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "r.safetensors"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attributes.json" in err[0]


def reference_augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The straightforward form of train.pairs.augment (flip, affine_grid, then brightness/contrast)."""
    x = pixels.permute(0, 3, 1, 2).float().div(255.0)
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    scale = torch.empty(b).uniform_(0.9, 1.05, generator=generator)
    shift = torch.empty(b, 2).uniform_(-0.05, 0.05, generator=generator)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=generator)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (((x - mean) * contrast + mean) * brightness).clamp(0, 1)


def test_fast_augmentation_matches_the_straightforward_one():
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 40, 20, 3), dtype=np.uint8))
    fast = augment(pixels, torch.Generator().manual_seed(3))
    slow = reference_augment(pixels, torch.Generator().manual_seed(3))
    assert fast.shape == (16, 3, 40, 20)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.allclose(fast, pixels.permute(0, 3, 1, 2).float() / 255, atol=1e-2)  # it did change the photos


def test_flip_average_makes_predictions_mirror_invariant():
    torch.manual_seed(0)
    rec = Recogniser(tiny_net(), config={**tiny_net().config, "flip_average": True})
    pixels = np.random.default_rng(1).integers(0, 256, (2, 64, 32, 3), dtype=np.uint8)
    a = rec.predict_pixels(pixels)
    b = rec.predict_pixels(pixels[:, :, ::-1].copy())
    for slot in SLOT_NAMES:
        for value, p in a[0][slot].items():
            assert b[0][slot][value] == pytest.approx(p, abs=1e-5)
    rec.config["flip_average"] = False
    c = rec.predict_pixels(pixels[:, :, ::-1].copy())
    assert any(abs(c[0][s][v] - a[0][s][v]) > 1e-4 for s in SLOT_NAMES for v in a[0][s])  # random weights are not symmetric


def test_combine_writes_an_ensemble_that_averages_its_members(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"rec{seed}.safetensors"
        extra = {"seed": seed, "epochs": 3 + seed, "trained_on": ["w"], "verifier": {"threshold": 0.3}}
        if seed:
            extra["init"] = {"file": "first.safetensors", "trained_on": ["big"]}
        Recogniser(tiny_net()).save(path, extra)
        paths.append(path)
    singles = [Recogniser.load(p).predict_pixels(pixels) for p in paths]
    out = tmp_path / "ensemble.safetensors"
    assert main(["--combine", *map(str, paths), "--out", str(out)]) == 0
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["members"] == 2 and config["seeds"] == [0, 1]
    # each network's own training record, none of them passed off as the ensemble's
    assert config["member_training"] == [{"trained_on": ["w"], "epochs": 3, "seed": 0},
                                         {"trained_on": ["w"], "epochs": 4, "seed": 1,
                                          "init": {"file": "first.safetensors", "trained_on": ["big"]}}]
    assert config["trained_on"] == ["big", "w"]  # the worlds of a continued run count too
    assert "epochs" not in config and "seed" not in config
    assert "verifier" not in config  # fitted on one network's probabilities: must be refitted
    ensemble = Recogniser.load(out)
    assert len(ensemble.members) == 2
    got = ensemble.predict_pixels(pixels)
    for i in range(len(pixels)):
        for slot in SLOT_NAMES:
            for value, p in got[i][slot].items():
                assert p == pytest.approx((singles[0][i][slot][value] + singles[1][i][slot][value]) / 2, abs=1e-5)
    assert any(abs(singles[0][0][s][v] - singles[1][0][s][v]) > 1e-4 for s in SLOT_NAMES for v in got[0][s])
    # saved again (as calibration does) and reloaded: the same two networks
    ensemble.save(tmp_path / "again.safetensors", {"verifier": {"threshold": 0.4}})
    again = Recogniser.load(tmp_path / "again.safetensors")
    assert len(again.members) == 2 and again.config["members"] == 2
    assert again.predict_pixels(pixels)[1]["gender"] == pytest.approx(got[1]["gender"], abs=1e-6)


def test_combine_refuses_bad_input(tmp_path, capsys):
    torch.manual_seed(0)
    Recogniser(tiny_net()).save(tmp_path / "a.safetensors")
    Recogniser(AttributeNet(widths=(8, 8), hidden=16, input_size=(64, 32), stem=8)).save(tmp_path / "b.safetensors")
    assert main(["--combine", str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "c.safetensors")]) == 1
    assert "at least two" in capsys.readouterr().err
    assert main(["--combine", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--out", str(tmp_path / "c.safetensors")]) == 1
    assert "one architecture" in capsys.readouterr().err
    assert main(["--combine", str(tmp_path / "a.safetensors"), str(tmp_path / "missing.safetensors"),
                 "--out", str(tmp_path / "c.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


def test_presence_negatives_have_no_person_and_every_kind():
    from train.presence import NEGATIVE_KINDS, negatives

    photos = np.full((2, 256, 128, 3), 90, np.uint8)
    x, kinds = negatives(2 * len(NEGATIVE_KINDS), seed=4, photos=photos)
    assert x.shape == (2 * len(NEGATIVE_KINDS), 256, 128, 3) and x.dtype == np.uint8
    assert sorted(set(kinds)) == sorted(NEGATIVE_KINDS)
    again, _ = negatives(2 * len(NEGATIVE_KINDS), seed=4, photos=photos)
    assert np.array_equal(x, again)  # a seed draws the same pictures
    assert len({k for k in negatives(9, seed=4)[1]}) == len(NEGATIVE_KINDS) - 1  # no photos: no shuffled ones


def test_fit_presence_writes_a_head_the_recogniser_loads(small_world, tmp_path):
    from train.presence import fit_presence

    rec_path = tmp_path / "rec.safetensors"
    fit_recogniser(small_world, rec_path, epochs=1, batch_size=16, progress=False, net=tiny_net())
    attribute_probs = Recogniser.load(rec_path).predict([next((small_world / "imgs").rglob("*.jpg"))])
    out = tmp_path / "presence.safetensors"
    report = fit_presence(small_world, out, rec_path, photos=24, negatives_per_split=24, heldout=8, epochs=20,
                          progress=False, workers=1)
    assert 0.0 < report["threshold"] <= 0.5
    assert set(report["heldout_test"]) >= {"positive_recall", "negative_recall", "negative_recall_by_kind"}
    config = json.loads(rec_path.with_suffix(".json").read_text())
    assert config["presence"] == "presence.safetensors" and "classes" in config
    rec = Recogniser.load(rec_path)
    assert rec.presence is not None and rec.presence_threshold == report["threshold"]
    photo = next((small_world / "imgs").rglob("*.jpg"))
    probs, person = rec.predict_with_presence([photo])
    assert probs == attribute_probs  # the recogniser stayed frozen
    assert 0.0 <= person[0] <= 1.0


def test_presence_cli_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--presence", "--out", str(tmp_path / "p.safetensors"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
