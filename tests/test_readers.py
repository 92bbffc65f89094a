import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data import DatasetError, detect_format, read_dataset
from data.stats import main as stats_main

LAYOUTS = {
    # format: (annotation file, image root, path field, sample relative paths)
    "cuhk-pedes": ("reid_raw.json", "imgs", "file_path", ["CUHK01/0363004.png", "CUHK01/0363001.png", "test_query/p1.jpg"]),
    "icfg-pedes": ("ICFG-PEDES.json", "imgs", "file_path", ["test/0027/0027_010_05.jpg", "test/0027/0027_011_05.jpg",
                                                            "train/0100/0100_001_01.jpg"]),
    "rstpreid": ("data_captions.json", "imgs", "img_path", ["0000_c14_0031.jpg", "0000_c5_0022.jpg", "0001_c1_0001.jpg"]),
    "ufine6926": ("UFine6926_Annotations_1024.json", ".", "file_path", ["test/a/1.jpg", "test/a/2.jpg", "train/b/3.jpg"]),
}


def write_layout(root: Path, fmt: str, drop_image: str | None = None) -> Path:
    ann, img_root, field, paths = LAYOUTS[fmt]
    records = []
    for i, rel in enumerate(paths):
        pid = 1 if i < 2 else 2
        split = "test" if i < 2 else "train"
        rec = {"id": pid, "split": split, "captions": [f"caption {i} a", f"caption {i} b"], field: rel}
        if fmt in ("cuhk-pedes", "icfg-pedes"):
            rec["processed_tokens"] = [["caption"]]
        records.append(rec)
        if rel != drop_image:
            p = root / img_root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16)).save(p)
    root.mkdir(parents=True, exist_ok=True)
    (root / ann).write_text(json.dumps(records))
    return root


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_each_layout_reads_into_records(tmp_path, fmt):
    root = write_layout(tmp_path / fmt, fmt)
    assert detect_format(root) == fmt
    ds = read_dataset(root)
    assert ds.format == fmt and len(ds) == 3
    assert ds.splits == ["train", "test"]
    test = ds.split("test")
    assert [r.pid for r in test] == [1, 1]
    assert test[0].captions == ("caption 0 a", "caption 0 b")
    assert test[0].image_path.is_file()
    assert test[0].image == LAYOUTS[fmt][3][0]


def test_synthpedes_is_detected_and_summarised(small_world, capsys):
    assert detect_format(small_world) == "synthpedes"
    assert stats_main([str(small_world)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "synthpedes"
    assert set(out["splits"]) == {"train", "val", "test"}
    for split, n_ids in (("train", 12), ("val", 4), ("test", 10)):
        s = out["splits"][split]
        assert s["ids"] == n_ids and s["captions"] == 2 * s["images"] and s["ambiguity"] > 0.5
    # the same folder read as plain CUHK-PEDES
    assert read_dataset(small_world, "cuhk-pedes").format == "cuhk-pedes"


def test_stats_json_for_a_public_layout(tmp_path, capsys):
    root = write_layout(tmp_path / "r", "rstpreid")
    assert stats_main([str(root), "--format", "rstpreid"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"format": "rstpreid", "splits": {"train": {"ids": 1, "images": 1, "captions": 2},
                                                     "test": {"ids": 1, "images": 2, "captions": 4}}}


def test_extra_fields_are_kept(tmp_path):
    root = write_layout(tmp_path / "c", "cuhk-pedes")
    records = json.loads((root / "reid_raw.json").read_text())
    records[0]["diversity_captions"] = [[["a man."], ["red coat.", "a red coat."]]]
    (root / "reid_raw.json").write_text(json.dumps(records))
    r = read_dataset(root).records[0]
    assert r.extra["diversity_captions"][0][1] == ["red coat.", "a red coat."]
    assert "processed_tokens" not in r.extra


def _bad(tmp_path: Path, fmt: str = "cuhk-pedes"):
    return write_layout(tmp_path / "bad", fmt)


@pytest.mark.parametrize("case, pattern", [
    ("no_folder", "dataset folder not found"),
    ("no_annotation", "no annotation file found"),
    ("malformed", "malformed JSON"),
    ("not_list", "expected a JSON list"),
    ("missing_field", "record 1 lacks the field 'captions'"),
    ("bad_id", "'id' must be an integer"),
    ("missing_images", r"2 of 3 image files do not exist .*\(e\.g\. CUHK01/0363004\.png, CUHK01/0363001\.png\)"),
])
def test_bad_input_gives_one_clear_error(tmp_path, case, pattern):
    root = _bad(tmp_path)
    ann = root / "reid_raw.json"
    records = json.loads(ann.read_text())
    if case == "no_folder":
        root = tmp_path / "nowhere"
    elif case == "no_annotation":
        ann.unlink()
    elif case == "malformed":
        ann.write_text('[{"id": 1,')
    elif case == "not_list":
        ann.write_text('{"id": 1}')
    elif case == "missing_field":
        del records[1]["captions"]
        ann.write_text(json.dumps(records))
    elif case == "bad_id":
        records[0]["id"] = "abc"
        ann.write_text(json.dumps(records))
    elif case == "missing_images":
        for rel in LAYOUTS["cuhk-pedes"][3][:2]:
            (root / "imgs" / rel).unlink()
    with pytest.raises(DatasetError, match=pattern):
        read_dataset(root)
    # the CLI prints that one line, no traceback, and exits non-zero
    proc = subprocess.run([sys.executable, "-m", "data.stats", str(root)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_missing_images_can_be_skipped_with_a_warning(tmp_path, caplog):
    root = write_layout(tmp_path / "s", "rstpreid", drop_image="0000_c5_0022.jpg")
    with pytest.raises(DatasetError, match="1 of 3 image files"):
        read_dataset(root)
    ds = read_dataset(root, skip_missing=True)
    assert len(ds) == 2
    assert "0000_c5_0022.jpg" in caplog.text


def test_unknown_format_name(tmp_path):
    root = write_layout(tmp_path / "u", "cuhk-pedes")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        read_dataset(root, "market1501")


def test_cuhk_pedes_as_caption_all_json(tmp_path):
    root = write_layout(tmp_path / "c", "cuhk-pedes")
    (root / "reid_raw.json").rename(root / "caption_all.json")  # the original release's name
    assert detect_format(root) == "cuhk-pedes"
    ds = read_dataset(root)
    assert ds.annotation_file.name == "caption_all.json" and len(ds) == 3 and ds.splits == ["train", "test"]
    # reid_raw.json wins where both are present
    records = json.loads((root / "caption_all.json").read_text())
    (root / "reid_raw.json").write_text(json.dumps(records[:1]))
    assert len(read_dataset(root)) == 1


def test_caption_all_without_split_uses_the_standard_split_by_person_id(tmp_path):
    root = write_layout(tmp_path / "c", "cuhk-pedes")
    records = json.loads((root / "reid_raw.json").read_text())
    for rec, pid in zip(records, (11003, 11004, 12004)):
        del rec["split"]
        rec["id"] = pid
    (root / "reid_raw.json").unlink()
    (root / "caption_all.json").write_text(json.dumps(records))
    ds = read_dataset(root)
    assert [(r.pid, r.split) for r in ds] == [(11003, "train"), (11004, "val"), (12004, "test")]


def test_an_annotation_looking_json_is_reported_not_taken_for_an_image_folder(tmp_path):
    from data.readers import LayoutError
    from tools.gallery import items_for

    root = write_layout(tmp_path / "c", "cuhk-pedes")
    (root / "reid_raw.json").rename(root / "annotations_v2.json")
    with pytest.raises(LayoutError, match=r"annotations_v2\.json: looks like an annotation file \(records with "
                                          r"captions, file_path, id, split\).*caption_all\.json"):
        detect_format(root)
    with pytest.raises(LayoutError, match="annotations_v2.json"):
        items_for(root, "test")  # never indexed as a plain folder of images
    proc = subprocess.run([sys.executable, "-m", "data.stats", str(root)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "annotations_v2.json" in lines[0]
    # a folder of images with an unrelated JSON file is still a folder of images
    (root / "annotations_v2.json").write_text(json.dumps({"camera": "c3", "date": "2024-05-01"}))
    name, items = items_for(root, "test")
    assert len(items) == 3 and all(it.metadata["format"] == "folder" for it in items)


def test_missing_images_in_other_splits_do_not_matter(tmp_path):
    root = write_layout(tmp_path / "m", "cuhk-pedes", drop_image="test_query/p1.jpg")  # a train image
    with pytest.raises(DatasetError, match="1 of 3 image files"):
        read_dataset(root)
    test = read_dataset(root, splits=["test"])
    assert len(test) == 2 and test.splits == ["test"]
    with pytest.raises(DatasetError, match="1 of 1 image files of split train"):
        read_dataset(root, splits=["train"])
