"""RDA: reorganization data augmentation, an offline LangGraph graph over a dataset's captions.

enrich -> decompose -> paraphrase -> write -> (next batch | END)

* enrich: ask the MLLM the questionnaire about each image and fold into the caption the answers
  it does not already state (never overriding what the caption says);
* decompose: split the enriched description into single-attribute sub-sentences;
* paraphrase: m rewrites of each (rule-based by default, or an LLM);
* write: append the batch to a journal beside the output; at the end the output file is the
  dataset's own records with ``diversity_captions`` added (one entry per caption: a list of
  sub-sentences, each a list of paraphrases), so ICL's data and ours are interchangeable.

The output loads in ICL's own loader too, which reads ``diversity_captions`` on every train record
and ``val_diversity_captions`` on every other record (one entry per caption): records that were not
augmented (other splits, skipped ones, those beyond ``--limit``) carry their captions there as plain
strings, which ICL's loader and ours both take as the caption itself.

Killed and re-run, it continues from the journal and the final file equals an uninterrupted run's
(every record's randomness is seeded by its index). Records skipped because the MLLM server was
down or too slow (``unreachable``, ``unavailable``, ``timeout``, ``deadline``) are journalled as such
and asked again by the next run, without ``--restart``; a run whose MLLM became unavailable ends
with one ``error:`` line saying how many records wait for the next run, and exit status 1.
Image paths must lie inside the dataset's image folder (:func:`data.readers.resolve_image`).

``python -m graphs.rda DIR --out FILE.json [--format ...] [--mllm offline|openai|...] [--m 5]
[--workers N] [--limit N]``
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from tqdm import tqdm
from typing_extensions import TypedDict

from data.readers import FORMATS, FORMAT_NAMES, MISSING_EXAMPLES, DatasetError, annotation_path, detect_format, \
    load_json_list, resolve_image
from tools.attributes import COLOR_PARENT, IDENTITY_SLOTS
from tools.cliargs import ArgumentParser, non_negative_int, positive_int, unit_float
from tools.mllm import MLLM, MLLMError, make_mllm
from tools.mllm.base import ImageRef
from tools.mllm.parser import parse
from tools.paraphraser import decompose, rule_paraphrases
from tools.text import printable, printable_path

log = logging.getLogger(__name__)

#: MLLM failures that say the server was down or slow, not that the record is bad: a record skipped
#: for one of them is journalled as such and tried again by the next run (no ``--restart`` needed)
RETRY_KINDS = frozenset({"unreachable", "unavailable", "timeout", "deadline"})
_RETRY_TEXT = re.compile(r"^mllm answer unusable \((%s)\)" % "|".join(sorted(RETRY_KINDS)))


def retryable(entry: dict) -> bool:
    """Whether a journal entry is a record skipped because the MLLM was down (tried again)."""
    return bool(entry.get("retry")) or bool(_RETRY_TEXT.match(str(entry.get("skipped", ""))))


class RDAItem(TypedDict, total=False):
    index: int  # position in the annotation file
    captions: list[str]
    image_id: str
    image_path: str
    answers: dict[str, str]  # slot -> value the MLLM saw
    enriched: list[dict[str, str]]  # per caption: constraints after enrichment
    parts: list[list[dict[str, str]]]  # per caption: attribute groups
    diversity: list[list[list[str]]]  # per caption: sub-sentences x paraphrases
    skipped: str  # why the item was not augmented
    retry: bool  # skipped because the MLLM was down: the next run tries it again


class RDAState(TypedDict, total=False):
    cursor: int  # position in the work list
    batch: list[RDAItem]


@dataclass
class RDAContext:
    work: list[RDAItem]  # items still to do, in file order
    mllm: MLLM
    journal: Path
    m: int = 5
    seed: int = 0
    batch_size: int = 64
    workers: int = 1
    paraphraser: Callable[..., list[str]] = rule_paraphrases
    min_confidence: float = 0.9
    progress: Any = None  # a tqdm bar or None


def _enrich_one(item: RDAItem, mllm: MLLM, min_confidence: float = 0.0) -> RDAItem:
    if item.get("skipped"):
        return item
    try:
        # per-photo context (action, background, bystanders) changes between photos of one person:
        # only what describes the person is added to a caption
        answers = mllm.ask(ImageRef(item["image_id"], Path(item["image_path"])), list(IDENTITY_SLOTS))
    except MLLMError as e:
        out = {**item, "skipped": f"mllm answer unusable ({e.kind}): {e}"}
        if e.kind in RETRY_KINDS:
            out["retry"] = True  # the server was down, not the record at fault: the next run asks again
        return out
    # A wrong added fact teaches the retriever a false pairing; only confident answers are added.
    seen = {a.slot: a.value for a in answers if a.value is not None and a.confidence >= min_confidence}
    enriched = []
    for caption in item["captions"]:
        stated = parse(caption).constraints
        merged = dict(stated)
        for slot, value in seen.items():
            if slot in stated:
                continue  # the caption's word wins over the MLLM's
            parent = COLOR_PARENT.get(slot)
            if parent and parent in stated and parent in seen and stated[parent] != seen[parent]:
                continue  # a colour of an item the caption names differently: do not mix them
            merged[slot] = value
        enriched.append(merged)
    return {**item, "answers": seen, "enriched": enriched}


def enrich(state: RDAState, runtime: Runtime[RDAContext]) -> dict:
    ctx = runtime.context
    batch = ctx.work[state["cursor"]: state["cursor"] + ctx.batch_size]
    if ctx.workers > 1:
        with ThreadPoolExecutor(ctx.workers) as pool:
            out = list(pool.map(lambda it: _enrich_one(it, ctx.mllm, ctx.min_confidence), batch))
    else:
        offline = getattr(ctx.mllm, "probabilities", None)
        if offline is not None:  # one batched recogniser pass for the whole batch
            try:
                offline([ImageRef(it["image_id"], Path(it["image_path"])) for it in batch if not it.get("skipped")])
            except OSError as e:
                log.warning("batched recognition failed (%s); going image by image", e)
        out = []
        for it in batch:
            try:
                out.append(_enrich_one(it, ctx.mllm, ctx.min_confidence))
            except OSError as e:
                out.append({**it, "skipped": f"image unreadable: {e}"})
    return {"batch": out}


def decompose_node(state: RDAState) -> dict:
    out = []
    for item in state["batch"]:
        if item.get("skipped"):
            out.append(item)
            continue
        out.append({**item, "parts": [decompose(c) for c in item["enriched"]]})
    return {"batch": out}


def paraphrase(state: RDAState, runtime: Runtime[RDAContext]) -> dict:
    ctx = runtime.context
    out = []
    for item in state["batch"]:
        if item.get("skipped"):
            out.append(item)
            continue
        rng = np.random.default_rng([ctx.seed, item["index"]])
        diversity = []
        for constraints, parts in zip(item["enriched"], item["parts"]):
            diversity.append([ctx.paraphraser(g, ctx.m, rng, constraints.get("gender")) for g in parts])
        out.append({**item, "diversity": diversity})
    return {"batch": out}


def write(state: RDAState, runtime: Runtime[RDAContext]) -> dict:
    ctx = runtime.context
    with open(ctx.journal, "a", encoding="utf-8") as f:
        for item in state["batch"]:
            entry = {"index": item["index"]}
            if item.get("skipped"):
                entry["skipped"] = item["skipped"]
                if item.get("retry"):
                    entry["retry"] = True
            else:
                entry["diversity_captions"] = item["diversity"]
                entry["enriched"] = item["enriched"]
            f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if ctx.progress is not None:
        ctx.progress.update(len(state["batch"]))
    # the journal is the record of what was done; the final report is counted from it
    return {"cursor": state["cursor"] + len(state["batch"]), "batch": []}


def _more(state: RDAState, runtime: Runtime[RDAContext]) -> str:
    return "enrich" if state["cursor"] < len(runtime.context.work) else END


def build_graph():
    g = StateGraph(RDAState, context_schema=RDAContext)
    g.add_node("enrich", enrich)
    g.add_node("decompose", decompose_node)
    g.add_node("paraphrase", paraphrase)
    g.add_node("write", write)
    g.add_edge(START, "enrich")
    g.add_edge("enrich", "decompose")
    g.add_edge("decompose", "paraphrase")
    g.add_edge("paraphrase", "write")
    g.add_conditional_edges("write", _more, ["enrich", END])
    return g.compile()


# ------------------------------------------------------------------------------------------
# driver


def _raw_records(root: Path, fmt: str) -> tuple[list[Any], Path, str]:
    spec = FORMATS[fmt]
    return load_json_list(annotation_path(root, fmt)), (root / spec["images"]).resolve(), spec["path_field"]


def _work_items(raw: list[Any], image_root: Path, path_field: str,
                split: str | None = "train") -> list[RDAItem]:
    items = []
    for i, rec in enumerate(raw):
        if split and isinstance(rec, dict) and rec.get("split", split) != split:
            continue  # only training captions are augmented; other splits are written back with their captions
        item: RDAItem = {"index": i}
        if not isinstance(rec, dict):
            item["skipped"] = "not a record"
        elif not isinstance(rec.get("captions"), list) or not [c for c in rec["captions"] if isinstance(c, str) and c.strip()]:
            item["skipped"] = "no captions"
        elif not isinstance(rec.get(path_field), str) or not rec[path_field]:
            item["skipped"] = "image missing"
        else:
            path, refused = resolve_image(image_root, rec[path_field])
            if refused:  # never read (nor sent to an MLLM server): outside the dataset, or no file name
                item["skipped"] = f"image path refused: {refused}"
            elif not _is_file(path):
                item["skipped"] = "image missing"
            else:
                item.update(captions=[c for c in rec["captions"] if isinstance(c, str)], image_id=rec[path_field],
                            image_path=str(path))
        items.append(item)
    return items


def _atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a kill leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _journal_entries(path: Path) -> list[dict]:
    """The journal's entries in file order; a line cut by a kill (the last one) is left out, and
    that record is done again."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("index"), int):
            out.append(entry)
    return out


def _is_file(path: Path | None) -> bool:
    try:
        return path is not None and path.is_file()
    except (OSError, ValueError):
        return False


def _check_writable(out: Path) -> None:
    probe = out.with_name(out.name + ".probe")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{out}: output path is not writable ({e.strerror or e})") from None


def quality(raw: list[Any], journal: dict[int, dict], annotations: dict | None, path_field: str) -> dict:
    """Share of enriched captions contradicting the image's annotations (SynthPedes), share of
    sub-sentences carrying exactly one attribute, mean distinct paraphrases per sub-sentence."""
    from tools.paraphraser import UNITS

    unit_of = {s: n for n, unit in enumerate(UNITS) for s in unit}
    contradicted = enriched_total = single = sub_total = 0
    distinct = []
    units_of_text: dict[str, int] = {}  # sub-sentences repeat a lot; parse each distinct one once
    for i, entry in journal.items():
        if "diversity_captions" not in entry:
            continue
        ann = annotations.get(raw[i].get(path_field)) if annotations else None
        for constraints, caption in zip(entry["enriched"], entry["diversity_captions"]):
            enriched_total += 1
            if ann is not None and any(ann["visible"].get(s) and ann["attributes"].get(s) not in (None, v)
                                       for s, v in constraints.items()):
                contradicted += 1
            for paraphrases in caption:
                sub_total += 1
                text = paraphrases[0]
                if text not in units_of_text:
                    units_of_text[text] = len({unit_of[s] for s in parse(text).constraints if s in unit_of})
                single += units_of_text[text] == 1
                distinct.append(len(set(paraphrases)))
    out = {"single_attribute_share": round(single / max(1, sub_total), 4),
           "mean_distinct_paraphrases": round(float(np.mean(distinct)) if distinct else 0.0, 3),
           "sub_sentences": sub_total}
    if annotations is not None:
        out["contradicting_share"] = round(contradicted / max(1, enriched_total), 4)
    return out


def with_diversity(rec: Any, entry: dict | None) -> Any:
    """A record as written: its own fields, plus ``diversity_captions`` (train records, and any record
    augmented) and ``val_diversity_captions`` (records of other splits), one entry per caption; a
    caption that was not augmented stands as a plain string (ICL's loader reads both fields so)."""
    if not isinstance(rec, dict):
        return rec
    captions = rec.get("captions")
    plain = [c if isinstance(c, str) else "" for c in captions] if isinstance(captions, list) else []
    div = entry.get("diversity_captions") if entry else None
    out = dict(rec)
    if rec.get("split", "train") == "train":
        out["diversity_captions"] = div if div is not None else plain
    else:
        if div is not None:
            out["diversity_captions"] = div
        out["val_diversity_captions"] = div if div is not None else plain
    return out


def run_rda(root: str | Path, out: str | Path, mllm: MLLM, format: str = "auto", m: int = 5, workers: int = 1,
            limit: int | None = None, seed: int = 0, batch_size: int = 64, progress: bool = True,
            paraphraser: Callable[..., list[str]] = rule_paraphrases, split: str | None = "train",
            min_confidence: float = 0.9, restart: bool = False, skip_missing: bool = False) -> dict:
    """Augment ``root``'s ``split`` captions and write the annotation file ``out`` (see the module doc).

    Raises:
        DatasetError: unreadable annotations, or image files of the selected records missing
            (unless ``skip_missing``: then those records are skipped and counted).
    """
    root, out = Path(root), Path(out)
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}")
    _check_writable(out)
    raw, image_root, path_field = _raw_records(root, fmt)
    items = _work_items(raw, image_root, path_field, split)
    if limit is not None:
        items = items[:limit]
    refused = [it for it in items if it.get("skipped", "").startswith("image path refused")]
    if refused and not skip_missing:
        it = refused[0]
        more = f"; {len(refused) - 1} more records too" if len(refused) > 1 else ""
        raise DatasetError(f"{printable_path(annotation_path(root, fmt))}: record {it['index']} (image "
                           f"{printable(str(raw[it['index']].get(path_field)), max_len=200)}): "
                           f"{it['skipped'].split(': ', 1)[1]}{more}; pass --skip-missing to leave them out")
    missing = [it for it in items if it.get("skipped") == "image missing"]
    if missing and not skip_missing:
        examples = ", ".join(printable(str(raw[it["index"]].get(path_field)), max_len=200)
                             for it in missing[:MISSING_EXAMPLES])
        raise DatasetError(f"{printable_path(annotation_path(root, fmt))}: {len(missing)} of {len(items)} image files "
                           f"of split {split or 'all'} do not exist under {printable_path(image_root)} (e.g. "
                           f"{examples}); pass --skip-missing to leave them out")
    journal_path = out.with_name(out.name + ".journal.jsonl")
    meta = {"dataset": str(root.resolve()), "format": fmt, "m": m, "seed": seed, "mllm": mllm.fingerprint, "limit": limit, "split": split,
            "min_confidence": min_confidence}
    meta_path = out.with_name(out.name + ".journal.meta.json")
    done: dict[int, dict] = {}
    if restart:  # what an earlier run journalled is discarded, whatever its settings
        journal_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
    retried = 0
    if journal_path.exists():
        if _read_meta(meta_path) != meta:
            raise RuntimeError(f"{printable_path(journal_path)} belongs to a run with other settings (or another "
                               "MLLM); pass --restart to discard it, or choose another --out")
        for entry in _journal_entries(journal_path):
            done[entry["index"]] = entry
        retry = [i for i, e in done.items() if retryable(e)]
        for i in retry:  # skipped while the MLLM was down: asked again
            del done[i]
        retried = len(retry)
        # drop a torn last line (and the entries retried) so appends start clean
        _atomic_text(journal_path, "".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    else:
        _atomic_text(meta_path, json.dumps(meta))
    work = [it for it in items if it["index"] not in done]
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), initial=len(items) - len(work), desc="RDA", unit="record", disable=not progress,
               smoothing=0.05)
    ctx = RDAContext(work=work, mllm=mllm, journal=journal_path, m=m, seed=seed, batch_size=batch_size,
                     workers=workers, paraphraser=paraphraser, min_confidence=min_confidence, progress=bar)
    if work:
        steps = 5 * (len(work) // batch_size + 2)
        build_graph().invoke({"cursor": 0}, context=ctx, config={"recursion_limit": steps})
    bar.close()
    seconds = time.perf_counter() - t0
    for entry in _journal_entries(journal_path):
        done[entry["index"]] = entry
    records = [with_diversity(rec, done.get(i)) for i, rec in enumerate(raw)]
    _atomic_text(out, json.dumps(records))
    skipped: dict[str, int] = {}
    for entry in done.values():
        if "skipped" in entry:
            reason = entry["skipped"].split(":")[0]
            skipped[reason] = skipped.get(reason, 0) + 1
    annotations = None
    if fmt == "synthpedes":
        from data.synthpedes.ceiling import load_annotations

        annotations = {im["file_path"]: im for im in load_annotations(root)["images"]}
    report = {"out": str(out), "records": len(raw), "split": split or "all", "selected": len(items), "processed": len(done),
              "augmented": sum("diversity_captions" in e for e in done.values()), "skipped": skipped,
              "retried_this_run": retried, "to_retry": sum(retryable(e) for e in done.values()),
              "seconds_this_run": round(seconds, 1),
              "records_per_second": round(len(work) / seconds, 1) if work and seconds > 0 else None,
              "mllm_calls": mllm.stats.snapshot(), "quality": quality(raw, done, annotations, path_field)}
    return report


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m graphs.rda", description=__doc__.split("\n\n")[0],
                                epilog="example: python -m graphs.rda synthpedes --out runs/rda/reid_raw_rda.json")
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--out", required=True, help="output annotation file (JSON, the dataset's layout + diversity_captions)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMAT_NAMES)
    p.add_argument("--mllm", default="offline", help="offline (default), openai, transformers, oracle (simulation)")
    p.add_argument("--mllm-url", help="openai: base URL")
    p.add_argument("--mllm-model", help="openai: model name")
    p.add_argument("--mllm-protocol", metavar="ours|icl|FILE.json",
                   help="chat backends: how the MLLM is talked to (default: ours)")
    p.add_argument("--paraphraser", choices=("rules", "llm"), default="rules",
                   help="rules (default) or llm (the --mllm chat backend paraphrases)")
    p.add_argument("--m", type=positive_int, default=5, help="paraphrases per sub-sentence (default %(default)s)")
    p.add_argument("--min-confidence", type=unit_float, default=0.9,
                   help="add an MLLM answer to a caption only at this confidence or more (default %(default)s)")
    p.add_argument("--workers", type=positive_int, default=1, help="concurrent MLLM requests (chat backends)")
    p.add_argument("--split", default="train",
                   help="augment the records of this split (default %(default)s; 'all' for every record); "
                        "the others are written back unchanged")
    p.add_argument("--limit", type=positive_int, help="only the first N records of the split")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--restart", action="store_true",
                   help="discard what an earlier run journalled beside --out (otherwise a killed run resumes)")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip (and count) records whose image file is missing instead of stopping")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        opts: dict = {}
        if args.mllm == "oracle":
            from .server import oracle_annotations

            opts["annotations"] = oracle_annotations(args.dir)
        if args.mllm == "openai":
            opts.update({k: v for k, v in (("base_url", args.mllm_url), ("model", args.mllm_model)) if v})
        mllm = make_mllm(args.mllm, protocol=args.mllm_protocol, **opts)
        mllm.preflight()  # a server that cannot answer fails here, in one line, before any work
        paraphraser = rule_paraphrases
        if args.paraphraser == "llm":
            from tools.paraphraser import LLMParaphraser

            if not hasattr(mllm, "complete"):
                raise ValueError(f"--paraphraser llm needs a chat backend (openai, transformers), not {args.mllm}")
            paraphraser = LLMParaphraser(mllm.complete)
        report = run_rda(args.dir, args.out, mllm, args.format, args.m, args.workers, args.limit, args.seed,
                         args.batch_size, not args.quiet, paraphraser, None if args.split == "all" else args.split,
                         args.min_confidence, restart=args.restart, skip_missing=args.skip_missing)
    except (DatasetError, MLLMError, ValueError, OSError, RuntimeError) as e:
        print(f"error: {printable(str(e).splitlines()[0] if str(e) else type(e).__name__)}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    down = mllm.unavailable
    if down is not None and report["to_retry"]:
        print(f"error: the MLLM stopped answering ({down.kind}: {printable(down)}); {report['to_retry']} records "
              f"were skipped and will be tried again by the next run (same command)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
