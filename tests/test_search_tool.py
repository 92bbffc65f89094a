import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from pydantic import ValidationError

from graphs.config import THIConfig
from graphs.server import oracle_annotations
from graphs.service import THIService
from tools.mllm.oracle import OracleMLLM
from tools.search_tool import PersonSearchArgs, make_search_tool

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


def test_prebuilt_agent_calls_the_tool_end_to_end(service):
    from langgraph.prebuilt import create_react_agent

    tool = service.as_tool()
    model = ToolCallingFake(messages=iter([
        AIMessage(content="", tool_calls=[{"name": tool.name, "id": "call-1",
                                           "args": {"query": "a man in a blue jacket with a backpack", "k": 2}}]),
        AIMessage(content="I found two candidates."),
    ]))
    agent = create_react_agent(model, [tool])
    out = agent.invoke({"messages": [("user", "Find the man in the blue jacket")]})
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1 and "Top 2 matches" in tool_msgs[0].content
    assert tool_msgs[0].artifact["ranking"][0]["id"]
    assert out["messages"][-1].content == "I found two candidates."


def test_injected_runner_needs_no_graph():
    calls = []

    def runner(query, k, rounds, where):
        calls.append((query, k, rounds, where))
        return {"query": query, "final_query": query, "rounds": [], "ranking": [{"id": "a.jpg", "score": 0.5}],
                "stopped_because": "test", "mllm_calls": 0}

    tool = make_search_tool(runner)
    text = tool.invoke({"query": "someone", "k": 1, "filter": {"camera": 2}})
    assert "a.jpg" in text and calls == [("someone", 1, 3, {"camera": 2})]


def test_default_service_builds_its_objects_from_plain_values(setup):  # noqa: F811
    service = THIService.default(gallery=setup["world"], model=setup["model"], mllm="oracle",
                                 config=THIConfig(policy="paper", xi=-1.0), data_dir=str(setup["db"]), device="cpu")
    assert service.context.gallery == str(setup["world"]) and service.config.xi == -1.0
    assert service.index.ids == setup["index"].ids and service.mllm.is_oracle  # the indexed test gallery
    result = service.search("a woman in a red coat", k=3, rounds=1)
    assert len(result["ranking"]) == 3 and result["mllm_calls"] >= 1
    assert all(c["pid"] == service.index.pid(c["id"]) for c in result["ranking"])
