import json

import numpy as np
import pytest

from data.readers import DatasetError
from graphs.rda import main as rda_main
from graphs.rda import run_rda
from graphs.server import oracle_annotations
from tools.mllm.oracle import OracleMLLM
from tools.mllm.parser import parse
from tools.paraphraser import UNITS, decompose, rephrase, reorganise, rule_paraphrases


def test_sub_sentences_carry_one_attribute_and_paraphrases_keep_it():
    constraints = parse("A woman with long blonde hair in a red coat and black jeans, white sneakers, a pink handbag, "
                        "a black backpack, sunglasses, walking in the park with other people nearby").constraints
    unit_of = {s: n for n, unit in enumerate(UNITS) for s in unit}
    rng = np.random.default_rng(0)
    for group in decompose(constraints):
        assert len({unit_of[s] for s in group}) == 1
        paraphrases = rule_paraphrases(group, 5, rng, constraints.get("gender"))
        assert 2 <= len(set(paraphrases)) <= 5
        for p in paraphrases:
            said = parse(p).constraints
            assert all(said.get(s) == v for s, v in group.items()), (group, p, said)


def test_reorganised_caption_uses_every_sub_sentence_once():
    diversity = [["A."], ["B.", "b."], ["C."]]
    seen = set()
    for seed in range(20):
        text = reorganise(diversity, np.random.default_rng(seed))
        parts = text.split(" ")
        assert len(parts) == 3 and {p.upper() for p in parts} == {"A.", "B.", "C."}
        seen.add(text)
    assert len(seen) > 3  # orders and paraphrases vary


def test_rephrase_says_the_same_facts_differently():
    text = "A woman in a red coat and black jeans with a pink handbag. She is walking and wears sunglasses."
    facts = parse(text).constraints
    outputs = {rephrase(text, np.random.default_rng(seed)) for seed in range(10)}
    assert text not in outputs and len(outputs) > 5
    for out in outputs:
        assert parse(out).constraints == facts, out
    assert rephrase("zzz qqq", np.random.default_rng(0)) == "zzz qqq"  # nothing read: kept as it was


@pytest.fixture()
def oracle(small_world):
    return OracleMLLM(oracle_annotations(small_world))


def _journal(out):
    return out.with_name(out.name + ".journal.jsonl")


def test_rda_output_layout_quality_and_resume(small_world, tmp_path, oracle):
    out = tmp_path / "rda.json"
    report = run_rda(small_world, out, oracle, m=4, progress=False, batch_size=8)
    raw = json.loads((small_world / "reid_raw.json").read_text())
    got = json.loads(out.read_text())
    train = [r for r in raw if r["split"] == "train"]
    assert len(got) == len(raw) and report["augmented"] == len(train) < len(raw)
    for rec, orig in zip(got, raw):
        assert {k: v for k, v in rec.items() if k not in ("diversity_captions", "val_diversity_captions")} == orig
        if orig["split"] != "train":  # only training captions are augmented; ICL's loader reads these as they are
            assert "diversity_captions" not in rec and rec["val_diversity_captions"] == orig["captions"]
            continue
        assert "val_diversity_captions" not in rec
        assert len(rec["diversity_captions"]) == len(orig["captions"])
        for caption in rec["diversity_captions"]:
            assert caption and all(isinstance(p, list) and p and len(p) <= 4 for p in caption)
    q = report["quality"]
    assert q["contradicting_share"] < 0.05  # only the captions' own noise: the oracle adds true facts
    assert q["single_attribute_share"] > 0.97 and q["mean_distinct_paraphrases"] > 2.0
    # a killed run: keep half the journal (and a torn line), re-run: the same file comes out
    lines = _journal(out).read_text().splitlines()
    _journal(out).write_text("\n".join(lines[: len(lines) // 2]) + '\n{"index": 9, "diversi')
    first = out.read_bytes()
    out.unlink()
    again = run_rda(small_world, out, OracleMLLM(oracle_annotations(small_world)), m=4, progress=False, batch_size=8)
    assert out.read_bytes() == first
    assert again["processed"] == len(train)
    # a journal written with other weights behind the same backend name is not resumed
    class Retrained(OracleMLLM):
        @property
        def fingerprint(self):
            return "oracle:other-weights"

    lines = _journal(out).read_text().splitlines()
    _journal(out).write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(RuntimeError, match="other settings"):
        run_rda(small_world, out, Retrained(oracle_annotations(small_world)), m=4, progress=False, batch_size=8)
    # ... unless told to start again: then every record is redone with the new backend
    redone = run_rda(small_world, out, Retrained(oracle_annotations(small_world)), m=4, progress=False, batch_size=8, restart=True)
    assert redone["processed"] == len(train) and out.read_bytes() == first
    meta = json.loads(out.with_name(out.name + ".journal.meta.json").read_text())
    assert meta["mllm"] == "oracle:other-weights"


def test_rda_skips_and_counts_bad_records(small_world, tmp_path):
    import shutil

    world = tmp_path / "w"
    shutil.copytree(small_world, world)
    raw = json.loads((world / "reid_raw.json").read_text())
    raw[0]["captions"] = []
    raw[1]["file_path"] = "train/does_not_exist.jpg"
    (world / "reid_raw.json").write_text(json.dumps(raw))

    class Garbled(OracleMLLM):
        calls = 0

        def _ask(self, image, slots):
            Garbled.calls += 1
            if Garbled.calls == 3:
                from tools.mllm.base import MLLMError

                raise MLLMError("banana", kind="unparseable")
            return super()._ask(image, slots)

    with pytest.raises(DatasetError, match=r"1 of \d+ image files of split train do not exist.*--skip-missing"):
        run_rda(world, tmp_path / "o.json", Garbled(oracle_annotations(world)), format="cuhk-pedes", m=3, progress=False)
    assert rda_main([str(world), "--out", str(tmp_path / "o.json"), "--mllm", "oracle", "--quiet"]) == 1
    report = run_rda(world, tmp_path / "o.json", Garbled(oracle_annotations(world)), format="cuhk-pedes", m=3, progress=False,
                     skip_missing=True)
    assert report["skipped"] == {"no captions": 1, "image missing": 1, "mllm answer unusable (unparseable)": 1}
    got = json.loads((tmp_path / "o.json").read_text())
    # skipped train records carry their captions as plain strings (ICL's loader needs the field on every one)
    assert len(got) == len(raw) and got[0]["diversity_captions"] == []
    assert got[1]["diversity_captions"] == raw[1]["captions"]


def test_unwritable_output_stops_before_writing(small_world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = rda_main([str(small_world), "--out", str(blocker / "sub" / "o.json"), "--mllm", "oracle", "--quiet"])
    assert rc == 1 and "error:" in capsys.readouterr().err
    assert blocker.read_text() == "x"


# -- ICL's file shape, both ways -------------------------------------------------------------------


def icl_loader(records: list[dict], rng) -> dict[str, list]:
    """What ICL's CUHK-PEDES loader does with an annotation file (written from its published
    description): train records give (caption, reorganised caption) per caption from
    ``diversity_captions[i]`` -- a plain string is used as it is, a list gives one random paraphrase
    of each sub-sentence, shuffled; val/test records index ``val_diversity_captions[i]`` per caption."""
    out: dict[str, list] = {"train": [], "eval": []}
    for rec in records:
        if rec["split"] == "train":
            for i, caption in enumerate(rec["captions"]):
                entry = rec["diversity_captions"][i]
                if isinstance(entry, str):
                    text = entry
                else:
                    subs = list(entry)
                    rng.shuffle(subs)
                    text = " ".join(rng.choice(sub) for sub in subs)
                out["train"].append((caption, text))
        else:
            for i, caption in enumerate(rec["captions"]):
                out["eval"].append((caption, rec["val_diversity_captions"][i]))
    return out


def test_our_rda_file_loads_in_icl_s_loader(small_world, tmp_path, oracle):
    import random

    out = tmp_path / "rda.json"
    run_rda(small_world, out, oracle, m=3, progress=False, limit=5)  # most train records not augmented
    records = json.loads(out.read_text())
    loaded = icl_loader(records, random.Random(0))  # raises KeyError / IndexError on a missing entry
    raw = json.loads((small_world / "reid_raw.json").read_text())
    assert len(loaded["train"]) == sum(len(r["captions"]) for r in raw if r["split"] == "train")
    assert len(loaded["eval"]) == sum(len(r["captions"]) for r in raw if r["split"] != "train")
    augmented = [t for c, t in loaded["train"] if t != c]
    assert 0 < len(augmented) <= 2 * 5  # the first 5 records' captions are reorganised, the rest as they were
    assert all(len(t.split()) > 3 for _, t in loaded["train"])  # sentences, never letters
    assert all(t == c for c, t in loaded["eval"])


def test_an_icl_shaped_file_reads_and_trains_here(small_world, tmp_path):
    from data.readers import read_dataset
    from tools.embedder import Embedder
    from train.pairs import PairSet

    from .helpers import tiny_model_dir

    raw = json.loads((small_world / "reid_raw.json").read_text())
    icl = []
    for n, rec in enumerate(raw):
        rec = dict(rec)
        if rec["split"] == "train":
            # ICL's released files mix both shapes: a plain string, or sub-sentences x paraphrases
            rec["diversity_captions"] = [f"string form {n} {i} of this caption" if (n + i) % 2 else
                                         [[f"list form {n} {i}", f"list variant {n} {i}"], [f"second part {n} {i}"]]
                                         for i in range(len(rec["captions"]))]
        else:
            rec["val_diversity_captions"] = list(rec["captions"])
        icl.append(rec)
    path = tmp_path / "icl_rda.json"
    path.write_text(json.dumps(icl))
    ds = read_dataset(small_world, annotation_file=path)
    train = ds.split("train")
    assert train[0].extra["diversity_captions"] == icl[next(i for i, r in enumerate(raw) if r["split"] == "train")][
        "diversity_captions"]
    tokenizer = Embedder(f"local-dir:{tiny_model_dir(tmp_path)}").tokenizer
    pairs = PairSet(train, (64, 32), tokenizer, workers=1, progress=False)
    seen = set()
    for seed in range(3):
        for batch in pairs.batches(8, np.random.default_rng(seed)):
            for row in batch.rda_tokens:
                seen.add(tokenizer.decode([t for t in row.tolist() if t not in (0, 49406, 49407)]).strip())
    strings = {t for t in seen if t.startswith("string form")}
    lists = seen - strings
    assert strings and all(t.endswith("of this caption") for t in strings)  # one caption each, whole
    assert lists and all("second part" in t and ("list form" in t or "list variant" in t) for t in lists)
