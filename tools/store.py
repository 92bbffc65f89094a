"""Chroma clients, one writer per local folder, and fresh reads after another process wrote.

A persistent Chroma folder is safe for one process at a time only (Chroma's guidance: a server for
several). Its Rust core keeps each collection's HNSW index in memory; a process whose copy was
loaded before another process wrote reads "Error finding id", and its next write overwrites the
other's files, losing their vectors for good (seen with chromadb 1.5.9, even when the two writes
never overlap in time). So, for a local folder:

* every Chroma call runs inside a :meth:`Store.session`, under an inter-process lock
  (``filelock``; the file ``thi.lock`` in the folder) and an in-process re-entrant lock. The holder
  (pid, host, command, since) is written to ``thi-lock.json`` for whoever waits; a waiting process
  logs one line naming the holder, or with a timeout fails with :class:`GalleryBusy` naming it.
* a write session bumps a counter (``thi-writes``); a session that finds the counter moved since
  this process's client was opened closes the client and opens a fresh one first, so its HNSW
  state is read again from disk.

A Chroma server (``--url``) orders concurrent writers itself: no lock, one HTTP client.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

log = logging.getLogger(__name__)

LOCK_FILE = "thi.lock"
HOLDER_FILE = "thi-lock.json"
WRITES_FILE = "thi-writes"


class GalleryError(RuntimeError):
    """The gallery cannot be opened, indexed or searched; the message says how to fix it."""


class GalleryBusy(GalleryError):
    """Another process holds the folder's lock (the message names it)."""


def _holder_line(folder: Path) -> str:
    try:
        h = json.loads((folder / HOLDER_FILE).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(h.get("since", 0)))
        return (f"pid {h.get('pid')} on {h.get('host')} ({h.get('what', 'writing')}, since {since}; "
                f"command: {h.get('command', '?')})")
    except (OSError, ValueError):
        return "another process"


class FolderLock:
    """The inter-process lock of one Chroma folder, re-entrant within a process (threads of one
    process take turns)."""

    def __init__(self, folder: Path):
        from filelock import FileLock

        self.folder = folder
        self._file = FileLock(str(folder / LOCK_FILE), thread_local=False)
        self._local = threading.RLock()
        self._depth = 0

    @contextmanager
    def hold(self, what: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock. ``timeout``: None waits as long as it takes (logging who holds it),
        else seconds before :class:`GalleryBusy`."""
        from filelock import Timeout

        if not self._local.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise GalleryBusy(f"Chroma folder {self.folder} is busy in this process ({what})")
        try:
            if self._depth == 0:
                try:
                    self._file.acquire(timeout=0)
                except Timeout:
                    holder = _holder_line(self.folder)
                    if timeout is not None and timeout <= 0:
                        raise GalleryBusy(f"Chroma folder {self.folder} is being written by {holder}; one process "
                                          f"writes a local gallery at a time (run a Chroma server and pass --url for "
                                          f"several)") from None
                    log.warning("waiting for Chroma folder %s: it is being written by %s", self.folder, holder)
                    try:
                        self._file.acquire(timeout=-1 if timeout is None else timeout)
                    except Timeout:
                        raise GalleryBusy(f"Chroma folder {self.folder} is still being written by "
                                          f"{_holder_line(self.folder)} after {timeout:g} s") from None
                self._write_holder(what)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    try:
                        (self.folder / HOLDER_FILE).unlink()
                    except OSError:
                        pass
                    self._file.release()
        finally:
            self._local.release()

    def _write_holder(self, what: str) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time(),
                "command": " ".join(os.path.basename(a) if n == 0 else a for n, a in enumerate(sys.argv))[:300]}
        tmp = self.folder / f"{HOLDER_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.folder / HOLDER_FILE)

    def holder(self) -> str | None:
        """Who holds the lock now (None when nobody does, as far as a non-blocking try tells)."""
        from filelock import Timeout

        if self._depth:
            return f"this process (pid {os.getpid()})"
        try:
            self._file.acquire(timeout=0)
        except Timeout:
            return _holder_line(self.folder)
        self._file.release()
        return None


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


class Store:
    """Where a gallery's collections live: a local Chroma folder or a Chroma server. One per
    folder (or URL) per process (:func:`store_for`); galleries get their collections through it."""

    def __init__(self, folder: Path | None = None, url: str | None = None):
        self.folder = folder
        self.url = url
        self.lock = FolderLock(folder) if folder is not None else None
        self._client = None
        self._serial: int | None = None  # the write counter when the client was opened
        self.generation = 0  # bumped whenever the client is replaced: collection handles are re-fetched

    @property
    def local(self) -> bool:
        return self.folder is not None

    def describe(self) -> str:
        return str(self.folder) if self.local else str(self.url)

    # -- clients ---------------------------------------------------------------------------

    def _open(self):
        import chromadb

        if self.url:
            parsed = urlparse(self.url if "://" in self.url else f"http://{self.url}")
            try:
                return chromadb.HttpClient(host=parsed.hostname, port=parsed.port or 8000,
                                           ssl=parsed.scheme == "https", settings=_settings())
            except Exception as e:  # the client connects on construction
                raise GalleryError(f"cannot reach the Chroma server at {self.url}: {str(e).splitlines()[0]}") from None
        return chromadb.PersistentClient(path=str(self.folder), settings=_settings())

    def _reopen(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # a client that failed half-way: nothing to release
                pass
        self._client = None
        self._client = self._open()
        self.generation += 1

    def _writes(self) -> int:
        try:
            return int((self.folder / WRITES_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    @contextmanager
    def session(self, write: bool = False, what: str = "reading", timeout: float | None = None):
        """The Chroma client for the duration of one read or write (see the module docstring).
        Yields the client; raises :class:`GalleryBusy` after ``timeout`` seconds of waiting."""
        if not self.local:
            if self._client is None:
                self._client = self._open()
                self.generation += 1
            yield self._client
            return
        with self.lock.hold("writing" if write else what, timeout):
            serial = self._writes()
            if self._client is None or self._serial != serial:
                self._reopen()
            if write:
                serial += 1
                tmp = self.folder / f"{WRITES_FILE}.{os.getpid()}"
                tmp.write_text(str(serial))
                os.replace(tmp, self.folder / WRITES_FILE)
            self._serial = serial
            yield self._client

    def max_batch(self) -> int:
        """Records per Chroma call (the client's limit; 1000 when a server does not say)."""
        with self.session() as client:
            try:
                return int(client.get_max_batch_size())
            except Exception:
                return 1000

    def busy(self) -> str | None:
        """Who writes this local folder now, or None."""
        return self.lock.holder() if self.local else None


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def store_for(data_dir: str | Path | None = None, url: str | None = None, default_dir: Path | None = None) -> Store:
    """The process's store of a local folder (``data_dir``, else ``default_dir``) or of a server
    URL. The folder is created (under its lock: several processes may create it at once)."""
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise GalleryError(f"not a Chroma server URL: {url!r} (expected http://HOST:PORT)")
        key = f"url:{parsed.scheme or 'http'}://{parsed.hostname}:{parsed.port or 8000}"
        with _stores_lock:
            if key not in _stores:
                _stores[key] = Store(url=url)
            return _stores[key]
    folder = Path(data_dir) if data_dir else default_dir
    if folder is None:
        raise GalleryError("no Chroma folder given")
    folder.mkdir(parents=True, exist_ok=True)
    key = f"dir:{folder.resolve()}"
    with _stores_lock:
        if key not in _stores:
            _stores[key] = Store(folder=folder.resolve())
        return _stores[key]


def forget_stores() -> None:
    """Close every client this process opened (tests; a later call opens fresh ones)."""
    with _stores_lock:
        for s in _stores.values():
            if s._client is not None:
                try:
                    s._client.close()
                except Exception:
                    pass
        _stores.clear()
