"""ORACLE backend (simulation only): answers from annotations, never from pixels.

It knows the true, visible attributes of every annotated photo. It exists to measure upper bounds
(THI with a perfect verifier) and to simulate users; every result produced with it is labelled
"oracle". It cannot run on photos without annotations.

The annotations come from the caller (``tools`` reads no dataset): for SynthPedes,
``graphs.server.oracle_annotations(folder)`` loads them from the folder's ``attributes.json``.

>>> from graphs.server import oracle_annotations
>>> oracle = OracleMLLM(oracle_annotations("synthpedes"))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .base import MLLM, Answer, ImageRef, MLLMError, Verdict
from .parser import parse

#: One photo's annotation: ``{"attributes": {slot: value or None}, "visible": {slot: bool}}`` (the
#: shape of an image record of SynthPedes' ``attributes.json``; other keys are ignored).
Annotation = Mapping[str, Mapping]


class OracleMLLM(MLLM):
    """Ground-truth answers for annotated photos.

    ``annotations`` maps an image id (the gallery id, e.g. ``"imgs/test/0001/0001_c2_0.jpg"``) to
    its :data:`Annotation`. A question about an image it has no annotation for raises
    :class:`MLLMError` (kind ``"unknown-image"``).
    """

    name = "oracle"
    is_oracle = True
    parses_descriptions = True

    def __init__(self, annotations: Mapping[str, Annotation], cache: bool = True):
        super().__init__(cache=cache)
        self.annotations = annotations

    def _lookup(self, image: ImageRef) -> Annotation:
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
