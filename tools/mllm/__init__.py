"""MLLM backends behind one interface (``verify``, ``ask``, ``merge``; see ``tools.mllm.base``).

>>> mllm = make_mllm("offline")            # the default: runs here, no download
>>> mllm = make_mllm("openai", base_url="http://localhost:8000/v1", model="Qwen/Qwen2-VL-7B-Instruct")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .base import MLLM, Answer, ImageRef, MLLMError, Verdict

BACKENDS = ("offline", "openai", "transformers", "oracle")


def make_mllm(kind: str = "offline", **options: Any) -> MLLM:
    """Build a backend by name, with the backend's own keyword options. ``oracle`` takes
    ``annotations`` (image id -> annotation, see :class:`tools.mllm.oracle.OracleMLLM`;
    ``graphs.server.make_backend`` loads them from a SynthPedes folder). ``langchain`` takes a chat
    model object: use ``tools.mllm.langchain_backend.LangChainMLLM(chat_model)`` directly.
    Raises ``ValueError`` for an unknown backend name."""
    if kind == "offline":
        from .offline import OfflineMLLM

        return OfflineMLLM(**options)
    if kind == "openai":
        from .openai_backend import OpenAIMLLM

        return OpenAIMLLM(**options)
    if kind == "transformers":
        from .transformers_backend import TransformersMLLM

        return TransformersMLLM(**options)
    if kind == "oracle":
        from .oracle import OracleMLLM

        if "annotations" not in options:
            raise ValueError("the oracle backend needs annotations (image id -> attributes); "
                             "graphs.server.make_backend loads them from a SynthPedes folder")
        return OracleMLLM(**options)
    raise ValueError(f"unknown MLLM backend {kind!r} (choose from: {', '.join(BACKENDS)}, or langchain from code)")


__all__ = ["BACKENDS", "MLLM", "Answer", "ImageRef", "MLLMError", "Verdict", "make_mllm"]
