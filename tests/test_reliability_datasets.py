"""Datasets stay in their folder: image paths that leave the image root are refused (or skipped and
counted), never read, indexed or sent to an MLLM; odd annotation files give one clear line."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from data import DatasetError, read_dataset
from data.readers import FORMATS, resolve_image
from data.stats import main as stats_main
from data.synthpedes.ceiling import AnnotationError, load_annotations
from graphs.rda import run_rda
from tools.gallery import main as gallery_main
from tools.mllm.base import MLLM, Answer, Verdict

from .helpers import tiny_model_dir
from .test_readers import LAYOUTS, write_layout

HOSTILE = ("absolute", "climb", "symlink-file", "symlink-dir")


def _outside_photo(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (255, 0, 0)).save(secret)
    return secret


def _make_hostile(root: Path, fmt: str, case: str, secret: Path, record: int = 0) -> str:
    """Point record ``record`` of a layout at ``secret`` (outside the dataset) the way ``case`` says;
    returns the path written into the annotation file."""
    ann = root / (FORMATS[fmt]["annotation"])
    image_root = root / FORMATS[fmt]["images"]
    field = FORMATS[fmt]["path_field"]
    records = json.loads(ann.read_text())
    if case == "absolute":
        rel = str(secret)
    elif case == "climb":
        rel = os.path.relpath(secret, image_root)
        assert rel.startswith("..")
    elif case == "symlink-file":
        rel = "evil/link.png"
        (image_root / "evil").mkdir(parents=True, exist_ok=True)
        (image_root / rel).symlink_to(secret)
    else:  # a folder inside the image root that is a link to a folder outside
        (image_root / "linked").symlink_to(secret.parent, target_is_directory=True)
        rel = "linked/secret.png"
    records[record][field] = rel
    ann.write_text(json.dumps(records))
    return rel


@pytest.mark.parametrize("fmt", list(LAYOUTS) + ["synthpedes"])
@pytest.mark.parametrize("case", HOSTILE)
def test_image_paths_outside_the_image_root_are_refused_in_every_format(tmp_path, fmt, case):
    secret = _outside_photo(tmp_path)
    if fmt == "synthpedes":
        root = write_layout(tmp_path / fmt, "cuhk-pedes")
        (root / "attributes.json").write_text(json.dumps({"images": []}))
    else:
        root = write_layout(tmp_path / fmt, fmt)
    rel = _make_hostile(root, fmt, case, secret)
    assert (root / FORMATS[fmt]["images"] / rel).is_file()  # the file is there: only the rule refuses it
    with pytest.raises(DatasetError) as err:
        read_dataset(root, fmt)
    message = str(err.value)
    assert "record 0" in message and ("outside the dataset" in message or "absolute path" in message)
    assert "\n" not in message
    ds = read_dataset(root, fmt, skip_missing=True)  # skipped (and counted in the warning)
    assert len(ds) == 2
    assert all(r.image_path.is_relative_to(ds.image_root) for r in ds)
    assert all(r.image_path.resolve() != secret.resolve() for r in ds)


def test_resolve_image_rules(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"")
    ok, why = resolve_image(root.resolve(), "a/../a/x.jpg")  # climbing back inside is fine
    assert why is None and ok == (root / "a" / "x.jpg").resolve()
    for rel, reason in [("/etc/passwd", "absolute"), ("../x.jpg", "outside"), ("a/../../x.jpg", "outside"),
                        ("a\x00.jpg", "NUL byte"), ("a/" + "x" * 5000 + ".jpg", "bytes long"),
                        ("a/" + "y" * 300 + ".jpg", "name in the path is 304 bytes")]:
        got, why = resolve_image(root.resolve(), rel)
        assert got is None and reason in why, (rel[:20], why)


def test_outside_records_are_never_indexed(tmp_path, capsys):
    secret = _outside_photo(tmp_path)
    root = write_layout(tmp_path / "ds", "rstpreid")
    _make_hostile(root, "rstpreid", "climb", secret, record=0)  # record 0 is in the test split
    base = ["--model", f"local-dir:{tiny_model_dir(tmp_path)}", "--data-dir", str(tmp_path / "db")]
    assert gallery_main(base + ["index", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "record 0" in err[0] and "--skip-missing" in err[0]
    assert gallery_main(base + ["index", str(root), "--skip-missing"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 1  # the other test photo; the climbing record is left out


class SpyMLLM(MLLM):
    """Records every photo it is asked about."""

    name = "spy"

    def __init__(self):
        super().__init__()
        self.paths = []

    def _verify(self, image, text):
        self.paths.append(Path(image.path))
        return Verdict(True, 1.0)

    def _ask(self, image, slots):
        self.paths.append(Path(image.path))
        return [Answer(s, None, 0.0) for s in slots]


def test_rda_never_sends_a_photo_outside_the_dataset(tmp_path):
    secret = _outside_photo(tmp_path)
    root = write_layout(tmp_path / "ds", "cuhk-pedes")
    _make_hostile(root, "cuhk-pedes", "symlink-file", secret, record=2)  # record 2 is the train record
    spy = SpyMLLM()
    with pytest.raises(DatasetError, match=r"record 2 \(image evil/link.png\): outside the dataset"):
        run_rda(root, tmp_path / "out.json", spy, progress=False)
    report = run_rda(root, tmp_path / "out.json", spy, progress=False, skip_missing=True)
    assert report["skipped"] == {"image path refused": 1}
    assert spy.paths == []  # nothing was asked: the only train record points outside
    assert secret.resolve() not in [p.resolve() for p in spy.paths]


def test_synthpedes_attribute_file_paths_stay_inside(small_world, tmp_path):
    world = tmp_path / "w"
    shutil.copytree(small_world, world)
    data = json.loads((world / "attributes.json").read_text())
    data["images"][3]["file_path"] = "../../outside.png"
    (world / "attributes.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"image 3: file_path '../../outside.png': outside the dataset"):
        load_annotations(world)


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_annotation_files_with_a_byte_order_mark_are_read(tmp_path, fmt):
    root = write_layout(tmp_path / fmt, fmt)
    ann = root / LAYOUTS[fmt][0]
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())  # what Windows editors write
    assert len(read_dataset(root)) == 3


def test_a_bom_annotation_file_of_an_unknown_name_is_still_recognised(tmp_path):
    from data.readers import LayoutError, detect_format

    root = write_layout(tmp_path / "x", "cuhk-pedes")
    (root / "reid_raw.json").rename(root / "mine.json")
    (root / "mine.json").write_bytes(b"\xef\xbb\xbf" + (root / "mine.json").read_bytes())
    with pytest.raises(LayoutError, match="looks like an annotation file"):
        detect_format(root)


@pytest.mark.parametrize("case, pattern", [
    ("deep", "nested too deeply"),
    ("nul-path", r"record 1 .*NUL byte"),
    ("long-path", r"record 0 .*5004 bytes long"),
    ("nul-in-file", "malformed JSON"),
])
def test_absurd_annotation_files_give_one_line(tmp_path, case, pattern, capsys):
    root = write_layout(tmp_path / "bad", "cuhk-pedes")
    ann = root / "reid_raw.json"
    records = json.loads(ann.read_text())
    if case == "deep":
        ann.write_text("[" * 200_000 + "]" * 200_000)
    elif case == "nul-path":
        records[1]["file_path"] = "CUHK01/03630\x00.png"
        ann.write_text(json.dumps(records))
    elif case == "long-path":
        records[0]["file_path"] = "a/" + "x" * 5000 + ".j"
        ann.write_text(json.dumps(records))
    else:
        ann.write_bytes(ann.read_bytes()[:10] + b"\x00" + ann.read_bytes()[10:])
    with pytest.raises(DatasetError, match=pattern) as err:
        read_dataset(root)
    assert "\n" not in str(err.value) and len(str(err.value)) < 1000
    assert stats_main([str(root)]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0])


def test_a_dataset_folder_path_with_a_nul_or_5000_characters_is_one_line(tmp_path):
    for root in (str(tmp_path / "a\x00b"), str(tmp_path / ("x" * 5000))):
        with pytest.raises(DatasetError, match="NUL byte|bytes long"):
            read_dataset(root)
