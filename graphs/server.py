"""Live resources of THI runs: one process-wide, thread-safe cache keyed by the run context's values.

A run is described by a :class:`graphs.config.THIContext` (plain JSON values); :func:`resolve`
turns it into the live objects the graph's nodes use (:class:`Live`: gallery index, MLLM, user,
settings). The embedder, the gallery index, the MLLM backends and a filter's allowed ids are built
once per process and per distinct values (model, gallery, backend...), so the CLI, the service, the
LangChain tool, a LangGraph server and an MCP server share them and build them the same way.

Callers that bring their own objects (tests with fake MLLMs, a benchmark's noisy verifier, an
index built elsewhere) :func:`register` them under a name and pass that name as the context's
``resources``; :func:`live_context` does both in one line:

>>> ctx = live_context(index, mllm, THIConfig(policy="paper"))      # doctest: +SKIP
>>> graphs.thi.run("a woman in a red coat", ctx)                     # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable

from agents.users import HumanUser, SimulatedUser
from tools.embedder import Embedder, default_home
from tools.index import GalleryIndex
from tools.mllm import MLLM, make_mllm

from .config import THIConfig, THIContext
from .demo import demo_dir, open_gallery

@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one per resolved context
class Live:
    """The live objects of one run context (what the THI graph's nodes use)."""

    index: GalleryIndex
    mllm: MLLM
    config: THIConfig
    user: Any  # None, agents.users.HumanUser or agents.users.SimulatedUser (or any object with .answer(slots))
    target_pid: int | None  # when known: traced as the target's rank
    allowed: frozenset[str] | None  # a metadata filter's matches: only these images are ranked


class _Cache:
    """Values built once per key; concurrent callers of one key wait for one build (a failed build
    is not kept). ``maxsize`` bounds it (least recently used first out); None keeps everything."""

    def __init__(self, maxsize: int | None = None):
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self.maxsize = maxsize

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = build()
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                if self.maxsize is not None and len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_embedders = _Cache()
_indexes = _Cache()
_backends = _Cache()
_allowed = _Cache(maxsize=64)
_live = _Cache(maxsize=256)
_registry: dict[str, dict[str, Any]] = {}
_registry_lock = threading.Lock()
_names = itertools.count(1)

#: What :func:`register` accepts.
RESOURCE_KINDS = ("index", "mllm", "user", "user_mllm", "allowed")


def register(name: str | None = None, **objects: Any) -> str:
    """Keep live objects under ``name`` (default: a new unique name) for contexts whose
    ``resources`` names it; returns the name. ``objects``: ``index`` (GalleryIndex), ``mllm``,
    ``user`` (an answering object; it replaces the context's ``user``), ``user_mllm`` (the
    simulated user's backend), ``allowed`` (a set of image ids: only these are ranked). They stay
    until :func:`unregister`."""
    unknown = sorted(set(objects) - set(RESOURCE_KINDS))
    if unknown:
        raise ValueError(f"unknown resource kind(s): {', '.join(unknown)} (known: {', '.join(RESOURCE_KINDS)})")
    name = name or f"live-{next(_names)}"
    with _registry_lock:
        _registry[name] = {k: v for k, v in objects.items() if v is not None}
    _live.clear()  # a context naming it must see the new objects
    return name


def unregister(name: str) -> None:
    """Drop the objects registered under ``name`` (nothing happens for an unknown name)."""
    with _registry_lock:
        _registry.pop(name, None)
    _live.clear()


def live_context(index: GalleryIndex, mllm: MLLM, config: THIConfig = THIConfig(), user: Any = None,
                 target_pid: int | None = None, allowed: set[str] | None = None, **fields: Any) -> THIContext:
    """A run context for objects built by the caller: registers them and names them in the
    context. ``user``: None, or an object answering the questions (``agents.users``); the other
    context fields can be given by name (e.g. ``target``, ``filter``)."""
    key = register(index=index, mllm=mllm, user=user, allowed=allowed)
    kind = "none" if user is None else getattr(user, "kind", "simulated")
    return THIContext.from_config(config, resources=key, user=kind, target_pid=target_pid, **fields)


# -------------------------------------------------------------------------------------------
# building


def oracle_annotations(folder: str | Path) -> dict[str, dict]:
    """The annotation of every photo of a SynthPedes folder, by image id, as the oracle backend
    reads them (``{"attributes": ..., "visible": ...}``). Raises
    ``data.synthpedes.ceiling.AnnotationError`` (a ValueError) when attributes.json is missing or
    malformed."""
    from data.synthpedes.ceiling import load_annotations

    return {im["file_path"]: im for im in load_annotations(folder)["images"]}


def make_backend(kind: str, folder: str | Path | None = None, **options: Any) -> MLLM:
    """A new MLLM backend (uncached): ``tools.mllm.make_mllm`` with the oracle's annotations read
    from the SynthPedes ``folder``."""
    if kind == "oracle":
        if folder is None:
            raise ValueError("the oracle backend needs a SynthPedes folder to read its annotations from")
        options["annotations"] = oracle_annotations(folder)
    return make_mllm(kind, **options)


def _home_key() -> str:
    return str(default_home())


def embedder_for(ctx: THIContext) -> Embedder:
    """The retrieval model of ``ctx`` (built once per model, pretrained tag and device)."""
    return _embedders.get((ctx.model, ctx.pretrained, ctx.device),
                          lambda: Embedder(ctx.model, ctx.pretrained, device=ctx.device))


def gallery_folder(ctx: THIContext) -> Path:
    """The gallery's folder: the context's, or the demo gallery's (which may not exist yet)."""
    return Path(ctx.gallery) if ctx.gallery else demo_dir()


def _index_key(ctx: THIContext) -> tuple:
    home = _home_key() if ctx.gallery is None or ctx.data_dir is None else None
    return (ctx.model, ctx.pretrained, ctx.device, ctx.gallery, ctx.split, ctx.chroma_url, ctx.data_dir, home)


def open_index(ctx: THIContext, index_if_missing: bool | None = None, progress: bool = False) -> GalleryIndex:
    """The gallery index of ``ctx`` (opened once per model and gallery). The demo gallery is
    generated and indexed when missing; another gallery only when ``index_if_missing``. Raises
    ``tools.gallery.GalleryError`` (not indexed, empty), ``ValueError`` (wrong embedding size)."""
    if index_if_missing is None:
        index_if_missing = ctx.gallery is None

    def build() -> GalleryIndex:
        embedder = embedder_for(ctx)
        gallery, _ = open_gallery(ctx.gallery, embedder, ctx.split, ctx.chroma_url, ctx.data_dir,
                                  index_if_missing=index_if_missing, progress=progress)
        return GalleryIndex(gallery, embedder)

    return _indexes.get(_index_key(ctx), build)


def backend_for(ctx: THIContext, kind: str | None = None) -> MLLM:
    """The MLLM backend ``kind`` (default: the context's ``mllm``) with the context's options (a
    chat backend's protocol is ``mllm_protocol``), built once per backend and options. Raises
    ``ValueError`` for a backend missing an option, a protocol given to a backend without prompts,
    and ``tools.mllm.protocols.ProtocolError`` (a ValueError) for a bad protocol."""
    main = kind is None or kind == ctx.mllm
    kind = kind or ctx.mllm
    if kind == "openai":
        options: dict[str, Any] = {"timeout": ctx.mllm_timeout, "protocol": ctx.mllm_protocol}
        if ctx.mllm_url:
            options["base_url"] = ctx.mllm_url
        if ctx.mllm_model:
            options["model"] = ctx.mllm_model
    elif kind == "transformers":
        if not ctx.mllm_path:
            raise ValueError("the transformers backend needs mllm_path (a model folder)")
        options = {"path": ctx.mllm_path, "device": ctx.device, "protocol": ctx.mllm_protocol}
    elif kind == "oracle":
        options = {}
    else:
        options = {"device": ctx.device}
    if main and kind not in ("openai", "transformers") and ctx.mllm_protocol not in (None, "ours"):
        raise ValueError(f"the {kind} MLLM has no prompts: mllm_protocol ({ctx.mllm_protocol}) applies only to the "
                         "chat backends (openai, transformers)")
    folder = gallery_folder(ctx) if kind == "oracle" else None
    key = (kind, tuple(sorted(options.items())), str(folder) if folder else None)
    return _backends.get(key, lambda: make_backend(kind, folder, **options))


def _allowed_ids(index: GalleryIndex, where: dict | None) -> frozenset[str] | None:
    if not where:
        return None
    key = (index, json.dumps(where, sort_keys=True, default=str))  # the index itself: ids are reused
    return _allowed.get(key, lambda: frozenset(index.allowed_ids(where)))


def _user(ctx: THIContext, index: GalleryIndex, mllm: MLLM, registered: dict) -> Any:
    if "user" in registered:
        return registered["user"]
    if ctx.user == "human":
        return HumanUser()
    if ctx.user == "simulated":
        if ctx.target is None:
            raise ValueError("a simulated user needs target: the image id of the target photo")
        if ctx.target not in index.position:
            raise ValueError(f"the target {ctx.target!r} is not in the gallery")
        if "user_mllm" in registered:
            answerer = registered["user_mllm"]
        else:
            answerer = backend_for(ctx, ctx.user_mllm) if ctx.user_mllm else mllm
        return SimulatedUser(answerer, index.image(ctx.target))
    return None


def resolve(ctx: THIContext) -> Live:
    """The live objects of a run context (cached: the same context gives the same objects).
    Raises ``ValueError`` for a bad setting, an unknown ``resources`` name or a missing target,
    and what :func:`open_index` and :func:`backend_for` raise."""
    if isinstance(ctx, dict):  # a client's JSON object
        ctx = THIContext(**ctx)

    def build() -> Live:
        registered: dict[str, Any] = {}
        if ctx.resources is not None:
            with _registry_lock:
                if ctx.resources not in _registry:
                    raise ValueError(f"no live resources are registered as {ctx.resources!r} in this process")
                registered = dict(_registry[ctx.resources])
        config = ctx.thi_config()
        index = registered["index"] if "index" in registered else open_index(ctx)
        mllm = registered["mllm"] if "mllm" in registered else backend_for(ctx)
        user = _user(ctx, index, mllm, registered)
        target_pid = ctx.target_pid
        if target_pid is None and ctx.target is not None and ctx.target in index.position:
            target_pid = index.pid(ctx.target)
        allowed = registered.get("allowed")
        allowed = frozenset(allowed) if allowed is not None else _allowed_ids(index, ctx.filter)
        return Live(index, mllm, config, user, target_pid, allowed)

    # Every node of every round resolves its context: the key (the context's values) is computed
    # once per context object, which is frozen.
    key = ctx.__dict__.get("_resolve_key")
    if key is None:
        key = repr(ctx)
        object.__setattr__(ctx, "_resolve_key", key)
    return _live.get(key, build)


def clear() -> None:
    """Forget every cached object and registration (tests)."""
    with _registry_lock:
        _registry.clear()
    for cache in (_embedders, _indexes, _backends, _allowed, _live):
        cache.clear()
