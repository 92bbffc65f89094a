"""eval.scale's helpers: sizes, the printed row, the indexing bound's arithmetic (the benchmark
itself runs for minutes: docs/results.md, Gallery scale)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from eval.scale import HEADER, _copies, format_row, parse_size, parse_sizes


def test_sizes_parse_with_suffixes_and_bad_ones_are_refused():
    assert parse_sizes("30k, 3k,1M,3k") == [3_000, 30_000, 1_000_000]
    assert parse_size("100k") == 100_000
    for bad in ("", "0", "-3k", "ten", "inf", "1e400", "3k,,30k"):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("3k,30k")


def test_a_measured_row_prints_under_the_header():
    row = {"n": 1_000_000, "build_s": 193.0, "open_s": 0.1, "first_query_ms": 107.0, "rss_index_bytes_per_photo": 1027.3,
           "disk_chroma_mb": 1926.0, "disk_snapshot_mb": 1051.0, "exact_ms_p50": 106.4, "search_ms_p50": 108.0,
           "search_recall10": 1.0, "hnsw_ms_p50": 1.4, "hnsw_recall10": 0.15, "thi_overhead_ms_p50": 133.7,
           "thi_overhead_ms_p95": 272.3, "thi_beyond_passes_ms_p50": 20.5, "thi_cold_overhead_ms_p50": 190.5,
           "thi_cold_overhead_ms_p95": 361.9, "load_end": 1.2}
    line = format_row(row)
    assert len(line) <= len(HEADER) + 2  # the columns line up with the header
    assert "1000000" in line and "1.000" in line and "20.5" in line and "134/272" in line


def test_grown_copies_are_unit_vectors_near_their_original_with_distractor_ids():
    rng = np.random.default_rng(123)  # not the copies' own stream (seed 0)
    base = rng.standard_normal((5, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(5)]
    chunks = list(_copies(ids, base, [{"pid": i, "camera": 1} for i in range(5)], 0, 12, 0.2, 0, 5))
    assert [len(c[0]) for c in chunks] == [5, 5, 2]
    x = np.concatenate([c[1]["bge"] for c in chunks])
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert chunks[0][0][3] == "p3#3" and chunks[2][0][1] == "p1#11"
    cos = np.sum(x * base[np.arange(12) % 5], axis=1)
    assert cos.min() > 0.9  # close to the original, not equal
    assert cos.max() < 0.9999
    pids = [m["pid"] for c in chunks for m in c[2]]
    assert len(set(pids)) == 12 and min(pids) >= 10_000_000  # each copy a person of its own
