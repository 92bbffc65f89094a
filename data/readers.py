"""Readers for the text-to-image person re-id datasets, all yielding one record type.

Supported layouts (see ``shared/reference/formats.md``):

=============  ====================================  ===================  ==========================
format         annotation file                       image root           image field
=============  ====================================  ===================  ==========================
cuhk-pedes     ``reid_raw.json``                     ``imgs/``            ``file_path``
icfg-pedes     ``ICFG-PEDES.json``                   ``imgs/``            ``file_path``
rstpreid       ``data_captions.json``                ``imgs/``            ``img_path``
ufine6926      ``UFine6926_Annotations_1024.json``   the folder itself    ``file_path``
synthpedes     ``reid_raw.json`` + ``attributes.json``  ``imgs/``         ``file_path``
=============  ====================================  ===================  ==========================

Person ids are kept exactly as the files give them (not shifted): CUHK-PEDES and SynthPedes ids are
1-based, the others as published. Fields other than the standard ones (``diversity_captions`` from
RDA, for instance) are kept in ``Record.extra``.

>>> ds = read_dataset("path/to/CUHK-PEDES")          # doctest: +SKIP
>>> test = ds.split("test")                          # doctest: +SKIP
>>> test[0].pid, test[0].image_path, test[0].captions # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)

FORMATS: dict[str, dict[str, str]] = {
    "synthpedes": {"annotation": "reid_raw.json", "images": "imgs", "path_field": "file_path"},
    "cuhk-pedes": {"annotation": "reid_raw.json", "images": "imgs", "path_field": "file_path"},
    "icfg-pedes": {"annotation": "ICFG-PEDES.json", "images": "imgs", "path_field": "file_path"},
    "rstpreid": {"annotation": "data_captions.json", "images": "imgs", "path_field": "img_path"},
    "ufine6926": {"annotation": "UFine6926_Annotations_1024.json", "images": ".", "path_field": "file_path"},
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
_STANDARD_FIELDS = {"id", "split", "captions", "file_path", "img_path", "processed_tokens"}
MISSING_EXAMPLES = 5
_CAMERA = re.compile(r"^\d+_c(\d+)[_s.]")


class DatasetError(ValueError):
    """A dataset folder or annotation file cannot be read. The message is one line naming the file."""


@dataclass(frozen=True)
class Record:
    """One image with its captions."""

    pid: int
    image: str  # path relative to the image root, as the annotation file gives it
    image_path: Path  # absolute path
    captions: tuple[str, ...]
    split: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    camera: int | None = None  # parsed from names like 0000_c14_0031.jpg where the layout has it

    @property
    def image_id(self) -> str:
        """A stable id for the image within its dataset."""
        return self.image


@dataclass
class Dataset:
    """All records of a dataset folder."""

    format: str
    root: Path
    image_root: Path
    annotation_file: Path
    records: list[Record]

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        order = {"train": 0, "val": 1, "test": 2}
        return sorted({r.split for r in self.records}, key=lambda s: (order.get(s, 9), s))

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def detect_format(root: str | Path) -> str:
    """Tell the format of a dataset folder from its annotation file's name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if (root / "reid_raw.json").is_file() and (root / "attributes.json").is_file():
        return "synthpedes"
    for name, spec in FORMATS.items():
        if name != "synthpedes" and (root / spec["annotation"]).is_file():
            return name
    expected = ", ".join(sorted({spec["annotation"] for spec in FORMATS.values()}))
    raise DatasetError(f"{root}: no annotation file found (expected one of: {expected})")


def load_json_list(path: Path) -> list:
    """A JSON file holding a list; one-line :class:`DatasetError` for a missing or malformed file."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _parse_record(raw: Any, index: int, path: Path, path_field: str, image_root: Path) -> Record:
    where = f"{path}: record {index}"
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is not an object")
    for key in ("id", "captions", "split", path_field):
        if key not in raw:
            raise DatasetError(f"{where} lacks the field '{key}'")
    pid = raw["id"]
    if isinstance(pid, bool) or not isinstance(pid, (int, str)) or (isinstance(pid, str) and not pid.strip().isdigit()):
        raise DatasetError(f"{where}: 'id' must be an integer, got {pid!r}")
    captions = raw["captions"]
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DatasetError(f"{where}: 'captions' must be a list of strings")
    rel = raw[path_field]
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: '{path_field}' must be a non-empty string")
    split = raw["split"]
    if not isinstance(split, str):
        raise DatasetError(f"{where}: 'split' must be a string")
    extra = {k: v for k, v in raw.items() if k not in _STANDARD_FIELDS}
    cam = _CAMERA.search(Path(rel).name)
    return Record(pid=int(pid), image=rel, image_path=(image_root / rel).resolve(), captions=tuple(captions),
                  split=split, extra=extra, camera=int(cam.group(1)) if cam else None)


def read_dataset(root: str | Path, format: str = "auto", skip_missing: bool = False,
                 annotation_file: str | Path | None = None) -> Dataset:
    """Read a dataset folder.

    Args:
        root: the dataset folder.
        format: one of :data:`FORMAT_NAMES` or ``auto`` (detect from the annotation file's name).
        skip_missing: drop records whose image file does not exist (with a warning) instead of
            raising :class:`DatasetError`.
        annotation_file: read this file instead of the format's own (for RDA output, which has the
            dataset's layout with ``diversity_captions`` added).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r} (choose from: auto, {', '.join(FORMAT_NAMES)})")
    spec = FORMATS[fmt]
    path = Path(annotation_file) if annotation_file else root / spec["annotation"]
    image_root = (root / spec["images"]).resolve()
    raw = load_json_list(path)
    if fmt == "synthpedes" and not (root / "attributes.json").is_file():
        raise DatasetError(f"{root / 'attributes.json'}: SynthPedes attribute file not found")
    records = [_parse_record(r, i, path, spec["path_field"], image_root) for i, r in enumerate(raw)]
    missing = [r for r in records if not r.image_path.is_file()]
    if missing:
        examples = ", ".join(r.image for r in missing[:MISSING_EXAMPLES])
        message = (f"{path}: {len(missing)} of {len(records)} image files do not exist under {image_root} "
                   f"(e.g. {examples})")
        if not skip_missing:
            raise DatasetError(message + "; pass skip_missing (--skip-missing) to leave them out")
        log.warning("%s; skipping them", message)
        gone = {id(r) for r in missing}
        records = [r for r in records if id(r) not in gone]
    return Dataset(format=fmt, root=root.resolve(), image_root=image_root, annotation_file=path, records=records)
