"""Text-to-image retrieval metrics under IRRA's protocol.

For each query (caption) the gallery (every image of the split) is ranked by similarity; the true
matches are the images with the query's person id.

* Rank-k: share of queries with at least one true match in the top k.
* AP: mean over the query's true matches of (matches so far) / (rank of that match); mAP its mean.
* INP: (number of true matches) / (rank of the hardest, i.e. last, true match); mINP its mean.

All are returned in percent, like the paper. ``ties="expected"`` scores ties at their expectation
over a random order of tied items (for integer scores such as the caption-only ceiling): Rank-k is
the exact probability of a hit, AP and INP place each tied match at its expected position.

>>> import numpy as np
>>> sim = np.array([[0.9, 0.1, 0.5]])
>>> rank_metrics(sim, np.array([7]), np.array([3, 7, 7]))["R1"]
0.0
"""

from __future__ import annotations

from math import comb
from typing import Literal, Sequence

import numpy as np

METRIC_KEYS: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")


class NoMatchError(ValueError):
    """No query has a true match in the gallery: every metric would be undefined (0 / 0)."""


def _check(similarity: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray, ks: Sequence[int]) -> None:
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be 2-D [queries, gallery], got shape {similarity.shape}")
    if similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"similarity shape {similarity.shape} does not match {len(query_pids)} queries "
                         f"x {len(gallery_pids)} gallery items")
    if len(gallery_pids) == 0 or len(query_pids) == 0:
        raise ValueError("no queries or no gallery items")
    bad_k = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad_k:
        raise ValueError(f"Rank-k needs whole numbers k >= 1, got {bad_k}")
    if not np.isfinite(similarity).all():
        raise ValueError(f"similarity holds {int((~np.isfinite(similarity)).sum())} NaN or infinite values")
    if not np.isin(query_pids, gallery_pids).any():
        raise NoMatchError(f"no query has a true match in the gallery: none of the {len(query_pids)} queries' "
                           f"person ids is among the {len(gallery_pids)} gallery items' (R@k, mAP and mINP are "
                           f"undefined)")


def rank_metrics(similarity: np.ndarray, query_pids: Sequence[int] | np.ndarray, gallery_pids: Sequence[int] | np.ndarray,
                 ks: Sequence[int] = (1, 5, 10), ties: Literal["stable", "expected"] = "stable",
                 per_query: bool = False) -> dict:
    """R@k for each k, mAP and mINP in percent (plus per-query arrays when ``per_query``).

    ``ties="stable"`` breaks ties by gallery order, as IRRA's argsort does on float similarities.
    Queries without any true match in the gallery are skipped (their count is returned as
    ``num_skipped``), as in IRRA where every query has one.

    Raises:
        NoMatchError: no query has a true match (every metric would be 0 / 0).
        ValueError: shapes that do not match, no queries or gallery items, k < 1, NaN or infinite
            similarities.
    """
    sim = np.asarray(similarity)
    qp, gp = np.asarray(query_pids), np.asarray(gallery_pids)
    _check(sim, qp, gp, ks)
    if ties == "expected":
        return _expected_metrics(sim, qp, gp, ks, per_query)
    if ties != "stable":
        raise ValueError(f"ties must be 'stable' or 'expected', not {ties!r}")
    order = np.argsort(-sim, axis=1, kind="stable")
    matches = gp[order] == qp[:, None]
    num_rel = matches.sum(1)
    keep = num_rel > 0
    matches, num_rel = matches[keep], num_rel[keep]
    cum = np.cumsum(matches, axis=1)
    positions = np.arange(1, matches.shape[1] + 1)
    first = np.argmax(matches, axis=1) + 1  # rank of the first true match
    last = matches.shape[1] - np.argmax(matches[:, ::-1], axis=1)  # rank of the last one
    ap = (cum / positions * matches).sum(1) / num_rel
    inp = num_rel / last
    out: dict = {f"R{k}": float((first <= k).mean() * 100) for k in ks}
    out["mAP"] = float(ap.mean() * 100)
    out["mINP"] = float(inp.mean() * 100)
    out["num_queries"] = int(keep.sum())
    out["num_gallery"] = int(len(gp))
    out["num_skipped"] = int((~keep).sum())
    if per_query:
        out["per_query"] = {"first_rank": first, "ap": ap, "inp": inp}
    return out


def _expected_one(scores: np.ndarray, is_match: np.ndarray, ks: Sequence[int]) -> tuple[list[float], float, float, float]:
    """Expected R@k hits, AP, INP and first-match rank for one query under random tie-breaking."""
    order = np.argsort(-scores, kind="stable")
    s, m = scores[order], is_match[order]
    change = np.nonzero(np.diff(s) != 0)[0] + 1  # where a group of equal scores starts
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(s)]))
    group_matches = np.add.reduceat(m.astype(np.int64), starts)
    hits = []
    for k in ks:
        full = ends <= k  # groups entirely inside the top k
        if group_matches[full].any():
            hits.append(1.0)
            continue
        straddle = np.nonzero((starts < k) & (ends > k))[0]
        if straddle.size == 0 or group_matches[straddle[0]] == 0:
            hits.append(0.0)
            continue
        gi = straddle[0]
        t, g, slots = int(ends[gi] - starts[gi]), int(group_matches[gi]), int(k - starts[gi])
        hits.append(1.0 - comb(t - g, slots) / comb(t, slots))
    # the j-th of g matches in a tied group of t items after position a sits at a + j (t + 1) / (g + 1)
    positions = np.concatenate([starts[i] + np.arange(1, g + 1) * (ends[i] - starts[i] + 1) / (g + 1)
                                for i, g in enumerate(group_matches) if g])
    total = len(positions)
    ap = float(np.mean(np.arange(1, total + 1) / positions))
    inp = float(total / positions[-1])
    return hits, ap, inp, float(positions[0])


def _expected_metrics(sim, qp, gp, ks, per_query) -> dict:
    hits, aps, inps, firsts = [], [], [], []
    skipped = 0
    for q in range(len(qp)):
        is_match = gp == qp[q]
        if not is_match.any():
            skipped += 1
            continue
        h, ap, inp, first = _expected_one(sim[q], is_match, ks)
        hits.append(h)
        aps.append(ap)
        inps.append(inp)
        firsts.append(first)
    hits_arr = np.asarray(hits)
    out: dict = {f"R{k}": float(hits_arr[:, i].mean() * 100) for i, k in enumerate(ks)}
    out["mAP"] = float(np.mean(aps) * 100)
    out["mINP"] = float(np.mean(inps) * 100)
    out["num_queries"] = len(aps)
    out["num_gallery"] = int(len(gp))
    out["num_skipped"] = skipped
    if per_query:
        out["per_query"] = {"first_rank": np.asarray(firsts), "ap": np.asarray(aps), "inp": np.asarray(inps)}
    return out


def summary(metrics: dict) -> dict:
    """Only the five headline metrics, rounded to 2 decimals."""
    return {k: round(float(metrics[k]), 2) for k in METRIC_KEYS if k in metrics}
