"""A THI dialogue as UIs, servers and other processes meet it: the interrupt contract, threads and
resumes, per-dialogue accounting, streaming and tracing, and the chat MLLM backends' integration
(protocols, preflight, deadlines, the breaker, ICL's unchecked merge)."""

import io
import json
import sqlite3
import sys
import threading
from dataclasses import replace

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tracers.base import BaseTracer
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from agents.users import HumanUser, ResumeError, SimulatedUser, read_human_answers, read_resume
from graphs.config import THIConfig, THIContext
from graphs.server import backend_for, live_context, oracle_annotations, resolve
from graphs.service import THIService
from graphs.thi import DEADLINE_SPENT, NO_ANCHOR, build_graph, recursion_limit, run, served_graph
from graphs.thi.cli import main as thi_main
from tools.attributes import SLOTS
from tools.mllm import make_mllm, metering
from tools.mllm.chat import ChatMLLM
from tools.mllm.oracle import OracleMLLM

from .mllm_server import server_pool
from .test_thi import QUERY, ScriptedMLLM, setup  # noqa: F401  (module fixture)

graph_mod = sys.modules["graphs.thi.graph"]


def _base(setup, *more):  # noqa: F811
    """CLI flags naming the test gallery and model."""
    return ["--gallery", str(setup["world"]), "--model", setup["model"], "--data-dir", str(setup["db"]),
            "--device", "cpu", *more]


class Typing(io.StringIO):
    """stdin for the interactive CLI: these lines, then Ctrl-C (KeyboardInterrupt) or end of input."""

    def __init__(self, lines, then=None):
        super().__init__("".join(f"{x}\n" for x in lines))
        self.left, self.then = len(lines), then

    def readline(self, *a):
        if self.left == 0 and self.then is not None:
            raise self.then
        self.left -= 1
        return super().readline(*a)


# -------------------------------------------------------------------------------------------
# the interrupt contract


@pytest.mark.parametrize("slot", [s for s in SLOTS if s.endswith("_color")])
def test_every_free_text_answer_goes_through_one_parser(slot):
    # "Black." and "dark brown" raised KeyError('hair_color') in agents/users.py
    for text in ("Black.", "black", "dark brown", "It's black, I think", "no idea"):
        answers, finish = read_human_answers([slot], {"answers": {slot: text}})
        assert not finish and len(answers) == 1 and answers[0].text == text
        assert answers[0].value in (None, *SLOTS[slot].values)
    assert read_human_answers(["hair_color"], {"answers": {"hair_color": "Black."}})[0][0].value == "black"
    assert read_human_answers(["hair_color"], {"answers": {"hair_color": "dark brown"}})[0][0].value == "brown"
    assert read_human_answers(["backpack"], {"answers": {"backpack": "yes"}})[0][0].value == "backpack"
    assert read_human_answers(["hat"], {"answers": {"hat": "skip"}, "finish": True}) == ([], True)


@pytest.mark.parametrize("reply, message", [
    (None, "missing, not an object"),
    ("black", "str, not an object"),
    ({"answers": "black"}, "answers: Input should be a valid dictionary"),
    ({"answers": {"hat": "cap"}, "done": True}, "done: Extra inputs are not permitted"),
    ({"answers": {"hat": "cap", "gender": "male"}}, "answers name slots not asked this round: gender"),
    ({"answers": {"hat": "cap"}, "finish": "perhaps"}, "finish: Input should be a valid boolean"),
])
def test_resume_values_are_validated_with_one_clear_line(reply, message):
    with pytest.raises(ResumeError, match=message.replace("(", r"\(")) as e:
        read_resume(["hat"], reply)
    assert "\n" not in str(e.value)
    assert read_resume(["hat"], {"answers": {"hat": None}, "finish": True}).finish is True


def _human(setup, checkpointer, mllm=None, rounds=3, **fields):  # noqa: F811
    mllm = mllm or OracleMLLM(oracle_annotations(setup["world"]))
    ctx = live_context(setup["index"], mllm, THIConfig(policy="adaptive", rounds=rounds), user=HumanUser(), **fields)
    return build_graph(checkpointer), ctx


def test_a_refused_resume_value_asks_again_and_the_dialogue_goes_on(setup):  # noqa: F811
    graph, ctx = _human(setup, InMemorySaver())
    cfg = {"configurable": {"thread_id": "ui"}, "recursion_limit": 40}
    first = graph.invoke({"query": "a woman"}, cfg, context=ctx)["__interrupt__"][0].value
    slots = [q["slot"] for q in first["questions"]]
    # {"answers": "black"} raised AttributeError inside the node; now the same questions come back with the reason
    for bad, why in [("black", "not an object"), ({"answers": "black"}, "valid dictionary"),
                     ({"answers": {"no_such_slot": "x"}}, "not asked this round")]:
        again = graph.invoke(Command(resume=bad), cfg, context=ctx)["__interrupt__"][0].value
        assert again["round"] == 1 and again["questions"] == first["questions"] and why in again["error"]
    out = graph.invoke(Command(resume={"answers": {slots[0]: "Black.", slots[1]: "skip"}, "finish": True}), cfg,
                       context=ctx)
    assert "__interrupt__" not in out and out["stopped_because"] == "the user finished"
    said = out["rounds"][0]["answers"][0]
    assert said["source"] == "human" and said["text"] == "Black."


# -------------------------------------------------------------------------------------------
# threads and resumes


def test_a_new_query_on_a_thread_with_a_finished_dialogue_starts_a_fresh_one(setup):  # noqa: F811
    cfg = THIConfig(policy="adaptive", anchor_search="batch", verify_per_round=1, rounds=3)
    ctx = live_context(setup["index"], ScriptedMLLM([False] * 30), cfg)
    graph = build_graph(InMemorySaver())
    conf = {"configurable": {"thread_id": "same"}, "recursion_limit": recursion_limit(cfg)}
    first = graph.invoke({"query": QUERY}, conf, context=ctx)
    assert len(first["rounds"]) == 3 and first["stopped_because"] == NO_ANCHOR
    # the old stopped_because used to stop the second dialogue after round 1
    second = graph.invoke({"query": "a woman in a red coat"}, conf, context=ctx)
    assert second["query"] == "a woman in a red coat" and [r["round"] for r in second["rounds"]] == [1, 2, 3]
    assert second["usage"]["mllm_calls"] == 3 and len(second["messages"]) == 2 * (1 + 3)  # the thread's chat


def test_the_cli_starts_a_fresh_dialogue_for_a_new_query_on_a_thread(setup, tmp_path, capsys):  # noqa: F811
    db = str(tmp_path / "d.sqlite")
    flags = _base(setup, "--mllm", "oracle", "--checkpoint", db, "--thread-id", "t", "--json", "--rounds", "3")
    assert thi_main(["--query", QUERY] + flags) == 0
    one = json.loads(capsys.readouterr().out)
    assert thi_main(["--query", "a woman in a red coat"] + flags) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["query"] == "a woman in a red coat" and two["rounds"][0]["round"] == 1
    assert two["rounds"][0]["query"] == "a woman in a red coat" and one["rounds"][0]["query"] == QUERY


def test_ctrl_c_is_one_line_and_resume_goes_on_with_the_answers_given(setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    db = str(tmp_path / "talk.sqlite")
    flags = _base(setup, "--mllm", "oracle", "--rounds", "3", "--checkpoint", db, "--thread-id", "t1")
    n_first = 1 + 8  # enough lines for round 1's questions; Ctrl-C while round 2 asks
    monkeypatch.setattr(sys, "stdin", Typing(["Black."] * n_first, then=KeyboardInterrupt()))
    assert thi_main(["--query", "a person", "--interactive", "--json"] + flags) == 130
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"interrupted (continue with --resume --checkpoint {db} --thread-id t1)"
    saved = build_graph(SqliteSaver(sqlite3.connect(db, check_same_thread=False))).get_state(
        {"configurable": {"thread_id": "t1"}})
    given = saved.values["rounds"][0]["answers"]
    assert saved.next == ("ask",) and given and all(a["text"] == "Black." for a in given if "text" in a)
    # a later process continues where it was: the questions of round 2, the answers of round 1 kept
    monkeypatch.setattr(sys, "stdin", Typing(["done"]))
    assert thi_main(["--resume", "--json"] + flags) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # stdout holds the JSON only; the prompts went to stderr
    assert "Round 2" in err and result["rounds"][0]["answers"] == given
    assert result["stopped_because"] == "the user finished" and len(result["rounds"]) == 2


def test_resume_continues_a_dialogue_killed_mid_way(setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    db = str(tmp_path / "killed.sqlite")
    ctx = THIContext(model=setup["model"], gallery=str(setup["world"]), data_dir=str(setup["db"]), device="cpu",
                     mllm="oracle", rounds=4, config={"anchor_search": "batch", "verify_per_round": 1})
    whole = run(QUERY, ctx)
    assert len(whole["rounds"]) >= 2
    graph = build_graph(SqliteSaver(sqlite3.connect(db, check_same_thread=False)))
    conf = {"configurable": {"thread_id": "k"}, "recursion_limit": 40}
    mllm, real = resolve(ctx).mllm, OracleMLLM._verify
    calls = []

    def dies_in_round_2(self, image, text):
        calls.append(image.id)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, image, text)

    mllm.clear_cache()
    monkeypatch.setattr(OracleMLLM, "_verify", dies_in_round_2)
    with pytest.raises(RuntimeError, match="killed"):
        graph.invoke({"query": QUERY}, conf, context=ctx)
    monkeypatch.setattr(OracleMLLM, "_verify", real)
    assert len(graph.get_state(conf).values["rounds"]) == 1  # round 1 was kept
    # the same command again would start at round 1; --resume goes on from the checkpoint
    assert thi_main(["--resume", "--checkpoint", db, "--thread-id", "k", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in result["rounds"]] == [r["round"] for r in whole["rounds"]]
    assert [r["topk"] for r in result["rounds"]] == [r["topk"] for r in whole["rounds"]]
    assert result["stopped_because"] == whole["stopped_because"]
    assert thi_main(["--resume", "--checkpoint", db, "--thread-id", "nobody"]) == 1
    assert capsys.readouterr().err.strip() == f"error: no dialogue 'nobody' in {db}"
    assert thi_main(["--resume", "--query", "x", "--checkpoint", db, "--thread-id", "k"]) == 2


# -------------------------------------------------------------------------------------------
# accounting


def _answers(payload):
    return {"answers": {q["slot"]: q["options"][0] for q in payload["questions"][:2]}, "finish": False}


def _talk(graph, ctx, conf, until=None):
    out = graph.invoke({"query": "a person"}, conf, context=ctx)
    while "__interrupt__" in out and (until is None or out["__interrupt__"][0].value["round"] < until):
        out = graph.invoke(Command(resume=_answers(out["__interrupt__"][0].value)), conf, context=ctx)
    return out


def test_round_costs_are_the_dialogues_own_across_processes_and_resumes(setup, tmp_path):  # noqa: F811
    ann = oracle_annotations(setup["world"])
    solo_graph, solo_ctx = _human(setup, InMemorySaver(), OracleMLLM(ann, cache=False))
    solo = _talk(solo_graph, solo_ctx, {"configurable": {"thread_id": "solo"}, "recursion_limit": 40})
    assert len(solo["rounds"]) >= 2
    db = tmp_path / "split.sqlite"
    conf = {"configurable": {"thread_id": "split"}, "recursion_limit": 40}
    # "process" A asks round 2's questions, then "process" B (another backend, its own counters) takes over
    graph_a, ctx_a = _human(setup, SqliteSaver(sqlite3.connect(db, check_same_thread=False)), OracleMLLM(ann, cache=False))
    out = _talk(graph_a, ctx_a, conf, until=2)
    mllm_b = OracleMLLM(ann, cache=False)
    for i in setup["index"].ids[:7]:  # B's backend has served others before
        mllm_b.verify(setup["index"].image(i), "someone")
    graph_b, ctx_b = _human(setup, SqliteSaver(sqlite3.connect(db, check_same_thread=False)), mllm_b)
    while "__interrupt__" in out:
        out = graph_b.invoke(Command(resume=_answers(out["__interrupt__"][0].value)), conf, context=ctx_b)
    split = graph_b.get_state(conf).values
    assert [r["mllm_calls"] for r in split["rounds"]] == [r["mllm_calls"] for r in solo["rounds"]]
    assert all(r["mllm_calls"] > 0 for r in split["rounds"])
    assert split["usage"]["mllm_calls"] == sum(r["mllm_calls"] for r in solo["rounds"])
    made_by_a = resolve(ctx_a).mllm.stats.total_calls
    assert made_by_a + mllm_b.stats.total_calls - 7 == split["usage"]["mllm_calls"]


def test_concurrent_searches_each_count_their_own_calls(setup):  # noqa: F811
    mllm = OracleMLLM(oracle_annotations(setup["world"]), cache=False)
    service = THIService.with_objects(setup["index"], mllm, THIConfig(policy="adaptive", anchor_search="batch"))
    queries = [QUERY, "a woman in a red coat", "a man with a black backpack", "a person in white shoes"]
    solo = {q: service.search(q, k=3, rounds=3)["mllm_calls"] for q in queries}
    before = mllm.stats.total_calls
    got: dict = {}
    start = threading.Barrier(len(queries))

    def one(q):
        start.wait()
        got[q] = service.search(q, k=3, rounds=3)

    threads = [threading.Thread(target=one, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {q: r["mllm_calls"] for q, r in got.items()} == solo
    assert all(r["mllm_calls"] == sum(x["mllm_calls"] for x in r["rounds"]) for r in got.values())
    assert sum(solo.values()) == mllm.stats.total_calls - before


def test_a_persons_time_to_answer_is_reported_apart(setup, monkeypatch):  # noqa: F811
    graph, ctx = _human(setup, InMemorySaver(), rounds=1)
    conf = {"configurable": {"thread_id": "slow"}, "recursion_limit": 40}
    payload = graph.invoke({"query": "a person"}, conf, context=ctx)["__interrupt__"][0].value
    real = graph_mod._wall_clock
    monkeypatch.setattr(graph_mod, "_wall_clock", lambda: real() + 3600.0)  # the person took an hour
    out = graph.invoke(Command(resume=_answers(payload)), conf, context=ctx)
    r = out["rounds"][0]
    assert 3600e3 <= r["wait_ms"] < 3601e3 and r["ms"] < 3600e3 and out["usage"]["wait_ms"] == r["wait_ms"]


class Echo(ChatMLLM):
    name = "echo"
    max_concurrency = 4

    def _chat(self, messages, options):
        return "Yes."


def test_the_meter_counts_calls_made_in_verify_many_worker_threads(setup):  # noqa: F811
    idx = setup["index"]
    pairs = [(idx.image(i), "a person") for i in idx.ids[:6]]
    mllm, got = Echo(cache=False), {}

    def dialogue(name, n):
        with metering() as meter:
            mllm.verify_many(pairs[:n])
        got[name] = meter.snapshot()

    threads = [threading.Thread(target=dialogue, args=(f"d{n}", n)) for n in (2, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each "yes" is followed by the person check of the ours protocol, made in the same worker
    assert got["d2"]["by_kind"] == {"verify": 2, "person": 2} and got["d6"]["by_kind"] == {"verify": 6, "person": 6}
    assert mllm.stats.calls["verify"] == 8 and got["d6"]["calls"] == 12


# -------------------------------------------------------------------------------------------
# streaming and tracing


def _size(x) -> int:
    from langchain_core.load import dumpd

    return len(json.dumps(x, default=lambda o: dumpd(o) if hasattr(o, "to_json") else repr(o)))


def test_a_five_round_stream_sends_deltas_and_custom_events(setup):  # noqa: F811
    cfg = THIConfig(policy="adaptive", anchor_search="batch", verify_per_round=1, rounds=5)
    ctx = live_context(setup["index"], ScriptedMLLM([False] * 30), cfg)
    served = served_graph(InMemorySaver())
    conf = {"configurable": {"thread_id": "s"}, "recursion_limit": recursion_limit(cfg)}
    sent, events, final = 0, [], None
    for mode, data in served.stream({"query": QUERY}, conf, context=ctx, stream_mode=["updates", "custom", "values"]):
        if mode == "updates":
            sent += _size(data)
        elif mode == "custom":
            events.append(data)
        else:
            final = data
    assert len(final["rounds"]) == 5 and "pending" not in final and "verified" not in final
    assert sent <= 2 * _size(final)
    kinds = [e["event"] for e in events]
    assert kinds.count("verification") == 5 and kinds.count("round") == 5
    assert [e["round"] for e in events if e["event"] == "round"] == [1, 2, 3, 4, 5]
    assert isinstance(final["messages"][0], HumanMessage) and len(final["messages"]) == 6
    assert all(isinstance(m, AIMessage) and m.content.startswith(f"Round {n}:")
               for n, m in enumerate(final["messages"][1:], 1))


def test_node_updates_carry_only_what_changed(setup):  # noqa: F811
    idx = setup["index"]
    user = SimulatedUser(OracleMLLM(oracle_annotations(setup["world"])), idx.image(idx.ids[3]))
    cfg = THIConfig(policy="adaptive", rounds=3, user_check="verify", user_verify_per_round=3)
    ctx = live_context(idx, user.mllm, cfg, user=user)
    seen_verified: set = set()
    for update in build_graph().stream({"query": "a person"}, context=ctx, stream_mode="updates",
                                       config={"recursion_limit": 40}):
        (node, values), = update.items()
        if node == "inspect":
            assert len(values["verified"]) <= 3 and len(values["pending"]["inspected"]) <= 3
            seen_verified |= set(values["verified"])
        if node == "converge":
            assert len(values["rounds"]) == 1
        if node in ("ask", "rewrite", "re_retrieve"):
            assert "inspected" not in values.get("pending", {})
    assert seen_verified


class Recorder(BaseTracer):
    """Keeps every finished root run (with its child runs); no network."""

    def __init__(self):
        super().__init__()
        self.roots = []

    def _persist_run(self, run):
        self.roots.append(run)


def _walk(run, parent=None):
    yield run, parent
    for child in run.child_runs:
        yield from _walk(child, run)


def test_node_runs_carry_round_policy_backend_and_model_with_mllm_gallery_and_embedder_children(setup):  # noqa: F811
    recorder = Recorder()
    cfg = THIConfig(policy="paper", xi=-1.0)
    query = "a man with a green umbrella seen only in this tracing test"  # not in the text cache
    build_graph().invoke({"query": query}, context=live_context(setup["index"], ScriptedMLLM([True]), cfg),
                         config={"callbacks": [recorder], "recursion_limit": 20})
    (root,) = recorder.roots
    runs = list(_walk(root))
    assert root.name == "thi"
    inspect = next(r for r, _ in runs if r.name == "thi.inspect")
    meta = inspect.extra["metadata"]
    assert meta["thi_round"] == 1 and meta["thi_policy"] == "paper" and meta["mllm_backend"] == "scripted"
    assert meta["retrieval_model"] and {"thi", "round:1", "policy:paper"} <= set(inspect.tags)
    assert [c.name for c in inspect.child_runs] == ["mllm.verify"]
    assert inspect.child_runs[0].extra["metadata"]["mllm_backend"] == "scripted"
    retrieve = next(r for r, _ in runs if r.name == "thi.retrieve")
    scores = next(c for c in retrieve.child_runs if c.name == "gallery.scores")
    assert scores.inputs == {"text": query} and [c.name for c in scores.child_runs] == ["embedder.encode_texts"]
    assert any(r.name == "mllm.ask" and p.name == "thi.ask" for r, p in runs)


# -------------------------------------------------------------------------------------------
# the chat MLLM backends in the graph and the CLI


def _free_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def _numbered(body, images) -> str:
    """A chat model: yes to every description, a short free answer to every numbered question, and a
    merge that paraphrases the query away."""
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(user, str):
        return "A tall person in a crimson jacket, walking quickly."
    text = " ".join(b["text"] for b in user if b["type"] == "text")
    if "yes or no" in text.lower():
        return "Yes."
    import re

    count = len(re.findall(r"^\s*\d+\.", text, re.M))
    return "\n".join(f"{n}. It is black." for n in range(1, count + 1))


@pytest.fixture
def chat_server():
    with server_pool(_numbered) as start:
        yield start


def test_the_protocol_is_chosen_through_the_context(setup, chat_server, tmp_path):  # noqa: F811
    server = chat_server()
    base = THIContext(model=setup["model"], gallery=str(setup["world"]), data_dir=str(setup["db"]), device="cpu",
                      mllm="openai", mllm_url=server.url, mllm_model=server.model)
    icl, ours = backend_for(replace(base, mllm_protocol="icl")), backend_for(base)
    assert icl.protocol.name == "icl" and ours.protocol.name == "ours" and icl is not ours
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"name": "mine", "extends": "icl"}))
    assert resolve(replace(base, mllm_protocol=str(custom))).mllm.protocol.name == "mine"
    with pytest.raises(ValueError, match="has no prompts"):
        resolve(replace(base, mllm="oracle", mllm_protocol="icl"))
    with pytest.raises(ValueError, match="unknown MLLM protocol"):
        backend_for(replace(base, mllm_protocol="nope"))
    assert THIContext(mllm_dialogue_timeout=2.5).mllm_dialogue_timeout == 2.5
    with pytest.raises(ValueError, match="mllm_dialogue_timeout"):
        THIContext(mllm_dialogue_timeout=0)
    schema = build_graph().get_context_jsonschema()["properties"]
    assert schema["mllm_protocol"]["description"] and schema["mllm_dialogue_timeout"]["description"]


def test_icl_uses_the_mllms_merge_unchecked_and_traces_what_was_sent(setup, chat_server):  # noqa: F811
    server = chat_server()
    cfg = THIConfig(policy="paper", xi=-1.0)

    def dialogue(protocol):
        mllm = make_mllm("openai", base_url=server.url, model=server.model, api_key="t", max_retries=0,
                         protocol=protocol)
        return run(QUERY, live_context(setup["index"], mllm, cfg))

    icl = dialogue("icl")
    merged = "A tall person in a crimson jacket, walking quickly."
    assert icl["current_query"] == merged  # the query's own words are gone: ICL's merge, as the protocol says
    assert icl["rounds"][0]["rewritten_query"] == merged
    assert any("merge is the new query, unchecked" in n for n in icl["rounds"][0]["notes"])
    ins = icl["rounds"][0]["inspected"][0]
    assert ins["confidence_from"] == "fixed" and {"width", "height", "bytes"} <= set(ins["image"])
    said = [a for a in icl["rounds"][0]["answers"] if a.get("text")]
    assert said and all(a["text"] == "It is black." and a["question"] for a in said)
    assert any(a["question"] not in (SLOTS[a["slot"]].question,) for a in said)  # ICL's open questions
    # with the checked protocol the same paraphrase is refused (the query's words must stay)
    ours = dialogue("ours")
    assert ours["current_query"] != merged and ours["current_query"].startswith(QUERY.rstrip("."))


def test_preflight_failure_is_one_line_before_any_work(setup, capsys):  # noqa: F811
    argv = ["--query", QUERY, "--gallery", "/no/such/gallery", "--mllm", "openai", "--mllm-url", _free_url(),
            "--mllm-model", "m"]
    assert thi_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach http://127.0.0.1")  # not the gallery's error


def test_the_dialogue_deadline_ends_it_with_the_baseline_and_says_why(setup, chat_server, capsys):  # noqa: F811
    server = chat_server("silent")
    argv = ["--query", QUERY, "--json", "--mllm", "openai", "--mllm-url", server.url, "--mllm-dialogue-timeout",
            "1.0"] + _base(setup)
    assert thi_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stopped_because"] == DEADLINE_SPENT
    scores = setup["index"].scores(QUERY)
    baseline = [setup["index"].ids[i] for i in (-scores).argsort(kind="stable")[:10]]
    assert [c["id"] for c in out["ranking"]] == baseline
    notes = [n for r in out["rounds"] for n in r["notes"]]
    assert any("deadline" in n for n in notes) and out["usage"]["mllm_failures"] >= 1
    assert out["rounds"][0]["mllm_calls"] == 0 and out["rounds"][0]["mllm_failures"] >= 1


def test_an_unavailable_mllm_prints_the_kept_ranking_and_exits_1(setup, chat_server, capsys):  # noqa: F811
    server = chat_server("silent")
    argv = ["--query", QUERY, "--mllm", "openai", "--mllm-url", server.url, "--mllm-timeout", "0.5"] + _base(setup)
    assert thi_main(argv) == 1
    out, err = capsys.readouterr()
    assert "final ranking" in out and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: MLLM unavailable (timeout)") and len([x for x in err.splitlines() if "error:" in x]) == 1


@pytest.mark.parametrize("cli", ["eval.thi", "graphs.rda"])
def test_the_benchmark_and_rda_take_the_protocol_and_preflight_the_server(cli, setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    import importlib

    main = importlib.import_module(cli).main
    rest = ["--out", str(tmp_path / "rda.json")] if cli == "graphs.rda" else ["--model", setup["model"]]
    assert main([str(setup["world"]), "--mllm", "offline", "--mllm-protocol", "icl", *rest]) == 1
    assert "has no prompts" in capsys.readouterr().err
    monkeypatch.setenv("THI_MLLM_BASE_URL", _free_url())
    assert main([str(setup["world"]), "--mllm", "openai", "--mllm-protocol", "icl", *rest]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach http://127.0.0.1")


@pytest.mark.slow  # a process loading torch and the models: about 20 s here
def test_ctrl_c_in_a_real_process_blocked_on_the_mllm_exits_130_at_once(setup, chat_server):  # noqa: F811
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    server = chat_server("silent")  # the dialogue blocks in its first MLLM call
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "graphs.thi", "--query", QUERY, "--mllm", "openai", "--mllm-url",
                             server.url, "--quiet"] + _base(setup), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 120
        while not server.requests and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.requests, proc.stderr.read() if proc.poll() is not None else "no MLLM request within 120 s"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # the blocked node thread is not waited for
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and out == "" and err == "interrupted\n"
