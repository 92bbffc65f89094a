"""ORACLE backend (simulation only): answers from SynthPedes annotations, never from pixels.

It knows the true, visible attributes of every annotated photo. It exists to measure upper bounds
(THI with a perfect verifier) and to simulate users; every result produced with it is labelled
"oracle". It cannot run on photos without annotations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from data.synthpedes.ceiling import load_annotations

from .base import MLLM, Answer, ImageRef, MLLMError, Verdict
from .parser import parse


class OracleMLLM(MLLM):
    """Ground-truth answers for the images of one SynthPedes folder."""

    name = "oracle"
    is_oracle = True

    def __init__(self, synthpedes_dir: str | Path, cache: bool = True):
        super().__init__(cache=cache)
        ann = load_annotations(synthpedes_dir)
        self.annotations = {im["file_path"]: im for im in ann["images"]}

    def _lookup(self, image: ImageRef) -> dict:
        try:
            return self.annotations[image.id]
        except KeyError:
            raise MLLMError(f"oracle has no annotation for image {image.id!r}", kind="unknown-image") from None

    def _verify(self, image: ImageRef, text: str) -> Verdict:
        im = self._lookup(image)
        for slot, value in parse(text).constraints.items():
            if im["visible"].get(slot) and im["attributes"].get(slot) not in (None, value):
                return Verdict(False, 1.0, f"{slot} is {im['attributes'][slot]}, not {value}")
        return Verdict(True, 1.0, "nothing stated is contradicted")

    def _ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]:
        im = self._lookup(image)
        out = []
        for slot in slots:
            value = im["attributes"].get(slot) if im["visible"].get(slot) else None
            out.append(Answer(slot, value, 1.0, value or "cannot tell"))
        return out
