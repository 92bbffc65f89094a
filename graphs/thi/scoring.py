"""A policy's fused score as an expression, evaluated exactly on a shortlist of the gallery.

Every policy's score after a round has the same shape (see ``paper.py``, ``adaptive.py``,
``with_user.py``)::

    score(x) = w_1 * v_1(x) + w_2 * v_2(x) + ...     (float32, left to right)
               then, one by one, score(x_j) += d_j     (the moves of checked candidates)

where each ``v_i`` is a full-gallery score vector the index keeps (the original query, a rewrite,
the anchor photo's look) with a few rows replaced (the anchor's new similarity set to 1), and
every ``w_i >= 0``. :class:`Fusion` holds that expression; evaluating it on any set of rows gives
bit-for-bit the values a full-gallery evaluation gives on those rows (the same float32 operations
on the same numbers, row by row).

**The shortlist is exact.** Let ``C`` be the union of the top ``m`` rows of every ``v_i`` (among
the rows the metadata filter keeps) plus every row a replacement or a move touches, and ``t_i``
the m-th highest value of ``v_i``. A kept row ``x`` outside ``C`` has ``v_i(x) <= t_i`` for every
``i`` and no replacement or move, and float32 rounding is monotone, so
``score(x) <= U = w_1 * t_1 + w_2 * t_2 + ...`` (computed with the same float32 operations).
Hence if the n-th best score within ``C`` is above ``U``, the best n of the whole gallery all lie
in ``C``, in the same order (ties: lower row first, in both). :func:`top` checks that
certificate and doubles ``m`` until it holds (at worst it evaluates the whole gallery), so it
returns the full computation's top n on every query, not on most. The same bound makes the
target's rank exact (:func:`target_rank`): when the target's best score is at least ``U``,
nothing outside ``C`` outranks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tools.index import GalleryIndex, RowFilter

#: Rows taken from the top of each score vector at first (the shortlist grows when the
#: certificate does not hold).
SHORTLIST = 2000


class _Positions:
    """Row -> position in ``rows`` for the few rows a fusion replaces or moves: bisection of a
    sorted copy instead of a dict of every shortlisted row."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows)
        self.order = np.argsort(self.rows, kind="stable")
        self.sorted = self.rows[self.order]

    def _find(self, r: int) -> int:
        i = int(np.searchsorted(self.sorted, r))
        return int(self.order[i]) if i < len(self.sorted) and self.sorted[i] == r else -1

    def __contains__(self, r: int) -> bool:
        return self._find(r) >= 0

    def __getitem__(self, r: int) -> int:
        return self._find(r)


@dataclass
class Term:
    """``weight * vector``, the vector (an index key: ``("text", text)`` or ``("image", id)``)
    with ``replace``: row -> value set before weighting."""

    weight: float
    key: tuple
    replace: dict[int, float] = field(default_factory=dict)


@dataclass
class Fusion:
    """A policy's score of every gallery image (see the module docstring)."""

    terms: list[Term]
    moves: list[tuple[int, float]] = field(default_factory=list)

    def touched(self) -> set[int]:
        """Rows a replacement or a move changes."""
        rows = {r for t in self.terms for r in t.replace}
        rows.update(r for r, _ in self.moves)
        return rows

    def evaluate(self, index: GalleryIndex, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 scores of ``rows`` (default: every image, in the index's order)."""
        acc = None
        where = None if rows is None else _Positions(rows)
        for term in self.terms:
            v = index.vector(term.key)
            v = v.copy() if rows is None else v[rows]
            for r, value in term.replace.items():
                if rows is None:
                    v[r] = value
                elif r in where:
                    v[where[r]] = value
            part = term.weight * v
            acc = part if acc is None else acc + part
        if acc is None:
            raise ValueError("a fusion needs at least one term")
        for r, delta in self.moves:
            if rows is None:
                acc[r] += delta
            elif r in where:
                acc[where[r]] += delta
        return acc

    def bound(self, thresholds: list[float]) -> float:
        """The highest score a row outside the shortlist can have, given each term's threshold
        (the same float32 operations as :meth:`evaluate`)."""
        acc = None
        for term, t in zip(self.terms, thresholds):
            if term.weight == 0:
                part = np.float32(0.0)
            else:
                part = np.float32(term.weight) * np.float32(t)
            acc = part if acc is None else np.float32(acc + part)
        return float(acc)


def masked(scores: np.ndarray, rows_filter: RowFilter | None, rows: np.ndarray | None = None) -> np.ndarray:
    """Scores with the rows the filter drops set to -inf (``rows``: the rows ``scores`` are of)."""
    if rows_filter is None:
        return scores
    keep = rows_filter.keep if rows is None else rows_filter.keep[rows]
    return np.where(keep, scores, -np.inf)


def full(fusion: Fusion, index: GalleryIndex, rows_filter: RowFilter | None = None) -> np.ndarray:
    """Every image's score (float32 [N]; -inf where the filter drops it)."""
    return masked(fusion.evaluate(index), rows_filter)


def _order(scores: np.ndarray, rows: np.ndarray, n: int | None = None) -> np.ndarray:
    """Positions into ``scores`` from best to worst (ties: lower row first), finite ones only; the
    first ``n`` of them when given (selected without sorting everything, ties at the cut kept)."""
    if n is not None and n < len(scores):
        cut = np.partition(-scores, n - 1)[n - 1]  # minus the n-th highest score
        pick = np.flatnonzero(-scores <= cut)  # every score >= the n-th highest (ties at the cut too)
        order = pick[np.lexsort((rows[pick], -scores[pick]))]
        return order[np.isfinite(scores[order])][:n]
    order = np.lexsort((rows, -scores))
    return order[np.isfinite(scores[order])]


def shortlist(fusion: Fusion, index: GalleryIndex, m: int,
              rows_filter: RowFilter | None = None) -> tuple[np.ndarray, float]:
    """(rows C, bound U) for shortlist depth ``m`` (see the module docstring). U is -inf when every
    kept row is in C, +inf when a negative weight leaves no bound."""
    if any(t.weight < 0 for t in fusion.terms):
        return np.arange(len(index), dtype=np.int64), float("-inf")
    parts, thresholds = [], []
    for term in fusion.terms:
        rows, t = index.top_rows(term.key, m, rows_filter)
        parts.append(rows)
        thresholds.append(t)
    touched = np.fromiter(fusion.touched(), dtype=np.int64)
    rows = np.unique(np.concatenate(parts + [touched]))
    if any(t == float("-inf") for t, term in zip(thresholds, fusion.terms) if term.weight > 0):
        return rows, float("-inf")  # some weighted term kept every allowed row: nothing lies outside
    return rows, fusion.bound(thresholds)


def top(fusion: Fusion, index: GalleryIndex, n: int, rows_filter: RowFilter | None = None,
        m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of the ``n`` best images, best first (ties: lower row first), exactly as a
    full-gallery evaluation ranks them; fewer when the filter keeps fewer. ``m``: the first
    shortlist depth (default :data:`SHORTLIST`)."""
    total = len(index)
    m = max(m or SHORTLIST, n)
    while True:
        if m * 4 >= total:
            scores = full(fusion, index, rows_filter)
            rows = np.arange(total, dtype=np.int64)
            order = _order(scores, rows, n)
            return rows[order], scores[order]
        rows, bound = shortlist(fusion, index, m, rows_filter)
        scores = masked(fusion.evaluate(index, rows), rows_filter, rows)
        order = _order(scores, rows)
        if bound == float("-inf") or (len(order) >= n and scores[order[n - 1]] > bound):
            order = order[:n]
            return rows[order], scores[order]
        m *= 2


def target_rank(fusion: Fusion, index: GalleryIndex, target_pid: int | None, rows_filter: RowFilter | None = None,
                m: int | None = None) -> int | None:
    """The rank (1-based) of the target person's best-scored photo, as a full-gallery evaluation
    gives it: 1 + the images scoring strictly higher. None when the pid is unknown or has no photo."""
    if target_pid is None:
        return None
    hit = index.rows_of_pid(target_pid)
    if not len(hit):
        return None
    total = len(index)
    m = m or SHORTLIST
    if m * 4 < total:
        rows, bound = shortlist(fusion, index, m, rows_filter)
        rows = np.union1d(rows, hit)
        scores = masked(fusion.evaluate(index, rows), rows_filter, rows)
        best = scores[np.isin(rows, hit)].max()
        if bound == float("-inf") or best >= bound:
            if best == float("-inf"):  # every photo of the target is filtered out: after every kept image
                kept = total if rows_filter is None else rows_filter.allowed
                return kept + 1
            return int((scores > best).sum()) + 1
    scores = full(fusion, index, rows_filter)
    return int((scores > scores[hit].max()).sum()) + 1
