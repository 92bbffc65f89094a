"""How much a caption alone can tell: SynthPedes ambiguity and the caption-only ceiling.

* **Ambiguity** of a caption: the number of identities in its split whose attributes agree with
  everything the caption states (identity attributes by the person's true values; per-photo
  attributes such as background by any one of their photos). The world is tuned so that its mean
  over the default test split lies between 2 and 5.
* **Caption-only ceiling**: rank the split's gallery for each caption by how many of the caption's
  stated attributes each image's annotation agrees with, counting only attributes visible in that
  image. It is the best ranking any retriever that reads only the caption can produce; scores tie a
  lot, so metrics on it count ties at their expected rank (``eval.metrics`` with ``ties="expected"``).

>>> ann = load_annotations("synthpedes_dir")            # doctest: +SKIP
>>> scores, qp, gp = ceiling_scores(ann, split="test")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.attributes import IMAGE_SLOTS, SLOT_NAMES, SLOTS
from tools.text import printable

_VALUE_INDEX = {slot: {v: i for i, v in enumerate(SLOTS[slot].values)} for slot in SLOT_NAMES}


class AnnotationError(ValueError):
    """attributes.json is missing or malformed."""


@dataclass
class SplitAnnotations:
    """Attribute annotations of one split as integer arrays (-1 = not applicable / not stated)."""

    file_paths: list[str]
    pids: np.ndarray  # [G]
    values: np.ndarray  # [G, S] value index of every slot (-1 when not applicable)
    visible: np.ndarray  # [G, S] bool
    stated: np.ndarray  # [Q, S] value index stated by each caption (-1 = not stated)
    query_pids: np.ndarray  # [Q]
    query_image: np.ndarray  # [Q] index of the caption's own image


def load_annotations(root: str | Path) -> dict:
    """attributes.json of a SynthPedes folder. Every image's ``file_path`` must lie inside the
    folder's ``imgs/`` (:func:`data.readers.resolve_image`): callers read those files.

    Raises:
        AnnotationError: one line: the file is missing, malformed, or an image path is refused.
    """
    from data.readers import DatasetError, load_json, resolve_image

    path = Path(root) / "attributes.json"
    try:
        data = load_json(path, "SynthPedes attribute file")
    except DatasetError as e:
        raise AnnotationError(f"{e}{' (not a SynthPedes folder?)' if 'not found' in str(e) else ''}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(f"{path}: expected an object with an 'images' list")
    image_root = (Path(root) / "imgs").resolve()
    for n, im in enumerate(data["images"]):
        rel = im.get("file_path") if isinstance(im, dict) else None
        if not isinstance(rel, str) or not rel:
            raise AnnotationError(f"{path}: image {n} has no 'file_path' string")
        if resolve_image(image_root, rel)[1] is not None:
            raise AnnotationError(f"{path}: image {n}: file_path {printable(rel, max_len=120)!r}: "
                                  f"{resolve_image(image_root, rel)[1]}")
    return data


def _encode(values: dict, slots=SLOT_NAMES) -> list[int]:
    out = []
    for s in slots:
        v = values.get(s)
        out.append(-1 if v is None else _VALUE_INDEX[s].get(v, -1))
    return out


def split_annotations(ann: dict, split: str = "test") -> SplitAnnotations:
    images = [im for im in ann["images"] if im.get("split") == split]
    if not images:
        raise AnnotationError(f"no images in split {split!r}")
    try:
        values = np.asarray([_encode(im["attributes"]) for im in images], dtype=np.int16)
        visible = np.asarray([[bool(im["visible"].get(s, False)) for s in SLOT_NAMES] for im in images])
        stated, qpids, qimg = [], [], []
        for gi, im in enumerate(images):
            for cap in im["captions"]:
                stated.append(_encode(cap["stated"]))
                qpids.append(im["id"])
                qimg.append(gi)
    except (KeyError, TypeError) as e:
        raise AnnotationError(f"attributes.json: an image record lacks the field {e}") from None
    return SplitAnnotations(
        file_paths=[im["file_path"] for im in images],
        pids=np.asarray([im["id"] for im in images], dtype=np.int64),
        values=values,
        visible=visible,
        stated=np.asarray(stated, dtype=np.int16).reshape(len(stated), len(SLOT_NAMES)),
        query_pids=np.asarray(qpids, dtype=np.int64),
        query_image=np.asarray(qimg, dtype=np.int64),
    )


def ceiling_scores(ann: dict | SplitAnnotations, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores [captions x images]: how many stated attributes each image visibly agrees with.

    Returns ``(scores, query_pids, gallery_pids)``, captions in ``reid_raw.json`` order.
    """
    sa = ann if isinstance(ann, SplitAnnotations) else split_annotations(ann, split)
    seen = np.where(sa.visible, sa.values, -2)  # -2 never equals a stated value
    scores = np.zeros((len(sa.stated), len(sa.pids)), dtype=np.int16)
    for s in range(sa.stated.shape[1]):
        q = sa.stated[:, s]
        rows = np.nonzero(q >= 0)[0]
        if rows.size:
            scores[rows] += (q[rows, None] == seen[None, :, s])
    return scores, sa.query_pids, sa.pids


def ambiguity(ann: dict | SplitAnnotations, split: str = "test") -> float:
    """Mean number of identities in the split that agree with everything a caption states."""
    sa = ann if isinstance(ann, SplitAnnotations) else split_annotations(ann, split)
    image_cols = np.asarray([SLOT_NAMES.index(s) for s in IMAGE_SLOTS])
    identity_cols = np.asarray([i for i in range(len(SLOT_NAMES)) if i not in set(image_cols.tolist())])
    pid_values, first = np.unique(sa.pids, return_index=True)
    identity = sa.values[first][:, identity_cols]  # [P, Si] identity slots are constant per person
    pid_of_image = np.searchsorted(pid_values, sa.pids)
    counts = np.empty(len(sa.stated), dtype=np.int64)
    for qi, q in enumerate(sa.stated):
        qi_id, qi_im = q[identity_cols], q[image_cols]
        mask = qi_id >= 0
        ok_identity = np.all(identity[:, mask] == qi_id[mask], axis=1) if mask.any() else np.ones(len(pid_values), bool)
        mask_im = qi_im >= 0
        if mask_im.any():
            img_ok = np.all(sa.values[:, image_cols][:, mask_im] == qi_im[mask_im], axis=1)
            any_img = np.zeros(len(pid_values), bool)
            any_img[pid_of_image[img_ok]] = True
            ok_identity &= any_img
        counts[qi] = int(ok_identity.sum())
    return float(counts.mean())
