"""The memory-mapped copy of a gallery: embeddings, ids and metadata as arrays on disk.

Reading every embedding of a Chroma collection is slow (paged ``get``: about 87 s for a million
photos) and holds them as Python objects. A gallery's :class:`Snapshot` keeps the same content as
flat files that the operating system maps into memory on open (milliseconds) and pages in as they
are used:

==================  ======================================================================
``header.json``     format, row count, the embedding kinds and their widths, the metadata
                    columns, and the *key* of the collection content it holds
``<kind>.f32``      float32 [N, D] row-major embeddings (``bge``; ``tse`` for RDE/ICL)
``ids.blob/.off``   the N ids, UTF-8, sorted (code-point order, as Python sorts str)
``m-<key>.*``       one metadata column: int64 / float64 / uint8 values, int32 codes into a
                    vocabulary kept in the header, or strings (blob + offsets); a uint8
                    ``.has`` file where some rows lack the key
==================  ======================================================================

Rows are sorted by id, so an id's row is found by bisection (no dict of a million strings) and
rankings break ties the same way at every size.

A snapshot belongs to one collection content: its key (the collection's row count and the
version tokens its writers set, see ``tools.gallery``) is in ``header.json`` and in its folder
name. A new content gets a new folder, written under a temporary name and renamed into place
(atomic), so a process reading an older snapshot keeps reading it undisturbed (POSIX keeps an
unlinked file's pages for whoever maps it).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
_MAX_VOCAB = 4096  # a string column with more distinct values is stored as strings
_INT_MISSING = np.iinfo(np.int64).min


class CacheError(RuntimeError):
    """A snapshot is missing, of another format, or damaged (the caller rebuilds it)."""


# -- columns ----------------------------------------------------------------------------------


def _map(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only memory map (an empty array for zero rows: mmap cannot map 0 bytes)."""
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


class StringColumn(Sequence[str]):
    """N strings stored as one UTF-8 blob and N + 1 int64 offsets (both memory-mapped)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob = blob
        self.offsets = offsets
        # plain ndarray views of the same memory: np.memmap's per-item __getitem__ costs more than
        # the read itself, and a lookup (bisection) reads ~2 log2(N) of them
        self._blob = blob.view(np.ndarray)
        self._off = offsets.view(np.ndarray)

    @classmethod
    def load(cls, prefix: Path, n: int) -> "StringColumn":
        off = _map(prefix.with_suffix(".off"), np.int64, (n + 1,))
        size = int(off[-1]) if n else 0
        return cls(_map(prefix.with_suffix(".blob"), np.uint8, (size,)), off)

    @staticmethod
    def write(prefix: Path, strings: Iterable[str]) -> int:
        """Write the strings; returns how many."""
        offsets = [0]
        with open(prefix.with_suffix(".blob"), "wb") as f:
            pos = 0
            for s in strings:
                b = s.encode("utf-8", "surrogatepass")
                f.write(b)
                pos += len(b)
                offsets.append(pos)
        np.asarray(offsets, dtype=np.int64).tofile(prefix.with_suffix(".off"))
        return len(offsets) - 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _one(self, i: int) -> str:
        a, b = int(self._off[i]), int(self._off[i + 1])
        return self._blob[a:b].tobytes().decode("utf-8", "surrogatepass")

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} out of range ({n} rows)")
        return self._one(i)

    def __iter__(self) -> Iterator[str]:
        blob = self.blob.tobytes() if len(self.blob) < (1 << 26) else None  # small: one copy, fast slicing
        off = self.offsets.tolist() if blob is not None else None
        if blob is not None:
            for a, b in zip(off[:-1], off[1:]):
                yield blob[a:b].decode("utf-8", "surrogatepass")
        else:
            for i in range(len(self)):
                yield self._one(i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        return f"StringColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    def find(self, s: str) -> int:
        """The row of ``s`` in a *sorted* column, or -1 (bisection: O(log N))."""
        i = bisect.bisect_left(self, s)
        return i if i < len(self) and self[i] == s else -1

    def __contains__(self, s: object) -> bool:  # valid for sorted columns (ids)
        return isinstance(s, str) and self.find(s) >= 0


@dataclass
class Column:
    """One metadata key over N rows: ``kind`` int, float, bool, code (int32 into ``vocab``),
    str or json; ``has`` marks the rows holding the key (None: all do)."""

    kind: str
    values: Any  # np.ndarray or StringColumn
    has: np.ndarray | None = None
    vocab: list | None = None

    def value(self, i: int) -> Any:
        if self.has is not None and not self.has[i]:
            return None
        v = self.values[i]
        if self.kind == "int":
            return int(v)
        if self.kind == "float":
            return float(v)
        if self.kind == "bool":
            return bool(v)
        if self.kind == "code":
            return self.vocab[int(v)] if v >= 0 else None
        if self.kind == "json":
            return json.loads(v)
        return v


def _column_kind(values: list) -> str:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return "int"
    if kinds == {bool}:
        return "bool"
    if kinds <= {int}:
        return "int"
    if kinds <= {int, float}:
        return "float"
    if kinds == {str}:
        return "code" if len(set(values) - {None}) <= _MAX_VOCAB else "str"
    return "json"


def _write_column(folder: Path, name: str, key: str, values: list) -> dict:
    """Write one metadata column; returns its header entry."""
    prefix = folder / f"m-{name}"
    kind = _column_kind(values)
    has = np.fromiter((v is not None for v in values), dtype=np.uint8, count=len(values))
    entry: dict[str, Any] = {"key": key, "file": prefix.name, "kind": kind, "has": not bool(has.all())}
    if entry["has"]:
        has.tofile(prefix.with_suffix(".has"))
    if kind == "int":
        np.fromiter((_INT_MISSING if v is None else v for v in values), np.int64, len(values)).tofile(
            prefix.with_suffix(".i64"))
    elif kind == "float":
        np.fromiter((np.nan if v is None else v for v in values), np.float64, len(values)).tofile(
            prefix.with_suffix(".f64"))
    elif kind == "bool":
        np.fromiter((0 if v is None else v for v in values), np.uint8, len(values)).tofile(prefix.with_suffix(".u8"))
    elif kind == "code":
        vocab = sorted(set(values) - {None})
        code = {v: n for n, v in enumerate(vocab)}
        np.fromiter((-1 if v is None else code[v] for v in values), np.int32, len(values)).tofile(
            prefix.with_suffix(".i32"))
        entry["vocab"] = vocab
    elif kind == "str":
        StringColumn.write(prefix, ("" if v is None else v for v in values))
    else:
        StringColumn.write(prefix, ("null" if v is None else json.dumps(v) for v in values))
    return entry


def _load_column(folder: Path, entry: dict, n: int) -> Column:
    prefix = folder / entry["file"]
    has = _map(prefix.with_suffix(".has"), np.uint8, (n,)) if entry["has"] else None
    kind = entry["kind"]
    if kind == "int":
        values = _map(prefix.with_suffix(".i64"), np.int64, (n,))
    elif kind == "float":
        values = _map(prefix.with_suffix(".f64"), np.float64, (n,))
    elif kind == "bool":
        values = _map(prefix.with_suffix(".u8"), np.uint8, (n,))
    elif kind == "code":
        values = _map(prefix.with_suffix(".i32"), np.int32, (n,))
    else:
        values = StringColumn.load(prefix, n)
    return Column(kind, values, has, entry.get("vocab"))


class Metadata(Sequence[dict]):
    """The N metadata dicts, column by column; ``meta[i]`` rebuilds row i's dict."""

    def __init__(self, columns: dict[str, Column], n: int):
        self.columns = columns
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} out of range ({self.n} rows)")
        out = {}
        for key, col in self.columns.items():
            v = col.value(i)
            if v is not None:
                out[key] = v
        return out

    def ints(self, key: str, missing: int = -1) -> np.ndarray:
        """int64 [N]: an integer column, ``missing`` where a row lacks it (or it is not integer)."""
        col = self.columns.get(key)
        if col is None or col.kind != "int":
            return np.full(self.n, missing, dtype=np.int64)
        values = np.asarray(col.values)
        if col.has is None and not (values == _INT_MISSING).any():
            return values
        return np.where(values == _INT_MISSING, missing, values)

    def codes(self, key: str) -> tuple[np.ndarray, list]:
        """(int32 [N] codes, vocabulary) of a string column with few distinct values (-1: none)."""
        col = self.columns.get(key)
        if col is None:
            return np.full(self.n, -1, dtype=np.int32), []
        if col.kind != "code":
            raise CacheError(f"metadata {key!r} is not a column of few distinct strings")
        return np.asarray(col.values), list(col.vocab or [])


# -- snapshots --------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One collection content as arrays: ``ids`` (sorted), ``features`` ({kind: float32 [N, D]}),
    ``metadata`` (N dicts, column by column), ``key`` (the content it holds)."""

    folder: Path
    key: dict
    ids: StringColumn
    features: dict[str, np.ndarray]
    metadata: Metadata

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def key_name(key: Mapping[str, Any]) -> str:
    """The folder name of a content key."""
    return "v-" + hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load(folder: Path) -> Snapshot:
    """Open a snapshot folder (memory maps only).

    Raises:
        CacheError: missing, another format, or a file of the wrong size.
    """
    try:
        header = json.loads((folder / "header.json").read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{folder}: no readable header ({e})") from None
    if header.get("format") != FORMAT:
        raise CacheError(f"{folder}: format {header.get('format')} (this code reads {FORMAT})")
    n = int(header["rows"])
    try:
        ids = StringColumn.load(folder / "ids", n)
        feats = {}
        for kind, dim in header["kinds"].items():
            path = folder / f"{kind}.f32"
            if path.stat().st_size != n * int(dim) * 4:
                raise CacheError(f"{path}: {path.stat().st_size} bytes, expected {n * int(dim) * 4}")
            feats[kind] = _map(path, np.float32, (n, int(dim)))
        columns = {e["key"]: _load_column(folder, e, n) for e in header["columns"]}
    except (OSError, ValueError, KeyError) as e:
        raise CacheError(f"{folder}: damaged ({e})") from None
    return Snapshot(folder, header["key"], ids, feats, Metadata(columns, n))


def _new_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    return tmp


def _publish(root: Path, tmp: Path, key: Mapping[str, Any]) -> Snapshot:
    """Move a finished temporary folder into place under its key's name (atomic); when another
    process got there first, keep theirs. Older snapshots are removed."""
    final = root / key_name(key)
    try:
        os.rename(tmp, final)
    except OSError:  # published meanwhile by another process (same content)
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():
        if old.name != final.name and old.name.startswith("v-"):
            shutil.rmtree(old, ignore_errors=True)  # mapped files stay readable for their readers
    return load(final)


def write(root: Path, key: Mapping[str, Any], ids: Sequence[str], features: Mapping[str, np.ndarray],
          metadatas: Sequence[Mapping[str, Any]]) -> Snapshot:
    """A new snapshot of rows in any order (sorted by id here). ``features``: {kind: [N, D]}
    row-aligned with ``ids`` (arrays or memory maps; gathered in chunks)."""
    n = len(ids)
    order = sorted(range(n), key=ids.__getitem__)
    return _write_ordered(root, key, [ids[i] for i in order], features, metadatas, np.asarray(order, dtype=np.int64))


def _write_ordered(root: Path, key: Mapping[str, Any], sorted_ids: list[str], features: Mapping[str, Any],
                   metadatas: Sequence[Mapping[str, Any]] | None, order: np.ndarray,
                   columns: dict[str, list] | None = None) -> Snapshot:
    if len(set(sorted_ids)) != len(sorted_ids):
        raise CacheError("duplicate ids")
    tmp = _new_folder(root)
    try:
        n = len(sorted_ids)
        StringColumn.write(tmp / "ids", sorted_ids)
        kinds = {}
        for kind, src in features.items():
            dim = int(src.shape[1])
            kinds[kind] = dim
            with open(tmp / f"{kind}.f32", "wb") as f:
                for s in range(0, n, 65536):
                    np.ascontiguousarray(np.asarray(src[order[s:s + 65536]], dtype=np.float32)).tofile(f)
        if columns is None:
            keys: list[str] = []
            for m in metadatas or ():
                for k in m:
                    if k not in keys:
                        keys.append(k)
            columns = {k: [(metadatas[int(i)] or {}).get(k) for i in order] for k in keys}
        entries = [_write_column(tmp, f"{n_}", k, vals) for n_, (k, vals) in enumerate(columns.items())]
        header = {"format": FORMAT, "rows": n, "kinds": kinds, "columns": entries, "key": dict(key)}
        (tmp / "header.json").write_text(json.dumps(header))
        for p in tmp.iterdir():  # the content reaches the disk before it is published
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(root, tmp, key)


def merge(root: Path, base: Snapshot, key: Mapping[str, Any], ids: Sequence[str], features: Mapping[str, np.ndarray],
          metadatas: Sequence[Mapping[str, Any]]) -> Snapshot:
    """A new snapshot: ``base`` plus new rows (ids not in ``base``; any order).

    Raises:
        CacheError: a new id is already in ``base``, or the embedding kinds differ.
    """
    if set(features) != set(base.features):
        raise CacheError(f"embedding kinds differ: {sorted(features)} vs {sorted(base.features)}")
    nb = len(base)
    old_ids = list(base.ids)
    all_ids = old_ids + list(ids)
    order = np.asarray(sorted(range(len(all_ids)), key=all_ids.__getitem__), dtype=np.int64)

    class _Both:  # rows < nb from the base, the rest from the new arrays
        def __init__(self, a, b):
            self.a, self.b, self.shape = a, np.asarray(b, dtype=np.float32), (nb + len(b), a.shape[1])

        def __getitem__(self, idx):
            idx = np.asarray(idx)
            out = np.empty((len(idx), self.shape[1]), dtype=np.float32)
            old = idx < nb
            out[old] = self.a[idx[old]]
            out[~old] = self.b[idx[~old] - nb]
            return out

    both = {k: _Both(base.features[k], features[k]) for k in base.features}
    keys = list(base.metadata.columns)
    for m in metadatas:
        for k in m or {}:
            if k not in keys:
                keys.append(k)
    columns = {}
    for k in keys:
        col = base.metadata.columns.get(k)
        old_vals = [col.value(i) for i in range(nb)] if col is not None else [None] * nb
        vals = old_vals + [(m or {}).get(k) for m in metadatas]
        columns[k] = [vals[i] for i in order]
    return _write_ordered(root, key, [all_ids[i] for i in order], both, None, order, columns)
