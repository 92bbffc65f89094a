"""MLLM backend for a local image-text-to-text model run with Hugging Face transformers.

Point it at a folder holding a model and its processor (for example Qwen2-VL-2B-Instruct fetched
beforehand with ``hf download Qwen/Qwen2-VL-2B-Instruct --local-dir models/qwen2-vl-2b``). Loading
uses local files only: nothing is downloaded. Runs on CUDA when present, else on the CPU (slow for
real models: seconds to minutes per answer), with greedy decoding under ``torch.inference_mode()``.
"""

from __future__ import annotations

import base64
import logging
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

from .base import MLLMError
from .chat import ChatMLLM

log = logging.getLogger(__name__)


class TransformersMLLM(ChatMLLM):
    """A local transformers VLM behind the MLLM interface.

    >>> mllm = TransformersMLLM("models/qwen2-vl-2b", max_new_tokens=128)  # doctest: +SKIP
    >>> mllm.verify(ImageRef("0001.jpg", Path("imgs/0001.jpg")), "a man with a black backpack")  # doctest: +SKIP
    Verdict(match=False, confidence=1.0, reason='No.', cached=False)

    Args:
        path: folder with ``config.json``, the weights and the processor files.
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available.
        max_new_tokens: the longest answer generated (``ask`` needs about 8 per question).
        dtype: weights dtype; default float32 on CPU and the checkpoint's own on CUDA.
        cache: cache verify/ask answers by (image id, question).
    """

    name = "transformers"

    def __init__(self, path: str | Path, device: str | None = None, max_new_tokens: int = 256,
                 dtype: Any = None, cache: bool = True):
        super().__init__(cache=cache)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise MLLMError(f"{folder}: model folder not found", kind="load")
        if not (folder / "config.json").is_file():
            raise MLLMError(f"{folder}: no config.json (not a transformers model folder)", kind="load")
        self.path = folder
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:  # half precision is slow or unsupported for many CPU kernels
            dtype = "auto" if self.device.type == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MLLMError(f"cannot load {folder} as an image-text-to-text model: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}", kind="load") from None
        self.model.to(self.device).eval()
        self.max_new_tokens = int(max_new_tokens)
        # one generate() at a time: callers' threads would only contend for the same device
        self._generate_lock = threading.Lock()
        log.info("loaded %s (%s) on %s", folder, type(self.model).__name__, self.device)

    def __repr__(self) -> str:
        return f"TransformersMLLM({str(self.path)!r}, device={str(self.device)!r})"

    # -- messages --------------------------------------------------------------------------

    @staticmethod
    def to_transformers(messages: list[dict]) -> tuple[list[dict], list]:
        """OpenAI-format messages -> transformers multimodal chat messages, and their images in order.

        Image blocks become ``{"type": "image", "image": PIL.Image}``; text-only content becomes a
        single text block (the form every multimodal chat template reads).
        """
        from PIL import Image

        out, images = [], []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                blocks = [{"type": "text", "text": content}]
            else:
                blocks = []
                for block in content:
                    if block.get("type") == "text":
                        blocks.append({"type": "text", "text": block["text"]})
                    elif block.get("type") == "image_url":
                        url = block["image_url"]["url"]
                        if not url.startswith("data:"):
                            raise MLLMError("only data: image URLs are supported offline", kind="bad-image")
                        data = base64.b64decode(url.split(",", 1)[1])
                        image = Image.open(BytesIO(data)).convert("RGB")
                        images.append(image)
                        blocks.append({"type": "image", "image": image})
                    else:
                        raise ValueError(f"unsupported content block type {block.get('type')!r}")
            out.append({"role": m["role"], "content": blocks})
        return out, images

    def _inputs(self, messages: list[dict]) -> Any:
        chat, images = self.to_transformers(messages)
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True, return_tensors="pt")
        # no chat template: plain text with the processor's image placeholder in front of each image
        placeholder = getattr(self.processor, "image_token", "") or ""
        parts = []
        for m in chat:
            for block in m["content"]:
                parts.append(placeholder if block["type"] == "image" else block["text"])
        return self.processor(text=["\n".join(parts) + "\n"], images=images or None, return_tensors="pt")

    def _to_device(self, inputs: Any) -> dict:
        import torch

        moved = {}
        for key, value in dict(inputs).items():
            if isinstance(value, torch.Tensor):
                # floating inputs (pixel values) take the model's dtype; ids and masks keep theirs
                if value.is_floating_point():
                    value = value.to(self.device, dtype=self.model.dtype)
                else:
                    value = value.to(self.device)
            moved[key] = value
        return moved

    # -- the call --------------------------------------------------------------------------

    def _chat(self, messages: list[dict]) -> str:
        import torch

        try:
            inputs = self._to_device(self._inputs(messages))
            with self._generate_lock, torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        except MLLMError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            raise MLLMError(f"generation failed: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}", kind="error") from e
        new_tokens = out[:, inputs["input_ids"].shape[1]:]  # decode the answer, not the prompt
        decoder = self.processor if hasattr(self.processor, "batch_decode") else self.processor.tokenizer
        return decoder.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()
