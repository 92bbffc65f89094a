"""The golden record of THI dialogues that tests/test_thi_golden.py compares every policy with.

It runs the THI graph on the test split of the small test world (tests/conftest.py) with the
shipped default model and the offline MLLM: the paper's policy, ours without a user (sequential and
batch anchor search), ours with a simulated user (questionnaire and verification checks), both
policies with a human answering through the interrupt, and both without a user behind a verifier
that flips half its verdicts (seeded), which walks the paths a good verifier rarely takes. Each
dialogue keeps its rankings (ids, scores rounded to 6 digits), checks, anchors, questions, answers,
rewritten queries, notes and stop reason; not its times or call counts.

Regenerate it only when a policy's behaviour is meant to change (a new rule or default setting, a
changed MLLM backend, parser, attribute vocabulary or shipped model), and say why in the commit:

    python -m tests.data.make_thi_golden        # from the repository root; writes tests/data/thi_golden.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from data.readers import read_dataset
from data.synthpedes import generate
from eval.benchmark import sample_indices, split_queries
from eval.thi import NoisyVerifier
from graphs.config import THIConfig
from graphs.server import live_context, unregister
from graphs.thi import build_graph, recursion_limit
from tests.conftest import SMALL
from tools.embedder import DEFAULT_MODEL, Embedder
from tools.gallery import Gallery, items_for
from tools.index import GalleryIndex
from tools.mllm import make_mllm

GOLDEN = Path(__file__).with_name("thi_golden.json")

#: (name, THIConfig fields, user: "none" | "simulated" | "human", number of queries)
SCENARIOS = [
    ("paper", {"policy": "paper"}, "none", 10),
    ("paper-xi0.8", {"policy": "paper", "xi": 0.8}, "none", 10),
    ("adaptive", {"policy": "adaptive"}, "none", 10),
    ("paper-noisy", {"policy": "paper", "xi": 1.0, "flip": 0.5}, "none", 10),
    ("adaptive-noisy", {"policy": "adaptive", "flip": 0.5}, "none", 10),
    ("adaptive-batch", {"policy": "adaptive", "anchor_search": "batch"}, "none", 6),
    ("adaptive-user", {"policy": "adaptive"}, "simulated", 6),
    ("adaptive-user-verify", {"policy": "adaptive", "user_check": "verify"}, "simulated", 4),
    ("paper-human", {"policy": "paper"}, "human", 3),
    ("adaptive-human", {"policy": "adaptive", "rounds": 2}, "human", 2),
]


def _pairs(cands):
    return [[c["id"], round(float(c["score"]), 6)] for c in cands]


def record(state: dict) -> dict:
    """What the golden record keeps of a final THI state."""
    return {
        "original": _pairs(state["original_ranking"][:10]),
        "rounds": [{
            "inspected": [[i["id"], i["rank"], i["match"], i["confidence"], i["reason"]] for i in r["inspected"]],
            "anchor": r["anchor"], "questions": r["questions"],
            "answers": [[a["slot"], a["value"], a["source"]] for a in r["answers"]],
            "rewritten_query": r["rewritten_query"], "topk": _pairs(r["topk"][:5]), "target_rank": r.get("target_rank"),
            "notes": r["notes"]} for r in state["rounds"]],
        "final_query": state["current_query"],
        "facts": state.get("facts", {}),
        "ranking": _pairs(state["ranking"][:10]),
        "stopped_because": state["stopped_because"],
    }


def dialogues(world: Path, db: Path) -> dict:
    """Every scenario's dialogues on the test split of ``world`` (a SynthPedes folder), indexed
    into the Chroma folder ``db`` with the shipped default model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on every run
    try:
        emb = Embedder(DEFAULT_MODEL, device="cpu")
        name, items = items_for(world, "test")
        gallery = Gallery.open(name, emb, data_dir=db)
        gallery.index(items, emb, progress=False)
        index = GalleryIndex(gallery, emb)
        records = read_dataset(world).split("test")
        texts, pids, owner = split_queries(records)
        mllm = make_mllm("offline", device="cpu")
        out: dict = {"model": DEFAULT_MODEL, "mllm": mllm.name, "scenarios": {}}
        for scenario, fields, user_kind, n in SCENARIOS:
            settings = dict(fields)
            flip = settings.pop("flip", 0.0)
            cfg = THIConfig(**settings)
            # a verifier wrong half the time walks the paths a good one rarely takes (seeded: the same flips)
            thi_mllm = NoisyVerifier(mllm, flip, seed=0) if flip else mllm
            base = live_context(index, thi_mllm, cfg)
            runs = []
            for q in sample_indices(len(texts), n, seed=0):
                target = records[owner[q]]
                mllm.clear_cache()
                # the simulated user answers about the target photo with the same backend
                ctx = replace(base, user=user_kind, target=target.image, target_pid=int(pids[q]))
                if user_kind == "human":
                    graph = build_graph(InMemorySaver())
                    config = {"configurable": {"thread_id": f"{scenario}-{q}"}, "recursion_limit": recursion_limit(cfg)}
                    state = graph.invoke({"query": texts[q]}, config, context=ctx)
                    while "__interrupt__" in state:
                        payload = state["__interrupt__"][0].value
                        slots = [x["slot"] for x in payload["questions"]]
                        said = {a.slot: a.value or "skip" for a in mllm.ask(index.image(target.image), slots)}
                        state = graph.invoke(Command(resume={"answers": said, "finish": False}), config, context=ctx)
                else:
                    state = build_graph().invoke({"query": texts[q]}, context=ctx,
                                                 config={"recursion_limit": recursion_limit(cfg)})
                runs.append({"query": texts[q], "target": target.image, **record(state)})
            unregister(base.resources)
            out["scenarios"][scenario] = {"config": fields, "user": user_kind, "dialogues": runs}
        return out
    finally:
        torch.set_num_threads(threads)


def dumps(data: dict) -> str:
    """JSON with one dialogue per line (readable diffs)."""
    lines = ["{", f' "model": {json.dumps(data["model"])}, "mllm": {json.dumps(data["mllm"])},', ' "scenarios": {']
    names = list(data["scenarios"])
    for n, name in enumerate(names):
        sc = data["scenarios"][name]
        lines.append(f'  {json.dumps(name)}: {{"config": {json.dumps(sc["config"])}, "user": {json.dumps(sc["user"])}, "dialogues": [')
        lines += ["   " + json.dumps(d) + ("," if i < len(sc["dialogues"]) - 1 else "") for i, d in enumerate(sc["dialogues"])]
        lines.append("  ]}" + ("," if n < len(names) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.data.make_thi_golden",
                                description="Write the golden record of THI dialogues (see the module docstring).")
    p.add_argument("out", nargs="?", default=str(GOLDEN), help="where to write it (default: %(default)s)")
    out = Path(p.parse_args(argv).out)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "synthpedes"
        generate(world, SMALL, workers=1, progress=False)
        data = dialogues(world, Path(tmp) / "db")
    out.write_text(dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
