"""The embedded default gallery: SynthPedes' default test people, generated and indexed once.

On first use it writes ``$THI_HOME/synthpedes-demo`` (the default world's test split: 1,000
people, about 3,200 photos; ``THI_HOME`` defaults to ``~/.cache/thi-reid``) and indexes it into the
Chroma folder ``$THI_HOME/chroma``, both with progress bars; later runs reuse them.

Two first runs at once are safe: generation holds an inter-process lock
(``$THI_HOME/synthpedes-demo.lock``, ``filelock``), so the second waits for the first and then
finds the world complete; indexing holds the Chroma folder's lock (``tools.store``) and skips what
the first indexed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data.synthpedes import WorldConfig, generate
from tools.embedder import Embedder, default_home
from tools.gallery import Gallery, GalleryError, items_for

log = logging.getLogger(__name__)

#: The demo world: the default world's test identities only (identical people, faster to make).
DEMO_WORLD = WorldConfig(seed=0, train_ids=0, val_ids=0, test_ids=1000)


def demo_dir(home: Path | None = None) -> Path:
    return (home or default_home()) / "synthpedes-demo"


def ensure_demo_world(home: Path | None = None, progress: bool = True, world: WorldConfig = DEMO_WORLD) -> Path:
    """Generate the demo world (``world``: tests make a smaller one) if it is not there (resumes a
    half-written one; one process at a time, the others wait)."""
    from filelock import FileLock, Timeout

    folder = demo_dir(home)
    if (folder / "attributes.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f"{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting: another process is generating the demo gallery in %s", folder)
        lock.acquire()
    try:
        if not (folder / "attributes.json").is_file():  # the other process may have finished it
            log.info("generating the SynthPedes demo gallery in %s (once)", folder)
            generate(folder, world, progress=progress)
    finally:
        lock.release()
    return folder


def open_gallery(source: str | Path | None, embedder: Embedder, split: str = "test", url: str | None = None,
                 data_dir: str | Path | None = None, index_if_missing: bool = True, progress: bool = True,
                 skip_missing: bool = False) -> tuple[Gallery, Path]:
    """The gallery for ``source`` (a dataset folder or image folder; default: the demo world),
    indexed with ``embedder``'s model. A missing index is built when ``index_if_missing``;
    ``skip_missing`` leaves out dataset records whose image file is missing (warns)."""
    folder = Path(source) if source else ensure_demo_world(progress=progress)
    name, items = items_for(folder, split, skip_missing=skip_missing)
    if not index_if_missing:
        return Gallery.open(name, embedder, data_dir, url, create=False), folder
    gallery = Gallery.open(name, embedder, data_dir, url)
    present = gallery.count()
    if present < len(items):
        log.info("indexing %d images of %s with %s", len(items) - present, folder, embedder.name)
        gallery.index(items, embedder, progress=progress)
    if gallery.count() == 0:
        raise GalleryError(f"{folder}: nothing could be indexed")
    return gallery, folder
