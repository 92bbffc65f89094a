"""Each THI policy through the policy interface, the graph's choice of policy, abstentions, and the
package layout (no import circle between the graph and its CLI; the oracle reads no dataset)."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langgraph.runtime import Runtime

from agents.questioner import paper_questions
from agents.users import HumanUser, SimulatedUser
from graphs.config import THIConfig
from graphs.server import live_context, resolve
from graphs.state import apply_update
from graphs.thi import GATE_CLOSED, NO_ANCHOR, REFINED_ONCE, USER_FINISHED, final_scores, policy_for, run
from graphs.thi.adaptive import AdaptivePolicy
from graphs.thi.graph import open_round, retrieve
from graphs.thi.paper import PaperPolicy
from graphs.thi.policy import AnchorAnswerer, HumanAnswerer, SimulatedAnswerer
from graphs.thi.with_user import WithUserPolicy
from tools.mllm.base import Verdict

from .test_thi import ALL_ANSWERS, QUERY, ScriptedMLLM, setup  # noqa: F401  (module fixture)

ROOT = Path(__file__).resolve().parents[1]


def _start(ctx, query=QUERY):
    """The state after ``retrieve`` and the record of round 1, as the graph makes them."""
    live = resolve(ctx)
    state = apply_update({"query": query}, retrieve({"query": query}, Runtime(context=ctx)))
    return live, state, open_round(state, live)


def test_the_graph_picks_one_policy_per_run(setup):  # noqa: F811
    idx, mllm = setup["index"], ScriptedMLLM([])
    user = SimulatedUser(mllm, idx.image(idx.ids[0]))
    cases = [(THIConfig(policy="paper"), None, PaperPolicy, AnchorAnswerer),
             (THIConfig(policy="paper"), HumanUser(), PaperPolicy, HumanAnswerer),
             (THIConfig(policy="adaptive"), None, AdaptivePolicy, AnchorAnswerer),
             (THIConfig(policy="adaptive"), user, WithUserPolicy, SimulatedAnswerer),
             (THIConfig(policy="adaptive"), HumanUser(), WithUserPolicy, HumanAnswerer)]
    for cfg, who, policy, answerer in cases:
        chosen = policy_for(resolve(live_context(idx, mllm, cfg, user=who)))
        assert type(chosen) is policy and type(chosen.answerer) is answerer


def test_paper_policy_through_the_interface(setup):  # noqa: F811
    idx = setup["index"]
    cfg = THIConfig(policy="paper", xi=-1.0)  # the gate is open in round 1
    live, state, pending = _start(live_context(idx, ScriptedMLLM([True]), cfg))
    policy = policy_for(live)
    update = policy.inspect(state, live, pending)
    top1 = state["original_ranking"][0]["id"]
    assert update["anchor"] == top1 and pending["new_anchor"] and len(pending["inspected"]) == 1
    state = {**state, **update, "round": 1, "pending": pending}
    assert policy.after_inspect(state) == "ask"
    assert policy.questions(state, live) == paper_questions()
    # no rewrite yet: the anchor's new similarity is 1, fused at the paper's lambda
    expected = idx.scores(QUERY)
    expected[idx.position[top1]] = 0.8 * expected[idx.position[top1]] + 0.2
    assert np.allclose(policy.fuse(state, live), expected, atol=1e-6)
    assert policy.stop(state, [{"inspected": pending["inspected"]}], pending) == REFINED_ONCE
    # a "no" in round 1 above the gate: nothing to ask, and no later round may accept
    live, state, pending = _start(live_context(idx, ScriptedMLLM([False]), cfg))
    update = policy.inspect(state, live, pending)
    state = {**state, **update, "round": 1, "pending": pending}
    assert update["anchor"] is None and policy.after_inspect(state) == "converge"
    assert policy.questions(state, live) == []
    assert np.array_equal(policy.fuse(state, live), idx.scores(QUERY))
    assert policy.stop(state, [{"inspected": pending["inspected"]}], pending) == GATE_CLOSED


def test_adaptive_policy_through_the_interface(setup):  # noqa: F811
    idx = setup["index"]
    cfg = THIConfig(policy="adaptive", anchor_depth=3)
    live, state, pending = _start(live_context(idx, ScriptedMLLM([False, True]), cfg))
    policy = policy_for(live)
    update = policy.inspect(state, live, pending)
    ids = [c["id"] for c in state["ranking"]]
    assert [i["id"] for i in pending["inspected"]] == ids[:2] and update["anchor"] == ids[1]
    assert set(update["verified"]) == set(ids[:2])
    state = {**state, **update, "round": 1, "pending": pending}
    assert policy.after_inspect(state) == "ask"
    asked = policy.questions(state, live)
    assert asked and not set(asked) & set(state["stated"])
    # the rejected candidate moves down by the evidence; the anchor up
    fused = policy.fuse(state, live)
    assert fused[idx.position[ids[1]]] > idx.scores(QUERY)[idx.position[ids[1]]]
    # no "yes" within the depth: no anchor, nothing asked, the original ranking, and the stop
    live, state, pending = _start(live_context(idx, ScriptedMLLM([False] * 3), cfg))
    update = policy.inspect(state, live, pending)
    state = {**state, **update, "round": 1, "pending": pending}
    assert update["anchor"] is None and policy.after_inspect(state) == "converge"
    assert np.array_equal(policy.fuse(state, live), idx.scores(QUERY))
    assert policy.stop(state, [{"inspected": pending["inspected"], "anchor": None}], pending) == NO_ANCHOR


def test_with_user_policy_through_the_interface(setup):  # noqa: F811
    idx = setup["index"]
    mllm = ScriptedMLLM([], answers=ALL_ANSWERS)
    cfg = THIConfig(policy="adaptive", user_verify_per_round=4)
    user = SimulatedUser(mllm, idx.image(idx.ids[0]))
    live, state, pending = _start(live_context(idx, mllm, cfg, user=user), "a person")
    policy = policy_for(live)
    update = policy.inspect(state, live, pending)
    assert len(update["checked"]) == 4 and len(pending["inspected"]) == 4  # each answered the questionnaire
    state = {**state, **update, "round": 1, "pending": pending}
    assert policy.after_inspect(state) == "ask"  # a user is always asked
    assert policy.questions(state, live) == []  # the checked candidates all answered alike: nothing separates them
    answers, finished, source = policy.answerer.answer(state, ["hat"], live, pending)
    assert [a.value for a in answers] == ["brimmed hat"] and not finished and source == "simulated user"
    # nothing known yet: no candidate fits better than another, the scores are the query's
    assert np.allclose(policy.fuse(state, live), idx.scores("a person"), atol=1e-6)
    assert policy.stop({**state, "finished_by_user": True}, [{"inspected": []}], pending) == USER_FINISHED


class AbstainingMLLM(ScriptedMLLM):
    """No person it can judge in the first photos it is shown: it abstains there."""

    def __init__(self, abstain_on, verdicts):
        super().__init__(verdicts)
        self.abstain_on = set(abstain_on)

    def _verify(self, image, text):
        if image.id in self.abstain_on:
            self.verified_ids.append(image.id)
            return Verdict(None, 0.5, "no person visible")
        return super()._verify(image, text)


@pytest.mark.parametrize("policy", ["paper", "adaptive"])
def test_an_abstention_is_no_verdict(setup, policy):  # noqa: F811
    idx = setup["index"]
    top = [idx.ids[i] for i in np.argsort(-idx.scores(QUERY), kind="stable")]
    mllm = AbstainingMLLM(top[:1], [True])
    cfg = THIConfig(policy=policy, xi=2.0, anchor_depth=3)  # paper: a later "yes" may become the anchor
    ctx = live_context(idx, mllm, cfg)
    state = run(QUERY, ctx)
    first = state["rounds"][0]["inspected"][0]
    assert first["id"] == top[0] and first["match"] is None and first["reason"] == "abstained: no person visible"
    assert any("abstained" in n for n in state["rounds"][0]["notes"])
    assert state["anchor"] != top[0]
    assert state["verified"].get(top[0], {}).get("match") is None  # never a yes or a no
    # the abstention moves nothing: without the other verdicts the scores are the query's
    if policy == "adaptive":
        assert state["anchor"] == top[1]  # the search goes on to the next candidate
        rest = {i: v for i, v in state["verified"].items() if i != top[0]}
        moved = final_scores(state, ctx) - final_scores({**state, "verified": rest}, ctx)
        assert not moved.any()
    else:
        assert state["anchor"] == top[1] and len(state["rounds"]) == 2


def test_graphs_thi_imports_without_its_cli_and_the_cli_is_its_main():
    code = ("import sys, graphs.thi; assert 'graphs.thi.cli' not in sys.modules, 'graphs.thi imports its CLI'; "
            "assert graphs.thi.graph.name == 'thi'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for path in (ROOT / "graphs" / "thi").glob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        imported = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert "cli" not in imported and "graphs.thi.cli" not in imported, path.name
    out = subprocess.run([sys.executable, "-m", "graphs.thi", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "usage: python -m graphs.thi" in out.stdout


def test_the_mllm_backends_and_the_index_read_no_dataset():
    files = list((ROOT / "tools" / "mllm").glob("*.py")) + [ROOT / "tools" / "index.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in ("data", "graphs", "agents", "eval", "train"), f"{path.name}: {name}"
