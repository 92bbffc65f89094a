"""The THI graph as `langgraph dev` serves it (langgraph.json), driven through the LangGraph SDK.

The test starts `langgraph dev` (LangGraph CLI with the in-memory server, `pip install -e
'.[server]'`) on 127.0.0.1 with a free port (bound to port 0 to find one, then handed to the
server: a port another program takes in between fails the start, visibly) and talks to it as a UI
would: an assistant with stored settings, a run with per-round stream events, an interrupt resumed
with answers (and a refused resume value asked again), a second query on a fresh thread, a new
query on a finished thread, and the graph built by ``build_graph`` used as a graph factory.

Slow (a server process loads torch and the models): ``python -m pytest -m slow tests/test_served_graph.py``;
``.ci/run`` runs it.
"""

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from .helpers import free_port, server_process
from .test_thi import QUERY, setup  # noqa: F401  (module fixture)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("THI_REQUIRE_SERVING") == "1"  # .ci/run: a missing extra is a failure, not a skip


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip(f"{module} is not installed (pip install -e '.[server]')")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need("langgraph_api")
    _need("langgraph_sdk")
    cli = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which("langgraph")
    if cli is None:
        if REQUIRED:
            raise RuntimeError("the langgraph CLI is not installed (pip install -e '.[server]')")
        pytest.skip("the langgraph CLI is not installed (pip install -e '.[server]')")
    tmp = tmp_path_factory.mktemp("served")
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT)]
    # build_graph as a graph factory: the server calls it with its config as the first argument
    config["graphs"]["thi_factory"] = "graphs.thi.graph:build_graph"
    (tmp / "langgraph.json").write_text(json.dumps(config))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "THI_HOME": str(tmp / "home"), "LANGSMITH_TRACING": "false",
           "LANGCHAIN_TRACING_V2": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [cli, "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload",
           "--config", str(tmp / "langgraph.json")]
    with server_process(cmd, f"http://127.0.0.1:{port}", "/ok", "langgraph dev", 180, tmp / "server.log",
                        cwd=tmp, env=env) as url:
        yield url


def _context(setup, **more):  # noqa: F811
    return {"model": setup["model"], "gallery": str(setup["world"]), "data_dir": str(setup["db"]), "device": "cpu",
            "mllm": "oracle", "policy": "adaptive", "rounds": 3, **more}


def _size(x) -> int:
    return len(json.dumps(x))


def test_the_served_graph_through_the_sdk(server, setup):  # noqa: F811
    from langgraph_sdk import get_client

    async def scenario() -> dict:
        client = get_client(url=server)
        figures: dict = {}
        # an assistant with stored settings: every run on it uses this context
        # (a simulated user who knows the target photo answers: a dialogue of several rounds)
        target = setup["index"].ids[0]
        assistant = await client.assistants.create(
            "thi", context=_context(setup, user="simulated", target=target, rounds=5), name="small world, simulated user")
        stored = await client.assistants.get(assistant["assistant_id"])
        assert stored["context"]["gallery"] == str(setup["world"])
        schemas = await client.assistants.get_schemas(assistant["assistant_id"])
        assert set(schemas["input_schema"]["properties"]) == {"query"}
        assert {"current_query", "ranking", "rounds", "stopped_because"} <= set(schemas["output_schema"]["properties"])
        assert schemas["context_schema"]["properties"]["mllm_protocol"]["description"]

        # a run, streamed: node updates (deltas of the public values) and custom per-round events
        thread = await client.threads.create()
        updates, events, sent = [], [], 0
        async for part in client.runs.stream(thread["thread_id"], assistant["assistant_id"], input={"query": QUERY},
                                             stream_mode=["updates", "custom"]):
            if part.event == "updates":
                updates.append(part.data)
                sent += _size(part.data)
            elif part.event == "custom":
                events.append(part.data)
            elif part.event == "error":
                raise AssertionError(part.data)
        state = await client.threads.get_state(thread["thread_id"])
        final = state["values"]
        assert final["query"] == QUERY and len(final["rounds"]) >= 2 and final["stopped_because"]
        assert "pending" not in final and "verified" not in final  # a client sees the public values
        rounds = [e for e in events if e["event"] == "round"]
        assert [e["round"] for e in rounds] == [r["round"] for r in final["rounds"]]
        assert sum(e["event"] == "verification" for e in events) == sum(len(r["inspected"]) for r in final["rounds"])
        assert [list(u) for u in updates if "converge" in u] and all(
            len(u["converge"]["rounds"]) == 1 for u in updates if "converge" in u)
        assert sent <= 2 * _size(final)
        figures["stream"] = {"rounds": len(final["rounds"]), "updates_bytes": sent, "final_bytes": _size(final)}

        # a new query on the finished thread starts a fresh dialogue
        again = await client.runs.wait(thread["thread_id"], assistant["assistant_id"],
                                       input={"query": "a woman in a red coat"})
        assert again["query"] == "a woman in a red coat" and again["rounds"][0]["round"] == 1
        assert again["rounds"][0]["query"] == "a woman in a red coat"

        # a second query on a fresh thread, with the context given per run (no assistant settings)
        fresh = await client.threads.create()
        other = await client.runs.wait(fresh["thread_id"], "thi", input={"query": "a man with a black backpack"},
                                       context=_context(setup, policy="paper", config={"xi": -1.0}))
        # the paper's policy (the context arrived): one candidate of the original ranking per round
        assert other["query"] == "a man with a black backpack"
        assert [[i["rank"] for i in r["inspected"]] for r in other["rounds"]] == [[n] for n in range(1, len(other["rounds"]) + 1)]

        # the interactive dialogue: an interrupt, a refused value asked again, answers, the end
        human = await client.assistants.create("thi", context=_context(setup, user="human"), name="human")
        talk = await client.threads.create()
        await client.runs.wait(talk["thread_id"], human["assistant_id"], input={"query": "a person"})
        state = await client.threads.get_state(talk["thread_id"])
        (payload,) = [i["value"] for i in state["interrupts"]]
        assert payload["type"] == "questions" and payload["round"] == 1 and payload["questions"]
        await client.runs.wait(talk["thread_id"], human["assistant_id"], command={"resume": {"answers": "black"}})
        state = await client.threads.get_state(talk["thread_id"])
        (payload,) = [i["value"] for i in state["interrupts"]]
        assert payload["round"] == 1 and "valid dictionary" in payload["error"]
        slot = payload["questions"][0]["slot"]
        done = await client.runs.wait(talk["thread_id"], human["assistant_id"],
                                      command={"resume": {"answers": {slot: payload["questions"][0]["options"][0]},
                                                          "finish": True}})
        assert done["stopped_because"] == "the user finished"
        assert done["rounds"][0]["answers"][0]["source"] == "human" and done["usage"]["wait_ms"] >= 0

        # build_graph as the server's graph factory
        made = await client.runs.wait(None, "thi_factory", input={"query": QUERY}, context=_context(setup, rounds=1))
        assert made["ranking"] and len(made["rounds"]) == 1
        return figures

    figures = asyncio.run(scenario())
    print(f"\nserved stream of {figures['stream']['rounds']} rounds: {figures['stream']['updates_bytes']} bytes of "
          f"updates for a final state of {figures['stream']['final_bytes']} bytes")
