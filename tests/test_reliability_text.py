"""Hostile text stays inert: MLLM replies, file names and dataset strings reach the terminal without
escape sequences or control characters."""

import json

import pytest

import graphs.server
import graphs.thi.cli
from graphs.rda import main as rda_main
from graphs.thi.cli import main as thi_main
from tools.mllm.base import MLLM, Answer, Verdict

from .helpers import tiny_model_dir
from .mllm_server import QwenLikeServer
from .test_readers import write_layout

ESCAPES = ("\x1b", "\x07", "\x9b", "\x9d", "\u202e")
CLEAR_AND_TITLE = "\x1b[2J\x1b]0;pwned\x07"


class EscapingMLLM(MLLM):
    """Replies that would clear the screen, set the window title and reverse the text."""

    name = "escaping"

    def __init__(self):
        super().__init__(cache=False)
        self.n = 0

    def _verify(self, image, text):
        self.n += 1
        return Verdict(self.n > 1, 0.9, f"yes{CLEAR_AND_TITLE} she\u202e matches\x9b31m")

    def _ask(self, image, slots):
        return [Answer(s, None, 0.0, f"cannot{CLEAR_AND_TITLE} tell") for s in slots]


def _inert(text: str) -> bool:
    return not any(c in text for c in ESCAPES)


def test_escape_codes_in_mllm_replies_and_file_names_never_reach_the_terminal(small_world, tmp_path, monkeypatch,
                                                                              capsys):
    fake = EscapingMLLM()
    monkeypatch.setattr(graphs.server, "backend_for", lambda ctx, kind=None: fake)
    monkeypatch.setattr(graphs.thi.cli, "backend_for", lambda ctx, kind=None: fake)
    folder = tmp_path / "gallery"
    folder.mkdir()
    for n, src in enumerate(sorted((small_world / "imgs" / "test").glob("*.jpg"))[:8]):
        name = f"p{n}.jpg" if n else f"evil{CLEAR_AND_TITLE}.jpg"
        (folder / name).write_bytes(src.read_bytes())
    args = ["--query", f"a man{CLEAR_AND_TITLE} in a blue jacket", "--gallery", str(folder), "--index", "--model",
            f"local-dir:{tiny_model_dir(tmp_path)}", "--data-dir", str(tmp_path / "db"), "--quiet", "-k", "8"]
    assert thi_main(args) == 0
    out = capsys.readouterr().out
    assert "verify #1" in out and "she matches" in out and "evil.jpg" in out  # shown, made inert
    assert _inert(out), repr([line for line in out.splitlines() if not _inert(line)][:3])
    # --json escapes them instead (JSON strings cannot hold raw control characters)
    assert thi_main(args + ["--json"]) == 0
    out = capsys.readouterr().out
    assert _inert(out) and json.loads(out)["query"].startswith("a man\x1b[2J")


def test_escape_codes_from_a_server_reply_are_inert(small_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "test")

    def reply(body, images):
        return f"Yes.{CLEAR_AND_TITLE}"

    server = QwenLikeServer(reply)
    try:
        args = ["--query", "a man in a blue jacket", "--gallery", str(small_world), "--index", "--model",
                f"local-dir:{tiny_model_dir(tmp_path)}", "--data-dir", str(tmp_path / "db"), "--quiet",
                "--mllm", "openai", "--mllm-url", server.url, "--mllm-model", server.model, "--rounds", "1"]
        assert thi_main(args) == 0
    finally:
        server.close()
    out = capsys.readouterr().out
    assert "verify #" in out and _inert(out)


def test_dataset_strings_in_rda_errors_are_inert(tmp_path, capsys):
    root = write_layout(tmp_path / "ds", "cuhk-pedes")
    records = json.loads((root / "reid_raw.json").read_text())
    records[2]["file_path"] = f"missing{CLEAR_AND_TITLE}.jpg"  # the train record
    (root / "reid_raw.json").write_text(json.dumps(records))
    assert rda_main([str(root), "--out", str(tmp_path / "o.json"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and ".jpg" in err and _inert(err)
    records[2]["file_path"] = f"../../{CLEAR_AND_TITLE}.jpg"
    (root / "reid_raw.json").write_text(json.dumps(records))
    assert rda_main([str(root), "--out", str(tmp_path / "o.json"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "outside the dataset" in err and _inert(err)


@pytest.fixture(autouse=True)
def _fresh_live_cache():
    yield
    graphs.server._live.clear()
