"""The JSON-valued run context and the process-wide cache of live resources (graphs.server)."""

import json
import threading
from dataclasses import asdict, replace

import pytest

from graphs import server
from graphs.config import THIConfig, THIContext
from graphs.server import live_context, oracle_annotations, register, resolve, unregister
from graphs.thi import build_graph, graph, run
from tools.mllm.oracle import OracleMLLM

from .test_thi import QUERY, ScriptedMLLM, setup  # noqa: F401  (module fixture)


def _values(setup, **fields):  # noqa: F811
    """A context of plain values naming the test gallery and model (nothing registered)."""
    return THIContext(model=setup["model"], gallery=str(setup["world"]), data_dir=str(setup["db"]), device="cpu",
                      **fields)


def test_the_context_is_plain_json_with_a_described_schema():
    ctx = THIContext(policy="paper", k=5, config={"xi": 0.8}, user="simulated", target="imgs/a.jpg",
                     filter={"camera": 2})
    again = THIContext(**json.loads(json.dumps(asdict(ctx))))
    assert again == ctx and again.thi_config() == THIConfig(policy="paper", k=5, xi=0.8)
    schema = graph.get_context_jsonschema()
    assert set(schema["properties"]) == {f for f in asdict(ctx)}
    assert all(p.get("description") for p in schema["properties"].values())
    assert schema["properties"]["user"]["enum"] == ["none", "human", "simulated"]
    # a THIConfig round-trips through its context
    cfg = THIConfig(policy="adaptive", rounds=3, anchor_depth=4, lam_user=0.4)
    assert THIContext.from_config(cfg).thi_config() == cfg
    assert THIContext.from_config(cfg).config == {"anchor_depth": 4, "lam_user": 0.4}  # only what differs


@pytest.mark.parametrize("fields, message", [
    ({"config": {"bogus": 1}}, "unknown THI setting(s): bogus"),
    ({"k": 0}, "k and rounds must be >= 1"),
    ({"config": {"anchor_search": "greedy"}}, "anchor_search must be"),
])
def test_bad_settings_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as e:
        THIContext(**fields).thi_config()
    assert "\n" not in str(e.value)


def test_fields_of_their_own_and_the_user_kind_are_checked():
    with pytest.raises(ValueError, match="policy as context fields of their own"):
        THIContext(config={"policy": "paper"})
    with pytest.raises(ValueError, match="user must be"):
        THIContext(user="robot")


def test_contexts_with_the_same_values_share_their_live_objects(setup):  # noqa: F811
    ctx = _values(setup, mllm="oracle")
    live = resolve(ctx)
    assert resolve(ctx) is live and resolve(replace(ctx)) is live
    other = resolve(replace(ctx, policy="paper", k=3))
    assert other is not live and other.config.policy == "paper" and other.config.k == 3
    assert other.index is live.index and other.mllm is live.mllm  # one model, gallery and backend per process
    assert isinstance(live.mllm, OracleMLLM)
    # the oracle answers from the gallery folder's annotations, by image id
    image = live.index.ids[0]
    truth = oracle_annotations(setup["world"])[image]
    hat = live.mllm.ask(live.index.image(image), ["hat"])[0].value
    assert hat == (truth["attributes"]["hat"] if truth["visible"]["hat"] else None)
    # the graph resolves the same context a client sends as JSON
    state = build_graph().invoke({"query": QUERY}, context=asdict(replace(ctx, rounds=1)),
                                 config={"recursion_limit": 20})
    assert state["ranking"] and state["rounds"][0]["inspected"]


def test_a_simulated_user_and_a_filter_come_from_values(setup):  # noqa: F811
    idx = setup["index"]
    target = idx.ids[5]
    ctx = _values(setup, mllm="oracle", user="simulated", target=target, rounds=2, filter={"pid": idx.pid(target)})
    live = resolve(ctx)
    assert live.user.target.id == target and live.user.mllm is live.mllm
    assert live.target_pid == idx.pid(target)  # known from the target photo
    assert live.allowed == {i for i in idx.ids if idx.pid(i) == idx.pid(target)}
    state = run("a person", ctx)
    assert {idx.pid(c["id"]) for c in state["ranking"]} == {idx.pid(target)}
    assert state["rounds"][0]["answers"] and state["rounds"][0]["answers"][0]["source"] == "simulated user"
    assert state["rounds"][0]["target_rank"] == 1
    with pytest.raises(ValueError, match="needs target"):
        resolve(replace(ctx, target=None))
    with pytest.raises(ValueError, match="not in the gallery"):
        resolve(replace(ctx, target="no/such.jpg"))


def test_registered_objects_replace_what_the_values_would_build(setup):  # noqa: F811
    mllm = ScriptedMLLM([True])
    ctx = live_context(setup["index"], mllm, THIConfig(policy="paper", xi=-1.0))
    live = resolve(ctx)
    assert live.mllm is mllm and live.index is setup["index"] and live.config.xi == -1.0
    assert run(QUERY, ctx)["anchor"] is not None and mllm.stats.calls["verify"] == 1
    name = register(index=setup["index"], mllm=mllm, allowed={setup["index"].ids[0]})
    assert resolve(replace(ctx, resources=name)).allowed == {setup["index"].ids[0]}
    unregister(ctx.resources)
    with pytest.raises(ValueError, match="no live resources are registered"):
        resolve(ctx)
    with pytest.raises(ValueError, match="unknown resource kind"):
        register(embedder=object())


def test_one_build_per_key_however_many_threads_ask():
    cache = server._Cache()
    builds, start = [], threading.Barrier(8)

    def build():
        builds.append(1)
        return object()

    got = []

    def ask():
        start.wait()
        got.append(cache.get(("key",), build))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len({id(x) for x in got}) == 1
    # a failed build is not kept: the next caller builds again
    with pytest.raises(RuntimeError):
        cache.get("bad", lambda: (_ for _ in ()).throw(RuntimeError("no")))
    assert cache.get("bad", lambda: 3) == 3
    bounded = server._Cache(maxsize=2)
    for k in "abc":
        bounded.get(k, lambda: k)
    assert bounded.get("a", lambda: "rebuilt") == "rebuilt"  # the least recently used went first
