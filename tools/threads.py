"""One thread policy for torch and the BLAS numpy uses, shared by every entry point.

THI's work per query is small: one caption through the text encoder, a few matrix-vector products
over the gallery, a few photos through the offline MLLM. Two thread pools that each start one
thread per core (torch's OpenMP pool and numpy's OpenBLAS pool) fight over the same cores, and on
a loaded machine a 2-thread OpenBLAS product waits for a descheduled thread (a ~12 ms floor on
products that take 0.1 ms on one thread). Measured on the 2-core CI machine (``python -m
eval.scale``, docs/results.md):

* a gallery matrix-vector product is memory-bound: one BLAS thread is as fast as two from 300k
  photos up (1M x 256: 198 ms on one thread, 214 ms on two, machine load ~6), and avoids the
  floor on small ones;
* batched encoding (indexing a folder, encoding a whole query split) gains from every core;
* per-query work (one caption, a handful of photos through the offline MLLM's recogniser: tensors
  of a few KB per operator) does not, and on a loaded machine each of its operators waits at an
  OpenMP barrier for a descheduled second thread: the recogniser on 4 photos took 1.6 s with 2
  torch threads against 40-60 ms with one (load average ~6 on 2 cores, 2026-11-30), 50 photos
  2.3 s against 0.5 s. Two threads are 13-29% faster on a quiet machine; one thread never
  collapses.

So the policy: torch intra-op threads = the cores this process may use for the ``index`` and
``benchmark`` workloads (batched encoding), 1 for ``query`` (THI dialogues, the CLI's queries, the
service, ``eval.thi``); BLAS threads = 1; torch inter-op threads = 1. ``THI_TORCH_THREADS`` and
``THI_BLAS_THREADS`` override it (e.g. a quiet machine serving one query at a time). It also keeps freed memory in the process (glibc
``mallopt``): the image encoder allocates the same large activations for every batch, and
returning them to the OS between batches makes each batch page-fault them in again.

Every CLI, the service and the benchmarks call :func:`apply_thread_policy` once at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

_applied: dict | None = None
WORKLOADS = ("index", "benchmark", "query")


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        log.warning("ignoring %s=%r (not an integer)", name, value)
        return None
    return n if n >= 1 else None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks in the process (no ``mmap`` for blocks under 1 GiB, no trim
    below 1 GiB free): the encoders' per-batch buffers are then reused instead of page-faulted in
    again. Returns whether it applied (glibc only)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    gib = 1 << 30
    return bool(mallopt(M_MMAP_THRESHOLD, gib)) and bool(mallopt(M_TRIM_THRESHOLD, gib))


def apply_thread_policy(workload: str = "query") -> dict:
    """Set the thread policy (see the module docstring) once per process; returns what was set:
    ``{"torch": n, "blas": n, "cores": n, "malloc_keep": bool}``. ``workload``: ``"index"`` or
    ``"benchmark"`` (batched encoding: torch gets every core) or ``"query"`` (per-query work: one
    torch thread); indexing's decoding threads are its own. Raises ValueError for another workload."""
    global _applied
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (one of {', '.join(WORKLOADS)})")
    if _applied is not None:
        return _applied
    cores = usable_cores()
    torch_threads = _env_int("THI_TORCH_THREADS") or (1 if workload == "query" else cores)
    blas_threads = _env_int("THI_BLAS_THREADS") or 1
    try:
        from threadpoolctl import threadpool_limits

        import numpy  # noqa: F401 - load its BLAS so the limit reaches it

        threadpool_limits(limits=blas_threads, user_api="blas")
    except ImportError:
        log.warning("threadpoolctl is not installed: numpy's BLAS keeps its own thread count")
    import torch

    torch.set_num_threads(torch_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only before any parallel work has started
        pass
    _applied = {"torch": torch_threads, "blas": blas_threads, "cores": cores, "workload": workload,
                "malloc_keep": keep_freed_memory()}
    return _applied


@contextmanager
def per_query_threads() -> Iterator[None]:
    """Run the ``with`` block with the ``"query"`` workload's torch thread count (one, or
    ``THI_TORCH_THREADS``), then restore the count: for a per-query loop inside a process whose
    policy is another (``eval.ablation`` encodes a gallery, then runs THI dialogues)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(_env_int("THI_TORCH_THREADS") or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
