"""The gallery in memory for exact scoring: every image embedding of a Chroma gallery, a cache of
text embeddings, and the zero-shot attribute probe over them.

THI scores the whole gallery several times per dialogue (the original query, each rewrite, the
fusion), so it keeps the embeddings as one float32 matrix instead of asking Chroma each time.

>>> index = GalleryIndex(Gallery.open(name, embedder), embedder)   # doctest: +SKIP
>>> index.scores("a woman in a red coat").shape                     # doctest: +SKIP
(3187,)
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np

from tools.mllm.base import ImageRef
from tools.tracing import child_run

from .embedder import Embedder
from .gallery import Gallery
from .probe import AttributeProbe


class GalleryIndex:
    """A gallery's embeddings in memory, with a text-embedding cache (least recently used first out).

    ``ids`` (N image ids), ``embeddings`` (float32 [N, D], L2-normalised), ``metadatas`` (N dicts:
    path, pid when known, camera, split) and ``position`` (id -> row) are read once from the
    gallery. Raises ``ValueError`` when the gallery was indexed with a model of another
    embedding size, and ``tools.gallery.GalleryError`` when it is empty.
    """

    def __init__(self, gallery: Gallery, embedder: Embedder, cache_size: int = 4096):
        self.gallery = gallery
        self.embedder = embedder
        self.ids, self.embeddings, self.metadatas = gallery.embeddings()
        self.position = {i: n for n, i in enumerate(self.ids)}
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        if self.embeddings.shape[1] != embedder.dim:
            raise ValueError(f"gallery {gallery.name} holds {self.embeddings.shape[1]}-d embeddings but the model "
                             f"{embedder.name} makes {embedder.dim}-d ones; re-index the gallery with this model")

    def encode(self, text: str) -> np.ndarray:
        """The text's embedding (float32 [D]), from the cache when it was encoded before."""
        hit = self._text_cache.get(text)
        if hit is None:
            with child_run("embedder.encode_texts", {"texts": [text]}, tags=("embedder",),
                           metadata={"retrieval_model": self.embedder.name}):
                hit = self.embedder.encode_texts([text], progress=False)[0]
            self._text_cache[text] = hit
            if len(self._text_cache) > self._cache_size:
                self._text_cache.popitem(last=False)
        else:
            self._text_cache.move_to_end(text)
        return hit

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of every gallery image to ``text``: float32 [N], in ``ids`` order."""
        with child_run("gallery.scores", {"text": text}, tags=("gallery",),
                       metadata={"gallery": self.gallery.name, "images": len(self.ids)}) as run:
            scores = self.embeddings @ self.encode(text)
            if run is not None:
                run.outputs = {"images": int(scores.shape[0]), "best": float(scores.max()) if scores.size else None}
        return scores

    def image(self, image_id: str) -> ImageRef:
        """The image's id, file path and, where indexing recorded it, the file's size and time (so a
        photo changed since is skipped, not judged) (``KeyError`` for an id not in the gallery)."""
        meta = self.metadatas[self.position[image_id]]
        stamp = (meta["bytes"], meta["mtime_ns"]) if "bytes" in meta and "mtime_ns" in meta else None
        return ImageRef(image_id, Path(meta["path"]), stamp)

    def pid(self, image_id: str) -> int | None:
        """The person id of the image, when the gallery knows it."""
        return self.metadatas[self.position[image_id]].get("pid")

    @cached_property
    def probe(self) -> AttributeProbe:
        return AttributeProbe(self.embedder)

    def disagreement(self, ids: list[str], slots: list[str]) -> dict[str, float]:
        """Per slot, how much the retrieval model's zero-shot reading of the images ``ids`` disagrees
        (see :meth:`tools.probe.AttributeProbe.disagreement`)."""
        emb = self.embeddings[[self.position[i] for i in ids]]
        return self.probe.disagreement(emb, slots)

    def allowed_ids(self, where: dict | None) -> set[str] | None:
        """The ids of the images matching a Chroma metadata filter (``where``), or None without one."""
        if not where:
            return None
        got = self.gallery.collection.get(where=where, include=[])
        return set(got["ids"])
