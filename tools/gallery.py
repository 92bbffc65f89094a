"""Chroma-backed gallery of image embeddings.

One collection per (image set, model): cosine space, no embedding function (embeddings come from
:class:`tools.embedder.Embedder`; Chroma's default function would download a model), stable ids
(the image path relative to its root), metadata ``path``, ``pid``, ``camera``, ``split`` where known.
Embedded ``PersistentClient`` under a data folder by default (``$THI_HOME/chroma``, i.e.
``~/.cache/thi-reid/chroma``); ``HttpClient`` when given a Chroma server URL.

Indexing is incremental and resumable: ids already present are skipped and new ones are added in
chunks no larger than the client's max batch size, so a run killed mid-way and re-run ends with
exactly one entry per image. Unreadable files are skipped with a warning naming them. Photos are
decoded and resized by a thread pool while the previous batch is encoded, and each chunk is
written to Chroma by a writer thread, so the encoder does not wait for either.
``shard=(i, n)`` indexes the i-th of n disjoint parts of the items (by a hash of the id), so n
processes or machines can index one folder into one Chroma server.

One writer per local folder: every access to a local Chroma folder holds its lock
(:mod:`tools.store`); a second writer waits, logging who holds it, or with ``lock_timeout`` fails
in one line naming the holder. Several writers at once: run a Chroma server and pass its URL.

Reading: every embedding, id and the metadata THI needs are kept as a memory-mapped copy
(:mod:`tools.gallery_cache`) beside the collection, keyed to the collection's content (its row
count and the version token every write sets in the collection's metadata), so a changed
collection is never served stale. Indexing updates it incrementally; a reader that finds it out of
date adds the new rows (or rebuilds it from paged reads). Where it lives: in the Chroma folder
(``thi-index/``) for a local gallery; for a Chroma server, on the reading machine under
``$THI_HOME/chroma-cache/HOST-PORT/`` (each machine keeps its own copy).

Search is always exact (one matrix-vector product over the memory-mapped matrix). Chroma's HNSW
index is not used for search: on galleries of near-duplicate photos it lost neighbours from 30,000
photos up (top-10 recall 0.98 at 30k; at 1M 0.14, or 0.23 with 1,000 candidates re-scored exactly,
and 0.47 / 0.52 from a collection built with M 48 and ef 400; ``python -m eval.scale`` still
measures it, for the record). ``approximate=True`` is accepted for old callers and answered exactly.

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
import uuid
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from . import gallery_cache
from .embedder import Embedder, default_home
from .gallery_cache import CacheError, Snapshot
from .photos import PHOTO_GONE, file_stamp, photo_changed
from .store import GalleryBusy, GalleryError, Store, store_for  # noqa: F401 - GalleryBusy: re-exported
from .text import printable, printable_path
from .tse import SCORES, TSEError, similarity

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_SCOPE_WARNED: set[str] = set()
#: Rows per paged Chroma read: below SQLite's limit of 32,766 variables per statement, which one
#: unbounded ``get`` of a larger collection exceeds ("too many SQL variables", chromadb 1.5.9).
PAGE = 10_000
#: Ids per ``get(ids=...)`` call (each id is one SQL variable).
ID_PAGE = 5_000
VERSION_KEY = "thi:version"  # changes on every write (the memory-mapped copy's key)
EPOCH_KEY = "thi:epoch"  # changes when a write may replace or remove rows (no incremental update then)


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
    """A Chroma client: HTTP when ``url`` is given, else persistent under ``data_dir``. For a local
    folder, use it inside ``store_for(data_dir).session()`` (one process at a time)."""
    store = store_for(data_dir, url, default_home() / "chroma")
    with store.session() as client:
        return client


def shard_of(image_id: str, n: int) -> int:
    """The shard (0..n-1) an image id belongs to: CRC-32 of its UTF-8 bytes mod n (stable across
    machines and listing orders)."""
    return zlib.crc32(image_id.encode("utf-8", "surrogatepass")) % n


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1-based i, as a person counts) -> (i - 1, n). Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard takes I/N with 1 <= I <= N (e.g. 1/4), not {text!r}")
    return int(m.group(1)) - 1, int(m.group(2))


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


def _new_token() -> str:
    return uuid.uuid4().hex[:16]


def _user_metadata(meta: dict | None) -> dict:
    """A collection's metadata without the keys Chroma keeps for its own configuration."""
    return {k: v for k, v in (meta or {}).items() if not k.startswith("hnsw:")}


_warned_approximate = False


def warn_approximate() -> None:
    """Say once per process that ``approximate`` search is answered exactly."""
    global _warned_approximate
    if not _warned_approximate:
        _warned_approximate = True
        log.warning("--approximate is no longer used: search is exact (HNSW lost neighbours on large galleries; "
                    "see docs/results.md, Gallery scale)")


#: The file a local Chroma folder keeps its database in (chromadb's PersistentClient).
CHROMA_DB = "chroma.sqlite3"


class _Changed(Exception):
    """The collection changed while it was being copied."""


class Gallery:
    """A Chroma collection of L2-normalised image embeddings with exact search
    (and, for a model with TSE heads, a sibling collection of TSE embeddings with the same ids),
    read through a memory-mapped copy (:meth:`snapshot`).

    ``lock_timeout`` (local folders): seconds to wait for another process's write before
    :class:`tools.store.GalleryBusy`; None waits as long as it takes (logging who holds it).
    """

    def __init__(self, store: Store, name: str, tse_name: str | None = None, image_set: str | None = None,
                 lock_timeout: float | None = None):
        self.store = store
        self._name = name
        self._tse_name = tse_name
        self.image_set = image_set or name
        self.lock_timeout = lock_timeout
        self._handles: tuple[int, Any, Any] | None = None
        self._snapshot: Snapshot | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, image_set: str, embedder: Embedder, data_dir: str | Path | None = None, url: str | None = None,
             create: bool = True, lock_timeout: float | None = None,
             index_command: str = "python -m tools.gallery index DIR") -> "Gallery":
        """The collection of ``image_set`` for ``embedder``'s model (created when ``create``); with
        its TSE collection when the model has TSE heads. ``index_command``: the command a "not
        indexed" error tells the user to run.

        Raises:
            GalleryError: not indexed with this model (``create=False``), being indexed by another
                process, or the store cannot be reached.
        """
        if not create and not url:  # reading a local folder: never leave a folder or an empty database behind
            folder = Path(data_dir) if data_dir else default_home() / "chroma"
            if not folder.is_dir():
                raise GalleryError(f"gallery {image_set!r} is not indexed with model {embedder.name} (no folder "
                                   f"{folder}); index it with: {index_command}")
        store = store_for(data_dir, url, default_home() / "chroma")
        name = collection_name(image_set, embedder.name, embedder.fingerprint)
        meta = {"image_set": image_set, "model": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim}
        tse_name = tse_meta = None
        if embedder.has_tse:
            tse_meta = {"image_set": image_set, "model": embedder.name, "kind": "tse", "of": name,
                        "dim": embedder.tse_dim, "ratio": embedder.tse.ratio}
            tse_name = collection_name(image_set, embedder.name, f"{embedder.fingerprint}|tse{embedder.tse.ratio}") + "--tse"
        gallery = cls(store, name, tse_name, image_set, lock_timeout)
        if not create and store.local:
            with store.lock.hold("reading", lock_timeout):  # waits for a writer like any read (GalleryBusy)
                has_database = (store.folder / CHROMA_DB).is_file()
            if not has_database:
                gallery._not_indexed(True, embedder, index_command, no_database=True)
        wanted = [(name, meta, True)] + ([(tse_name, tse_meta, False)] if tse_name else [])
        with store.session(timeout=lock_timeout) as client:
            missing = [w for w in wanted if not cls._exists(client, w[0])]
        if missing and not create:
            gallery._not_indexed(missing[0][2], embedder, index_command)
        if missing:
            with store.session(write=True, timeout=lock_timeout) as client:
                for n, m, _ in missing:
                    try:
                        client.get_or_create_collection(n, embedding_function=None, metadata=m,
                                                        configuration={"hnsw": {"space": "cosine"}})
                    except Exception as e:
                        raise GalleryError(f"cannot open Chroma collection {n}: {str(e).splitlines()[0]}") from None
        if not create or gallery.count():
            check_scope(embedder, gallery.source_format(), f"gallery {image_set!r}")
        return gallery

    @staticmethod
    def _exists(client, name: str) -> bool:
        try:
            client.get_collection(name, embedding_function=None)
            return True
        except Exception:
            return False

    def _not_indexed(self, main: bool, embedder: Embedder, index_command: str, no_database: bool = False) -> None:
        busy = self.store.busy()
        if busy:
            raise GalleryError(f"gallery {self.image_set!r} is being indexed by another process ({busy}); try again "
                               f"when it has finished")
        if no_database:  # a local folder without a Chroma database: nothing to list (a session would make one)
            raise GalleryError(f"gallery {self.image_set!r} is not indexed with model {embedder.name} (no Chroma "
                               f"database in {self.store.folder}); index it with: {index_command}")
        if not main:
            raise GalleryError(f"gallery {self.image_set!r} has no TSE embeddings for model {embedder.name}; index it "
                               f"again (resumable): {index_command}")
        with self.store.session(timeout=self.lock_timeout) as client:
            others = [c.name if hasattr(c, "name") else str(c) for c in client.list_collections()]
        same_set = [o for o in others if o.startswith(_slug(self.image_set) + "--")]
        hint = (f"; it is indexed only with other models ({', '.join(same_set)})" if same_set else "")
        raise GalleryError(f"gallery {self.image_set!r} is not indexed with model {embedder.name}{hint}; "
                           f"index it with: {index_command}")

    def _both(self, client) -> tuple[Any, Any]:
        """The (main, TSE or None) collection handles of the current client."""
        if self._handles is None or self._handles[0] != self.store.generation:
            try:
                col = client.get_collection(self._name, embedding_function=None)
                tse = client.get_collection(self._tse_name, embedding_function=None) if self._tse_name else None
            except Exception as e:
                raise GalleryError(f"gallery {self.image_set!r}: collection {self._name} cannot be opened "
                                   f"({str(e).splitlines()[0]}); was it deleted?") from None
            self._handles = (self.store.generation, col, tse)
        return self._handles[1], self._handles[2]

    @property
    def collection(self):
        """The main Chroma collection (a handle of the current client)."""
        with self.store.session(timeout=self.lock_timeout) as client:
            return self._both(client)[0]

    @property
    def tse_collection(self):
        """The TSE collection, or None."""
        if not self._tse_name:
            return None
        with self.store.session(timeout=self.lock_timeout) as client:
            return self._both(client)[1]

    @property
    def client(self):
        with self.store.session(timeout=self.lock_timeout) as client:
            return client

    @property
    def name(self) -> str:
        return self._name

    @property
    def has_tse(self) -> bool:
        return self._tse_name is not None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The embeddings stored per image: ``("bge",)`` or ``("bge", "tse")``."""
        return ("bge", "tse") if self.has_tse else ("bge",)

    @property
    def scores_available(self) -> tuple[str, ...]:
        return SCORES if self.has_tse else ("bge",)

    def count(self) -> int:
        """Images with every embedding kind stored (an id reaches the main collection only after its
        TSE embedding is written, so the main collection's count)."""
        with self.store.session(timeout=self.lock_timeout) as client:
            return int(self._both(client)[0].count())

    def ids(self) -> set[str]:
        """Ids of images with every embedding kind stored (paged reads)."""
        with self.store.session(timeout=self.lock_timeout) as client:
            return set(self._list_ids(self._both(client)[0]))

    @staticmethod
    def _list_ids(col) -> list[str]:
        out: list[str] = []
        while True:
            got = col.get(include=[], limit=PAGE, offset=len(out))["ids"]
            out.extend(got)
            if len(got) < PAGE:
                return out

    def source_format(self) -> str | None:
        """The dataset layout the indexed images came from (``folder`` for a plain folder), where recorded."""
        with self.store.session(timeout=self.lock_timeout) as client:
            got = self._both(client)[0].get(limit=1, include=["metadatas"])
        metas = got.get("metadatas") or []
        return (metas[0] or {}).get("format") if metas else None

    def _present(self, col, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection holds (paged ``get(ids=...)``)."""
        out: set[str] = set()
        for s in range(0, len(ids), ID_PAGE):
            out.update(col.get(ids=list(ids[s:s + ID_PAGE]), include=[])["ids"])
        return out

    # -- the content key and the memory-mapped copy --------------------------------------

    def _key(self, client) -> dict:
        """What identifies the collection's content now: its id, row count and version tokens."""
        col, _ = self._both(client)
        fresh = client.get_collection(self._name, embedding_function=None)  # metadata as stored now
        meta = fresh.metadata or {}
        return {"collection": str(fresh.id), "name": self._name, "count": int(col.count()),
                "version": meta.get(VERSION_KEY), "epoch": meta.get(EPOCH_KEY), "kinds": list(self.kinds)}

    def content_key(self) -> dict:
        """The collection's content key now: ``collection`` (id), ``name``, ``count``, ``version``,
        ``epoch`` (the tokens writers set) and ``kinds``."""
        with self.store.session(timeout=self.lock_timeout) as client:
            return self._key(client)

    def cache_root(self, collection_id: str) -> Path:
        """Where this collection's memory-mapped copies live (see the module docstring)."""
        if self.store.local:
            return self.store.folder / "thi-index" / collection_id
        from urllib.parse import urlparse

        u = urlparse(self.store.url if "://" in self.store.url else f"http://{self.store.url}")
        return default_home() / "chroma-cache" / f"{u.hostname}-{u.port or 8000}" / collection_id

    def snapshot(self) -> Snapshot:
        """The memory-mapped copy of the collection's current content (built or brought up to date
        when needed; kept by this object until its next write).

        Raises:
            GalleryError: the two collections of a TSE gallery are out of step, or the collection
                changed throughout three attempts to copy it (a server with active writers).
        """
        if self._snapshot is not None:
            return self._snapshot
        with self.store.session(what="reading", timeout=self.lock_timeout) as client:
            key = self._key(client)
            root = self.cache_root(key["collection"])
            try:
                snap = gallery_cache.load(root / gallery_cache.key_name(key))
            except CacheError:
                snap = self._build(client, key, root)
        self._snapshot = snap
        return snap

    def _build(self, client, key: dict, root: Path) -> Snapshot:
        if self.store.local:  # the folder's lock is held: no other builder, no writer
            try:
                return self._copy(client, key, root)
            except _Changed:
                raise GalleryError(f"gallery {self.image_set!r} changed while it was read under its lock "
                                   f"(another program writing the Chroma folder?)") from None
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / "build.lock")):  # processes of this machine build it once
            for _ in range(3):
                try:
                    return gallery_cache.load(root / gallery_cache.key_name(key))
                except CacheError:
                    pass
                try:
                    snap = self._copy(client, key, root)
                    if self._key(client) == key:
                        return snap
                except _Changed:
                    pass
                key = self._key(client)  # written meanwhile: copy again
            raise GalleryError(f"gallery {self.image_set!r} kept changing while it was read; try again when its "
                               f"indexing has finished")

    def _latest(self, root: Path, key: dict) -> Snapshot | None:
        """The newest readable copy of an earlier content of the same collection and epoch."""
        if not root.is_dir():
            return None
        best = None
        for d in root.iterdir():
            if not d.name.startswith("v-"):
                continue
            try:
                snap = gallery_cache.load(d)
            except CacheError:
                continue
            k = snap.key
            if (k.get("collection"), k.get("epoch"), k.get("kinds")) == (key["collection"], key["epoch"], key["kinds"]) \
                    and k.get("count", 0) <= key["count"] and (best is None or k["count"] > best.key["count"]):
                best = snap
        return best

    def _copy(self, client, key: dict, root: Path) -> Snapshot:
        """Copy the collection into a new snapshot: the rows added since an earlier snapshot when
        its ids are all still there, else everything (paged reads).

        Raises:
            _Changed: the collection's row count is not the key's (a writer is active).
        """
        col, tse = self._both(client)
        base = self._latest(root, key)
        if base is not None:
            now = self._list_ids(col)
            have = set(base.ids)
            if have <= set(now):
                new = [i for i in now if i not in have]
                if len(base) + len(new) != key["count"]:
                    raise _Changed()
                log.info("gallery %s: adding %d new rows to its memory-mapped copy", self.image_set, len(new))
                ids, feats, metas = self._fetch(col, tse, new)
                try:
                    return gallery_cache.merge(root, base, key, ids, feats, metas)
                except CacheError as e:
                    log.info("gallery %s: rebuilding its memory-mapped copy (%s)", self.image_set, e)
        log.info("gallery %s: copying %d rows into a memory-mapped copy (once)", self.image_set, key["count"])
        return self._copy_all(col, tse, key, root)

    def _fetch(self, col, tse, ids: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray], list[dict]]:
        """Embeddings and metadata of ``ids`` (paged ``get(ids=...)``), in the order of ``ids``."""
        dims = {"bge": None, "tse": None}
        out_ids: list[str] = []
        feats: dict[str, list] = {k: [] for k in self.kinds}
        metas: list[dict] = []
        for s in range(0, len(ids), ID_PAGE):
            page = list(ids[s:s + ID_PAGE])
            got = col.get(ids=page, include=["embeddings", "metadatas"])
            pos = {i: n for n, i in enumerate(got["ids"])}
            order = [pos[i] for i in page if i in pos]
            emb = np.asarray(got["embeddings"], dtype=np.float32)
            out_ids.extend(got["ids"][n] for n in order)
            feats["bge"].append(emb[order] if len(order) else emb.reshape(0, emb.shape[-1] if emb.ndim == 2 else 0))
            metas.extend(got["metadatas"][n] or {} for n in order)
            if tse is not None:
                feats["tse"].append(self._tse_rows(tse, [got["ids"][n] for n in order]))
        out = {}
        for k, parts in feats.items():
            parts = [p for p in parts if len(p)]
            out[k] = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        del dims
        return out_ids, out, metas

    def _tse_rows(self, tse, ids: list[str]) -> np.ndarray:
        got = tse.get(ids=ids, include=["embeddings"])
        pos = {i: n for n, i in enumerate(got["ids"])}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise GalleryError(f"gallery {self.name}: BGE and TSE collections list different images (e.g. "
                               f"{missing[0]} has no TSE embedding); index it again (resumable)")
        emb = np.asarray(got["embeddings"], dtype=np.float32)
        return emb[[pos[i] for i in ids]]

    def _copy_all(self, col, tse, key: dict, root: Path) -> Snapshot:
        root.mkdir(parents=True, exist_ok=True)
        spool = root / f"spool-{uuid.uuid4().hex}"
        spool.mkdir()
        try:
            ids: list[str] = []
            metas: list[dict] = []
            files = {k: open(spool / f"{k}.f32", "wb") for k in self.kinds}
            dims: dict[str, int] = {}
            try:
                while True:
                    got = col.get(include=["embeddings", "metadatas"], limit=PAGE, offset=len(ids))
                    page = list(got["ids"])
                    if not page:
                        break
                    emb = np.asarray(got["embeddings"], dtype=np.float32)
                    dims["bge"] = emb.shape[1]
                    emb.tofile(files["bge"])
                    if tse is not None:
                        t = self._tse_rows(tse, page)
                        dims["tse"] = t.shape[1]
                        t.tofile(files["tse"])
                    ids.extend(page)
                    metas.extend(m or {} for m in got["metadatas"])
                    if len(page) < PAGE:
                        break
            finally:
                for f in files.values():
                    f.close()
            if len(set(ids)) != len(ids):
                raise _Changed()
            n = len(ids)
            feats = {k: (np.memmap(spool / f"{k}.f32", dtype=np.float32, mode="r", shape=(n, dims[k])) if n else
                         np.zeros((0, self._dim(k)), np.float32)) for k in self.kinds}
            if n != key["count"]:
                raise _Changed()
            return gallery_cache.write(root, key, ids, feats, metas)
        finally:
            import shutil

            shutil.rmtree(spool, ignore_errors=True)

    def _dim(self, kind: str) -> int:
        with self.store.session(timeout=self.lock_timeout) as client:
            col, tse = self._both(client)
            return int(((col if kind == "bge" else tse).metadata or {}).get("dim") or 1)

    # -- writing ---------------------------------------------------------------------------

    def _bump(self, client, epoch: bool = False) -> str:
        """Set a new version token in the main collection's metadata (and a new epoch when rows may
        have been replaced or removed, or none is set yet); returns the token."""
        fresh = client.get_collection(self._name, embedding_function=None)
        meta = _user_metadata(fresh.metadata)
        token = _new_token()
        meta[VERSION_KEY] = token
        if epoch or EPOCH_KEY not in meta:
            meta[EPOCH_KEY] = _new_token()
        fresh.modify(metadata=meta)
        return token

    def add(self, rows: Iterable[tuple[Sequence[str], dict[str, np.ndarray], Sequence[dict]]],
            progress: bool = False, total: int | None = None) -> int:
        """Write chunks of new rows ``(ids, {"bge": [n, D], "tse": [n, E]}, metadatas)`` (ids not in the
        gallery yet; each chunk within the client's batch size) in one write session, the way
        :meth:`index` writes them, and bring the memory-mapped copy up to date. Returns rows written."""
        with self.store.session(write=True, timeout=self.lock_timeout) as client:
            with _Writer(self, client) as writer:
                bar = tqdm(total=total, desc=f"writing {self.name}", unit="row", disable=not progress)
                for ids, feats, metas in rows:
                    writer.submit(list(ids), feats, list(metas))
                    bar.update(len(ids))
                bar.close()
            return writer.written

    def index(self, items: Sequence[GalleryItem], embedder: Embedder, chunk_size: int = 512,
              progress: bool = True, shard: tuple[int, int] | None = None, decoders: int | None = None) -> dict:
        """Add the items not yet present (only those of ``shard=(i, n)``, 0-based, when given).
        Returns counts of added, present and skipped items.

        Photos are decoded by ``decoders`` threads (default 2) ahead of the encoder, and chunks are
        written by a writer thread while the next ones are encoded.

        Raises:
            GalleryError: no items, duplicate ids, a model of the other kind (TSE or not), or
                another process writing this local folder (after ``lock_timeout``).
        """
        if not items:
            raise GalleryError("nothing to index: no images found")
        if embedder.has_tse != self.has_tse:
            raise GalleryError(f"gallery {self.name} was opened for a model {'with' if self.has_tse else 'without'} "
                               f"TSE heads; open it with this model")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise GalleryError("duplicate image ids in the items to index")
        if shard is not None:
            i, n = shard
            items = [it for it in items if shard_of(it.id, n) == i]
        formats = {it.metadata.get("format") for it in items} - {None}
        if formats:
            check_scope(embedder, sorted(formats)[0] if formats != {"synthpedes"} else "synthpedes",
                        f"gallery {self.image_set!r}")
        skipped: list[str] = []
        storable = []
        for it in items:  # Chroma stores UTF-8 only: a file name that is not (surrogate-escaped bytes) is named and left out
            if _utf8(it.id) and _utf8(str(it.path)) and all(_utf8(v) for v in it.metadata.values() if isinstance(v, str)):
                storable.append(it)
            else:
                log.warning("skipping %s: its name is not valid UTF-8 (rename the file to index it)",
                            printable_path(it.path))
                skipped.append(printable_path(it.path))
        with self.store.session(write=True, timeout=self.lock_timeout) as client:
            col, tse_col = self._both(client)
            present = self._present(col, [it.id for it in storable])
            refreshed = self._drop_changed(col, tse_col, storable, present, listed_all=shard is None)
            present -= refreshed
            todo = [it for it in storable if it.id not in present]
            limit = max(1, min(chunk_size, self.store.max_batch()))
            bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"indexing {self.name}", unit="img",
                       disable=not progress)
            with _Writer(self, client) as writer:
                pending: list[tuple[GalleryItem, np.ndarray | tuple, dict]] = []
                for batch in _decoded_batches(todo, embedder, decoders):
                    ok = []
                    for it, pixels, error, stamp in batch:
                        if error is not None:
                            log.warning("skipping unreadable image %s (%s)", printable_path(it.path), printable(error))
                            skipped.append(printable_path(it.path))
                        else:
                            ok.append((it, pixels, stamp))
                    if ok:
                        got = embedder.encode_pixels(np.stack([p for _, p, _ in ok]), with_tse=self.has_tse)
                        for n_, (it, _, stamp) in enumerate(ok):
                            pending.append((it, (got[0][n_], got[1][n_]) if self.has_tse else got[n_], stamp))
                    while len(pending) >= limit:
                        self._submit(writer, pending[:limit])
                        pending = pending[limit:]
                    bar.update(len(batch))
                if pending:
                    self._submit(writer, pending)
            bar.close()
            total = int(col.count())
        return {"added": writer.written, "present": len(storable) - len(todo), "refreshed": len(refreshed),
                "skipped": skipped, "total": total}

    def _submit(self, writer: "_Writer", rows: list) -> None:
        ids = [it.id for it, _, _ in rows]
        metas = [{**(it.metadata or {"path": str(it.path)}), **stamp} for it, _, stamp in rows]
        if self.has_tse:
            feats = {"bge": np.stack([f[0] for _, f, _ in rows]), "tse": np.stack([f[1] for _, f, _ in rows])}
        else:
            feats = {"bge": np.stack([f for _, f, _ in rows])}
        writer.submit(ids, feats, metas)

    def _drop_changed(self, col, tse_col, items: Sequence[GalleryItem], present: set[str],
                      listed_all: bool = True) -> set[str]:
        """Remove the entries of ``items`` whose file changed, emptied or vanished since it was
        indexed (its stored size and time differ; :func:`tools.photos.photo_changed`), so that they
        are embedded again (or, unreadable now, left out); with ``listed_all`` (not a shard), also
        the stored photos no longer listed and gone from the disk. Paged reads. Returns their ids."""
        if not present:
            return set()
        listed = {it.id: it for it in items}
        changed: list[str] = []
        offset = 0
        while True:
            got = col.get(include=["metadatas"], limit=PAGE, offset=offset)
            for i, m in zip(got["ids"], got["metadatas"]):
                m = m or {}
                it = listed.get(i)
                if it is not None:
                    if photo_changed(it.path, m):
                        changed.append(i)
                elif listed_all and "path" in m and photo_changed(m["path"], m) == PHOTO_GONE:
                    changed.append(i)  # a folder's deleted file
            offset += len(got["ids"])
            if len(got["ids"]) < PAGE:
                break
        if changed:
            log.warning("%d photos changed or vanished since indexing (e.g. %s); indexing them again", len(changed),
                        printable(changed[0]))
            for start in range(0, len(changed), self.store.max_batch()):
                part = changed[start:start + self.store.max_batch()]
                col.delete(ids=part)  # main first: an id in it always has its TSE embedding
                if tse_col is not None:
                    tse_col.delete(ids=part)
        return set(changed)

    def _max_batch(self) -> int:
        return self.store.max_batch()

    # -- reading ---------------------------------------------------------------------------

    def embeddings(self, kind: str = "bge") -> tuple[Sequence[str], np.ndarray, Sequence[dict]]:
        """All (ids, float32 [N, D] embeddings of ``kind`` (``bge`` or ``tse``), metadatas), sorted by
        id, from the memory-mapped copy (:meth:`snapshot`). Both kinds list the same ids in the
        same order. ``ids`` and ``metadatas`` are read-only sequences backed by the copy.

        Raises:
            GalleryError: the gallery is empty, has no ``kind`` embeddings, or its two collections
                are out of step (re-index: it is resumable).
        """
        if kind not in ("bge", "tse"):
            raise GalleryError(f"unknown embedding kind {kind!r} (bge or tse)")
        if kind == "tse" and not self.has_tse:
            raise GalleryError(f"gallery {self.name} has no TSE embeddings (its model has no TSE heads)")
        snap = self.snapshot()
        if not len(snap):
            raise GalleryError(f"gallery {self.name} is empty; index it first (python -m tools.gallery index ...)")
        return snap.ids, snap.features[kind], snap.metadata

    def features(self) -> tuple[Sequence[str], dict[str, np.ndarray], Sequence[dict]]:
        """(ids, ``{"bge": [N, D], "tse": [N, E]}`` (``tse`` where stored), metadatas), rows aligned."""
        ids, bge, metas = self.embeddings("bge")
        out = {"bge": bge}
        if self.has_tse:
            out["tse"] = self.snapshot().features["tse"]
        return ids, out, metas

    def allowed_rows(self, where: dict) -> np.ndarray:
        """Rows (int64, ascending) of the images matching a Chroma metadata filter (paged reads)."""
        with self.store.session(timeout=self.lock_timeout) as client:
            col, _ = self._both(client)
            found: list[str] = []
            while True:
                got = col.get(where=where, include=[], limit=PAGE, offset=len(found))["ids"]
                found.extend(got)
                if len(got) < PAGE:
                    break
        snap = self.snapshot()
        rows = [snap.ids.find(i) for i in found]
        return np.asarray(sorted(r for r in rows if r >= 0), dtype=np.int64)

    def search(self, text_embedding: np.ndarray, k: int = 10, where: dict | None = None,
               text_tse: np.ndarray | None = None, score: str = "bge",
               approximate: bool = False) -> list[tuple[str, float]]:
        """Nearest images: [(id, score)], best first (ties: by id), exactly.

        ``score`` (``bge``, ``tse`` or ``fused`` = ``(bge + tse) / 2``; ``text_tse`` needed for the last
        two) of every image ``where`` keeps (a Chroma metadata filter; None: every image), from the
        memory-mapped matrix. ``approximate`` is accepted for old callers and ignored (a warning):
        HNSW search was dropped because it lost neighbours on large galleries (module docstring).

        Raises:
            ValueError: ``k`` < 1.
            GalleryError: the score needs TSE embeddings the gallery or query lacks.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        if approximate:
            warn_approximate()
        snap = self.snapshot()
        if not len(snap):
            return []
        rows = self.allowed_rows(where) if where is not None else None
        sim = self.similarity(text_embedding, text_tse, rows=rows, score=score)
        n = min(k, len(sim))
        if n == 0:
            return []
        part = np.argpartition(-sim, n - 1)[:n] if n < len(sim) else np.arange(len(sim))
        local = np.asarray(rows if rows is not None else np.arange(len(sim)))
        order = part[np.lexsort((local[part], -sim[part]))]
        return [(snap.ids[int(local[i])], float(sim[i])) for i in order]

    def scores(self, text_embedding: np.ndarray, ids: Sequence[str] | None = None, kind: str = "bge") -> np.ndarray:
        """Exact cosine similarity of a text embedding of ``kind`` to ``ids`` (default: every image,
        in ``embeddings()`` order)."""
        all_ids, emb, _ = self.embeddings(kind)
        q = np.asarray(text_embedding, dtype=np.float32).reshape(-1)
        if ids is None:
            return emb @ q
        return emb[self._positions(ids)] @ q

    def similarity(self, text_bge: np.ndarray, text_tse: np.ndarray | None = None, ids: Sequence[str] | None = None,
                   score: str = "bge", rows: np.ndarray | None = None) -> np.ndarray:
        """float32 [N]: one text's ``score`` (``bge``, ``tse``, ``fused``) against ``ids`` (or ``rows``;
        default: every image, in ``embeddings()`` order); see :func:`tools.tse.similarity`."""
        all_ids, feats, _ = self.features()
        if ids is not None:
            rows = np.asarray(self._positions(ids), dtype=np.int64)
        if rows is not None:
            feats = {k: v[rows] for k, v in feats.items()}
        query = {"bge": np.asarray(text_bge, dtype=np.float32).reshape(-1),
                 "tse": None if text_tse is None else np.asarray(text_tse, dtype=np.float32).reshape(-1)}
        try:
            return similarity(query, feats, score)
        except TSEError as e:
            raise GalleryError(f"gallery {self.name}: {e}") from None

    def _positions(self, ids: Sequence[str]) -> list[int]:
        snap = self.snapshot()
        pos = [snap.ids.find(i) for i in ids]
        missing = [i for i, p in zip(ids, pos) if p < 0]
        if missing:
            raise GalleryError(f"{len(missing)} ids are not in gallery {self.name} (e.g. {missing[0]})")
        return pos

    def metadata(self, image_id: str) -> dict:
        snap = self.snapshot()
        row = snap.ids.find(image_id)
        if row < 0:
            raise GalleryError(f"{image_id!r} is not in gallery {self.name}")
        return snap.metadata[row]


class _Writer:
    """One write session's chunks: written in order by one thread (TSE collection first, then the
    main one) while the caller prepares the next; the version token is set before the first write
    and after the last; the memory-mapped copy is brought up to date at the end when it was current
    before (the rows written are spooled to disk meanwhile). After a failed write nothing more is
    written and the failure is raised to the caller."""

    def __init__(self, gallery: Gallery, client):
        self.g = gallery
        self.client = client
        self.written = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gallery-write")
        self._futures: deque[Future] = deque()
        self._failed: BaseException | None = None
        self._spool_dir: Path | None = None
        self._spool_files: dict[str, Any] = {}
        self._ids: list[str] = []
        self._metas: list[dict] = []
        self._dims: dict[str, int] = {}

    def __enter__(self) -> "_Writer":
        g = self.g
        self.col, self.tse = g._both(self.client)
        self.before = g._key(self.client)
        root = g.cache_root(self.before["collection"])
        self.root = root
        self.base: Snapshot | None = None
        try:
            self.base = gallery_cache.load(root / gallery_cache.key_name(self.before))
        except CacheError:
            if self.before["count"] == 0:
                self.base = "empty"  # type: ignore[assignment]
        if self.base is not None:
            root.mkdir(parents=True, exist_ok=True)
            self._spool_dir = root / f"spool-{uuid.uuid4().hex}"
            self._spool_dir.mkdir()
        g._snapshot = None
        g._bump(self.client)  # readers of a server see a new key as soon as anything changes
        return self

    def submit(self, ids: list[str], feats: dict[str, np.ndarray], metas: list[dict]) -> None:
        if self._failed is not None:
            raise self._failed
        while len(self._futures) >= 2:  # bound the rows in flight
            self._futures.popleft().result()
        self._futures.append(self._pool.submit(self._write, ids, feats, metas))

    def _write(self, ids: list[str], feats: dict[str, np.ndarray], metas: list[dict]) -> None:
        if self._failed is not None:
            return
        try:
            if self.tse is not None:  # TSE first: an id in the main collection always has its TSE embedding too
                self.tse.upsert(ids=ids, embeddings=feats["tse"], metadatas=metas)
            self.col.upsert(ids=ids, embeddings=feats["bge"], metadatas=metas)
        except BaseException as e:
            self._failed = e
            raise
        self.written += len(ids)
        if self._spool_dir is not None:
            # What Chroma stores, read back: its cosine index renormalises each vector (last-bit
            # differences), and the copy must equal what any reader would read.
            got = self.col.get(ids=ids, include=["embeddings", "metadatas"])
            pos = {i: n for n, i in enumerate(got["ids"])}
            order = [pos[i] for i in ids]
            feats = {"bge": np.asarray(got["embeddings"], dtype=np.float32)[order]}
            metas = [got["metadatas"][n] or {} for n in order]
            if self.tse is not None:
                feats["tse"] = self.g._tse_rows(self.tse, ids)
            for k, v in feats.items():
                if k not in self._spool_files:
                    self._spool_files[k] = open(self._spool_dir / f"{k}.f32", "wb")
                    self._dims[k] = int(v.shape[1])
                np.ascontiguousarray(v, dtype=np.float32).tofile(self._spool_files[k])
            self._ids.extend(ids)
            self._metas.extend(metas)

    def __exit__(self, exc_type, exc, tb) -> None:
        error: BaseException | None = None
        try:
            while self._futures:
                try:
                    self._futures.popleft().result()
                except BaseException as e:  # noqa: BLE001 - raised below (or the caller's is)
                    error = error or e
        finally:
            self._pool.shutdown(wait=True)
            for f in self._spool_files.values():
                f.close()
        try:
            if exc_type is None and error is None and self._failed is None:
                self._finish()
            elif self.written:  # a partial write changed the content too
                try:
                    self.g._bump(self.client)
                except Exception:  # the failure being raised matters more
                    pass
        finally:
            if self._spool_dir is not None:
                import shutil

                shutil.rmtree(self._spool_dir, ignore_errors=True)
        if exc_type is None and error is not None:
            raise error

    def _finish(self) -> None:
        g = self.g
        g._bump(self.client)
        after = g._key(self.client)
        if self.base is None or after["count"] != self.before["count"] + self.written:
            return  # not current before, or another writer added rows meanwhile: readers rebuild it
        n = len(self._ids)
        feats = {k: (np.memmap(self._spool_dir / f"{k}.f32", dtype=np.float32, mode="r", shape=(n, d)) if n else
                     np.zeros((0, d), np.float32)) for k, d in self._dims.items()}
        try:
            if self.base == "empty":
                if n:
                    g._snapshot = gallery_cache.write(self.root, after, self._ids, feats, self._metas)
            else:
                g._snapshot = gallery_cache.merge(self.root, self.base, after, self._ids, feats, self._metas) if n \
                    else None
        except (CacheError, OSError) as e:  # readers rebuild it
            log.info("gallery %s: memory-mapped copy not updated (%s)", g.image_set, e)


def _decoded_batches(items: Sequence[GalleryItem], embedder: Embedder, decoders: int | None = None,
                     lookahead: int = 3) -> Iterator[list[tuple[GalleryItem, np.ndarray | None, str | None]]]:
    """Batches of (item, uint8 [H, W, 3] or None, error or None, file stamp), decoded and resized by
    a thread pool up to ``lookahead`` batches ahead of the caller (PIL releases the GIL while it
    decodes). The stamp (:func:`tools.photos.file_stamp`, {} when unknown) is taken before reading:
    a file changed meanwhile shows as changed later."""
    bs = embedder.batch_size

    def load(batch: Sequence[GalleryItem]):
        out = []
        for it in batch:
            stamp = file_stamp(it.path) or {}
            try:
                out.append((it, embedder.load_pixels(it.path), None, stamp))
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                out.append((it, None, str(e).splitlines()[0] if str(e) else type(e).__name__, stamp))
        return out

    starts = range(0, len(items), bs)
    with ThreadPoolExecutor(max(1, decoders or 2), thread_name_prefix="photo-decode") as pool:
        queue: deque[Future] = deque()
        it = iter(starts)
        for s in it:
            queue.append(pool.submit(load, items[s:s + bs]))
            if len(queue) >= lookahead:
                break
        while queue:
            done = queue.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                queue.append(pool.submit(load, items[nxt:nxt + bs]))
            yield done


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
    import shlex
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
    pi.add_argument("--shard", metavar="I/N",
                    help="index only the I-th of N disjoint parts of the images (by a hash of the image id), so N "
                         "processes or machines can index one folder into one Chroma server (--url) together")
    pi.add_argument("--decoders", type=int, default=2, help="threads decoding photos ahead of the encoder "
                                                             "(default %(default)s)")
    pq = sub.add_parser("query", help="rank an indexed gallery by a description")
    pq.add_argument("text", help="the description")
    pq.add_argument("--gallery", required=True, help="the dataset folder or image folder that was indexed")
    pq.add_argument("--split", default="test")
    pq.add_argument("--format", default="auto")
    pq.add_argument("--skip-missing", action="store_true", help="as given when indexing")
    pq.add_argument("-k", type=positive_int, default=10, help="results (default %(default)s)")
    pq.add_argument("--score", choices=SCORES,
                    help="bge, tse or fused ((bge + tse) / 2); default fused where the model has TSE heads, else bge")
    pq.add_argument("--approximate", action="store_true",
                    help="no longer used: search is always exact (accepted so that older commands still run)")
    p.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                   help="local folder: give up after this long when another process is writing it (default: wait)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    from .threads import apply_thread_policy

    apply_thread_policy("index" if args.command == "index" else "query")
    try:
        shard = parse_shard(args.shard) if args.command == "index" and args.shard else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "query" and not args.text.strip():
            raise GalleryError("the query is empty")
        # the images first: a bad folder is reported before a model is loaded
        source = args.source if args.command == "index" else args.gallery
        name, items = items_for(source, args.split, args.format, args.skip_missing)
        embedder = embedder_from_args(args)
        print(embedder.describe(), file=sys.stderr)
        if args.command == "index":
            gallery = Gallery.open(name, embedder, args.data_dir, args.url, lock_timeout=args.lock_timeout)
            t0 = time.perf_counter()
            result = gallery.index(items, embedder, shard=shard, decoders=args.decoders)
            result["skipped_count"] = len(result["skipped"])
            if shard is not None:
                result["shard"] = f"{shard[0] + 1}/{shard[1]}"
            result.update(collection=gallery.name, embeddings=list(gallery.kinds),
                          seconds=round(time.perf_counter() - t0, 2), model=embedder.info)
            print(json.dumps(result))
        else:
            score = embedder.resolve_score(args.score)
            where = (f" --data-dir {shlex.quote(str(args.data_dir))}" if args.data_dir else "") + \
                (f" --url {shlex.quote(args.url)}" if args.url else "")
            gallery = Gallery.open(name, embedder, args.data_dir, args.url, create=False, lock_timeout=args.lock_timeout,
                                   index_command=f"python -m tools.gallery [model flags]{where} index "
                                                 f"{shlex.quote(str(args.gallery))} --split {shlex.quote(args.split)}")
            q = embedder.text_features([args.text])
            if args.approximate:
                warn_approximate()
            print(f"score: {score}, search: exact", file=sys.stderr)
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
