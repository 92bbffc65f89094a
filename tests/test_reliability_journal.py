"""eval.thi's resume journal: a benchmark stopped part-way resumes where it was, with every count an
uninterrupted run's; other settings refuse the journal (or --restart discards it)."""

import json

import pytest

from eval.thi import Journal, JournalError, journal_path, run_thi_benchmark
from eval.thi import main as thi_bench_main
from graphs.config import THIConfig
from graphs.server import oracle_annotations
from tools.embedder import Embedder
from tools.mllm.base import MLLM
from tools.mllm.oracle import OracleMLLM

from .helpers import tiny_model_dir

TIMING = ("latency_ms", "overhead_ms", "resumed_queries")


class DiesAfter(MLLM):
    """The oracle, until the process 'dies' (KeyboardInterrupt) at its ``calls``-th call."""

    def __init__(self, inner, calls=None):
        super().__init__(cache=False)
        self.inner, self.left, self.name = inner, calls, inner.name
        self.is_oracle = True

    @property
    def fingerprint(self):
        return self.inner.fingerprint

    def _tick(self):
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt

    def _verify(self, image, text):
        self._tick()
        return self.inner.verify(image, text)

    def _ask(self, image, slots):
        self._tick()
        return self.inner.ask(image, slots)


@pytest.fixture(scope="module")
def setting(small_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("journal")
    emb = Embedder(f"local-dir:{tiny_model_dir(tmp)}", device="cpu")
    return emb, OracleMLLM(oracle_annotations(small_world)), tmp / "db"


def _run(world, emb, mllm, db, journal=None, **kw):
    cfg = kw.pop("cfg", THIConfig(policy="adaptive"))
    return run_thi_benchmark(world, cfg, mllm, emb, limit=12, data_dir=db, progress=False, journal=journal, **kw)


def _strip(report):
    return {k: v for k, v in report.items() if k not in TIMING}


def test_a_stopped_benchmark_resumes_with_the_same_counts(small_world, setting, tmp_path):
    emb, oracle, db = setting
    whole = _run(small_world, emb, DiesAfter(oracle), db)
    journal = tmp_path / "out.json.journal.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(small_world, emb, DiesAfter(oracle, calls=15), db, journal)
    finished = len(journal.read_text().splitlines()) - 1
    assert 0 < finished < 12
    counting = DiesAfter(oracle)
    resumed = _run(small_world, emb, counting, db, journal)
    assert resumed["resumed_queries"] == finished
    assert _strip(resumed) == _strip(whole)  # metrics per round, MLLM calls per query (mean, max), stops
    # the resumed run asked only about the queries left
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert sorted(r["n"] for r in rows) == list(range(12))
    assert counting.stats.total_calls == sum(r["calls"] for r in rows if r["n"] >= finished)
    # a finished journal resumes everything: nothing is asked
    idle = DiesAfter(oracle)
    again = _run(small_world, emb, idle, db, journal)
    assert idle.stats.total_calls == 0 and again["resumed_queries"] == 12 and _strip(again) == _strip(whole)


def test_other_settings_refuse_the_journal_and_restart_discards_it(small_world, setting, tmp_path):
    emb, oracle, db = setting
    journal = tmp_path / "j.jsonl"
    _run(small_world, emb, DiesAfter(oracle), db, journal)
    with pytest.raises(JournalError, match=r"other settings \(config differ\); pass --restart"):
        _run(small_world, emb, DiesAfter(oracle), db, journal, cfg=THIConfig(policy="adaptive", rounds=2))
    fresh = _run(small_world, emb, DiesAfter(oracle), db, journal, cfg=THIConfig(policy="adaptive", rounds=2),
                 restart=True)
    assert fresh["resumed_queries"] == 0 and len(fresh["rounds"]) == 2


def test_a_journal_torn_by_a_kill_drops_the_cut_line(tmp_path):
    path = tmp_path / "j.jsonl"
    settings = {"a": 1}
    book = Journal(path, settings)
    book.add({"n": 0, "calls": 3})
    with open(path, "a") as f:
        f.write('{"n": 1, "cal')  # killed mid-line
    again = Journal(path, settings)
    assert list(again.rows) == [0]
    again.add({"n": 1, "calls": 4})
    assert [json.loads(line).get("n") for line in path.read_text().splitlines()] == [None, 0, 1]


def test_cli_resume_and_refusal_are_one_line(small_world, tmp_path, capsys):
    out = tmp_path / "r.json"
    base = [str(small_world), "--model", f"local-dir:{tiny_model_dir(tmp_path)}", "--mllm", "oracle", "--data-dir",
            str(tmp_path / "db"), "--limit", "4", "--out", str(out), "--quiet"]
    assert thi_bench_main(base) == 0
    assert journal_path(out).is_file()
    assert thi_bench_main(base) == 0
    assert "(4 from the journal)" in capsys.readouterr().out
    assert thi_bench_main(base + ["--rounds", "2"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--restart" in lines[0]
    assert thi_bench_main(base + ["--rounds", "2", "--restart"]) == 0
