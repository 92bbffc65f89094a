"""Chroma-backed gallery of image embeddings.

One collection per (image set, model): cosine space, no embedding function (embeddings come from
:class:`tools.embedder.Embedder`; Chroma's default function would download a model), stable ids
(the image path relative to its root), metadata ``path``, ``pid``, ``camera``, ``split`` where known.
Embedded ``PersistentClient`` under a data folder by default (``$THI_HOME/chroma``, i.e.
``~/.cache/thi-reid/chroma``); ``HttpClient`` when given a Chroma server URL.

Indexing is incremental and resumable: ids already present are skipped and new ones are added in
chunks no larger than the client's max batch size, so a run killed mid-way and re-run ends with
exactly one entry per image. Unreadable files are skipped with a warning naming them.

>>> g = Gallery.for_images("synthpedes-test", embedder)           # doctest: +SKIP
>>> g.index(items, embedder)                                     # doctest: +SKIP
>>> g.search(embedder.encode_texts(["a man in a red coat"])[0], k=5)  # doctest: +SKIP
[('test/04501_c2_0.jpg', 0.41), ...]
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

from .embedder import Embedder, default_home, load_pixels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class GalleryError(RuntimeError):
    """The gallery cannot be opened, indexed or searched; the message says how to fix it."""


@dataclass(frozen=True)
class GalleryItem:
    """One image to index."""

    id: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


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
    if not folder.is_dir():
        raise GalleryError(f"{folder}: gallery folder not found")
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


def record_items(records: Iterable) -> list[GalleryItem]:
    """Gallery items from dataset records (``data.readers.Record``), one per image."""
    items, seen = [], set()
    for r in records:
        if r.image in seen:
            continue
        seen.add(r.image)
        meta: dict[str, Any] = {"path": str(r.image_path), "pid": int(r.pid), "split": r.split}
        if getattr(r, "camera", None) is not None:
            meta["camera"] = int(r.camera)
        items.append(GalleryItem(r.image, r.image_path, meta))
    return items


class Gallery:
    """A Chroma collection of L2-normalised image embeddings with exact and ANN search."""

    def __init__(self, collection, client=None):
        self.collection = collection
        self.client = client
        self._cache: tuple[list[str], np.ndarray, list[dict]] | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, image_set: str, embedder: Embedder, data_dir: str | Path | None = None, url: str | None = None,
             create: bool = True) -> "Gallery":
        """The collection of ``image_set`` for ``embedder``'s model (created when ``create``)."""
        client = make_client(data_dir, url)
        name = collection_name(image_set, embedder.name, embedder.fingerprint)
        meta = {"image_set": image_set, "model": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim}
        try:
            if create:
                col = client.get_or_create_collection(name, embedding_function=None, metadata=meta,
                                                      configuration={"hnsw": {"space": "cosine"}})
            else:
                col = client.get_collection(name, embedding_function=None)
        except Exception as e:
            if create:
                raise GalleryError(f"cannot open Chroma collection {name}: {str(e).splitlines()[0]}") from None
            others = [c.name if hasattr(c, "name") else str(c) for c in client.list_collections()]
            same_set = [o for o in others if o.startswith(_slug(image_set) + "--")]
            hint = (f"; it is indexed only with other models ({', '.join(same_set)})" if same_set else "")
            raise GalleryError(f"gallery {image_set!r} is not indexed with model {embedder.name}{hint}; "
                               f"index it with: python -m tools.gallery index ...") from None
        return cls(col, client)

    @property
    def name(self) -> str:
        return self.collection.name

    def count(self) -> int:
        return self.collection.count()

    def ids(self) -> set[str]:
        return set(self.collection.get(include=[])["ids"])

    # -- indexing --------------------------------------------------------------------------

    def index(self, items: Sequence[GalleryItem], embedder: Embedder, chunk_size: int = 512,
              progress: bool = True) -> dict:
        """Add the items not yet present. Returns counts of added, present and skipped items."""
        if not items:
            raise GalleryError("nothing to index: no images found")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise GalleryError("duplicate image ids in the items to index")
        present = self.ids()
        todo = [it for it in items if it.id not in present]
        limit = max(1, min(chunk_size, self._max_batch()))
        added, skipped = 0, []
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"indexing {self.name}", unit="img",
                   disable=not progress)
        for start in range(0, len(todo), limit):
            chunk = todo[start:start + limit]
            ok, pixels = [], []
            for it in chunk:
                try:
                    pixels.append(load_pixels(it.path, embedder.image_size))
                    ok.append(it)
                except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                    log.warning("skipping unreadable image %s (%s)", it.path, str(e).splitlines()[0] if str(e) else type(e).__name__)
                    skipped.append(str(it.path))
            if ok:
                feats = np.concatenate([embedder.encode_pixels(np.stack(pixels[i:i + embedder.batch_size]))
                                        for i in range(0, len(pixels), embedder.batch_size)])
                self.collection.upsert(ids=[it.id for it in ok], embeddings=feats,
                                       metadatas=[it.metadata or {"path": str(it.path)} for it in ok])
                added += len(ok)
            bar.update(len(chunk))
        bar.close()
        self._cache = None
        return {"added": added, "present": len(items) - len(todo), "skipped": skipped, "total": self.count()}

    def _max_batch(self) -> int:
        try:
            return int(self.client.get_max_batch_size())
        except Exception:  # older servers do not say
            return 1000

    # -- reading ---------------------------------------------------------------------------

    def embeddings(self) -> tuple[list[str], np.ndarray, list[dict]]:
        """All (ids, float32 [N, D] embeddings, metadatas), cached until the next ``index``."""
        if self._cache is None:
            got = self.collection.get(include=["embeddings", "metadatas"])
            ids = list(got["ids"])
            if not ids:
                raise GalleryError(f"gallery {self.name} is empty; index it first (python -m tools.gallery index ...)")
            order = np.argsort(ids, kind="stable")
            emb = np.asarray(got["embeddings"], dtype=np.float32)[order]
            metas = [got["metadatas"][i] or {} for i in order]
            self._cache = ([ids[i] for i in order], emb, metas)
        return self._cache

    def search(self, text_embedding: np.ndarray, k: int = 10, where: dict | None = None) -> list[tuple[str, float]]:
        """Approximate nearest images by cosine similarity (Chroma HNSW): [(id, score)], best first."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = np.asarray(text_embedding, dtype=np.float32).reshape(1, -1)
        res = self.collection.query(query_embeddings=q, n_results=min(k, max(1, self.count())), where=where,
                                    include=["distances"])
        return [(i, float(1.0 - d)) for i, d in zip(res["ids"][0], res["distances"][0])]

    def scores(self, text_embedding: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """Exact cosine similarity of the text to ``ids`` (default: every image, in ``embeddings()`` order)."""
        all_ids, emb, _ = self.embeddings()
        q = np.asarray(text_embedding, dtype=np.float32).reshape(-1)
        if ids is None:
            return emb @ q
        pos = {i: n for n, i in enumerate(all_ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise GalleryError(f"{len(missing)} ids are not in gallery {self.name} (e.g. {missing[0]})")
        return emb[[pos[i] for i in ids]] @ q

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


def items_for(source: str | Path, split: str = "test", format: str = "auto") -> tuple[str, list[GalleryItem]]:
    """(image set name, items) for a dataset folder's split, or for a plain folder of images."""
    from data.readers import DatasetError, detect_format, read_dataset

    source = Path(source)
    try:
        fmt = detect_format(source) if format == "auto" else format
    except DatasetError:
        fmt = None
    if fmt is None:
        images, others = folder_items(source)
        for p in others:
            log.warning("skipping %s: not an image file", p)
        if not images:
            raise GalleryError(f"{source}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return image_set_name(source), images
    ds = read_dataset(source, fmt, skip_missing=True)
    records = ds.split(split)
    if not records:
        raise GalleryError(f"{source}: split {split!r} is empty (splits: {', '.join(ds.splits) or 'none'})")
    return image_set_name(source, split), record_items(records)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys
    import time

    from data.readers import DatasetError

    from .embedder import DEFAULT_MODEL, EmbedderError

    p = argparse.ArgumentParser(prog="python -m tools.gallery",
                                description="Index images into a Chroma gallery and query it by text.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedder model (default %(default)s)")
    p.add_argument("--pretrained", help="pretrained tag or checkpoint file for --model")
    p.add_argument("--data-dir", help="Chroma folder (default $THI_HOME/chroma = ~/.cache/thi-reid/chroma)")
    p.add_argument("--url", help="Chroma server URL (http://HOST:PORT) instead of the local folder")
    p.add_argument("--device", help="cpu, cuda, ...")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("index", help="index a dataset split or a folder of images (resumable)")
    pi.add_argument("source", help="dataset folder (any supported layout) or a folder of images")
    pi.add_argument("--split", default="test", help="dataset split to index (default %(default)s)")
    pi.add_argument("--format", default="auto")
    pq = sub.add_parser("query", help="rank an indexed gallery by a description")
    pq.add_argument("text", help="the description")
    pq.add_argument("--gallery", required=True, help="the dataset folder or image folder that was indexed")
    pq.add_argument("--split", default="test")
    pq.add_argument("--format", default="auto")
    pq.add_argument("-k", type=int, default=10, help="results (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        embedder = Embedder(args.model, args.pretrained, device=args.device)
        if args.command == "index":
            name, items = items_for(args.source, args.split, args.format)
            gallery = Gallery.open(name, embedder, args.data_dir, args.url)
            t0 = time.perf_counter()
            result = gallery.index(items, embedder)
            result["skipped_count"] = len(result["skipped"])
            result.update(collection=gallery.name, seconds=round(time.perf_counter() - t0, 2))
            print(json.dumps(result))
        else:
            if not args.text.strip():
                raise GalleryError("the query is empty")
            name, _ = items_for(args.gallery, args.split, args.format)
            gallery = Gallery.open(name, embedder, args.data_dir, args.url, create=False)
            q = embedder.encode_texts([args.text])[0]
            for rank, (image_id, score) in enumerate(gallery.search(q, args.k), 1):
                meta = gallery.metadata(image_id)
                print(f"{rank:3d}  {score:.4f}  {image_id}  pid={meta.get('pid', '-')}")
    except (GalleryError, EmbedderError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
