"""MLLM backends behind one interface (``verify``, ``ask``, ``merge``; see ``tools.mllm.base``).

>>> mllm = make_mllm("offline")            # the default: runs here, no download
>>> mllm = make_mllm("openai", base_url="http://localhost:8000/v1", model="Qwen/Qwen2-VL-7B-Instruct")  # doctest: +SKIP
>>> mllm = make_mllm("openai", protocol="icl", timeout=30)  # ICL's protocol; 30 s per call  # doctest: +SKIP

The chat backends (``openai``, ``transformers``, and ``langchain`` from code) talk by a protocol
preset (``tools.mllm.protocols``: ``ours``, ``icl``, or a JSON file).
"""

from __future__ import annotations

from typing import Any

from .base import (MLLM, Answer, CallMeter, CallStats, Deadline, ImageRef, MLLMError, Verdict, current_deadline,
                   dialogue_deadline, metering)

BACKENDS = ("offline", "openai", "transformers", "oracle")
#: backends that talk by a chat protocol (``protocol=`` applies)
CHAT_BACKENDS = ("openai", "transformers", "langchain")


def make_mllm(kind: str = "offline", protocol: Any = None, **options: Any) -> MLLM:
    """Build a backend by name, with the backend's own keyword options. ``oracle`` takes
    ``annotations`` (image id -> annotation, see :class:`tools.mllm.oracle.OracleMLLM`;
    ``graphs.server.make_backend`` loads them from a SynthPedes folder). ``langchain`` takes a chat
    model object: use ``tools.mllm.langchain_backend.LangChainMLLM(chat_model)`` directly.

    ``protocol`` (a preset name, a JSON file path or a ``Protocol``) is for the chat backends; the
    offline and oracle backends have no prompts and accept only ``None`` or ``"ours"``. Raises
    ``ValueError`` for an unknown backend or protocol (a ``ProtocolError`` naming the bad field).
    """
    if kind in ("openai", "transformers"):
        from .protocols import load_protocol

        options["protocol"] = load_protocol(protocol)  # a bad name or file fails here, before any model loads
    elif protocol not in (None, "ours"):
        raise ValueError(f"the {kind} MLLM has no prompts: a protocol ({protocol}) applies only to the chat "
                         f"backends ({', '.join(CHAT_BACKENDS)})")
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


__all__ = ["BACKENDS", "CHAT_BACKENDS", "MLLM", "Answer", "CallMeter", "CallStats", "Deadline", "ImageRef", "MLLMError",
           "Verdict", "current_deadline", "dialogue_deadline", "make_mllm", "metering"]
