"""eval.diagnose: linear probes of the retriever's image embeddings and the recogniser fusion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.diagnose import PROBE_SCALE, fit_linear_probe, fusion_report, main, probe_report
from tools.attributes import SLOT_NAMES
from tools.embedder import Embedder

from .helpers import tiny_model_dir


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('diagnose'))}", device="cpu")


def test_linear_probe_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = (x @ rng.normal(size=(8, 3))).argmax(1)  # 3 classes with linear boundaries
    lin = fit_linear_probe(x, y, 3)
    with torch.no_grad():
        acc = (lin(torch.as_tensor(x, dtype=torch.float32) * PROBE_SCALE).argmax(-1).numpy() == y).mean()
    assert acc > 0.9


def test_probe_report_scores_every_slot_for_both(small_world, embedder):
    report = probe_report(small_world, embedder, "test", progress=False)
    assert set(report["probe"]) == set(report["recogniser"]) == set(SLOT_NAMES)
    assert all(0.0 <= v <= 1.0 for v in list(report["probe"].values()) + list(report["recogniser"].values()))
    # the shipped recogniser reads rendered SynthPedes photos well; a random tiny tower does not
    assert report["recogniser_mean"] > 0.8
    assert report["test_images"] > 0 and report["train_images"] > 0


def test_fusion_report_the_recogniser_ranks_far_above_a_random_retriever(small_world, embedder):
    report = fusion_report(small_world, embedder, "test", weight=0.0, progress=False)
    assert report["fused"] == report["similarity"]  # weight 0: the fusion is the similarity
    assert report["recogniser"]["R1"] > report["similarity"]["R1"]
    assert report["recogniser"]["R10"] >= report["recogniser"]["R1"]


def test_cli_writes_json_and_refuses_a_folder_without_annotations(small_world, tmp_path, capsys):
    model = f"local-dir:{tiny_model_dir(tmp_path)}"
    out = tmp_path / "fusion.json"
    assert main([str(small_world), "fusion", "--model", model, "--limit", "6", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["queries"] == 6
    capsys.readouterr()
    assert main([str(tmp_path / "nope"), "probe", "--model", model, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_text_probe_scores_stated_and_unstated_captions(small_world, embedder):
    from eval.diagnose import text_probe_report

    report = text_probe_report(small_world, embedder, "test", progress=False)
    assert report["test_captions"] > 0 and set(report["stated"]) <= set(SLOT_NAMES)
    # every slot a test caption states is scored, and only those
    assert {s for s, n in report["captions_stating"].items() if n} == set(report["stated"])
    assert all(0.0 <= v <= 1.0 for v in report["stated"].values())
    assert 0.0 <= report["stated_mean"] <= 1.0


class _BagOfWords:
    """An 'embedder' whose caption embedding is its word counts: gender words are linearly readable."""

    name = "bag-of-words"

    def __init__(self, texts):
        words = sorted({w for t in texts for w in t.lower().replace(".", " ").replace(",", " ").split()})
        self.index = {w: i for i, w in enumerate(words)}

    def encode_texts(self, texts, progress=None):
        out = np.zeros((len(texts), len(self.index) + 1), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").replace(",", " ").split():
                out[i, self.index.get(w, len(self.index))] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_text_probe_reads_what_the_text_embedding_holds(small_world):
    from eval.diagnose import text_probe_report

    records = json.loads((small_world / "reid_raw.json").read_text())
    report = text_probe_report(small_world, _BagOfWords([c for r in records for c in r["captions"]]), "test",
                               progress=False)
    assert report["stated"]["gender"] >= 0.9
