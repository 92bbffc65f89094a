import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest
from langgraph.types import Command

from agents.users import HumanUser, SimulatedUser
from graphs.config import THIConfig, fusion_weight_field
from graphs.server import live_context, oracle_annotations, resolve
from graphs.thi import (GATE_CLOSED, NO_ANCHOR, REFINED_ONCE, USER_FINISHED, build_graph, final_scores,
                        recursion_limit, run)
from graphs.thi.cli import main as thi_main
from tools.embedder import Embedder
from tools.gallery import Gallery, items_for
from tools.index import GalleryIndex
from tools.mllm.base import MLLM, Answer, MLLMError, Verdict
from tools.mllm.oracle import OracleMLLM

from .helpers import tiny_model_dir


class ScriptedMLLM(MLLM):
    """Verdicts from a script (by call order); answers: a fixed value per slot."""

    name = "scripted"

    def __init__(self, verdicts, answers=None, fail=None):
        super().__init__(cache=False)
        self.verdicts = list(verdicts)
        self.answers = answers or {"upper_color": "red", "hat": "cap", "backpack": "backpack"}
        self.fail = fail
        self.verified_ids = []

    def _verify(self, image, text):
        self.verified_ids.append(image.id)
        if self.fail == "verify":
            raise MLLMError("took too long", kind="timeout")
        match = self.verdicts.pop(0) if self.verdicts else False
        return Verdict(match, 0.9, "scripted")

    def _ask(self, image, slots):
        if self.fail == "ask":
            raise MLLMError("banana", kind="unparseable")
        return [Answer(s, self.answers.get(s), 1.0, str(self.answers.get(s))) for s in slots]


@pytest.fixture(scope="module")
def setup(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thi")
    emb = Embedder(f"local-dir:{tiny_model_dir(tmp)}", device="cpu")
    name, items = items_for(small_world, "test")
    g = Gallery.open(name, emb, data_dir=tmp / "db")
    g.index(items, emb, progress=False)
    return {"index": GalleryIndex(g, emb), "world": small_world, "db": tmp / "db", "model": f"local-dir:{tmp / 'tiny-model-0'}"}


QUERY = "A man with short black hair in a blue jacket and grey trousers, carrying a black backpack."


def test_paper_round_one_anchor_refines_once_and_fuses(setup):
    idx = setup["index"]
    mllm = ScriptedMLLM([True])
    cfg = THIConfig(policy="paper", xi=-1.0)  # the top-1 similarity is always above the gate
    state = run(QUERY, live_context(idx, mllm, cfg))
    top1 = state["original_ranking"][0]["id"]
    assert state["anchor"] == top1 and state["stopped_because"] == REFINED_ONCE
    assert len(state["rounds"]) == 1 and mllm.stats.calls["verify"] == 1
    assert state["rounds"][0]["questions"] == [s for s in state["rounds"][0]["questions"]]  # the questionnaire
    assert len(state["rounds"][0]["questions"]) == 26 and mllm.stats.calls["ask"] == 1
    # final = lam * original + (1 - lam) * new, with the anchor's new similarity set to 1
    orig = idx.scores(QUERY)
    new = idx.scores(state["current_query"])
    expected = 0.8 * orig + 0.2 * new
    expected[idx.position[top1]] = 0.8 * orig[idx.position[top1]] + 0.2
    assert np.allclose(final_scores(state, live_context(idx, mllm, cfg)), expected, atol=1e-6)
    assert state["current_query"].startswith(QUERY)


def test_paper_gate_below_xi_accepts_a_later_candidate(setup):
    idx = setup["index"]
    cfg = THIConfig(policy="paper", xi=2.0)  # the top-1 similarity is always at most the gate
    mllm = ScriptedMLLM([False, True])
    state = run(QUERY, live_context(idx, mllm, cfg))
    assert state["anchor"] == state["original_ranking"][1]["id"] and len(state["rounds"]) == 2
    # a "yes" in round 1 below the gate is refused, and it closes the gate for later rounds
    mllm = ScriptedMLLM([True, True])
    state = run(QUERY, live_context(idx, mllm, cfg))
    assert state["anchor"] is None and state["stopped_because"] == GATE_CLOSED
    assert mllm.stats.calls["verify"] == 1
    assert state["ranking"] == state["original_ranking"]


def test_paper_walks_at_most_five_candidates(setup):
    mllm = ScriptedMLLM([False] * 9)
    state = run(QUERY, live_context(setup["index"], mllm, THIConfig(policy="paper", xi=2.0)))
    assert mllm.verified_ids == [c["id"] for c in state["original_ranking"][:5]]
    assert state["stopped_because"] == NO_ANCHOR


@pytest.mark.parametrize("search", ["sequential", "batch"])
def test_adaptive_failed_anchor_keeps_the_original_ranking(setup, search):
    mllm = ScriptedMLLM([False] * 20)
    cfg = THIConfig(policy="adaptive", anchor_search=search)
    state = run(QUERY, live_context(setup["index"], mllm, cfg))
    assert state["anchor"] is None and state["stopped_because"] == NO_ANCHOR
    assert state["ranking"] == state["original_ranking"]
    budget = cfg.anchor_depth if search == "sequential" else cfg.verify_budget
    assert mllm.stats.calls["verify"] == budget
    assert mllm.verified_ids == [c["id"] for c in state["original_ranking"][:budget]]
    # it stops in the round that spends the budget, without an empty round after it
    assert all(r["inspected"] for r in state["rounds"])
    per_round = budget if search == "sequential" else cfg.verify_per_round
    assert len(state["rounds"]) == -(-budget // per_round)
    assert np.array_equal(final_scores(state, live_context(setup["index"], mllm, cfg)), setup["index"].scores(QUERY))


def test_sequential_search_stops_at_the_first_confident_yes(setup):
    idx = setup["index"]
    mllm = ScriptedMLLM([False, False, True, True, True, True, True])
    cfg = THIConfig(policy="adaptive", rounds=4, verify_after_anchor=2)
    state = run(QUERY, live_context(idx, mllm, cfg))
    original = [c["id"] for c in state["original_ranking"]]
    first = state["rounds"][0]
    assert [i["id"] for i in first["inspected"]] == original[:3]
    assert [i["match"] for i in first["inspected"]] == [False, False, True]
    assert state["anchor"] == original[2] and first["anchor"] == original[2]
    # once the anchor is known, exactly verify_after_anchor more candidates, none seen before
    later = [i["id"] for r in state["rounds"][1:] for i in r["inspected"]]
    assert len(later) == 2 and not set(later) & set(original[:3])
    assert mllm.stats.calls["verify"] == 5 and mllm.stats.calls["ask"] == 1
    # a "yes" below min_yes_confidence (the script answers with confidence 0.9) is not an anchor
    mllm = ScriptedMLLM([True] * 20)
    state = run(QUERY, live_context(idx, mllm, THIConfig(policy="adaptive", min_yes_confidence=0.95, anchor_depth=4)))
    assert state["anchor"] is None and mllm.stats.calls["verify"] == 4
    assert state["ranking"] == state["original_ranking"]


def test_sequential_search_settings_are_checked(capsys):
    with pytest.raises(ValueError, match="anchor_search"):
        THIConfig(anchor_search="greedy")
    with pytest.raises(ValueError, match="anchor_depth"):
        THIConfig(anchor_depth=0)
    with pytest.raises(SystemExit) as exit_:  # refused by the flag's type, before anything loads
        thi_main(["--query", "a man in a red coat", "--anchor-depth", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--anchor-depth: must be an integer >= 1" in err and "Traceback" not in err


def test_adaptive_anchor_adds_facts_and_moves_verified_candidates(setup):
    idx = setup["index"]
    mllm = ScriptedMLLM([False, True, True], answers={"hat": "cap", "hat_color": "red", "eyewear": "glasses",
                                                      "upper_type": "jacket", "scarf": "scarf", "bag": "handbag",
                                                      "bag_color": "pink", "hand_object": "phone", "belt": "belt",
                                                      "pattern": "plain", "shoes_color": "white"})
    cfg = THIConfig(policy="adaptive", rounds=3, anchor_search="batch")
    state = run(QUERY, live_context(idx, mllm, cfg))
    first = state["rounds"][0]
    assert [i["match"] for i in first["inspected"]] == [False, True, True]
    assert state["anchor"] == first["inspected"][1]["id"]
    assert state["current_query"].startswith(QUERY) and state["current_query"] != QUERY
    assert state["facts"] and all(s not in state["stated"] for s in state["facts"])
    rejected = first["inspected"][0]["id"]
    assert [c["id"] for c in state["ranking"]].index(rejected) > [c["id"] for c in state["ranking"]].index(state["anchor"])
    assert len(state["rounds"]) <= cfg.rounds
    for r in state["rounds"]:
        assert set(r) >= {"round", "query", "anchor", "questions", "answers", "rewritten_query", "topk", "mllm_calls", "ms"}


def test_adaptive_anchor_image_pulls_up_similar_photos(setup):
    idx = setup["index"]
    plain = THIConfig(policy="adaptive", rounds=1, anchor_image_weight=0.0)
    state = run(QUERY, live_context(idx, ScriptedMLLM([True]), plain))
    anchor = state["anchor"]
    assert anchor is not None
    with_image = THIConfig(policy="adaptive", rounds=1, anchor_image_weight=0.25)
    delta = final_scores(state, live_context(idx, ScriptedMLLM([]), with_image)) - \
        final_scores(state, live_context(idx, ScriptedMLLM([]), plain))
    assert np.allclose(delta, 0.25 * (idx.embeddings @ idx.embeddings[idx.position[anchor]]), atol=1e-6)
    # without an anchor nothing moves, whatever the weight
    failed = run(QUERY, live_context(idx, ScriptedMLLM([False] * 9), with_image))
    assert failed["ranking"] == failed["original_ranking"]


def test_adaptive_fusion_has_its_own_weight_and_the_papers_is_left_alone(setup):
    idx = setup["index"]
    base = THIConfig(policy="adaptive", rounds=1, anchor_image_weight=0.0, verify_weight=0.0)
    state = run(QUERY, live_context(idx, ScriptedMLLM([True]), base))
    anchor = state["anchor"]
    assert anchor is not None and state["current_query"] != QUERY  # the anchor's answers were merged
    original, new = idx.scores(QUERY), idx.scores(state["current_query"])
    new[idx.position[anchor]] = 1.0
    for lam_adaptive in (0.9, 0.5):
        for paper_lam in (0.8, 0.1):  # the paper policy's weight plays no part in ours
            cfg = replace(base, lam_adaptive=lam_adaptive, lam=paper_lam)
            scores = final_scores(state, live_context(idx, ScriptedMLLM([]), cfg))
            assert np.allclose(scores, lam_adaptive * original + (1 - lam_adaptive) * new, atol=1e-6)
    assert THIConfig().lam == 0.8  # the paper's lambda stays its default
    assert fusion_weight_field("paper") == "lam" and fusion_weight_field("adaptive") == "lam_adaptive"
    with pytest.raises(ValueError, match="lam_adaptive"):
        THIConfig(lam_adaptive=1.5)


@pytest.mark.parametrize("check", ["answers", "verify"])
def test_with_a_user_more_candidates_are_checked_within_their_budget(setup, check):
    mllm = OracleMLLM(oracle_annotations(setup["world"]))
    cfg = THIConfig(policy="adaptive", rounds=3, user_verify_per_round=4, user_verify_budget=6, user_check=check)
    target = setup["index"].ids[0]
    user = SimulatedUser(mllm, setup["index"].image(target))
    state = run("a person", live_context(setup["index"], mllm, cfg, user=user))
    per_round = [len(r["inspected"]) for r in state["rounds"]]
    assert per_round[0] == 4 and sum(per_round) <= 6


class RecordingMLLM(ScriptedMLLM):
    """Says yes to everything and records the texts it was asked to verify."""

    def __init__(self, answers):
        super().__init__([], answers=answers)
        self.texts = []

    def _verify(self, image, text):
        self.texts.append(text)
        return Verdict(True, 0.9, "recorded")


ALL_ANSWERS = {"gender": "female", "hair_length": "long", "hair_color": "blonde", "upper_type": "hoodie",
               "upper_color": "beige", "sleeve_length": "long", "lower_type": "skirt", "lower_color": "white",
               "lower_length": "long", "pattern": "checked", "shoes_type": "leather shoes", "shoes_color": "grey",
               "eyewear": "sunglasses", "scarf": "scarf", "hand_object": "umbrella", "hand_object_color": "beige",
               "backpack": "backpack", "backpack_color": "grey", "bag": "shoulder bag", "bag_color": "white",
               "hat": "brimmed hat", "hat_color": "beige", "belt": "belt", "action": "running",
               "background": "crosswalk", "other_people": "yes"}


def test_with_a_user_verification_checks_facts_the_text_encoder_had_no_room_for(setup):
    from tools.mllm.parser import parse

    # long answers to every question: they cannot all fit the encoder's 75 tokens
    mllm = RecordingMLLM(ALL_ANSWERS)
    cfg = THIConfig(policy="adaptive", rounds=4, questions_per_round=8, user_verify_per_round=2,
                    user_verify_budget=8, user_check="verify")
    user = SimulatedUser(mllm, setup["index"].image(setup["index"].ids[0]))
    # many words, few attributes: the first round's answers no longer fit beside them
    query = ("Someone I saw from a distance near the entrance of the old station building in the late afternoon "
             "light, moving past the kiosk and the timetable board towards the platforms on the far side.")
    state = run(query, live_context(setup["index"], mllm, cfg, user=user))
    notes = [n for r in state["rounds"] for n in r["notes"]]
    assert any("left out to fit" in n for n in notes)
    emb = setup["index"].embedder
    assert emb.count_tokens(state["current_query"]) <= emb.token_budget
    in_query = parse(state["current_query"]).constraints
    in_description = parse(state["description"]).constraints
    assert set(in_description) > set(in_query)  # more facts than the encoder could take
    # the last round verified against the full description, not the budgeted query
    assert mllm.texts[-1] != state["current_query"]
    person = lambda slots: {s for s in slots if s not in ("action", "background", "other_people")}  # noqa: E731
    assert person(parse(mllm.texts[-1]).constraints) > person(in_query)



class OtherPlaceMLLM(RecordingMLLM):
    """Every photo shows the person, none of them in the place the user saw."""

    def _verify(self, image, text):
        from tools.mllm.parser import parse

        self.texts.append(text)
        if "background" in parse(text).constraints:
            return Verdict(False, 0.9, "background: the photo shows a street")
        return Verdict(True, 0.8, "the person matches")


def test_with_a_user_the_photo_context_is_asked_and_a_no_is_rechecked_for_the_person_alone(setup, monkeypatch):
    from tools.mllm.parser import parse

    context = {"action": "running", "background": "park", "other_people": "yes"}
    mllm = OtherPlaceMLLM({"gender": "female", "upper_color": "red", **context})
    # every slot looks equally disputed, and one round may ask them all
    monkeypatch.setattr(setup["index"], "disagreement", lambda ids, slots: {s: 1.0 for s in slots})
    cfg = THIConfig(policy="adaptive", rounds=2, questions_per_round=30, user_verify_per_round=3, user_check="verify")
    user = SimulatedUser(mllm, setup["index"].image(setup["index"].ids[0]))
    ctx = live_context(setup["index"], mllm, cfg, user=user)
    state = run("a person", ctx)
    assert set(context) <= set(state["asked"]) and set(context) <= set(state["facts"])
    assert set(context) <= set(parse(state["current_query"]).constraints)  # the retriever hears them
    checked = state["rounds"][-1]["inspected"]
    assert checked and all(i["match"] and i["elsewhere"] for i in checked)
    assert "background" in parse(mllm.texts[-2]).constraints and "background" not in parse(mllm.texts[-1]).constraints
    # the person elsewhere moves up, by half a full match
    moved = final_scores(state, ctx) - final_scores({**state, "verified": {}}, ctx)
    pos = setup["index"].position[checked[0]["id"]]
    assert moved[pos] == pytest.approx(cfg.user_verify_weight * cfg.user_elsewhere_factor * (2 * 0.8 - 1))
    without = THIConfig(policy="adaptive", rounds=2, questions_per_round=30, ask_context=False)
    state = run("a person", live_context(setup["index"], RecordingMLLM(ALL_ANSWERS), without, user=user))
    assert not set(context) & set(state["asked"])


class PerPhotoMLLM(ScriptedMLLM):
    """Answers ``answers`` about the target photo and ``others`` (the same with a few values changed)
    about every other photo; records which photos were asked what; can fail on the other photos."""

    def __init__(self, target, answers, others, fail_others=False):
        super().__init__([], answers=answers)
        self.target, self.others, self.fail_others = target, others, fail_others
        self.asked = []

    def _verify(self, image, text):
        raise AssertionError("candidates are checked by their answers, not by verification")

    def _ask(self, image, slots):
        self.asked.append((image.id, tuple(slots)))
        if image.id != self.target and self.fail_others:
            raise MLLMError("no reply", kind="timeout")
        table = self.answers if image.id == self.target else self.others
        return [Answer(s, table.get(s), 0.9, str(table.get(s))) for s in slots]


def _user_setup(setup, fail_others=False, **settings):
    idx = setup["index"]
    ranked = [idx.ids[i] for i in np.argsort(-idx.scores("a person"), kind="stable")]
    target = ranked[3]  # not where the query alone puts it
    others = {**ALL_ANSWERS, "upper_color": "red", "hat": "none"}
    mllm = PerPhotoMLLM(target, ALL_ANSWERS, others, fail_others)
    user = SimulatedUser(PerPhotoMLLM(target, ALL_ANSWERS, others), idx.image(target))  # its own record of asks
    cfg = THIConfig(**{"policy": "adaptive", "rounds": 2, "questions_per_round": 30, "user_verify_per_round": 5,
                       "user_verify_window": 5, "user_verify_budget": 10, **settings})
    return live_context(idx, mllm, cfg, user=user), target


def test_with_a_user_candidates_answer_the_questionnaire_once_and_the_one_that_fits_rises(setup):
    from agents.inspector import agreement
    from tools.attributes import SLOT_NAMES

    ctx, target = _user_setup(setup)
    live = resolve(ctx)
    state = run("a person", ctx)
    assert all(slots == tuple(SLOT_NAMES) for _, slots in live.mllm.asked)  # the whole questionnaire
    candidates = [i for i, _ in live.mllm.asked]
    assert set(candidates) == set(state["checked"])
    assert len(candidates) == len(set(candidates)) <= 10  # each checked once, within the budget
    assert len(state["rounds"][0]["inspected"]) == 5 and len(state["rounds"][1]["inspected"]) >= 1
    assert state["ranking"][0]["id"] == target and state["anchor"] == target
    # the trace judges each check by what was known when it ran: nothing in round 1 ("a person")
    first, second = state["rounds"][0]["inspected"], state["rounds"][1]["inspected"]
    assert all(i["match"] is False and i["reason"].startswith("agrees on 0 of 0") for i in first)
    assert all("differs on upper_color (red, not beige), hat (none, not brimmed hat)" in i["reason"] for i in second)
    # the score moves by the agreement's weight times its log-likelihood ratio (background counts half)
    known = {**state["stated"], **state["facts"]}
    weights = {"action": 0.5, "background": 0.5, "other_people": 0.5}
    fit = agreement(state["checked"][target], known, 0.3, 0.02, weights).score
    moved = final_scores(state, ctx) - final_scores({**state, "checked": {}}, ctx)
    assert moved[live.index.position[target]] == pytest.approx(live.config.agreement_weight * fit)
    others = [moved[live.index.position[i]] for i in state["checked"] if i != target]
    assert fit > 0 and max(others) < moved[live.index.position[target]]


def test_with_a_user_the_questions_are_where_the_candidates_answers_differ(setup):
    ctx, target = _user_setup(setup, questions_per_round=5)
    state = run("a person", ctx)
    # the checked top candidates differ only on the upper colour and the hat (the colour question
    # comes with its garment); all else they agree on
    asked = {"upper_type", "upper_color", "hat"}
    assert set(state["rounds"][0]["questions"]) == asked
    ctx, _ = _user_setup(setup, questions_per_round=5, questions_from="probe")
    assert set(run("a person", ctx)["rounds"][0]["questions"]) != asked


def test_with_a_user_a_candidate_that_cannot_answer_is_skipped_and_traced(setup):
    ctx, target = _user_setup(setup, fail_others=True)
    state = run("a person", ctx)
    inspected = [i for r in state["rounds"] for i in r["inspected"]]
    failed = [i for i in inspected if i["match"] is None]
    assert failed and all(i["reason"].startswith("skipped: timeout") for i in failed)
    assert set(state["checked"]) <= {target}
    assert any("skipped" in n for r in state["rounds"] for n in r["notes"])


@pytest.mark.parametrize("fail", ["verify", "ask"])
def test_mllm_failures_are_skipped_and_traced(setup, fail):
    mllm = ScriptedMLLM([True, True, True], fail=fail)
    state = run(QUERY, live_context(setup["index"], mllm, THIConfig(policy="adaptive")))
    notes = [n for r in state["rounds"] for n in r["notes"]]
    assert any("skipped" in n for n in notes)
    if fail == "verify":
        assert state["ranking"] == state["original_ranking"]
    else:
        assert state["current_query"] == QUERY  # nothing learned, query unchanged


def test_round_limit_is_the_graphs_own(setup):
    mllm = OracleMLLM(oracle_annotations(setup["world"]))
    cfg = THIConfig(policy="adaptive", rounds=2)
    target = setup["index"].ids[0]
    user = SimulatedUser(mllm, setup["index"].image(target))
    state = build_graph().invoke({"query": "a person"}, context=live_context(setup["index"], mllm, cfg, user=user),
                                 config={"recursion_limit": recursion_limit(cfg)})
    assert len(state["rounds"]) <= 2 and state["stopped_because"]


def test_empty_query_is_refused(setup):
    with pytest.raises(ValueError, match="empty"):
        run("   ", live_context(setup["index"], ScriptedMLLM([]), THIConfig()))


def test_long_query_runs_and_reports_truncation(setup):
    long = QUERY + " " + " ".join(["She also wears a very long and detailed red coat with many buttons."] * 8) + " ENDWORD"
    state = run(long, live_context(setup["index"], ScriptedMLLM([False] * 9), THIConfig()))
    assert state["truncated"].endswith("ENDWORD")


def _interactive(setup, checkpointer):
    graph = build_graph(checkpointer)
    ctx = live_context(setup["index"], OracleMLLM(oracle_annotations(setup["world"])), THIConfig(policy="adaptive", rounds=3), user=HumanUser())
    return graph, ctx


def test_interactive_answers_through_interrupt_and_resume(setup):
    from langgraph.checkpoint.memory import InMemorySaver

    graph, ctx = _interactive(setup, InMemorySaver())
    cfg = {"configurable": {"thread_id": "t1"}, "recursion_limit": 40}
    out = graph.invoke({"query": "a woman"}, cfg, context=ctx)
    payload = out["__interrupt__"][0].value
    assert payload["type"] == "questions" and payload["questions"]
    slots = [q["slot"] for q in payload["questions"]]
    answers = {slots[0]: payload["questions"][0]["options"][-1]} | {s: "skip" for s in slots[1:]}
    out = graph.invoke(Command(resume={"answers": answers, "finish": True}), cfg, context=ctx)
    assert "__interrupt__" not in out
    assert out["stopped_because"] == USER_FINISHED
    assert out["facts"].get(slots[0]) == payload["questions"][0]["options"][-1] or out["facts"] == {}
    assert out["rounds"][-1]["answers"][0]["source"] == "human"


def test_interactive_dialogue_resumes_from_sqlite_in_a_new_graph(setup, tmp_path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    db = tmp_path / "dialogue.sqlite"
    graph, ctx = _interactive(setup, SqliteSaver(sqlite3.connect(db, check_same_thread=False)))
    cfg = {"configurable": {"thread_id": "abc"}, "recursion_limit": 40}
    out = graph.invoke({"query": "a man in a blue jacket"}, cfg, context=ctx)
    assert "__interrupt__" in out
    # another process / UI picks the dialogue up from the file
    graph2, _ = _interactive(setup, SqliteSaver(sqlite3.connect(db, check_same_thread=False)))
    assert graph2.get_state(cfg).next == ("ask",)
    out = graph2.invoke(Command(resume={"answers": {}, "finish": False}), cfg, context=ctx)
    while "__interrupt__" in out:
        out = graph2.invoke(Command(resume={"answers": {}, "finish": False}), cfg, context=ctx)
    assert out["stopped_because"]


def test_cli_json_trace_report_and_errors(setup, tmp_path, capsys):
    base = ["--gallery", str(setup["world"]), "--model", setup["model"], "--data-dir", str(setup["db"]), "--mllm", "oracle"]
    trace, report = tmp_path / "t.jsonl", tmp_path / "r.html"
    assert thi_main(["--query", QUERY, "--json", "--trace", str(trace), "--report", str(report)] + base) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"query", "final_query", "rounds", "ranking", "stopped_because"}
    assert out["ranking"] and set(out["ranking"][0]) == {"id", "score"}
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert len(lines) == len(out["rounds"]) and all("topk" in x and "mllm_calls" in x for x in lines)
    assert "<img" in report.read_text()
    assert thi_main(["--query", QUERY, "--policy", "paper", "--xi", "-1"] + base) == 0
    text = capsys.readouterr().out
    assert "round 1" in text and "final ranking" in text and "ORACLE" in text
    assert thi_main(["--query", "  "] + base) == 2
    assert "empty" in capsys.readouterr().err
    # a gallery that was never indexed with this model: a clear error naming the fix
    other = ["--gallery", str(setup["world"]), "--split", "train", "--model", setup["model"], "--data-dir", str(setup["db"])]
    assert thi_main(["--query", QUERY] + other) == 1
    assert "index" in capsys.readouterr().err


def test_cli_prints_the_best_ranked_checks_and_sums_up_the_rest(capsys):
    from graphs.thi.cli import SHOWN_CHECKS, _print_round

    n = SHOWN_CHECKS + 3
    inspected = [{"id": f"p{r}", "rank": r, "match": r % 2 == 0, "confidence": 0.9, "reason": "r", "cached": False}
                 for r in range(n, 0, -1)]
    _print_round({"round": 1, "inspected": inspected, "anchor": None, "answers": [], "rewritten_query": None,
                  "topk": [], "notes": []})
    lines = capsys.readouterr().out.splitlines()
    shown = [x for x in lines if x.strip().startswith("verify #")]
    assert [x.split()[1] for x in shown] == [f"#{r}" for r in range(1, SHOWN_CHECKS + 1)]
    fit = sum(r % 2 == 0 for r in range(SHOWN_CHECKS + 1, n + 1))
    assert any(f"3 more checked, {fit} of them fit" in x for x in lines)
