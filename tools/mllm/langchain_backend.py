"""MLLM backend for any LangChain chat model that accepts images.

Wraps a langchain-core ``BaseChatModel`` (``ChatOpenAI``, ``ChatOllama``, ``ChatAnthropic``, a
``ChatHuggingFace``, ...). The OpenAI-format messages built by :class:`tools.mllm.chat.ChatMLLM`
become ``SystemMessage``/``HumanMessage`` objects whose content blocks are ``{"type": "text"}`` and
``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}``, the block format
LangChain's chat integrations accept for images.

Retries, timeouts and rate limits are the wrapped model's business (configure them on it, e.g.
``ChatOpenAI(max_retries=..., timeout=...)`` or ``model.with_retry()``); whatever it raises becomes
an :class:`MLLMError` here.
"""

from __future__ import annotations

import logging
from typing import Any

from .base import MLLMError
from .chat import ChatMLLM

log = logging.getLogger(__name__)


class LangChainMLLM(ChatMLLM):
    """A LangChain chat model behind the MLLM interface.

    >>> from langchain_openai import ChatOpenAI  # doctest: +SKIP
    >>> mllm = LangChainMLLM(ChatOpenAI(model="gpt-4o-mini", temperature=0))  # doctest: +SKIP
    >>> mllm.ask(ImageRef("0001.jpg", Path("imgs/0001.jpg")), ["upper_color", "hat"])  # doctest: +SKIP
    [Answer(slot='upper_color', value='red', ...), Answer(slot='hat', value='none', ...)]

    Args:
        model: any ``BaseChatModel`` (or runnable taking a message list) that accepts image blocks.
        max_concurrency: parallel requests in ``verify_many``.
        cache: cache verify/ask answers by (image id, question).
    """

    name = "langchain"

    def __init__(self, model: Any, max_concurrency: int = 1, cache: bool = True):
        super().__init__(cache=cache)
        if not hasattr(model, "invoke"):
            raise TypeError(f"expected a LangChain chat model with .invoke, got {type(model).__name__}")
        self.model = model
        self.max_concurrency = max(1, int(max_concurrency))

    def __repr__(self) -> str:
        return f"LangChainMLLM({type(self.model).__name__})"

    @staticmethod
    def to_langchain(messages: list[dict]) -> list:
        """OpenAI-format message dicts -> ``SystemMessage``/``HumanMessage``/``AIMessage``."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        kinds = {"system": SystemMessage, "user": HumanMessage, "human": HumanMessage, "assistant": AIMessage}
        out = []
        for m in messages:
            cls = kinds.get(m.get("role", ""))
            if cls is None:
                raise ValueError(f"unsupported message role {m.get('role')!r}")
            content = m["content"]
            if isinstance(content, list):  # copy the blocks: the model must not alter our messages
                content = [dict(block) for block in content]
            out.append(cls(content=content))
        return out

    def _chat(self, messages: list[dict]) -> str:
        log.debug("invoking %s with %d messages", type(self.model).__name__, len(messages))
        try:
            reply = self.model.invoke(self.to_langchain(messages))
        except MLLMError:
            raise
        except Exception as e:  # integrations raise their own types; sort them by what they mean
            raise MLLMError(f"{type(self.model).__name__} failed: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}", kind=_kind_of(e)) from e
        return _text_of(reply)


def _text_of(reply: Any) -> str:
    """The reply's text: a string content as is, a list of blocks joined (text blocks only)."""
    content = getattr(reply, "content", reply)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    raise MLLMError(f"unexpected reply content of type {type(content).__name__}", kind="unparseable")


def _kind_of(e: BaseException) -> str:
    """``timeout`` / ``unreachable`` / ``error`` for an exception from any integration.

    Each integration has its own exception classes (openai, httpx, requests, anthropic, ...), so
    the builtin bases are checked first and the class names after.
    """
    names = " ".join(c.__name__.lower() for c in type(e).__mro__)
    if isinstance(e, TimeoutError) or "timeout" in names:
        return "timeout"
    if isinstance(e, ConnectionError) or "connecterror" in names or "connectionerror" in names:
        return "unreachable"
    return "error"
