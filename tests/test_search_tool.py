import asyncio
import json

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ValidationError

from graphs.config import THIConfig
from graphs.server import oracle_annotations
from graphs.service import THIService
from tools.mllm.oracle import OracleMLLM
from tools.search_tool import DEFAULT_ROUNDS, PersonFilter, PersonSearchArgs, make_search_tool

from .test_thi import setup  # noqa: F401  (module fixture: tiny model + indexed small world)


class ToolCallingFake(GenericFakeChatModel):
    """A fake chat model that 'supports' tools: it replays scripted messages, tool calls included."""

    def bind_tools(self, tools, **kwargs):
        return self


@pytest.fixture()
def service(setup):  # noqa: F811
    return THIService.with_objects(setup["index"], OracleMLLM(oracle_annotations(setup["world"])),
                                   THIConfig(policy="adaptive"))


def test_tool_schema_and_direct_call(service):
    tool = service.as_tool()
    schema = tool.args_schema.model_json_schema()
    assert set(schema["properties"]) == {"query", "k", "rounds", "filter"}
    assert schema["properties"]["rounds"]["default"] == DEFAULT_ROUNDS
    with pytest.raises(ValidationError):
        PersonSearchArgs(query="   ")
    msg = tool.invoke({"type": "tool_call", "id": "1", "name": tool.name,
                       "args": {"query": "a woman in a red coat", "k": 3, "rounds": 2}})
    assert isinstance(msg, ToolMessage)
    assert "Top 3 matches" in msg.content
    assert len(msg.artifact["ranking"]) == 3 and msg.artifact["rounds"] and msg.artifact["stopped_because"]


def test_metadata_filter_limits_the_ranking(service, setup):  # noqa: F811
    pid = setup["index"].pid(setup["index"].ids[0])
    result = service.search("a person", k=5, rounds=1, where={"pid": pid})
    assert result["ranking"] and all(c["pid"] == pid for c in result["ranking"])


def _call(tool, args, call_id="1"):
    return tool.invoke({"type": "tool_call", "id": call_id, "name": tool.name, "args": args})


def test_runtime_errors_come_back_to_the_model_as_error_messages(service, setup):  # noqa: F811
    tool = service.as_tool()
    nobody = max(setup["index"].pid(i) for i in setup["index"].ids) + 1000
    msg = _call(tool, {"query": "a person", "filter": {"person_id": nobody}})  # matches no photo
    assert isinstance(msg, ToolMessage) and msg.status == "error"
    assert "no gallery image matches the metadata filter" in msg.content and "\n" not in msg.content
    msg = _call(tool, {"query": "a person", "filter": {"path_prefix": "no/such/folder/"}})
    assert msg.status == "error" and "no photo's id starts with" in msg.content
    msg = _call(tool, {"query": "a person", "filter": {"camera": 1, "colour": "red"}})  # not a filter field
    assert msg.status == "error"

    def broken(query, k, rounds, where):
        raise RuntimeError("the gallery folder vanished")

    assert "the gallery folder vanished" in _call(make_search_tool(broken), {"query": "someone"}).content


def test_the_filter_is_typed_strict_schema_safe_and_compiled_to_chroma_where(service, setup):  # noqa: F811
    strict = convert_to_openai_tool(service.as_tool(), strict=True)["function"]["parameters"]
    assert strict["additionalProperties"] is False and set(strict["required"]) == {"query", "k", "rounds", "filter"}
    filt = next(b for b in strict["properties"]["filter"]["anyOf"] if b.get("type") == "object")
    assert set(filt["properties"]) == {"camera", "person_id", "split", "path_prefix"}
    assert filt["additionalProperties"] is False and set(filt["required"]) == set(filt["properties"])
    assert PersonFilter().where() is None
    assert PersonFilter(camera=3).where() == {"camera": {"$eq": 3}}
    assert PersonFilter(camera=3, split="test").where() == {"$and": [{"camera": {"$eq": 3}}, {"split": {"$eq": "test"}}]}
    idx = setup["index"]
    pid, first = idx.pid(idx.ids[0]), idx.ids[0]
    prefix = first.rsplit("/", 1)[0] + "/" if "/" in first else first[:3]
    result = service.search("a person", k=5, rounds=1, where=PersonFilter(person_id=pid, path_prefix=prefix))
    assert result["ranking"] and all(c["pid"] == pid and c["id"].startswith(prefix) for c in result["ranking"])
    # two keys at once (a bare dict with two keys is not a valid Chroma where clause)
    split = idx.metadatas[0]["split"]
    result = service.search("a person", k=3, rounds=1, where=PersonFilter(person_id=pid, split=split))
    assert {c["pid"] for c in result["ranking"]} == {pid}


def test_the_tool_has_an_async_version(service):
    tool = service.as_tool()
    msg = asyncio.run(tool.ainvoke({"type": "tool_call", "id": "a1", "name": tool.name,
                                    "args": {"query": "a woman in a red coat", "k": 2, "rounds": 1}}))
    assert msg.status == "success" and len(msg.artifact["ranking"]) == 2
    bad = asyncio.run(tool.ainvoke({"type": "tool_call", "id": "a2", "name": tool.name,
                                    "args": {"query": "a person", "filter": {"person_id": -5}}}))
    assert bad.status == "error"


def test_an_agent_made_with_create_agent_calls_the_tool_and_survives_its_errors(service):
    from langchain.agents import create_agent

    tool = service.as_tool()
    model = ToolCallingFake(messages=iter([
        AIMessage(content="", tool_calls=[{"name": tool.name, "id": "call-1",
                                           "args": {"query": "a person", "filter": {"person_id": -5}}}]),
        AIMessage(content="", tool_calls=[{"name": tool.name, "id": "call-2",
                                           "args": {"query": "a man in a blue jacket with a backpack", "k": 2}}]),
        AIMessage(content="I found two candidates."),
    ]))
    agent = create_agent(model, [tool])
    out = agent.invoke({"messages": [("user", "Find the man in the blue jacket")]})
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in tool_msgs] == ["error", "success"]
    assert "no gallery image matches" in tool_msgs[0].content
    assert "Top 2 matches" in tool_msgs[1].content and tool_msgs[1].artifact["ranking"][0]["id"]
    assert out["messages"][-1].content == "I found two candidates."


def test_injected_runner_needs_no_graph():
    calls = []

    def runner(query, k, rounds, where):
        calls.append((query, k, rounds, where))
        return {"query": query, "final_query": query, "rounds": [], "ranking": [{"id": "a.jpg", "score": 0.5}],
                "stopped_because": "test", "mllm_calls": 0}

    tool = make_search_tool(runner)
    text = tool.invoke({"query": "someone", "k": 1, "filter": {"camera": 2}})
    assert "a.jpg" in text and calls == [("someone", 1, DEFAULT_ROUNDS, PersonFilter(camera=2))]
    assert DEFAULT_ROUNDS == 5  # the CLI's default round limit


@pytest.mark.parametrize("fields, message", [({"k": 0}, "k must be"), ({"k": -1}, "k must be"),
                                             ({"rounds": 0}, "rounds must be")])
def test_the_service_refuses_k_or_rounds_below_one(service, fields, message):
    with pytest.raises(ValueError, match=message) as e:
        service.search("a person", **fields)
    assert "\n" not in str(e.value)


def test_default_service_builds_its_objects_from_plain_values(setup):  # noqa: F811
    service = THIService.default(gallery=setup["world"], model=setup["model"], mllm="oracle",
                                 config=THIConfig(policy="paper", xi=-1.0), data_dir=str(setup["db"]), device="cpu")
    assert service.context.gallery == str(setup["world"]) and service.config.xi == -1.0
    assert service.index.ids == setup["index"].ids and service.mllm.is_oracle  # the indexed test gallery
    result = service.search("a woman in a red coat", k=3, rounds=1)
    assert len(result["ranking"]) == 3 and result["mllm_calls"] >= 1
    assert all(c["pid"] == service.index.pid(c["id"]) for c in result["ranking"])
