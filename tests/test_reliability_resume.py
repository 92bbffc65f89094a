"""kill -9 at random points of indexing, RDA, training and the THI benchmark: the resumed result is an
uninterrupted run's, with nothing duplicated or lost.

Each test runs the real command in a subprocess, kills it with SIGKILL at a random point of its
work (after a random amount of progress, plus a random delay of up to a few hundred milliseconds),
starts it again, and so on; then runs it to the end and compares with an uninterrupted run. The
kill points are drawn from a seeded generator (``THI_KILL_SEED``, default 0) and their number is
``THI_KILL_POINTS`` (default 3). These tests take minutes on the 2-core CI machine: run them with

    python -m pytest -m slow tests/test_reliability_resume.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from safetensors.numpy import load_file

from .helpers import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
KILL_POINTS = int(os.environ.get("THI_KILL_POINTS", "3"))
KILL_SEED = int(os.environ.get("THI_KILL_SEED", "0"))

pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_at_random_points(cmd: list[str], progress: Callable[[str], int], total: int, rng: np.random.Generator,
                          points: int = KILL_POINTS, jitter: float = 0.3) -> list[dict]:
    """Start ``cmd`` ``points`` times; each time wait until ``progress(stderr so far)`` reaches a
    random share of ``total``, wait a random 0-``jitter`` s more, and SIGKILL it (unless it has
    finished). Returns what happened each time."""
    log = []
    for _ in range(points):
        target = int(rng.integers(0, total))
        delay = float(rng.uniform(0, jitter))
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, errors="replace")
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 600
        while proc.poll() is None and progress("".join(err)) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
        log.append({"after": target, "delay": round(delay, 3), "killed": killed, "rc": proc.returncode,
                    "progress": progress("".join(err))})
        assert killed or proc.returncode == 0, "".join(err)[-3000:]
    print(f"kill points of {Path(cmd[2]).name if cmd[1] == '-m' else cmd[1]}: {log}")
    assert any(e["killed"] for e in log), log  # at least one run was cut
    return log


def _count(path: Path) -> Callable[[str], int]:
    """Progress as the number of lines in a file (a journal)."""
    def lines(_: str) -> int:
        try:
            return path.read_bytes().count(b"\n")
        except OSError:
            return 0
    return lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('tiny'))}"


def test_indexing_killed_at_random_points_resumes_to_the_same_ids_and_embeddings(small_world, tiny, tmp_path):
    # a folder large enough for three chunks of 512, so kills land between and inside Chroma writes
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = sorted((small_world / "imgs").rglob("*.jpg"))
    n = 1200
    for i in range(n):
        shutil.copyfile(photos[i % len(photos)], folder / f"{i:05d}.jpg")
    cmd = lambda db: [sys.executable, "-m", "tools.gallery", "--model", tiny, "--data-dir", str(db),  # noqa: E731
                      "index", str(folder)]

    def progress(err: str) -> int:  # tqdm's "N/1200" as it goes
        marks = [int(x.split("/")[0]) for x in err.replace("\r", "\n").split("| ")[1:] if "/" in x[:12]]
        return marks[-1] if marks else 0

    log = kill_at_random_points(cmd(tmp_path / "killed"), progress, n, np.random.default_rng(KILL_SEED))
    _run(cmd(tmp_path / "killed"))
    _run(cmd(tmp_path / "whole"))

    from tools.embedder import Embedder
    from tools.gallery import Gallery, items_for

    emb = Embedder(tiny, device="cpu")
    name, _ = items_for(folder)
    got = {}
    for which in ("killed", "whole"):
        g = Gallery.open(name, emb, data_dir=tmp_path / which, create=False)
        raw = g.collection.get(include=["embeddings", "metadatas"])
        assert len(raw["ids"]) == len(set(raw["ids"])) == n, log  # nothing duplicated, nothing lost
        order = np.argsort(raw["ids"])
        got[which] = ([raw["ids"][i] for i in order], np.asarray(raw["embeddings"])[order])
    assert got["killed"][0] == got["whole"][0]
    assert np.allclose(got["killed"][1], got["whole"][1], atol=1e-6), log


def test_rda_killed_at_random_points_writes_the_uninterrupted_file(small_world, tmp_path):
    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "graphs.rda", str(small_world), "--out", str(out), "--mllm", "oracle",
                "--split", "all", "--batch-size", "1", "--m", "3", "--quiet"]

    total = len(json.loads((small_world / "reid_raw.json").read_text()))
    killed = tmp_path / "killed" / "rda.json"
    log = kill_at_random_points(cmd(killed), _count(killed.with_name("rda.json.journal.jsonl")), total,
                                np.random.default_rng(KILL_SEED + 1), jitter=0.05)
    _run(cmd(killed))
    whole = tmp_path / "whole" / "rda.json"
    _run(cmd(whole))
    assert killed.read_bytes() == whole.read_bytes(), log
    journal = [json.loads(line) for line in killed.with_name("rda.json.journal.jsonl").read_text().splitlines()]
    assert sorted(e["index"] for e in journal) == list(range(total))  # each record once


def test_training_killed_at_random_points_ends_with_the_uninterrupted_weights(small_world, tiny, tmp_path):
    epochs = 4

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "train", str(small_world), "--out", str(out), "--model", tiny, "--scratch",
                "--epochs", str(epochs), "--batch-size", "8", "--workers", "1", "--warmup-epochs", "0.5", "--quiet"]

    killed = tmp_path / "killed"
    log = kill_at_random_points(cmd(killed), _count(killed / "metrics.jsonl"), epochs,
                                np.random.default_rng(KILL_SEED + 2), jitter=2.0)
    _run(cmd(killed))
    _run(cmd(tmp_path / "whole"))
    a = load_file(str(killed / "open_clip_model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "open_clip_model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), log

    def metrics(out: Path) -> list[dict]:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert metrics(killed) == metrics(tmp_path / "whole"), log  # one line per epoch, the same values


def test_thi_benchmark_killed_at_random_points_resumes_with_the_same_report(small_world, tiny, tmp_path):
    limit = 16

    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "eval.thi", str(small_world), "--model", tiny, "--mllm", "oracle",
                "--policy", "paper", "--xi", "-1", "--data-dir", str(tmp_path / "db"), "--limit", str(limit),
                "--out", str(out), "--trace", str(out.with_suffix(".jsonl")), "--quiet", *extra]

    _run(cmd(tmp_path / "whole.json"))  # also indexes the gallery once for every run below
    killed = tmp_path / "killed.json"
    log = kill_at_random_points(cmd(killed), _count(tmp_path / "killed.json.journal.jsonl"), limit,
                                np.random.default_rng(KILL_SEED + 3), jitter=0.2)
    _run(cmd(killed))
    a, b = json.loads(killed.read_text()), json.loads((tmp_path / "whole.json").read_text())
    timing = ("latency_ms", "overhead_ms", "resumed_queries")
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}, log
    def trace(path: Path) -> list[dict]:  # every round of every query, in order, without its times
        return [{k: v for k, v in json.loads(line).items() if k not in ("ms", "mllm_ms", "wait_ms")}
                for line in path.read_text().splitlines()]

    assert trace(tmp_path / "killed.jsonl") == trace(tmp_path / "whole.jsonl")
