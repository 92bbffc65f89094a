"""eval.mllm: verification pairs, verification and attribute scores, and the verifier fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.readers import read_dataset
from data.synthpedes.ceiling import load_annotations
from eval.mllm import attribute_accuracy, fit_verifier, main, verification_pairs, verification_scores
from tools.attributes import SLOT_NAMES
from tools.embedder import Embedder
from tools.mllm.base import ImageRef
from graphs.server import oracle_annotations
from tools.mllm.oracle import OracleMLLM

from .helpers import tiny_model_dir


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('mllm'))}", device="cpu")


def test_pairs_follow_the_paper_construction(small_world, embedder):
    pairs = verification_pairs(small_world, "test", embedder)
    ann = {im["file_path"]: im for im in load_annotations(small_world)["images"]}
    records = read_dataset(small_world).split("test")
    caption_owner = {text: r.image for r in records for text in r.captions}
    stated_by_text = {text: ann[r.image]["captions"][n]["stated"] for r in records for n, text in enumerate(r.captions)}
    positives = [p for p in pairs if p[2]]
    negatives = [p for p in pairs if not p[2]]
    assert len(positives) == 2 * sum(im["split"] == "test" for im in ann.values())  # every caption once
    assert negatives, "a 10-identity gallery has contradicting photos in every top 10"
    for text, image, positive in pairs:
        own = ann[caption_owner[text]]
        if positive:
            assert image.id == caption_owner[text]
        else:
            other = ann[image.id]
            assert other["id"] != own["id"]
            stated = stated_by_text[text]
            # contradicts something the caption states, by the annotations
            assert any(other["visible"].get(s) and other["attributes"].get(s) not in (None, v)
                       for s, v in stated.items())


def test_the_oracle_rejects_every_negative_and_reads_every_attribute(small_world, embedder):
    oracle = OracleMLLM(oracle_annotations(small_world))
    pairs = verification_pairs(small_world, "test", embedder)
    scores = verification_scores(oracle, pairs, progress=False)
    assert scores["negative_recall"] == 1.0
    assert scores["positive_recall"] >= 0.85  # a few captions carry a wrong detail by construction
    assert scores["positives"] + scores["negatives"] == len(pairs) and scores["failed"] == 0
    acc = attribute_accuracy(oracle, small_world, "test", progress=False)
    assert acc["mean_accuracy"] == 1.0 and set(acc["accuracy"]) <= set(SLOT_NAMES)


class FeatureVerifier:
    """Stands in for the offline MLLM: per-image contradiction features given directly."""

    def __init__(self, features: dict[str, dict[str, float]]):
        self.features = features

    def probabilities(self, images):
        return [self.features[im.id] for im in images]

    @staticmethod
    def contradictions(probs, constraints):
        return probs


def test_fit_verifier_trusts_the_slot_that_separates_and_ignores_noise():
    rng = np.random.default_rng(0)
    pairs, features = [], {}
    for n in range(400):
        positive = n % 2 == 0
        # upper_color is contradicted exactly on negatives; gender is noise on both
        features[str(n)] = {"upper_color": 0.0 if positive else float(rng.uniform(0.6, 1.0)),
                            "gender": float(rng.uniform(0, 1))}
        pairs.append(("a person", ImageRef(str(n), "unused.jpg"), positive))
    fit = fit_verifier(FeatureVerifier(features), pairs)
    assert fit["fit_balanced_accuracy"] == 1.0
    def trust(slot: str) -> float:
        return fit["weights"][slot] + fit["log_weights"][slot]

    assert trust("upper_color") > 5 * trust("gender")
    assert all(w >= 0 for w in [*fit["weights"].values(), *fit["log_weights"].values(), fit["max_weight"]])


def test_fit_verifier_is_lenient_with_long_descriptions_where_misreadings_pile_up():
    from tools.attributes import SLOT_NAMES

    rng = np.random.default_rng(0)
    extra = [s for s in SLOT_NAMES if s not in ("upper_color", "gender")][:10]
    pairs, features = [], {}
    for n in range(800):
        positive, long = n % 2 == 0, n % 4 >= 2
        # a long description states ten more slots, and its own photo gets one of them misread at
        # about 0.7; the other identity's photo contradicts it at about 0.95. A short description's
        # own photo contradicts nothing and the other identity's photo about 0.7.
        c = {"upper_color": 0.0, "gender": 0.0} | ({s: 0.0 for s in extra} if long else {})
        if long:
            c["gender"] = float(rng.uniform(0.6, 0.8) if positive else rng.uniform(0.9, 0.99))
        elif not positive:
            c["upper_color"] = float(rng.uniform(0.6, 0.8))
        features[str(n)] = c
        pairs.append(("a person", ImageRef(str(n), "unused.jpg"), positive))
    fit = fit_verifier(FeatureVerifier(features), pairs, steps=8000)
    # no threshold on the contradictions alone separates these; one that moves with what is stated does
    assert fit["fit_balanced_accuracy"] >= 0.99
    assert sum(fit["stated_weights"][s] for s in extra) < 0  # stating more makes it more lenient
    assert all(w >= 0 for w in [*fit["weights"].values(), *fit["log_weights"].values(), fit["max_weight"]])


def test_cli_reports_and_rejects_bad_input(small_world, embedder, tmp_path, capsys):
    out = tmp_path / "m.json"
    model = embedder.name if embedder.name.startswith("local-dir:") else None
    assert model, "the tiny embedder is a local-dir model"
    assert main([str(small_world), "--mllm", "oracle", "--model", model, "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["mllm"] == "oracle" and report["verification"]["negative_recall"] == 1.0
    capsys.readouterr()
    assert main([str(tmp_path / "missing"), "--mllm", "oracle", "--model", model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main([str(small_world), "--mllm", "oracle", "--model", model, "--calibrate", "--quiet"]) == 1
    assert "offline" in capsys.readouterr().err


def offline_with(verifier: dict):
    import torch

    from tools.mllm.offline import OfflineMLLM
    from tools.mllm.recogniser import AttributeNet, Recogniser

    torch.manual_seed(0)
    net = AttributeNet(widths=(8,), hidden=8, input_size=(32, 16), stem=0)
    return OfflineMLLM(recogniser=Recogniser(net, config={**net.config, "verifier": verifier}))


def probs_with_upper_type(p_shown: float, shown: str = "coat", stated: str = "t-shirt") -> dict:
    from tools.attributes import SLOTS
    from tools.mllm.recogniser import UNSEEN

    values = {v: 0.0 for v in SLOTS["upper_type"].values} | {UNSEEN: 0.0}
    values[shown] = p_shown
    values[stated] = 1.0 - p_shown
    return {"upper_type": values}


def test_log_evidence_lets_a_near_certain_contradiction_reject():
    from tools.attributes import SLOTS

    assert {"coat", "t-shirt"} <= set(SLOTS["upper_type"].values)
    linear_only = {"bias": 2.0, "weights": {"upper_type": 0.8}, "threshold": 0.6}  # a weight file from before
    with_log = {**linear_only, "log_weights": {"upper_type": 0.5}, "max_weight": 0.0, "eps": 0.003}
    old, new = offline_with(linear_only), offline_with(with_log)
    stated = {"upper_type": "t-shirt"}
    sure = probs_with_upper_type(0.999)
    unsure = probs_with_upper_type(0.6)
    assert old.match_probability(sure, stated) > 0.6  # one linear weight cannot reject even a sure contradiction
    assert new.match_probability(sure, stated) < 0.6
    assert new.match_probability(unsure, stated) > 0.6  # a doubtful one still passes
    assert new.match_probability(probs_with_upper_type(0.0), stated) == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_stated_slot_weights_move_the_threshold_and_old_files_have_none():
    stated = {"upper_type": "t-shirt"}
    unsure = probs_with_upper_type(0.6)
    before = {"bias": 2.0, "weights": {"upper_type": 0.8}, "log_weights": {"upper_type": 0.5}, "threshold": 0.6}
    lenient = {**before, "stated_weights": {"upper_type": -1.0}}
    p_before = offline_with(before).match_probability(unsure, stated)
    p_lenient = offline_with(lenient).match_probability(unsure, stated)
    assert np.log(p_lenient / (1 - p_lenient)) - np.log(p_before / (1 - p_before)) == pytest.approx(1.0)
    # a slot not stated adds nothing
    assert offline_with(lenient).match_probability(unsure, {}) == offline_with(before).match_probability(unsure, {})


def test_offline_fingerprint_follows_weights_and_settings(tmp_path):
    import torch

    from tools.mllm.offline import OfflineMLLM
    from tools.mllm.recogniser import Recogniser

    a, b = offline_with({"bias": 2.0}), offline_with({"bias": 2.0})
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("offline:")
    assert offline_with({"bias": 3.0}).fingerprint != a.fingerprint
    path = tmp_path / "rec.safetensors"
    a.recogniser.save(path, {"verifier": {"bias": 2.0}})
    assert OfflineMLLM(recogniser=Recogniser.load(path)).fingerprint == a.fingerprint  # saved and loaded
    with torch.no_grad():
        next(b.recogniser.net.parameters()).add_(1.0)
    b.recogniser.save(path, {"verifier": {"bias": 2.0}})  # same architecture and settings, other weights
    assert OfflineMLLM(recogniser=Recogniser.load(path)).fingerprint != a.fingerprint
