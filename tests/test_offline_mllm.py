"""The offline MLLM gives evidence, never invention: it abstains where it has nothing to check."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tools import attributes
from tools.attributes import SLOT_NAMES, SLOTS
from tools.mllm.base import ImageRef
from tools.mllm.offline import OfflineMLLM
from tools.mllm.recogniser import DEFAULT_WEIGHTS, UNSEEN, AttributeNet, Recogniser


@pytest.fixture(scope="module")
def mllm() -> OfflineMLLM:
    return OfflineMLLM()


@pytest.fixture(scope="module")
def person_photo(small_world) -> ImageRef:
    path = sorted((small_world / "imgs").rglob("*.jpg"))[0]
    return ImageRef("person", path)


def draw_page(path) -> ImageRef:
    """A page of text, as a phone photo of a document would be (landscape, no person)."""
    img = Image.new("RGB", (400, 300), (245, 243, 236))
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(3)
    for y in range(12, 290, 18):
        d.text((14, y), "".join(rng.choice(list("abcdefghij klmnop qrstuvw xyz"), 50)), fill=(30, 30, 30))
    img.save(path)
    return ImageRef("page", path)


def draw_cat(path) -> ImageRef:
    """A grey cat in profile on a wooden floor (drawn here, not by the training code)."""
    img = Image.new("RGB", (360, 280), (176, 132, 88))
    d = ImageDraw.Draw(img)
    for x in range(0, 360, 40):
        d.line([x, 0, x, 280], fill=(150, 110, 70), width=3)
    grey = (105, 105, 110)
    d.ellipse([90, 120, 260, 190], fill=grey)  # body
    d.ellipse([240, 80, 300, 140], fill=grey)  # head
    d.polygon([(245, 95), (258, 60), (268, 92)], fill=grey)  # ears
    d.polygon([(275, 92), (288, 60), (297, 98)], fill=grey)
    for x in (110, 140, 210, 235):  # legs
        d.rectangle([x, 175, x + 14, 240], fill=grey)
    d.line([95, 150, 50, 100], fill=grey, width=12)  # tail
    img.save(path)
    return ImageRef("cat", path)


@pytest.mark.parametrize("text", ["", "???", "一个穿红色外套的女人", "Una mujer con un abrigo rojo",
                                  "someone I saw near the entrance yesterday"])
def test_nothing_to_check_abstains(mllm, person_photo, text):
    v = mllm.verify(person_photo, text)
    assert v.match is None and v.reason.startswith("abstained")
    assert "yes" not in v.reason


def test_a_readable_description_gets_a_verdict(mllm, person_photo):
    v = mllm.verify(person_photo, "a person in a red coat and jeans")
    assert v.match in (True, False) and 0.0 <= v.confidence <= 1.0


def test_the_shipped_recogniser_has_a_presence_head(mllm, person_photo):
    assert mllm.recogniser.presence is not None
    assert mllm.person_probability(person_photo) >= mllm.recogniser.presence_threshold
    assert mllm.sees_person(person_photo)


@pytest.mark.parametrize("draw", [draw_page, draw_cat])
def test_no_person_in_the_photo_abstains_and_cannot_tell(mllm, tmp_path, draw):
    photo = draw(tmp_path / f"{draw.__name__}.png")
    assert not mllm.sees_person(photo), mllm.person_probability(photo)
    v = mllm.verify(photo, "a man in a black coat and blue jeans")
    assert v.match is None and "does not show a person" in v.reason
    answers = mllm.ask(photo, list(SLOT_NAMES))
    assert [a.value for a in answers] == [None] * len(SLOT_NAMES)
    assert all("cannot tell" in a.text for a in answers)


def test_presence_leaves_the_attribute_outputs_unchanged(tmp_path, person_photo):
    """The same attribute weights with and without the presence head give identical probabilities."""
    with_head = Recogniser.load(DEFAULT_WEIGHTS, "cpu")
    config = dict(with_head.config)
    config.pop("presence")
    (tmp_path / "r.json").write_text(json.dumps(config))
    (tmp_path / "r.safetensors").write_bytes(DEFAULT_WEIGHTS.read_bytes())
    without = Recogniser.load(tmp_path / "r.safetensors", "cpu")
    assert without.presence is None
    probs, person = with_head.predict_with_presence([person_photo.path])
    assert probs == without.predict([person_photo.path]) and person[0] is not None
    assert without.predict_with_presence([person_photo.path])[1] == [None]


def test_an_extended_vocabulary_still_loads_the_shipped_recogniser(monkeypatch, person_photo):
    """A value added to a slot after the recogniser was trained is never predicted and never
    contradicted: the weights keep the classes they were trained with."""
    extended = dataclasses.replace(SLOTS["lower_type"], values=SLOTS["lower_type"].values + ("dress",))
    monkeypatch.setitem(attributes.SLOTS, "lower_type", extended)
    rec = Recogniser.load(DEFAULT_WEIGHTS, "cpu")
    assert rec.classes["lower_type"] == ["trousers", "jeans", "shorts", "skirt", UNSEEN]
    mllm = OfflineMLLM(rec)
    probs = mllm.probabilities([person_photo])[0]
    assert "dress" not in probs["lower_type"]
    assert mllm.contradictions(probs, {"lower_type": "dress"}) == {}
    answer = mllm.ask(person_photo, ["lower_type"])[0]
    assert answer.value != "dress"


def test_weights_without_classes_from_another_vocabulary_are_refused(monkeypatch, tmp_path):
    net = AttributeNet(widths=(8, 16), hidden=32, input_size=(64, 32), stem=8)
    path = tmp_path / "old.safetensors"
    Recogniser(net).save(path)
    config = json.loads(path.with_suffix(".json").read_text())
    del config["classes"]  # as files written before the classes were stored
    path.with_suffix(".json").write_text(json.dumps(config))
    assert Recogniser.load(path).classes["lower_type"][:-1] == list(SLOTS["lower_type"].values)
    extended = dataclasses.replace(SLOTS["lower_type"], values=SLOTS["lower_type"].values + ("dress",))
    monkeypatch.setitem(attributes.SLOTS, "lower_type", extended)
    with pytest.raises(ValueError, match="names no classes"):
        Recogniser.load(path)


def test_presence_head_is_in_the_fingerprint(tmp_path):
    rec = Recogniser.load(DEFAULT_WEIGHTS, "cpu")
    before = OfflineMLLM(rec).fingerprint
    with torch.no_grad():
        rec.presence.mlp[-1].bias.add_(1.0)
    assert OfflineMLLM(rec).fingerprint != before
