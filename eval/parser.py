"""python -m eval.parser: how well does the offline query parser read descriptions people write?

The set (``tests/data/descriptions.jsonl``, one JSON object a line: ``id``, ``part``, ``text``,
``labels``) holds hand-written descriptions in the style of CUHK-PEDES, ICFG-PEDES, RSTPReid and
UFine6926 (long and short, with typos, negations, hedges, layered garments, colours after the noun),
each labelled with exactly the slot values of ``tools.attributes`` that a human reader takes it to
state, and nothing else. Conventions of the labels:

* a hedged statement ("maybe a cap", "he or she", "a black or navy coat") states nothing;
* "dark" alone is no colour (navy, charcoal and black are all dark); "dark blue" is navy;
* of layered tops, the outer garment is the upper garment ("a jacket over a white shirt");
* "no bag" and "not carrying anything" say there is no bag and no backpack;
* a garment the vocabulary has no value for (a dress, leggings, heels) states nothing.

Each prediction is scored per slot: a predicted value equal to the label is a true positive, any
other predicted value a false positive, and a label without the equal prediction a false
negative; precision and recall are micro-averaged over all slots and also given per slot. ``part``
is ``dev`` (the parser was developed while reading these) or ``heldout`` (written afterwards and
scored without changing the parser).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable

from tools.attributes import SLOT_NAMES, validate
from tools.cliargs import ArgumentParser, add_output_arguments, legacy_json_file, non_negative_int
from tools.mllm.parser import parse

DEFAULT_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "descriptions.jsonl"


class DescriptionSetError(ValueError):
    """The description set is missing or malformed."""


def load_descriptions(path: str | Path = DEFAULT_SET) -> list[dict]:
    """Read the labelled descriptions. Raises :class:`DescriptionSetError` on a missing file, a bad
    line or a label that is not a value of its slot."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionSetError(f"description set not found: {path}")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            validate(item["labels"])
            str(item["text"]), str(item["id"]), str(item["part"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DescriptionSetError(f"{path}:{n}: {e}") from e
        items.append(item)
    return items


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score(items: Iterable[dict], read: Callable[[str], dict[str, str]] | None = None) -> dict:
    """Slot precision and recall of ``read`` (default: the parser's constraints) over ``items``.

    Returns ``{"descriptions", "facts", "precision", "recall", "per_slot": {slot: {"tp", "fp",
    "fn", "precision", "recall"}}, "wrong": [...], "missed": [...]}``; ``wrong`` lists each false
    positive as ``{"id", "slot", "read", "label"}`` (label None when the text states nothing for the
    slot), ``missed`` each false negative.
    """
    read = read or (lambda text: parse(text).constraints)
    tp = {s: 0 for s in SLOT_NAMES}
    fp = dict(tp)
    fn = dict(tp)
    wrong, missed = [], []
    n = 0
    for item in items:
        n += 1
        got, labels = read(item["text"]), item["labels"]
        for slot in SLOT_NAMES:
            g, want = got.get(slot), labels.get(slot)
            if g is not None and g == want:
                tp[slot] += 1
                continue
            if g is not None:
                fp[slot] += 1
                wrong.append({"id": item["id"], "slot": slot, "read": g, "label": want})
            if want is not None:
                fn[slot] += 1
                missed.append({"id": item["id"], "slot": slot, "read": g, "label": want})
    TP, FP, FN = sum(tp.values()), sum(fp.values()), sum(fn.values())
    per_slot = {s: {"tp": tp[s], "fp": fp[s], "fn": fn[s], "precision": _ratio(tp[s], tp[s] + fp[s]),
                    "recall": _ratio(tp[s], tp[s] + fn[s])} for s in SLOT_NAMES}
    return {"descriptions": n, "facts": TP + FN, "precision": _ratio(TP, TP + FP), "recall": _ratio(TP, TP + FN),
            "per_slot": per_slot, "wrong": wrong, "missed": missed}


def synthpedes_captions(ids: int, seed: int = 21) -> list[dict]:
    """The captions of a planned (not rendered) SynthPedes world, labelled with what each states."""
    from data.synthpedes import WorldConfig, plan

    records, anns, _ = plan(WorldConfig(seed=seed, train_ids=0, val_ids=0, test_ids=ids))
    return [{"id": f"synthpedes-{i}-{j}", "part": "synthpedes", "text": text, "labels": cap["stated"]}
            for i, (r, a) in enumerate(zip(records, anns))
            for j, (text, cap) in enumerate(zip(r["captions"], a["captions"]))]


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.parser", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default=str(DEFAULT_SET), help="labelled descriptions (JSONL; default: the shipped set)")
    add_output_arguments(p, "the report", legacy_json=True)
    p.add_argument("--errors", action="store_true", help="list every wrong and missed fact with its text")
    p.add_argument("--synthpedes", type=non_negative_int, default=0, metavar="IDS",
                   help="also score the captions of this many SynthPedes identities, planned (not rendered) with "
                        "--seed, against what each caption states")
    p.add_argument("--seed", type=int, default=21, help="SynthPedes world seed for --synthpedes (default 21)")
    args = p.parse_args(argv)
    legacy_json_file(args, p.prog)
    try:
        items = load_descriptions(args.set)
    except DescriptionSetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    parts = sorted({it["part"] for it in items})
    report = {"set": args.set, "parts": {part: score([it for it in items if it["part"] == part]) for part in parts}}
    report["all"] = score(items)
    if args.synthpedes:
        report["synthpedes"] = score(synthpedes_captions(args.synthpedes, args.seed))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
        return 0
    by_id = {it["id"]: it["text"] for it in items}
    for name, r in [*report["parts"].items(), ("all", report["all"])]:
        print(f"{name}: {r['descriptions']} descriptions, {r['facts']} labelled facts: "
              f"precision {_fmt(r['precision'])}, recall {_fmt(r['recall'])}")
    if args.synthpedes:
        r = report["synthpedes"]
        print(f"synthpedes captions (seed {args.seed}, {args.synthpedes} ids): {r['descriptions']} captions, "
              f"{r['facts']} stated facts: precision {_fmt(r['precision'])}, recall {_fmt(r['recall'])}")
    print(f"\nper slot (all parts)   {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>3} {'fn':>3}")
    for slot, r in report["all"]["per_slot"].items():
        print(f"  {slot:<20} {_fmt(r['precision']):>9} {_fmt(r['recall']):>7} {r['tp']:>4} {r['fp']:>3} {r['fn']:>3}")
    if args.errors:
        for kind in ("wrong", "missed"):
            print(f"\n{kind}:")
            for e in report["all"][kind]:
                print(f"  {e['id']} {e['slot']}: read {e['read']}, label {e['label']} | {by_id[e['id']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
