"""RDA asks again, on the next run, about the records it skipped while the MLLM was down."""

import json
import socket

import pytest

from graphs.rda import main as rda_main
from graphs.rda import run_rda
from graphs.server import oracle_annotations
from tools.mllm.base import MLLM, MLLMError
from tools.mllm.oracle import OracleMLLM

from .mllm_server import QwenLikeServer
from .test_mllm_servers import simple_answer


class DownAfter(MLLM):
    """The oracle, until its server goes down after ``ok`` answers (then every call fails as the
    chat backends fail: ``unreachable`` once, then ``unavailable``); ``up()`` brings it back."""

    def __init__(self, inner: MLLM, ok: int | None):
        super().__init__(cache=False)
        self.inner, self.ok, self.name = inner, ok, inner.name
        self.down = False

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def up(self) -> None:
        self.ok, self.down = None, False

    def _check(self):
        if self.down:
            raise MLLMError("not tried: the backend stopped after unreachable", kind="unavailable")
        if self.ok is not None:
            if self.ok <= 0:
                self.down = True
                raise MLLMError("connection refused", kind="unreachable")
            self.ok -= 1

    def _verify(self, image, text):
        self._check()
        return self.inner.verify(image, text)

    def _ask(self, image, slots):
        self._check()
        return self.inner.ask(image, slots)


def test_records_skipped_while_the_mllm_was_down_are_retried_without_restart(small_world, tmp_path):
    oracle = OracleMLLM(oracle_annotations(small_world))
    whole = tmp_path / "whole.json"
    run_rda(small_world, whole, DownAfter(oracle, None), m=3, batch_size=4, progress=False)

    flaky = DownAfter(oracle, ok=5)  # answers five records, then the server is gone
    out = tmp_path / "out.json"
    first = run_rda(small_world, out, flaky, m=3, batch_size=4, progress=False)
    assert first["augmented"] == 5 and first["to_retry"] == first["selected"] - 5 > 0
    assert out.read_bytes() != whole.read_bytes()
    flaky.up()
    second = run_rda(small_world, out, flaky, m=3, batch_size=4, progress=False)  # no restart
    assert second["retried_this_run"] == first["to_retry"] and second["to_retry"] == 0
    assert second["augmented"] == second["selected"]
    assert out.read_bytes() == whole.read_bytes()
    # only the records that failed were asked again
    assert flaky.stats.calls["ask"] == first["selected"]


def test_records_skipped_for_another_reason_are_not_retried(small_world, tmp_path):
    class Refuses(DownAfter):
        def _ask(self, image, slots):
            raise MLLMError("I cannot help with that", kind="refused")

    oracle = OracleMLLM(oracle_annotations(small_world))
    out = tmp_path / "out.json"
    first = run_rda(small_world, out, Refuses(oracle, None), m=3, progress=False)
    assert first["to_retry"] == 0 and first["skipped"] == {"mllm answer unusable (refused)": first["selected"]}
    again = Refuses(oracle, None)
    run_rda(small_world, out, again, m=3, progress=False)
    assert again.stats.failures == 0  # nothing was asked again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_with_the_server_down_says_so_and_the_next_run_completes(small_world, tmp_path, capsys):
    out = tmp_path / "rda.json"
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    args = [str(small_world), "--out", str(out), "--mllm", "openai", "--mllm-model", "Qwen/Qwen2-VL-7B-Instruct",
            "--limit", "6", "--m", "2", "--quiet"]
    assert rda_main(args + ["--mllm-url", dead]) == 1  # the server is checked before any record is read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach http://127.0.0.1")
    assert not out.exists()
    server = QwenLikeServer(simple_answer)
    try:
        assert rda_main(args + ["--mllm-url", server.url]) == 0
    finally:
        server.close()
    report = json.loads(capsys.readouterr().out)
    assert report["augmented"] == 6 and report["to_retry"] == 0


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
