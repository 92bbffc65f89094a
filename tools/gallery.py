"""Chroma-backed gallery of image embeddings.

One collection per (image set, model): cosine space, no embedding function (embeddings come from
:class:`tools.embedder.Embedder`; Chroma's default function would download a model), stable ids
(the image path relative to its root), metadata ``path``, ``pid``, ``camera``, ``split`` where known.
Embedded ``PersistentClient`` under a data folder by default (``$THI_HOME/chroma``, i.e.
``~/.cache/thi-reid/chroma``); ``HttpClient`` when given a Chroma server URL.

Indexing is incremental and resumable: ids already present are skipped and new ones are added in
chunks no larger than the client's max batch size, so a run killed mid-way and re-run ends with
exactly one entry per image. Unreadable files are skipped with a warning naming them.

With a model that has TSE heads (an RDE or ICL checkpoint, :mod:`tools.tse`), each image has a
second embedding, kept in a sibling collection (the name with ``--tse`` added, same ids). Each chunk
is written to the TSE collection first and to the main one second, so an id in the main collection
always has both, and a killed run resumes with the two in step. Galleries then rank by ``bge``,
``tse`` or ``fused`` (``(bge + tse) / 2``, RDE's and ICL's score; exact search over both).

A gallery that is not a SynthPedes world, indexed or searched with a model trained on SynthPedes
renders only (the shipped models), logs one warning saying so and how to load a real checkpoint.

>>> g = Gallery.for_images("synthpedes-test", embedder)           # doctest: +SKIP
>>> g.index(items, embedder)                                     # doctest: +SKIP
>>> g.search(embedder.encode_texts(["a man in a red coat"])[0], k=5)  # doctest: +SKIP
[('test/04501_c2_0.jpg', 0.41), ...]
>>> q = embedder.text_features(["a man in a red coat"])               # doctest: +SKIP
>>> g.search(q["bge"][0], k=5, text_tse=q["tse"][0], score="fused")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .embedder import Embedder, default_home
from .photos import PHOTO_GONE, file_stamp, photo_changed
from .text import printable, printable_path
from .tse import SCORES, TSEError, similarity

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_SCOPE_WARNED: set[str] = set()


def check_scope(embedder: Embedder, source_format: str | None, what: str) -> bool:
    """Warn (once per ``what``) when a model trained on SynthPedes renders only meets images that are
    not a SynthPedes world (``source_format``: the reader's format, ``folder`` for a plain folder,
    None when unknown). Returns whether it warned."""
    if not embedder.synthetic_only or source_format in (None, "synthpedes") or what in _SCOPE_WARNED:
        return False
    _SCOPE_WARNED.add(what)
    kind = "a folder of images" if source_format == "folder" else f"a {source_format} dataset"
    log.warning("model %s was trained on SynthPedes renders only (synthetic people), and %s is %s: its rankings "
                "of real photos mean little; load a real checkpoint, e.g. --pretrained best.pth (an IRRA, RDE or "
                "ICL checkpoint) or --model ViT-B-16-quickgelu --pretrained TAG_OR_FILE", embedder.name, what, kind)
    return True


class GalleryError(RuntimeError):
    """The gallery cannot be opened, indexed or searched; the message says how to fix it."""


@dataclass(frozen=True)
class GalleryItem:
    """One image to index."""

    id: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def make_client(data_dir: str | Path | None = None, url: str | None = None):
    """A Chroma client: HTTP when ``url`` is given, else persistent under ``data_dir``."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise GalleryError(f"not a Chroma server URL: {url!r} (expected http://HOST:PORT)")
        try:
            return chromadb.HttpClient(host=parsed.hostname, port=parsed.port or 8000, ssl=parsed.scheme == "https",
                                       settings=settings)
        except Exception as e:  # the client connects on construction
            raise GalleryError(f"cannot reach the Chroma server at {url}: {str(e).splitlines()[0]}") from None
    path = Path(data_dir) if data_dir else default_home() / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-_")
    return (s[:limit].strip("-_") or "x")


def collection_name(image_set: str, embedder_name: str, fingerprint: str) -> str:
    """Chroma collection name for (image set, model): readable parts plus a hash (3-512 chars)."""
    digest = hashlib.sha1(f"{image_set}|{embedder_name}|{fingerprint}".encode()).hexdigest()[:8]
    return f"{_slug(image_set)}--{_slug(embedder_name, 24)}--{digest}"


def folder_items(folder: str | Path) -> tuple[list[GalleryItem], list[Path]]:
    """Image files under ``folder`` (recursively) and the other files found there."""
    folder = Path(folder)
    try:
        found = folder.is_dir()
    except (OSError, ValueError) as e:  # a name too long for the file system
        raise GalleryError(f"{printable_path(folder)[:300]}: not a usable folder path ({printable(e)[:200]})") from None
    if not found:
        what = "a file, not a folder of images" if folder.exists() else "gallery folder not found"
        raise GalleryError(f"{printable_path(folder)[:300]}: {what}")
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            rel = p.relative_to(folder).as_posix()
            images.append(GalleryItem(rel, p.resolve(), {"path": str(p.resolve())}))
        else:
            others.append(p)
    return images, others


def record_items(records: Iterable, format: str | None = None) -> list[GalleryItem]:
    """Gallery items from dataset records (``data.readers.Record``), one per image; ``format`` (the
    dataset's layout) is stored in each item's metadata."""
    items, seen = [], set()
    for r in records:
        if r.image in seen:
            continue
        seen.add(r.image)
        meta: dict[str, Any] = {"path": str(r.image_path), "pid": int(r.pid), "split": r.split}
        if format:
            meta["format"] = format
        if getattr(r, "camera", None) is not None:
            meta["camera"] = int(r.camera)
        items.append(GalleryItem(r.image, r.image_path, meta))
    return items


class Gallery:
    """A Chroma collection of L2-normalised image embeddings with exact and ANN search (and, for a
    model with TSE heads, a sibling collection of TSE embeddings with the same ids)."""

    def __init__(self, collection, client=None, tse_collection=None):
        self.collection = collection
        self.client = client
        self.tse_collection = tse_collection
        self._cache: dict[str, tuple[list[str], np.ndarray, list[dict]]] = {}

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, image_set: str, embedder: Embedder, data_dir: str | Path | None = None, url: str | None = None,
             create: bool = True) -> "Gallery":
        """The collection of ``image_set`` for ``embedder``'s model (created when ``create``); with
        its TSE collection when the model has TSE heads."""
        client = make_client(data_dir, url)
        name = collection_name(image_set, embedder.name, embedder.fingerprint)
        meta = {"image_set": image_set, "model": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim}
        col = cls._collection(client, name, meta, create, image_set, embedder)
        tse = None
        if embedder.has_tse:
            tse_meta = {"image_set": image_set, "model": embedder.name, "kind": "tse", "of": name,
                        "dim": embedder.tse_dim, "ratio": embedder.tse.ratio}
            tse_name = collection_name(image_set, embedder.name, f"{embedder.fingerprint}|tse{embedder.tse.ratio}") + "--tse"
            tse = cls._collection(client, tse_name, tse_meta, create, image_set, embedder, main=False)
        gallery = cls(col, client, tse)
        if not create or gallery.count():
            check_scope(embedder, gallery.source_format(), f"gallery {image_set!r}")
        return gallery

    @staticmethod
    def _collection(client, name: str, meta: dict, create: bool, image_set: str, embedder: Embedder, main: bool = True):
        try:
            if create:
                return client.get_or_create_collection(name, embedding_function=None, metadata=meta,
                                                       configuration={"hnsw": {"space": "cosine"}})
            return client.get_collection(name, embedding_function=None)
        except Exception as e:
            if create:
                raise GalleryError(f"cannot open Chroma collection {name}: {str(e).splitlines()[0]}") from None
            if not main:
                raise GalleryError(f"gallery {image_set!r} has no TSE embeddings for model {embedder.name}; index it "
                                   f"again (resumable): python -m tools.gallery index ...") from None
            others = [c.name if hasattr(c, "name") else str(c) for c in client.list_collections()]
            same_set = [o for o in others if o.startswith(_slug(image_set) + "--")]
            hint = (f"; it is indexed only with other models ({', '.join(same_set)})" if same_set else "")
            raise GalleryError(f"gallery {image_set!r} is not indexed with model {embedder.name}{hint}; "
                               f"index it with: python -m tools.gallery index ...") from None

    @property
    def name(self) -> str:
        return self.collection.name

    @property
    def has_tse(self) -> bool:
        return self.tse_collection is not None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The embeddings stored per image: ``("bge",)`` or ``("bge", "tse")``."""
        return ("bge", "tse") if self.has_tse else ("bge",)

    @property
    def scores_available(self) -> tuple[str, ...]:
        return SCORES if self.has_tse else ("bge",)

    def count(self) -> int:
        """Images with every embedding kind stored."""
        return len(self.ids()) if self.has_tse else self.collection.count()

    def ids(self) -> set[str]:
        """Ids of images with every embedding kind stored."""
        main = set(self.collection.get(include=[])["ids"])
        if self.has_tse:
            main &= set(self.tse_collection.get(include=[])["ids"])
        return main

    def source_format(self) -> str | None:
        """The dataset layout the indexed images came from (``folder`` for a plain folder), where recorded."""
        got = self.collection.get(limit=1, include=["metadatas"])
        metas = got.get("metadatas") or []
        return (metas[0] or {}).get("format") if metas else None

    # -- indexing --------------------------------------------------------------------------

    def index(self, items: Sequence[GalleryItem], embedder: Embedder, chunk_size: int = 512,
              progress: bool = True) -> dict:
        """Add the items not yet present. Returns counts of added, present and skipped items."""
        if not items:
            raise GalleryError("nothing to index: no images found")
        if embedder.has_tse != self.has_tse:
            raise GalleryError(f"gallery {self.name} was opened for a model {'with' if self.has_tse else 'without'} "
                               f"TSE heads; open it with this model")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise GalleryError("duplicate image ids in the items to index")
        formats = {it.metadata.get("format") for it in items} - {None}
        if formats:
            check_scope(embedder, sorted(formats)[0] if formats != {"synthpedes"} else "synthpedes",
                        f"gallery {(self.collection.metadata or {}).get('image_set', self.name)!r}")
        skipped: list[str] = []
        storable = []
        for it in items:  # Chroma stores UTF-8 only: a file name that is not (surrogate-escaped bytes) is named and left out
            if _utf8(it.id) and _utf8(str(it.path)) and all(_utf8(v) for v in it.metadata.values() if isinstance(v, str)):
                storable.append(it)
            else:
                log.warning("skipping %s: its name is not valid UTF-8 (rename the file to index it)", printable_path(it.path))
                skipped.append(printable_path(it.path))
        present = self.ids()
        refreshed = self._drop_changed(storable, present)
        present -= refreshed
        todo = [it for it in storable if it.id not in present]
        limit = max(1, min(chunk_size, self._max_batch()))
        added = 0
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"indexing {self.name}", unit="img",
                   disable=not progress)
        for start in range(0, len(todo), limit):
            chunk = todo[start:start + limit]
            ok, pixels, stamps = [], [], []
            for it in chunk:
                stamp = file_stamp(it.path)  # before reading: a file changed meanwhile shows as changed later
                try:
                    pixels.append(embedder.load_pixels(it.path))
                    ok.append(it)
                    stamps.append(stamp or {})
                except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                    log.warning("skipping unreadable image %s (%s)", printable_path(it.path),
                                printable(str(e).splitlines()[0] if str(e) else type(e).__name__))
                    skipped.append(printable_path(it.path))
            if ok:
                parts = [embedder.encode_pixels(np.stack(pixels[i:i + embedder.batch_size]), with_tse=self.has_tse)
                         for i in range(0, len(pixels), embedder.batch_size)]
                chunk_ids = [it.id for it in ok]
                metas = [{**(it.metadata or {"path": str(it.path)}), **stamp} for it, stamp in zip(ok, stamps)]
                if self.has_tse:
                    # TSE first: an id in the main collection always has its TSE embedding too
                    self.tse_collection.upsert(ids=chunk_ids, embeddings=np.concatenate([p[1] for p in parts]),
                                               metadatas=metas)
                    feats = np.concatenate([p[0] for p in parts])
                else:
                    feats = np.concatenate(parts)
                self.collection.upsert(ids=chunk_ids, embeddings=feats, metadatas=metas)
                added += len(ok)
            bar.update(len(chunk))
        bar.close()
        self._cache = {}
        return {"added": added, "present": len(storable) - len(todo), "refreshed": len(refreshed), "skipped": skipped,
                "total": self.count()}

    def _drop_changed(self, items: Sequence[GalleryItem], present: set[str]) -> set[str]:
        """Remove the entries of ``items`` whose file changed, emptied or vanished since it was
        indexed (its stored size and time differ; :func:`tools.photos.photo_changed`), so that they
        are embedded again (or, unreadable now, left out). Returns their ids."""
        if not present:
            return set()
        got = self.collection.get(include=["metadatas"])
        stored = {i: (m or {}) for i, m in zip(got["ids"], got["metadatas"])}
        changed = [it.id for it in items if it.id in stored and photo_changed(it.path, stored[it.id])]
        listed = {it.id for it in items}
        # photos no longer in the set and gone from the disk (a folder's deleted files) leave too
        changed += sorted(i for i, m in stored.items()
                          if i not in listed and "path" in m and photo_changed(m["path"], m) == PHOTO_GONE)
        if changed:
            log.warning("%d photos changed or vanished since indexing (e.g. %s); indexing them again", len(changed),
                        printable(changed[0]))
            for start in range(0, len(changed), self._max_batch()):
                part = changed[start:start + self._max_batch()]
                self.collection.delete(ids=part)  # main first: an id in it always has its TSE embedding
                if self.has_tse:
                    self.tse_collection.delete(ids=part)
        return set(changed)

    def _max_batch(self) -> int:
        try:
            return int(self.client.get_max_batch_size())
        except Exception:  # older servers do not say
            return 1000

    # -- reading ---------------------------------------------------------------------------

    def embeddings(self, kind: str = "bge") -> tuple[list[str], np.ndarray, list[dict]]:
        """All (ids, float32 [N, D] embeddings of ``kind`` (``bge`` or ``tse``), metadatas), sorted by
        id, cached until the next ``index``. Both kinds list the same ids in the same order.

        Raises:
            GalleryError: the gallery is empty, has no ``kind`` embeddings, or its two collections
                are out of step (re-index: it is resumable).
        """
        if kind not in ("bge", "tse"):
            raise GalleryError(f"unknown embedding kind {kind!r} (bge or tse)")
        if kind == "tse" and not self.has_tse:
            raise GalleryError(f"gallery {self.name} has no TSE embeddings (its model has no TSE heads)")
        if kind not in self._cache:
            col = self.collection if kind == "bge" else self.tse_collection
            got = col.get(include=["embeddings", "metadatas"])
            ids = list(got["ids"])
            if not ids:
                raise GalleryError(f"gallery {self.name} is empty; index it first (python -m tools.gallery index ...)")
            emb = np.asarray(got["embeddings"], dtype=np.float32)
            metas = [m or {} for m in got["metadatas"]]
            if self.has_tse:  # keep the images with both embeddings (a killed run may leave extra TSE rows)
                complete = self.ids()
                keep = [i for i, x in enumerate(ids) if x in complete]
                ids, emb, metas = [ids[i] for i in keep], emb[keep], [metas[i] for i in keep]
            order = np.argsort(ids, kind="stable")
            self._cache[kind] = ([ids[i] for i in order], emb[order], [metas[i] for i in order])
            if self.has_tse and len(self._cache) == 2 and self._cache["bge"][0] != self._cache["tse"][0]:
                self._cache = {}
                raise GalleryError(f"gallery {self.name}: BGE and TSE collections list different images; index it "
                                   f"again (resumable)")
        return self._cache[kind]

    def features(self) -> tuple[list[str], dict[str, np.ndarray], list[dict]]:
        """(ids, ``{"bge": [N, D], "tse": [N, E]}`` (``tse`` where stored), metadatas), rows aligned."""
        ids, bge, metas = self.embeddings("bge")
        out = {"bge": bge}
        if self.has_tse:
            tse_ids, out["tse"], _ = self.embeddings("tse")
            if tse_ids != ids:
                raise GalleryError(f"gallery {self.name}: BGE and TSE collections list different images; index it "
                                   f"again (resumable)")
        return ids, out, metas

    def search(self, text_embedding: np.ndarray, k: int = 10, where: dict | None = None,
               text_tse: np.ndarray | None = None, score: str = "bge") -> list[tuple[str, float]]:
        """Nearest images: [(id, score)], best first.

        ``score="bge"``: cosine similarity of ``text_embedding`` by Chroma's HNSW (approximate).
        ``tse`` / ``fused``: exact, over both collections (``text_tse`` needed; ``fused`` =
        ``(bge + tse) / 2``). ``where``: a Chroma metadata filter.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        if score == "bge":
            q = np.asarray(text_embedding, dtype=np.float32).reshape(1, -1)
            res = self.collection.query(query_embeddings=q, n_results=min(k, max(1, self.count())), where=where,
                                        include=["distances"])
            return [(i, float(1.0 - d)) for i, d in zip(res["ids"][0], res["distances"][0])]
        sim = self.similarity(text_embedding, text_tse, score=score)
        ids = self.embeddings("bge")[0]
        allowed = None
        if where is not None:
            allowed = set(self.collection.get(where=where, include=[])["ids"])
        order = np.argsort(-sim, kind="stable")
        out = []
        for i in order:
            if allowed is None or ids[i] in allowed:
                out.append((ids[i], float(sim[i])))
                if len(out) == k:
                    break
        return out

    def scores(self, text_embedding: np.ndarray, ids: Sequence[str] | None = None, kind: str = "bge") -> np.ndarray:
        """Exact cosine similarity of a text embedding of ``kind`` to ``ids`` (default: every image,
        in ``embeddings()`` order)."""
        all_ids, emb, _ = self.embeddings(kind)
        q = np.asarray(text_embedding, dtype=np.float32).reshape(-1)
        if ids is None:
            return emb @ q
        return emb[self._positions(ids)] @ q

    def similarity(self, text_bge: np.ndarray, text_tse: np.ndarray | None = None, ids: Sequence[str] | None = None,
                   score: str = "bge") -> np.ndarray:
        """float32 [N]: one text's ``score`` (``bge``, ``tse``, ``fused``) against ``ids`` (default:
        every image, in ``embeddings()`` order); see :func:`tools.tse.similarity`."""
        all_ids, feats, _ = self.features()
        if ids is not None:
            pos = self._positions(ids)
            feats = {k: v[pos] for k, v in feats.items()}
        query = {"bge": np.asarray(text_bge, dtype=np.float32).reshape(-1),
                 "tse": None if text_tse is None else np.asarray(text_tse, dtype=np.float32).reshape(-1)}
        try:
            return similarity(query, feats, score)
        except TSEError as e:
            raise GalleryError(f"gallery {self.name}: {e}") from None

    def _positions(self, ids: Sequence[str]) -> list[int]:
        all_ids = self.embeddings("bge")[0]
        pos = {i: n for n, i in enumerate(all_ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise GalleryError(f"{len(missing)} ids are not in gallery {self.name} (e.g. {missing[0]})")
        return [pos[i] for i in ids]

    def metadata(self, image_id: str) -> dict:
        all_ids, _, metas = self.embeddings()
        idx = np.searchsorted(all_ids, image_id)
        if idx >= len(all_ids) or all_ids[idx] != image_id:
            raise GalleryError(f"{image_id!r} is not in gallery {self.name}")
        return metas[idx]


def image_set_name(root: str | Path, split: str | None = None) -> str:
    """A stable name for a set of images: folder name, split and a hash of the absolute path."""
    root = Path(root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:6]
    return f"{_slug(root.name, 24)}-{split}-{digest}" if split else f"{_slug(root.name, 24)}-{digest}"


def items_for(source: str | Path, split: str = "test", format: str = "auto",
              skip_missing: bool = False) -> tuple[str, list[GalleryItem]]:
    """(image set name, items) for a dataset folder's split, or for a plain folder of images.

    Raises:
        data.readers.LayoutError: the folder holds an annotation-looking JSON no reader knows.
        data.readers.DatasetError: the split's images are missing (unless ``skip_missing``), or the
            annotations are malformed.
        GalleryError: no images, or an empty split.
    """
    from data.readers import DatasetError, LayoutError, detect_format, read_dataset

    source = Path(source)
    try:
        fmt = detect_format(source) if format == "auto" else format
    except LayoutError:
        raise
    except DatasetError:
        fmt = None
    if fmt is None:
        images, others = folder_items(source)
        for p in others:
            log.warning("skipping %s: not an image file", printable_path(p))
        if not images:
            raise GalleryError(f"{source}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return image_set_name(source), [GalleryItem(it.id, it.path, {**it.metadata, "format": "folder"})
                                        for it in images]
    ds = read_dataset(source, fmt, skip_missing=skip_missing, splits=[split])
    records = ds.split(split)
    if not records:
        raise GalleryError(f"{source}: split {split!r} is empty (splits: {', '.join(ds.all_splits) or 'none'})")
    return image_set_name(source, split), record_items(records, ds.format)


def main(argv: list[str] | None = None) -> int:
    import json
    import sys
    import time

    from data.readers import DatasetError

    from .cliargs import ArgumentParser, positive_int
    from .embedder import EmbedderError, add_model_arguments, embedder_from_args

    p = ArgumentParser(prog="python -m tools.gallery",
                                description="Index images into a Chroma gallery and query it by text.")
    add_model_arguments(p, score=False)
    p.add_argument("--data-dir", help="Chroma folder (default $THI_HOME/chroma = ~/.cache/thi-reid/chroma)")
    p.add_argument("--url", help="Chroma server URL (http://HOST:PORT) instead of the local folder")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("index", help="index a dataset split or a folder of images (resumable)")
    pi.add_argument("source", help="dataset folder (any supported layout) or a folder of images")
    pi.add_argument("--split", default="test", help="dataset split to index (default %(default)s)")
    pi.add_argument("--format", default="auto")
    pi.add_argument("--skip-missing", action="store_true", help="leave out records whose image file is missing (warns)")
    pq = sub.add_parser("query", help="rank an indexed gallery by a description")
    pq.add_argument("text", help="the description")
    pq.add_argument("--gallery", required=True, help="the dataset folder or image folder that was indexed")
    pq.add_argument("--split", default="test")
    pq.add_argument("--format", default="auto")
    pq.add_argument("--skip-missing", action="store_true", help="as given when indexing")
    pq.add_argument("-k", type=positive_int, default=10, help="results (default %(default)s)")
    pq.add_argument("--score", choices=SCORES,
                    help="bge, tse or fused ((bge + tse) / 2); default fused where the model has TSE heads, else bge")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        if args.command == "query" and not args.text.strip():
            raise GalleryError("the query is empty")
        # the images first: a bad folder is reported before a model is loaded
        source = args.source if args.command == "index" else args.gallery
        name, items = items_for(source, args.split, args.format, args.skip_missing)
        embedder = embedder_from_args(args)
        print(embedder.describe(), file=sys.stderr)
        if args.command == "index":
            gallery = Gallery.open(name, embedder, args.data_dir, args.url)
            t0 = time.perf_counter()
            result = gallery.index(items, embedder)
            result["skipped_count"] = len(result["skipped"])
            result.update(collection=gallery.name, embeddings=list(gallery.kinds),
                          seconds=round(time.perf_counter() - t0, 2), model=embedder.info)
            print(json.dumps(result))
        else:
            score = embedder.resolve_score(args.score)
            gallery = Gallery.open(name, embedder, args.data_dir, args.url, create=False)
            q = embedder.text_features([args.text])
            print(f"score: {score}", file=sys.stderr)
            hits = gallery.search(q["bge"][0], args.k, text_tse=q["tse"][0] if "tse" in q else None, score=score)
            for rank, (image_id, value) in enumerate(hits, 1):
                meta = gallery.metadata(image_id)
                print(f"{rank:3d}  {value:.4f}  {printable(image_id)}  pid={meta.get('pid', '-')}")
    except (GalleryError, EmbedderError, DatasetError, ValueError) as e:  # ValueError: -k 0
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
