import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data.synthpedes import WorldConfig, WorldExistsError, ambiguity, ceiling_scores, generate, plan
from data.synthpedes.__main__ import main as synthpedes_main
from data.synthpedes.captions import mentionable
from eval.metrics import rank_metrics
from tools.attributes import NONE, SLOT_NAMES, SURFACE_FORMS

from .conftest import SMALL


def test_same_seed_gives_byte_identical_annotations(small_world, tmp_path):
    again = tmp_path / "again"
    generate(again, SMALL, workers=2, progress=False)
    for name in ("reid_raw.json", "attributes.json"):
        assert (again / name).read_bytes() == (small_world / name).read_bytes()


def test_other_seed_gives_other_identities():
    a, _, _ = plan(WorldConfig(seed=1, train_ids=0, val_ids=0, test_ids=20))
    b, _, _ = plan(WorldConfig(seed=2, train_ids=0, val_ids=0, test_ids=20))
    assert [r["captions"] for r in a] != [r["captions"] for r in b]


def test_split_identities_do_not_depend_on_other_split_sizes():
    _, small, _ = plan(WorldConfig(seed=3, train_ids=0, val_ids=0, test_ids=15))
    _, big, _ = plan(WorldConfig(seed=3, train_ids=7, val_ids=2, test_ids=15))
    strip = lambda anns: [(a["attributes"], a["captions"]) for a in anns if a["split"] == "test"]
    assert strip(small) == strip(big)


def test_layout_images_and_cameras(small_world):
    records = json.loads((small_world / "reid_raw.json").read_text())
    ann = json.loads((small_world / "attributes.json").read_text())["images"]
    assert len(records) == len(ann)
    per_id = Counter(r["id"] for r in records)
    assert set(per_id.values()) <= {2, 3, 4, 5, 6}
    cams: dict[int, list[int]] = {}
    for a in ann:
        cams.setdefault(a["id"], []).append(a["camera"])
    assert all(len(set(c)) == len(c) for c in cams.values()), "an identity's photos come from different cameras"
    for r in records[:10]:
        assert set(r) >= {"split", "captions", "file_path", "processed_tokens", "id"}
        assert len(r["captions"]) == 2
        img = Image.open(small_world / "imgs" / r["file_path"])
        assert img.size == (128, 256) and img.mode == "RGB"
    assert {r["split"] for r in records} == {"train", "val", "test"}


def test_captions_never_state_invisible_attributes():
    _, anns, _ = plan(WorldConfig(seed=5, train_ids=0, val_ids=0, test_ids=300, noise_rate=0.0))
    checked = 0
    for a in anns:
        allowed = set(mentionable(a["attributes"], a["visible"]))
        for cap in a["captions"]:
            assert set(cap["stated"]) <= allowed
            for slot, value in cap["stated"].items():
                assert a["visible"][slot] and value == a["attributes"][slot] and value != NONE
            checked += 1
    assert checked > 1000


def test_caption_share_and_wording():
    records, anns, _ = plan(WorldConfig(seed=6, train_ids=0, val_ids=0, test_ids=200, noise_rate=0.0))
    shares = []
    for r, a in zip(records, anns):
        n = len(mentionable(a["attributes"], a["visible"]))
        for text, cap in zip(r["captions"], a["captions"]):
            if n >= 3:
                shares.append(len(cap["stated"]) / n)
            assert 1 <= text.count(".") <= 3, text
            low = text.lower()
            for slot, value in cap["stated"].items():
                forms = SURFACE_FORMS["color"][value] if slot.endswith("color") and slot != "hair_color" else \
                    SURFACE_FORMS.get(slot, {}).get(value, ())
                if forms:
                    assert any(f.lower() in low for f in forms), (slot, value, text)
    assert 0.4 <= min(shares) and max(shares) <= 0.8
    assert 0.5 < float(np.mean(shares)) < 0.7


def test_noise_rate_is_near_its_setting():
    _, anns, _ = plan(WorldConfig(seed=9, train_ids=0, val_ids=0, test_ids=2000))
    caps = [c for a in anns for c in a["captions"]]
    noisy = [c for c in caps if c["noise"]]
    assert abs(len(noisy) / len(caps) - 0.03) < 0.008
    for c in noisy:
        assert c["stated"][c["noise"]["slot"]] == c["noise"]["stated"] != c["noise"]["true"]


def test_default_test_split_ambiguity_is_between_2_and_5():
    _, anns, _ = plan(WorldConfig(seed=0, train_ids=0, val_ids=0, test_ids=1000))
    value = ambiguity({"images": anns}, "test")
    assert 2.0 <= value <= 5.0


def _ann(pid, attrs, visible=None, stated=()):
    full = {s: None for s in SLOT_NAMES} | attrs
    vis = {s: True for s in SLOT_NAMES} | (visible or {})
    return {"id": pid, "split": "test", "file_path": f"{pid}.jpg", "attributes": full, "visible": vis,
            "captions": [{"stated": s, "noise": None} for s in stated]}


def test_ceiling_counts_visible_agreement_and_ties():
    red = {"upper_color": "red", "gender": "male"}
    anns = [
        _ann(1, red, stated=[{"upper_color": "red", "gender": "male"}]),
        _ann(2, red, visible={"upper_color": False}),
        _ann(3, {"upper_color": "blue", "gender": "male"}),
    ]
    scores, qp, gp = ceiling_scores({"images": anns}, "test")
    assert scores.tolist() == [[2, 1, 1]]
    m = rank_metrics(scores, qp, gp, ties="expected")
    assert m["R1"] == 100.0
    # identity 2 agrees with everything stated (the hidden colour is still red): ambiguity 2
    assert ambiguity({"images": anns}, "test") == 2.0


def test_resume_and_refusing_another_world(small_world, tmp_path):
    out = tmp_path / "w"
    cfg = WorldConfig(seed=11, train_ids=0, val_ids=0, test_ids=3)
    generate(out, cfg, workers=1, progress=False)
    victim = next((out / "imgs" / "test").iterdir())
    original = victim.read_bytes()
    victim.unlink()
    summary = generate(out, cfg, workers=1, progress=False)
    assert summary["rendered"] == 1 and victim.read_bytes() == original
    with pytest.raises(WorldExistsError):
        generate(out, WorldConfig(seed=12, train_ids=0, val_ids=0, test_ids=3), workers=1, progress=False)


def test_cli_writes_world_and_preview(tmp_path, capsys):
    rc = synthpedes_main(["--out", str(tmp_path / "w"), "--train-ids", "0", "--val-ids", "0", "--test-ids", "4",
                          "--seed", "3", "--workers", "1", "--quiet", "--preview", str(tmp_path / "p.png")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["identities"] == 4 and summary["images_per_second"] > 0
    assert Image.open(tmp_path / "p.png").size[0] > 0
    assert synthpedes_main(["--out", str(tmp_path / "x"), "--train-ids", "0", "--val-ids", "0", "--test-ids", "0"]) == 2


def test_ceiling_cli(small_world, capsys):
    from eval.ceiling import main as ceiling_main

    assert ceiling_main([str(small_world), "--split", "test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["ceiling"]["R1"] <= 100 and out["ceiling"]["R10"] >= out["ceiling"]["R1"]
    assert ceiling_main([str(small_world / "nope")]) == 1
    assert ceiling_main([str(small_world), "--knowledge", "photo"]) == 0
    photo = json.loads(capsys.readouterr().out)
    assert photo["knowledge"] == "photo" and photo["ceiling"]["R1"] >= out["ceiling"]["R1"]


def test_knowledge_ceilings_add_what_the_photo_shows_to_the_caption():
    from data.synthpedes.ceiling import split_annotations
    from eval.ceiling import with_knowledge

    # the caption says only "red top"; the photo also shows a cap (person) and a park (context)
    anns = [_ann(1, {"upper_color": "red", "hat": "cap", "background": "park", "belt": "belt"},
                 visible={"belt": False}, stated=[{"upper_color": "red"}]),
            _ann(2, {"upper_color": "red", "hat": "none", "background": "park"}),
            _ann(3, {"upper_color": "red", "hat": "cap", "background": "street"})]
    sa = split_annotations({"images": anns}, "test")
    col = SLOT_NAMES.index
    person, photo = with_knowledge(sa, "person"), with_knowledge(sa, "photo")
    assert with_knowledge(sa, "caption") is sa
    assert person.stated[0, col("hat")] >= 0 and person.stated[0, col("background")] < 0
    assert photo.stated[0, col("background")] >= 0
    assert person.stated[0, col("belt")] < 0  # not visible in the photo: nobody could say
    scores, qp, gp = ceiling_scores(sa)
    assert scores.tolist() == [[1, 1, 1]]
    assert ceiling_scores(person)[0].tolist() == [[2, 1, 2]]
    assert ceiling_scores(photo)[0].tolist() == [[3, 2, 2]]
    with pytest.raises(ValueError):
        with_knowledge(sa, "everything")
