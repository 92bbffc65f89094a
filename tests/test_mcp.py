"""``python -m graphs.mcp`` through an MCP client (the ``mcp`` package's stdio client): the tools,
structured search results, an interactive dialogue as start/answer/finish tools, errors as tool
errors, and a bad start in one line.

Slow (the server process loads torch and the models): ``python -m pytest -m slow tests/test_mcp.py``;
``.ci/run`` runs it.
"""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_thi import QUERY, setup  # noqa: F401  (module fixture)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("THI_REQUIRE_SERVING") == "1"  # .ci/run: a missing extra is a failure, not a skip


def _args(setup):  # noqa: F811
    return ["-m", "graphs.mcp", "--gallery", str(setup["world"]), "--model", setup["model"], "--data-dir",
            str(setup["db"]), "--device", "cpu", "--mllm", "oracle", "--rounds", "3"]


def _env(tmp):
    return {**os.environ, "PYTHONPATH": str(ROOT), "THI_HOME": str(tmp), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def test_search_and_a_dialogue_through_an_mcp_client(setup, tmp_path):  # noqa: F811
    try:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("mcp is not installed (pip install -e '.[mcp]')")

    params = StdioServerParameters(command=sys.executable, args=_args(setup), env=_env(tmp_path), cwd=str(ROOT))

    async def scenario():
        async with Client(params, read_timeout_seconds=300) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"search", "start_dialogue", "answer", "finish_dialogue"}
            assert tools["search"].output_schema and "ranking" in tools["search"].output_schema["properties"]

            found = await client.call_tool("search", {"query": QUERY, "k": 3, "rounds": 2})
            assert not found.is_error
            result = found.structured_content
            assert [m["rank"] for m in result["ranking"]] == [1, 2, 3]
            index = setup["index"]
            for m in result["ranking"]:
                assert m["id"] in index.position and m["pid"] == index.pid(m["id"]) and Path(m["path"]).is_file()
            assert result["rounds"] and result["stopped_because"] and result["final_query"].startswith(QUERY[:20])
            assert result["mllm_calls"] == sum(r["mllm_calls"] for r in result["rounds"])

            pid = index.pid(index.ids[0])
            only = await client.call_tool("search", {"query": "a person", "k": 2, "rounds": 1,
                                                     "filter": {"person_id": pid}})
            assert {m["pid"] for m in only.structured_content["ranking"]} == {pid}
            nobody = await client.call_tool("search", {"query": "a person", "filter": {"person_id": -7}})
            assert nobody.is_error and "no gallery image matches" in nobody.content[0].text

            step = (await client.call_tool("start_dialogue", {"query": "a person", "k": 3})).structured_content
            assert step["status"] == "questions" and step["round"] == 1 and step["questions"] and len(step["top"]) == 3
            first = step["questions"][0]
            refused = (await client.call_tool("answer", {"dialogue_id": step["dialogue_id"],
                                                         "answers": {"no_such_slot": "red"}})).structured_content
            assert refused["status"] == "questions" and refused["round"] == 1 and "not asked" in refused["error"]
            step = (await client.call_tool("answer", {"dialogue_id": step["dialogue_id"],
                                                      "answers": {first["slot"]: first["options"][0]}})).structured_content
            assert step["status"] == "questions" and step["round"] == 2
            done = (await client.call_tool("finish_dialogue", {"dialogue_id": step["dialogue_id"]})).structured_content
            assert done["status"] == "finished" and done["result"]["stopped_because"] == "the user finished"
            answers = done["result"]["rounds"][0]["answers"]
            assert answers[0]["slot"] == first["slot"] and answers[0]["source"] == "human"
            unknown = await client.call_tool("answer", {"dialogue_id": "nope", "answers": {}})
            assert unknown.is_error and "no dialogue 'nope'" in unknown.content[0].text

    asyncio.run(scenario())


def test_a_server_that_cannot_start_says_why_in_one_line(setup, tmp_path):  # noqa: F811
    bad = _args(setup)[:2] + ["--gallery", str(tmp_path / "nothing"), "--model", setup["model"], "--mllm", "oracle"]
    done = subprocess.run([sys.executable, *bad], env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
