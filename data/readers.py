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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from tools.text import printable, printable_path

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


#: longest path, and longest file or folder name, accepted (Linux's PATH_MAX and NAME_MAX, in bytes)
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def _show(path: Any) -> str:
    """A path (or a dataset's path field) as one printable line, at most 300 characters."""
    try:
        return printable(printable_path(path), max_len=300)
    except (TypeError, ValueError):
        return printable(repr(path), max_len=300)


def path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot name a file on this system (a NUL byte; longer than
    :data:`MAX_PATH_BYTES`, or a name longer than :data:`MAX_NAME_BYTES`), or None."""
    raw = os.fsencode(path)
    if b"\x00" in raw:
        return "the path contains a NUL byte"
    if len(raw) <= MAX_NAME_BYTES:  # the usual case, checked at once
        return None
    if len(raw) > MAX_PATH_BYTES:
        return f"the path is {len(raw)} bytes long (at most {MAX_PATH_BYTES})"
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        return f"a name in the path is {longest} bytes long (at most {MAX_NAME_BYTES})"
    return None


def resolve_image(image_root: Path, rel: str) -> tuple[Path | None, str | None]:
    """``(absolute path, None)`` for a record's image path that lies inside ``image_root`` (an
    already resolved folder) once symbolic links are resolved, else ``(None, why not)``.

    Refused: an absolute path, a path that climbs out with ``..``, a symbolic link (of the file or
    of a folder on the way) that points outside the image root, a NUL byte, an overlong path. A
    dataset's records never make the project read, index or send a file outside the dataset."""
    problem = path_problem(rel)
    if problem:
        return None, problem
    if os.path.isabs(rel) or rel.startswith("\\"):
        return None, "an absolute path (image paths are relative to the image folder)"
    root = str(image_root)
    try:
        real = os.path.realpath(os.path.join(root, rel))
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        return None, f"cannot be resolved ({printable(str(e), max_len=120)})"
    # the string test is Path.is_relative_to on resolved paths, without building Path objects
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        return None, "outside the dataset's image folder (after resolving .. and symbolic links)"
    problem = path_problem(real)
    return (None, problem) if problem else (Path(real), None)


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


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
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if isinstance(data, dict):  # {"annotations": [...]} and the like
        data = next((v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    keys = [k for k in _RECORD_KEYS if k in data[0]]
    return keys if ("captions" in keys or len(keys) >= 2) else None


def _folder(root: str | Path) -> Path:
    """``root`` as a Path, or a one-line :class:`DatasetError` when it cannot be or is not a folder
    (missing, or a file, e.g. the annotation file itself)."""
    problem = path_problem(root)
    if problem:
        raise DatasetError(f"{_show(root)}: {problem}")
    root = Path(root)
    if root.is_dir():
        return root
    if root.exists():
        raise DatasetError(f"{_show(root)}: a file, not a dataset folder (give the folder that holds the annotation "
                           "file and the images)")
    raise DatasetError(f"{_show(root)}: dataset folder not found")


def detect_format(root: str | Path) -> str:
    """Tell the format of a dataset folder from its annotation file's name.

    Raises:
        LayoutError: no known annotation file, but a JSON file that looks like one (named).
        DatasetError: no annotation file at all (a plain folder of images, for callers that take those).
    """
    root = _folder(root)
    if (root / "reid_raw.json").is_file() and (root / "attributes.json").is_file():
        return "synthpedes"
    for name in FORMATS:
        if name != "synthpedes" and any((root / a).is_file() for a in annotation_names(name)):
            return name
    expected = ", ".join(sorted({a for f in FORMATS for a in annotation_names(f)}))
    for candidate in sorted(root.glob("*.json")):
        keys = _looks_like_annotations(candidate)
        if keys:
            raise LayoutError(f"{_show(candidate)}: looks like an annotation file (records with {', '.join(keys)}) but no "
                              f"reader knows its name (expected one of: {expected}); rename it to its layout's name")
    raise DatasetError(f"{_show(root)}: no annotation file found (expected one of: {expected})")


def load_json(path: str | Path, what: str = "annotation file") -> Any:
    """A JSON file's value; one-line :class:`DatasetError` for a missing, malformed or absurd file.

    UTF-8 with or without a byte-order mark (which Windows editors write) is read. Nesting deeper
    than Python's recursion limit (about 1,000 levels; no annotation file nests more than a few) is
    refused as such, not as a crash."""
    path = Path(path)
    problem = path_problem(path)
    if problem:
        raise DatasetError(f"{_show(path)}: {problem}")
    if not path.is_file():
        raise DatasetError(f"{_show(path)}: {what} not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{_show(path)}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{_show(path)}: not UTF-8 text") from None
    except RecursionError:
        raise DatasetError(f"{_show(path)}: JSON nested too deeply to be {what}") from None
    except OSError as e:
        raise DatasetError(f"{_show(path)}: cannot be read ({e.strerror or e})") from None


def load_json_list(path: Path) -> list:
    """A JSON file holding a list; one-line :class:`DatasetError` for a missing or malformed file
    (see :func:`load_json`)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{_show(path)}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _cuhk_split(pid: Any) -> Any:
    try:
        n = int(pid)
    except (TypeError, ValueError):
        return None  # reported by the record check
    return next((name for name, lo, hi in CUHK_SPLIT if lo <= n <= hi), "unknown")


class _Where:
    """``FILE: record N`` for error messages, made only when one is raised (reading is hot)."""

    def __init__(self, path: Path, index: int):
        self.path, self.index = path, index

    def __format__(self, spec: str) -> str:
        return f"{_show(self.path)}: record {self.index}"


def _parse_record(raw: Any, index: int, path: Path, path_field: str, image_root: Path,
                  refused: dict[int, str]) -> Record:
    where = _Where(path, index)
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is not an object")
    for key in ("id", "captions", "split", path_field):
        if key not in raw:
            raise DatasetError(f"{where} lacks the field '{key}'")
    pid = raw["id"]
    if isinstance(pid, bool) or not isinstance(pid, (int, str)) or (isinstance(pid, str) and not pid.strip().isdigit()):
        raise DatasetError(f"{where}: 'id' must be an integer, got {printable(repr(pid), max_len=80)}")
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
    resolved, problem = resolve_image(image_root, rel)
    if problem:
        refused[index] = problem
    cam = _CAMERA.search(rel.rsplit("/", 1)[-1]) if not problem else None
    # a refused path is kept unresolved only to name the record; read_dataset never returns it
    return Record(pid=int(pid), image=rel, image_path=resolved or image_root / "refused", captions=tuple(captions),
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
    root = _folder(root)
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
    refused: dict[int, str] = {}
    records = [_parse_record(r, i, path, spec["path_field"], image_root, refused) for i, r in enumerate(raw)]
    order = {"train": 0, "val": 1, "test": 2}
    all_splits = sorted({r.split for r in records}, key=lambda x: (order.get(x, 9), x))
    numbered = list(enumerate(records))
    if splits is not None:
        wanted = set(splits)
        numbered = [(i, r) for i, r in numbered if r.split in wanted]
    which = f" of split {', '.join(sorted(set(splits)))}" if splits is not None else ""
    outside = [(i, r) for i, r in numbered if i in refused]
    if outside:
        i, r = outside[0]
        message = (f"{_show(path)}: record {i} (image {_show(r.image)}): {refused[i]}"
                   + (f"; {len(outside) - 1} more records{which} too" if len(outside) > 1 else ""))
        if not skip_missing:
            raise DatasetError(message + "; fix the paths, or pass skip_missing (--skip-missing) to leave them out")
        log.warning("%s; skipping %d records whose image path is refused", message, len(outside))
        numbered = [(i, r) for i, r in numbered if i not in refused]
    missing = [r for _, r in numbered if not _exists(r.image_path)]
    if missing:
        examples = ", ".join(_show(r.image) for r in missing[:MISSING_EXAMPLES])
        message = (f"{_show(path)}: {len(missing)} of {len(numbered)} image files{which} do not exist under "
                   f"{_show(image_root)} (e.g. {examples})")
        if not skip_missing:
            raise DatasetError(message + "; pass skip_missing (--skip-missing) to leave them out")
        log.warning("%s; skipping them", message)
        gone = {id(r) for r in missing}
        numbered = [(i, r) for i, r in numbered if id(r) not in gone]
    records = [r for _, r in numbered]
    return Dataset(format=fmt, root=root.resolve(), image_root=image_root, annotation_file=path, records=records,
                   all_splits=all_splits)
