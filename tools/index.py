"""The gallery in memory for exact scoring: every image embedding of a Chroma gallery (memory-mapped),
the text features of the queries seen, and each query's full-gallery scores, kept for the dialogue.

THI scores the whole gallery with the original query, each rewrite and the anchor photo. Each of
those vectors is one matrix-vector product over the gallery, computed once per distinct text (or
anchor) and kept (least recently used first out), together with its best rows, so a round's
fusion, re-ranking and target rank work on a shortlist (``graphs.thi.scoring``) instead of the
whole gallery.

>>> index = GalleryIndex(Gallery.open(name, embedder), embedder)   # doctest: +SKIP
>>> index.scores("a woman in a red coat").shape                     # doctest: +SKIP
(3187,)
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tools.mllm.base import ImageRef
from tools.tracing import child_run

from .embedder import Embedder
from .gallery import Gallery, GalleryError
from .probe import AttributeProbe
from .tse import TSEError, similarity


class Positions(Mapping):
    """id -> row of a gallery whose ids are sorted (bisection; no dict of every id)."""

    def __init__(self, ids):
        self._ids = ids

    def __getitem__(self, image_id: str) -> int:
        row = self._ids.find(image_id) if isinstance(image_id, str) else -1
        if row < 0:
            raise KeyError(image_id)
        return row

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._ids.find(image_id) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True, eq=False)
class RowFilter:
    """The rows a metadata filter keeps: ``keep`` (bool [N], read-only) and a key unique in the
    process (what caches are keyed by)."""

    keep: np.ndarray
    key: int = field(default_factory=lambda: next(_filter_keys))

    @property
    def allowed(self) -> int:
        return int(self.keep.sum())


_filter_keys = itertools.count(1)


class _LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, build: Callable[[], Any]):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = build()  # outside the lock: a duplicate build is harmless, a long wait is not
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


class GalleryIndex:
    """A gallery's embeddings, ranked by the model's score.

    ``ids`` (N image ids, sorted), ``features`` (``{"bge": float32 [N, D], "tse": [N, E]}``, the
    second for RDE/ICL checkpoints; memory-mapped, L2-normalised, rows aligned with ``ids``),
    ``embeddings`` (``features["bge"]``), ``metadatas`` (N dicts: path, pid when known, camera,
    split), ``position`` (id -> row), ``pids`` (int64 [N], -1 where unknown) and ``score`` (``bge``,
    ``tse`` or ``fused`` = (BGE + TSE) / 2: the checkpoint's score unless ``score`` names another).

    Raises:
        ValueError: the gallery was indexed with a model of another embedding size.
        tools.gallery.GalleryError: the gallery is empty.
        tools.embedder.EmbedderError: ``score`` needs TSE heads the model lacks.
    """

    def __init__(self, gallery: Gallery, embedder: Embedder, cache_size: int = 4096, score: str | None = None,
                 vectors: int = 8):
        self.gallery = gallery
        self.embedder = embedder
        self.score = embedder.resolve_score(score)
        ids, self.features, self.metadatas = gallery.features()
        self.ids = ids
        self.embeddings = self.features["bge"]
        self.position = Positions(ids)
        if self.embeddings.shape[1] != embedder.dim:
            raise ValueError(f"gallery {gallery.name} holds {self.embeddings.shape[1]}-d embeddings but the model "
                             f"{embedder.name} makes {embedder.dim}-d ones; re-index the gallery with this model")
        if self.score != "bge" and "tse" not in self.features:
            raise GalleryError(f"gallery {gallery.name} has no TSE embeddings; score {self.score} needs them "
                               f"(index it with the checkpoint's TSE heads)")
        self._text_cache = _LRU(cache_size)
        self._vectors = _LRU(vectors)
        self._tops = _LRU(4 * vectors)
        self._pid_rows = _LRU(64)
        self._masks: dict[int, tuple[weakref.ref, RowFilter]] = {}
        self._masks_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def pids(self) -> np.ndarray:
        """int64 [N]: each image's person id, -1 where unknown."""
        return np.asarray(self.metadatas.ints("pid", -1)) if hasattr(self.metadatas, "ints") else \
            np.asarray([m.get("pid", -1) for m in self.metadatas], dtype=np.int64)

    # -- texts and their scores --------------------------------------------------------------

    def encode(self, text: str) -> dict[str, np.ndarray]:
        """The text's features (``{"bge": float32 [D], "tse": [E]}``), from the cache when it was
        encoded before."""
        def build() -> dict[str, np.ndarray]:
            with child_run("embedder.encode_texts", {"texts": [text]}, tags=("embedder",),
                           metadata={"retrieval_model": self.embedder.name}):
                return {k: v[0] for k, v in self.embedder.text_features([text]).items()}

        return self._text_cache.get(text, build)

    def _similarity(self, query: dict[str, np.ndarray]) -> np.ndarray:
        try:
            out = similarity(query, self.features, self.score)
        except TSEError as e:
            raise GalleryError(f"gallery {self.gallery.name}: {e}") from None
        return np.asarray(out, dtype=np.float32)

    def scores(self, text: str, cache: bool = True) -> np.ndarray:
        """float32 [N], in ``ids`` order: every gallery image's score (``self.score``) for ``text``
        (a copy of the vector kept for the dialogue, :meth:`vector`); ``cache=False`` encodes the
        text and scores the gallery afresh (what a plain retrieval costs)."""
        if cache:
            return self.vector(("text", text)).copy()  # traced where it is computed
        with child_run("gallery.scores", {"text": text}, tags=("gallery",),
                       metadata={"gallery": self.gallery.name, "images": len(self.ids), "cached": False}) as run:
            feats = {k: v[0] for k, v in self.embedder.text_features([text], progress=False).items()}
            scores = self._similarity(feats)
            if run is not None:
                run.outputs = {"images": int(scores.shape[0]), "best": float(scores.max()) if scores.size else None}
        return scores

    def image_scores(self, image_id: str) -> np.ndarray:
        """float32 [N]: every gallery image's similarity to the photo ``image_id`` under
        ``self.score`` (the anchor photo's look), a copy of the kept vector like :meth:`scores`.
        ``KeyError`` for an id not in the gallery."""
        return self.vector(("image", image_id)).copy()

    def vector(self, key: tuple) -> np.ndarray:
        """The full-gallery score vector (float32 [N], read-only) of ``("text", text)`` or
        ``("image", image_id)``: one matrix-vector product, kept for later rounds (least recently
        used first out)."""
        def build() -> np.ndarray:
            kind, value = key
            if kind not in ("text", "image"):
                raise ValueError(f"unknown score vector kind {kind!r}")
            with child_run("gallery.scores", {kind: value}, tags=("gallery",),
                           metadata={"gallery": self.gallery.name, "images": len(self.ids)}) as run:
                if kind == "text":
                    query = self.encode(value)
                else:
                    row = self.position[value]
                    query = {k: np.asarray(v[row]) for k, v in self.features.items()}
                v = self._similarity(query)
                if run is not None:
                    run.outputs = {"images": int(v.shape[0]), "best": float(v.max()) if v.size else None}
            v.flags.writeable = False
            return v

        return self._vectors.get(key, build)

    def top_rows(self, key: tuple, m: int, rows_filter: RowFilter | None = None) -> tuple[np.ndarray, float]:
        """(rows, threshold): the ``m`` rows with the highest scores of vector ``key`` among those
        ``rows_filter`` keeps (all when None), best first (ties: lower row first), and the m-th
        highest score (every other kept row scores at most this; -inf when at most m are kept)."""
        mask = None if rows_filter is None else rows_filter.keep

        def build() -> tuple[np.ndarray, float]:
            v = self.vector(key)
            if mask is not None:
                v = np.where(mask, v, -np.inf)
            n = len(v)
            allowed = n if mask is None else rows_filter.allowed
            k = min(m, allowed)
            if k <= 0:
                return np.zeros(0, dtype=np.int64), float("-inf")
            part = np.argpartition(-v, k - 1)[:k] if k < n else np.arange(n)
            rows = part[np.lexsort((part, -v[part]))]
            rows = rows[np.isfinite(v[rows])] if mask is not None else rows
            threshold = float(v[rows[-1]]) if k == m and len(rows) else float("-inf")
            return rows.astype(np.int64), threshold

        return self._tops.get((key, m, None if rows_filter is None else rows_filter.key), build)

    def row_filter(self, allowed: frozenset | set | None) -> RowFilter | None:
        """The rows whose id is in ``allowed`` (None: no filter); kept per set object."""
        if allowed is None:
            return None
        with self._masks_lock:
            hit = self._masks.get(id(allowed))
            if hit is not None and hit[0]() is allowed:
                return hit[1]
        keep = np.zeros(len(self.ids), dtype=bool)
        for image_id in allowed:
            row = self.ids.find(image_id)
            if row >= 0:
                keep[row] = True
        keep.flags.writeable = False
        out = RowFilter(keep)
        with self._masks_lock:
            for k in [k for k, (ref, _) in self._masks.items() if ref() is None]:
                del self._masks[k]  # sets that are gone (their id may be reused)
            try:
                self._masks[id(allowed)] = (weakref.ref(allowed), out)
            except TypeError:  # not weakly referable: not kept
                pass
        return out

    def rows_of_pid(self, pid: int) -> np.ndarray:
        """int64 rows of the images of person ``pid`` (kept per pid)."""
        return self._pid_rows.get(int(pid), lambda: np.flatnonzero(self.pids == int(pid)).astype(np.int64))

    # -- photos --------------------------------------------------------------------------------

    def image(self, image_id: str) -> ImageRef:
        """The image's id, file path and, where indexing recorded it, the file's size and time (so a
        photo changed since is skipped, not judged) (``KeyError`` for an id not in the gallery)."""
        meta = self.metadatas[self.position[image_id]]
        stamp = (meta["bytes"], meta["mtime_ns"]) if "bytes" in meta and "mtime_ns" in meta else None
        return ImageRef(image_id, Path(meta["path"]), stamp)

    def pid(self, image_id: str) -> int | None:
        """The person id of the image, when the gallery knows it."""
        row = self.position[image_id]
        pid = int(self.pids[row])
        return None if pid == -1 and self.metadatas[row].get("pid") is None else pid

    @cached_property
    def probe(self) -> AttributeProbe:
        return AttributeProbe(self.embedder)

    def disagreement(self, ids: list[str], slots: list[str]) -> dict[str, float]:
        """Per slot, how much the retrieval model's zero-shot reading of the images ``ids`` disagrees
        (see :meth:`tools.probe.AttributeProbe.disagreement`)."""
        emb = np.asarray(self.embeddings[[self.position[i] for i in ids]])
        return self.probe.disagreement(emb, slots)

    def allowed_ids(self, where: dict | None) -> set[str] | None:
        """The ids of the images matching a Chroma metadata filter (``where``), or None without one."""
        if not where:
            return None
        return {self.ids[int(r)] for r in self.gallery.allowed_rows(where)}

    def clear(self) -> None:
        """Forget the cached texts and score vectors."""
        for c in (self._text_cache, self._vectors, self._tops, self._pid_rows):
            c.clear()
