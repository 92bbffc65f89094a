"""Generate a SynthPedes world on disk in the CUHK-PEDES layout.

``DIR/reid_raw.json`` (CUHK-PEDES records), ``DIR/imgs/<split>/<pid>_c<cam>_<k>.jpg`` and
``DIR/attributes.json`` (per image: identity, camera, viewpoint, every attribute value, whether it is
visible, and what each caption states). Annotation files are byte-identical for the same seed and
sizes; images are written first and the annotation files last (atomically), so a killed run leaves
no annotation that points at missing images, and a re-run resumes by skipping finished images.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from tools.attributes import IMAGE_SLOTS, SLOT_NAMES

from .captions import make_caption
from .world import SPLITS, Shot, WorldConfig, archetypes, image_attributes, rng_for, sample_identity, sample_shots, visibility

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = ".synthpedes.json"


class WorldExistsError(RuntimeError):
    """The output folder holds a different world."""


def plan(cfg: WorldConfig) -> tuple[list[dict], list[dict], list[tuple[str, dict, Shot]]]:
    """Everything about the world except pixels: (reid_raw records, attribute records, render jobs)."""
    catalogue = archetypes(cfg.num_archetypes)
    records: list[dict] = []
    annotations: list[dict] = []
    jobs: list[tuple[str, dict, Shot]] = []
    pid = 0
    for split, count in cfg.split_sizes().items():
        for index in range(count):
            pid += 1
            person = sample_identity(cfg, split, index, catalogue)
            for k, shot in enumerate(sample_shots(cfg, split, index)):
                rel = f"{split}/{pid:05d}_c{shot.camera}_{k}.jpg"
                attrs = {**person, **image_attributes(shot)}
                visible = visibility(attrs, shot)
                rng = rng_for(cfg.seed, "captions", split, index, k)
                captions = [make_caption(attrs, visible, rng, cfg.mention_min, cfg.mention_max, cfg.noise_rate)
                            for _ in range(cfg.captions_per_image)]
                records.append({
                    "split": split,
                    "captions": [c["text"] for c in captions],
                    "file_path": rel,
                    "processed_tokens": [],
                    "id": pid,
                })
                annotations.append({
                    "file_path": rel,
                    "id": pid,
                    "split": split,
                    "camera": shot.camera,
                    "viewpoint": shot.viewpoint,
                    "attributes": {s: attrs.get(s) for s in SLOT_NAMES},
                    "visible": {s: bool(visible[s]) for s in SLOT_NAMES},
                    "captions": [{"stated": c["stated"], "noise": c["noise"]} for c in captions],
                })
                jobs.append((rel, person, shot))
    return records, annotations, jobs


def _render_chunk(args: tuple[str, list[tuple[str, dict, Shot]]]) -> int:
    from .render import render  # imported in the worker: keeps the parent light

    root, chunk = args
    for rel, person, shot in chunk:
        path = Path(root) / "imgs" / rel
        attrs = {**person, **image_attributes(shot)}
        img = render(attrs, shot)
        tmp = path.with_name(path.name + ".tmp")
        img.save(tmp, format="JPEG", quality=94)
        os.replace(tmp, path)
    return len(chunk)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _write_json_atomic(path: Path, obj: object, indent: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=False, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def generate(out: str | Path, cfg: WorldConfig = WorldConfig(), workers: int | None = None,
             progress: bool = True) -> dict:
    """Write a world to ``out``. Returns a summary with counts and images per second."""
    out = Path(out)
    manifest = {"format": "synthpedes", "version": FORMAT_VERSION, "config": asdict(cfg)}
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            existing = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing != manifest:
            raise WorldExistsError(f"{out} already holds a SynthPedes world with other settings "
                                   f"({manifest_path}); choose another --out or delete it")
    elif out.exists() and any(out.iterdir()):
        raise WorldExistsError(f"{out} is not empty and holds no SynthPedes world; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(manifest_path, manifest, indent=2)

    t0 = time.perf_counter()
    records, annotations, jobs = plan(cfg)
    for split in SPLITS:
        (out / "imgs" / split).mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not (out / "imgs" / j[0]).exists()]
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="img", desc="rendering",
               disable=not progress, smoothing=0.1)
    t_render = time.perf_counter()
    chunk_args = [(str(out), c) for c in _chunks(todo, 64)]
    if workers <= 1:
        for args in chunk_args:
            bar.update(_render_chunk(args))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for n in pool.map(_render_chunk, chunk_args):
                bar.update(n)
    bar.close()
    render_seconds = time.perf_counter() - t_render
    _write_json_atomic(out / "attributes.json", {
        "format": "synthpedes",
        "version": FORMAT_VERSION,
        "config": asdict(cfg),
        "slots": list(SLOT_NAMES),
        "image_slots": list(IMAGE_SLOTS),
        "images": annotations,
    })
    _write_json_atomic(out / "reid_raw.json", records)
    total = time.perf_counter() - t0
    return {
        "images": len(jobs),
        "rendered": len(todo),
        "identities": sum(cfg.split_sizes().values()),
        "seconds": round(total, 2),
        "images_per_second": round(len(todo) / render_seconds, 1) if todo and render_seconds > 0 else None,
    }

