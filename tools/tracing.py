"""Child runs in LangChain's run tree for the project's own calls (MLLM, embedder, gallery).

Inside a LangChain runnable or a LangGraph node, LangChain keeps the current run's config in a
context variable (``langchain_core.runnables.config.var_child_runnable_config``). :func:`child_run`
opens a run under it through the same callback handlers (LangSmith's tracer, a test's recording
handler, any ``BaseCallbackHandler``), so a THI dialogue's trace shows which MLLM, embedder and
gallery calls each node made. Outside a runnable, or when no handler listens, it does nothing and
costs one context-variable read.

>>> with child_run("mllm.verify", {"image": "0001.jpg"}, metadata={"backend": "openai"}) as run:
...     verdict = ...           # the call
...     if run is not None:
...         run.outputs = {"match": True}
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from langchain_core.runnables.config import get_callback_manager_for_config, patch_config, var_child_runnable_config
from langgraph.errors import GraphBubbleUp


@dataclass
class ChildRun:
    """An open child run: set ``outputs`` before the ``with`` block ends to record them."""

    run_id: Any
    outputs: dict[str, Any] = field(default_factory=dict)


@contextmanager
def child_run(name: str, inputs: dict[str, Any], *, tags: Sequence[str] = (),
              metadata: dict[str, Any] | None = None) -> Iterator[ChildRun | None]:
    """Record the ``with`` block as a chain run named ``name`` under the current run (with
    ``inputs``, and the block's ``outputs``; an exception is recorded as the run's error and
    raised on; a LangGraph interrupt ends the run as a pause, not an error). Runs opened inside the block, in this thread or in threads started with a copy of
    its context, are its children. Yields None (and records nothing) outside a runnable or when no
    callback handler listens."""
    config = var_child_runnable_config.get()
    callbacks = config.get("callbacks") if config else None
    if callbacks is None or (not isinstance(callbacks, list) and not getattr(callbacks, "handlers", None)):
        yield None
        return
    manager = get_callback_manager_for_config(config)  # type: ignore[arg-type]
    if not manager.handlers:
        yield None
        return
    if tags:
        manager.add_tags(list(tags), inherit=False)
    if metadata:
        manager.add_metadata(dict(metadata), inherit=False)
    run_manager = manager.on_chain_start(None, inputs, name=name)
    run = ChildRun(run_manager.run_id)
    token = var_child_runnable_config.set(patch_config(config, callbacks=run_manager.get_child()))
    try:
        yield run
    except GraphBubbleUp:  # an interrupt: the node pauses here and runs again on resume
        var_child_runnable_config.reset(token)
        token = None
        run_manager.on_chain_end({**run.outputs, "interrupted": True})
        raise
    except BaseException as e:
        var_child_runnable_config.reset(token)
        token = None
        run_manager.on_chain_error(e)
        raise
    finally:
        if token is not None:
            var_child_runnable_config.reset(token)
    run_manager.on_chain_end(run.outputs)
