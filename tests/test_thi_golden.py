"""Regression: every THI policy holds the dialogues of the golden record (tests/data/thi_golden.json,
made by tests/data/make_thi_golden.py): rankings (ids, scores to 6 digits), checks, anchors,
questions, answers, rewrites, notes and stop reasons, on the small test world with the shipped
model and the offline MLLM."""

import json

import pytest

from .data.make_thi_golden import GOLDEN, SCENARIOS, dialogues, dumps


@pytest.fixture(scope="module")
def got(small_world, tmp_path_factory):
    return json.loads(dumps(dialogues(small_world, tmp_path_factory.mktemp("golden") / "db")))


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("scenario", [s[0] for s in SCENARIOS])
def test_thi_dialogues_match_the_golden_record(got, golden, scenario):
    want, have = golden["scenarios"][scenario], got["scenarios"][scenario]
    assert have["config"] == want["config"] and have["user"] == want["user"]
    assert len(have["dialogues"]) == len(want["dialogues"])
    for w, h in zip(want["dialogues"], have["dialogues"]):
        assert h["query"] == w["query"]
        for n, (wr, hr) in enumerate(zip(w["rounds"], h["rounds"]), 1):
            for key in wr:
                assert hr[key] == wr[key], f"{scenario}, {w['query']!r}, round {n}: {key}"
        for key in w:
            assert h[key] == w[key], f"{scenario}, {w['query']!r}: {key}"


def test_the_golden_record_covers_every_policy_and_stop(golden):
    stops = {d["stopped_because"] for s in golden["scenarios"].values() for d in s["dialogues"]}
    anchors = [r["anchor"] for s in golden["scenarios"].values() for d in s["dialogues"] for r in d["rounds"]]
    sources = {a[2].split(":")[0] for s in golden["scenarios"].values() for d in s["dialogues"]
               for r in d["rounds"] for a in r["answers"]}
    assert {s[1].get("policy") for s in SCENARIOS} == {"paper", "adaptive"}
    assert {"refined once (paper: each query is refined at most once)", "nothing new was learned",
            "converged: the top-k did not change", "round limit reached"} <= stops
    assert any(a is None for a in anchors) and any(a is not None for a in anchors)
    assert sources == {"mllm", "simulated user", "human"}
