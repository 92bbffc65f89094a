"""Readers for the text-to-image person re-id datasets, all yielding one record type.

Supported layouts (see ``shared/reference/formats.md``):

=============  ====================================  ===================  ==========================
format         annotation file                       image root           image field
=============  ====================================  ===================  ==========================
cuhk-pedes     ``reid_raw.json`` or ``caption_all.json``  ``imgs/``       ``file_path``
icfg-pedes     ``ICFG-PEDES.json``                   ``imgs/``            ``file_path``
rstpreid       ``data_captions.json``                ``imgs/``            ``img_path``
ufine6926      ``UFine6926_Annotations_1024.json``   the folder itself    ``file_path``
synthpedes     ``reid_raw.json`` + ``attributes.json``  ``imgs/``         ``file_path``
=============  ====================================  ===================  ==========================

Person ids are kept exactly as the files give them (not shifted): CUHK-PEDES and SynthPedes ids are
1-based, the others as published. Fields other than the standard ones (``diversity_captions`` from
RDA, for instance) are kept in ``Record.extra``.

CUHK-PEDES ships its annotations as ``caption_all.json`` in the original release and in several
codebases (RDE's instructions among them), as ``reid_raw.json`` in IRRA's; both are read. Records
without a ``split`` field (the original release's) get CUHK-PEDES's standard split by person id:
train 1-11003, val 11004-12003, test 12004-13003.

A folder with none of these files but with a JSON file that looks like annotations (a list of
records with ``captions``, ``file_path``, ``img_path`` or ``id``) is reported as such
(:class:`LayoutError`) rather than taken for a plain folder of images.

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
from typing import Any, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

FORMATS: dict[str, dict[str, str]] = {
    "synthpedes": {"annotation": "reid_raw.json", "images": "imgs", "path_field": "file_path"},
    "cuhk-pedes": {"annotation": "reid_raw.json", "images": "imgs", "path_field": "file_path",
                   "alternative": "caption_all.json"},
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


class LayoutError(DatasetError):
    """A folder holds an annotation-looking JSON file that no reader knows (not a plain image folder)."""


#: CUHK-PEDES's standard split by person id, for files without a ``split`` field.
CUHK_SPLIT = (("train", 1, 11003), ("val", 11004, 12003), ("test", 12004, 13003))
_RECORD_KEYS = ("captions", "file_path", "img_path", "id", "split")


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
    #: every split the annotation file has (``splits`` lists those read)
    all_splits: list[str] = field(default_factory=list)

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


def annotation_names(fmt: str) -> tuple[str, ...]:
    """The annotation file names a format is read from, preferred first."""
    spec = FORMATS[fmt]
    return (spec["annotation"],) + ((spec["alternative"],) if "alternative" in spec else ())


def annotation_path(root: str | Path, fmt: str) -> Path:
    """The annotation file of ``fmt`` in ``root`` (the first that exists; else the preferred name)."""
    root = Path(root)
    for name in annotation_names(fmt):
        if (root / name).is_file():
            return root / name
    return root / FORMATS[fmt]["annotation"]


def _looks_like_annotations(path: Path) -> list[str] | None:
    """The record keys that make ``path`` look like an annotation file, or None."""
    try:
        if path.stat().st_size > 2_000_000_000:
            return None
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(data, dict):  # {"annotations": [...]} and the like
        data = next((v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    keys = [k for k in _RECORD_KEYS if k in data[0]]
    return keys if ("captions" in keys or len(keys) >= 2) else None


def _not_a_folder(root: Path) -> str:
    """The message for a dataset path that is not a folder: missing, or a file (e.g. the annotation file itself)."""
    if root.exists():
        return f"{root}: a file, not a dataset folder (give the folder that holds the annotation file and the images)"
    return f"{root}: dataset folder not found"


def detect_format(root: str | Path) -> str:
    """Tell the format of a dataset folder from its annotation file's name.

    Raises:
        LayoutError: no known annotation file, but a JSON file that looks like one (named).
        DatasetError: no annotation file at all (a plain folder of images, for callers that take those).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(_not_a_folder(root))
    if (root / "reid_raw.json").is_file() and (root / "attributes.json").is_file():
        return "synthpedes"
    for name in FORMATS:
        if name != "synthpedes" and any((root / a).is_file() for a in annotation_names(name)):
            return name
    expected = ", ".join(sorted({a for f in FORMATS for a in annotation_names(f)}))
    for candidate in sorted(root.glob("*.json")):
        keys = _looks_like_annotations(candidate)
        if keys:
            raise LayoutError(f"{candidate}: looks like an annotation file (records with {', '.join(keys)}) but no "
                              f"reader knows its name (expected one of: {expected}); rename it to its layout's name")
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


def _cuhk_split(pid: Any) -> Any:
    try:
        n = int(pid)
    except (TypeError, ValueError):
        return None  # reported by the record check
    return next((name for name, lo, hi in CUHK_SPLIT if lo <= n <= hi), "unknown")


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
                 annotation_file: str | Path | None = None, splits: Iterable[str] | None = None) -> Dataset:
    """Read a dataset folder.

    Args:
        root: the dataset folder.
        format: one of :data:`FORMAT_NAMES` or ``auto`` (detect from the annotation file's name).
        skip_missing: drop records whose image file does not exist (with a warning) instead of
            raising :class:`DatasetError`.
        annotation_file: read this file instead of the format's own (for RDA output, which has the
            dataset's layout with ``diversity_captions`` added).
        splits: keep only these splits' records (and check only their images); default all.

    Raises:
        DatasetError: one line naming the file: missing or malformed annotations, a record without
            a required field, image files missing (unless ``skip_missing``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(_not_a_folder(root))
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r} (choose from: auto, {', '.join(FORMAT_NAMES)})")
    spec = FORMATS[fmt]
    path = Path(annotation_file) if annotation_file else annotation_path(root, fmt)
    image_root = (root / spec["images"]).resolve()
    raw = load_json_list(path)
    if fmt == "synthpedes" and not (root / "attributes.json").is_file():
        raise DatasetError(f"{root / 'attributes.json'}: SynthPedes attribute file not found")
    if fmt == "cuhk-pedes" and raw and all(isinstance(r, dict) and "split" not in r for r in raw):
        log.info("%s: no split field; using CUHK-PEDES's standard split by person id", path)
        raw = [{**r, "split": _cuhk_split(r.get("id"))} for r in raw]
    records = [_parse_record(r, i, path, spec["path_field"], image_root) for i, r in enumerate(raw)]
    order = {"train": 0, "val": 1, "test": 2}
    all_splits = sorted({r.split for r in records}, key=lambda x: (order.get(x, 9), x))
    if splits is not None:
        wanted = set(splits)
        records = [r for r in records if r.split in wanted]
    missing = [r for r in records if not r.image_path.is_file()]
    if missing:
        examples = ", ".join(r.image for r in missing[:MISSING_EXAMPLES])
        which = f" of split {', '.join(sorted(set(splits)))}" if splits is not None else ""
        message = (f"{path}: {len(missing)} of {len(records)} image files{which} do not exist under {image_root} "
                   f"(e.g. {examples})")
        if not skip_missing:
            raise DatasetError(message + "; pass skip_missing (--skip-missing) to leave them out")
        log.warning("%s; skipping them", message)
        gone = {id(r) for r in missing}
        records = [r for r in records if id(r) not in gone]
    return Dataset(format=fmt, root=root.resolve(), image_root=image_root, annotation_file=path, records=records,
                   all_splits=all_splits)
