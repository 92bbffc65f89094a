"""The recogniser's person-presence head: pictures with no person in them, and the head's training.

Run through ``python -m train.attributes DIR --presence --out presence.safetensors``. Positives are
SynthPedes photos (DIR's train split; its val split picks the threshold and its test split is held
out). Negatives are drawn here, with no download: SynthPedes scenes rendered without the person,
the same with an occluder in front, noise, flat colours, gradients and stripes, random shapes,
pages of text, animal shapes (a cat or a dog in profile), and SynthPedes photos cut into patches
and shuffled (every colour of a person, no person). Each negative is drawn on a canvas of a random
aspect ratio and squashed to 128x256, as a real photo is when the recogniser reads it.

The recogniser stays frozen (its attribute heads' outputs do not change): the head is a small MLP
on every member's shared features (:class:`tools.mllm.recogniser.PresenceHead`).
"""

from __future__ import annotations

import json
import logging
import string
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from safetensors.torch import save_file

from data.synthpedes.ceiling import AnnotationError, load_annotations
from tools.mllm.recogniser import INPUT_SIZE, PresenceHead, Recogniser

from .pairs import load_all_pixels

log = logging.getLogger(__name__)

HEIGHT, WIDTH = INPUT_SIZE


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of a negative before it is squashed: portrait like a crop, or a landscape photo."""
    if rng.random() < 0.5:
        return WIDTH * 2, HEIGHT * 2
    w = int(rng.integers(240, 480))
    return w, int(w * rng.uniform(0.55, 1.0))


def _finish(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Squash to the recogniser's input, then a camera's cast, blur and noise (as SynthPedes renders)."""
    img = img.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BOX)
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.2))))
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    arr += rng.normal(0.0, rng.uniform(0.0, 6.0), size=arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(x) for x in rng.integers(0, 256, 3))  # type: ignore[return-value]


def scene(rng: np.random.Generator, occluder: bool = False) -> np.ndarray:
    """A SynthPedes camera's scene with nobody in it (optionally a box, bench or car in front)."""
    from data.synthpedes.render import H, W, draw_background, draw_occluder
    from data.synthpedes.world import CAMERAS

    img = Image.new("RGB", (W, H))
    draw_background(img, int(rng.integers(len(CAMERAS))), rng)
    if occluder:
        draw_occluder(ImageDraw.Draw(img), int(rng.integers(3)), float(rng.uniform(0.3, 0.8)) * H, rng)
    return _finish(img, rng)


def noise(rng: np.random.Generator) -> np.ndarray:
    """Gaussian or uniform noise, per pixel or in blocks."""
    block = int(rng.choice([1, 2, 4, 8, 16]))
    h, w = HEIGHT // block, WIDTH // block
    if rng.random() < 0.5:
        small = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    else:
        small = np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(10, 70), size=(h, w, 3)), 0, 255).astype(np.uint8)
    return _finish(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.NEAREST), rng)


def flat(rng: np.random.Generator) -> np.ndarray:
    """One colour, or a gradient between two."""
    w, h = _canvas_size(rng)
    if rng.random() < 0.5:
        return _finish(Image.new("RGB", (w, h), _colour(rng)), rng)
    a, b = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    t = np.linspace(0, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
    ramp = a[None] * (1 - t[:, None]) + b[None] * t[:, None]
    arr = np.broadcast_to(ramp[:, None, :], (h, w, 3)) if len(t) == h else np.broadcast_to(ramp[None], (h, w, 3))
    return _finish(Image.fromarray(arr.astype(np.uint8)), rng)


def stripes(rng: np.random.Generator) -> np.ndarray:
    """Stripes or a checkerboard of two or three colours (a wall, a fabric, a floor)."""
    w, h = _canvas_size(rng)
    img = Image.new("RGB", (w, h), _colour(rng))
    d = ImageDraw.Draw(img)
    colours = [_colour(rng) for _ in range(int(rng.integers(1, 3)))]
    step = int(rng.integers(8, 60))
    if rng.random() < 0.5:
        vertical = rng.random() < 0.5
        for k, x in enumerate(range(0, w if vertical else h, step)):
            c = colours[k % len(colours)]
            if k % 2:
                d.rectangle([x, 0, x + step // 2, h] if vertical else [0, x, w, x + step // 2], fill=c)
    else:
        for yi, y in enumerate(range(0, h, step)):
            for xi, x in enumerate(range(0, w, step)):
                if (xi + yi) % 2:
                    d.rectangle([x, y, x + step, y + step], fill=colours[0])
    return _finish(img, rng)


def shapes(rng: np.random.Generator) -> np.ndarray:
    """Random rectangles, ellipses, polygons and lines on a plain or scene background."""
    w, h = _canvas_size(rng)
    img = Image.new("RGB", (w, h), _colour(rng))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 25))):
        c = _colour(rng)
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.6) * w, y0 + rng.uniform(0.05, 0.6) * h
        kind = int(rng.integers(4))
        if kind == 0:
            d.rectangle([x0, y0, x1, y1], fill=c)
        elif kind == 1:
            d.ellipse([x0, y0, x1, y1], fill=c)
        elif kind == 2:
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(int(rng.integers(3, 7)))]
            d.polygon(pts, fill=c)
        else:
            d.line([x0, y0, x1, y1], fill=c, width=int(rng.integers(2, 14)))
    return _finish(img, rng)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        return ImageFont.load_default()


def text_page(rng: np.random.Generator) -> np.ndarray:
    """A page of text: lines of random words on paper, a sign or a screen."""
    w, h = _canvas_size(rng)
    paper = (int(rng.integers(200, 256)),) * 3 if rng.random() < 0.7 else _colour(rng)
    ink = (int(rng.integers(0, 80)),) * 3 if sum(paper) > 380 else (int(rng.integers(180, 256)),) * 3
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    size = int(rng.integers(10, 28))
    font = _font(size)
    y = float(rng.uniform(2, 20))
    letters = string.ascii_letters + "     .,"
    while y < h:
        x = float(rng.uniform(2, 20))
        line = "".join(rng.choice(list(letters), size=int(rng.integers(8, 60))))
        d.text((x, y), line, fill=ink, font=font)
        y += size * rng.uniform(1.1, 1.8)
    if rng.random() < 0.3:
        img = img.rotate(float(rng.uniform(-12, 12)), expand=False, fillcolor=paper)
    return _finish(img, rng)


def animal(rng: np.random.Generator) -> np.ndarray:
    """A cat or dog in profile: body, head, ears, legs and tail, on a scene or a plain floor."""
    w, h = _canvas_size(rng)
    img = Image.new("RGB", (w, h), _colour(rng)) if rng.random() < 0.5 else \
        Image.fromarray(scene(rng)).resize((w, h), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    fur = [(30, 30, 30), (120, 120, 120), (210, 130, 50), (240, 240, 235), (110, 70, 40), (200, 180, 150)]
    c = fur[int(rng.integers(len(fur)))]
    s = rng.uniform(0.35, 0.9) * min(w, h * 1.4)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.45, 0.75) * h
    sign = 1 if rng.random() < 0.5 else -1
    body = [cx - 0.45 * s, cy - 0.18 * s, cx + 0.45 * s, cy + 0.18 * s]
    d.ellipse(body, fill=c)
    for lx in (-0.35, -0.2, 0.2, 0.35):  # legs
        d.rectangle([cx + lx * s - 0.04 * s, cy + 0.05 * s, cx + lx * s + 0.04 * s, cy + 0.42 * s], fill=c)
    hx, hy, r = cx + sign * 0.5 * s, cy - 0.25 * s, 0.16 * s
    d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=c)
    for ex in (-0.6, 0.6):  # ears
        d.polygon([(hx + ex * r - 0.35 * r, hy - 0.6 * r), (hx + ex * r + 0.35 * r, hy - 0.6 * r),
                   (hx + ex * r, hy - 1.5 * r)], fill=c)
    d.line([cx - sign * 0.42 * s, cy - 0.05 * s, cx - sign * 0.65 * s, cy - 0.45 * s * rng.uniform(0.3, 1.0)],
           fill=c, width=max(2, int(0.06 * s)))
    for ex in (-0.35, 0.35):  # eyes
        d.ellipse([hx + ex * r - 0.1 * r, hy - 0.15 * r, hx + ex * r + 0.1 * r, hy + 0.05 * r], fill=(20, 120, 40))
    return _finish(img, rng)


def shuffled(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    """A person photo cut into a grid of patches and shuffled: the colours stay, the person goes."""
    rows, cols = int(rng.choice([4, 8, 16])), int(rng.choice([2, 4, 8]))
    ph, pw = HEIGHT // rows, WIDTH // cols
    patches = [photo[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] for r in range(rows) for c in range(cols)]
    order = rng.permutation(len(patches))
    out = np.zeros_like(photo)
    for k, p in enumerate(order):
        r, c = divmod(k, cols)
        out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = patches[p]
    return out


#: negative kinds -> how one is drawn (``shuffled`` also needs a person photo)
NEGATIVE_KINDS: dict[str, Callable[..., np.ndarray]] = {
    "scene": scene, "occluder": lambda rng: scene(rng, occluder=True), "noise": noise, "flat": flat,
    "stripes": stripes, "shapes": shapes, "text": text_page, "animal": animal, "shuffled": shuffled,
}


def negatives(n: int, seed: int, photos: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """``n`` pictures with no person, the kinds in turn: uint8 [n, 256, 128, 3] and each one's kind.
    ``photos`` (person photos) feed the shuffled kind; without them it is skipped."""
    rng = np.random.default_rng(seed)
    kinds = [k for k in NEGATIVE_KINDS if k != "shuffled" or photos is not None and len(photos)]
    out = np.zeros((n, HEIGHT, WIDTH, 3), dtype=np.uint8)
    names = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "shuffled":
            out[i] = shuffled(rng, photos[int(rng.integers(len(photos)))])  # type: ignore[index]
        else:
            out[i] = NEGATIVE_KINDS[kind](rng)
        names.append(kind)
    return out, names


def _features(rec: Recogniser, pixels: np.ndarray, batch: int = 128) -> torch.Tensor:
    return torch.cat([rec.features(pixels[i:i + batch]).cpu() for i in range(0, len(pixels), batch)])


def _photos(root: Path, ann: dict, split: str, n: int, seed: int, workers: int, progress: bool) -> np.ndarray:
    images = [im for im in ann["images"] if im["split"] == split]
    if not images:
        return np.zeros((0, HEIGHT, WIDTH, 3), np.uint8)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(n, len(images)), replace=False)
    return load_all_pixels([root / "imgs" / images[i]["file_path"] for i in sorted(pick)], INPUT_SIZE, workers,
                           progress)


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W, 3] squashed to ``size`` (height, width), as the recogniser reads photos."""
    if pixels.shape[1:3] == tuple(size):
        return pixels
    return np.stack([np.asarray(Image.fromarray(p).resize((size[1], size[0]), Image.Resampling.BICUBIC))
                     for p in pixels]) if len(pixels) else np.zeros((0, *size, 3), np.uint8)


def _accuracy(p: np.ndarray, positive: np.ndarray, kinds: Sequence[str], threshold: float) -> dict:
    said = p >= threshold
    out = {"positives": int(positive.sum()), "negatives": int((~positive).sum()),
           "positive_recall": round(float(said[positive].mean()), 4) if positive.any() else None,
           "negative_recall": round(float((~said[~positive]).mean()), 4) if (~positive).any() else None}
    out["balanced_accuracy"] = round((out["positive_recall"] + out["negative_recall"]) / 2, 4) \
        if out["positive_recall"] is not None and out["negative_recall"] is not None else None
    out["negative_recall_by_kind"] = {k: round(float((~said[[j for j, kk in enumerate(kinds) if kk == k]]).mean()), 4)
                                      for k in sorted(set(kinds) - {"person"})}
    return out


def fit_presence(root: str | Path, out: str | Path, recogniser: str | Path, photos: int = 3000,
                 negatives_per_split: int = 3000, heldout: int = 1000, epochs: int = 300, lr: float = 3e-3,
                 seed: int = 0, min_positive_recall: float = 0.998, workers: int = 4, progress: bool = True,
                 attach: bool = True, mirror: bool = True) -> dict:
    """Train the presence head on the frozen ``recogniser``'s features and write ``out`` (+ .json).

    Train: ``photos`` photos of DIR's train split (and, with ``mirror``, their mirror images)
    against ``negatives_per_split`` negatives (seed ``seed``). The
    threshold is the highest that keeps ``min_positive_recall`` of DIR's val photos (a person
    taken for no person costs a verification) on val negatives of seed ``seed + 1``; the report's
    held-out figures are on DIR's test photos and negatives of seed ``seed + 2``, which nothing
    was fitted on. With ``attach`` the recogniser's JSON names the file (``presence``), so that
    loading the recogniser loads the head.

    Raises :class:`AnnotationError` when DIR has no train photos.
    """
    root, out, recogniser = Path(root), Path(out), Path(recogniser)
    t0 = time.perf_counter()
    ann = load_annotations(root)
    torch.manual_seed(seed)
    rec = Recogniser.load(recogniser, "cpu")
    pos = {split: _photos(root, ann, split, n, seed, workers, progress)
           for split, n in (("train", photos), ("val", heldout), ("test", heldout))}
    if not len(pos["train"]):
        raise AnnotationError(f"{root}: no train photos in attributes.json")
    neg = {"train": negatives(negatives_per_split, seed, pos["train"]),
           "val": negatives(max(1, len(pos["val"])), seed + 1, pos["val"] if len(pos["val"]) else pos["train"]),
           "test": negatives(max(1, len(pos["test"])), seed + 2, pos["test"] if len(pos["test"]) else pos["train"])}
    data = {}
    for split in ("train", "val", "test"):
        pixels = _resize(np.concatenate([pos[split], neg[split][0]]), rec.input_size)
        kinds = ["person"] * len(pos[split]) + neg[split][1]
        log.info("presence: %s features of %d pictures", split, len(pixels))
        data[split] = (_features(rec, pixels), torch.tensor([k == "person" for k in kinds]), kinds)
    x, y, _ = data["train"]
    if mirror:  # each train photo also mirrored: a person seen from the other side is still a person
        flipped = _features(rec, _resize(np.ascontiguousarray(pos["train"][:, :, ::-1]), rec.input_size))
        x, y = torch.cat([x, flipped]), torch.cat([y, torch.ones(len(flipped), dtype=torch.bool)])
    head = PresenceHead(x.shape[1])
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-3)
    weight = (~y).sum().float() / y.sum().clamp_min(1).float()  # balance the classes
    for _ in range(epochs):
        head.train()
        logits = head(x)
        loss = F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        probs = {split: torch.sigmoid(head(d[0])).numpy() for split, d in data.items()}
    # the threshold: as high as keeps the val positives' recall (fixed before looking at test)
    val_pos = np.sort(probs["val"][data["val"][1].numpy()]) if len(pos["val"]) else np.sort(probs["train"][y.numpy()])
    k = int(np.floor((1.0 - min_positive_recall) * len(val_pos)))
    threshold = float(min(0.5, val_pos[k] - 1e-6)) if len(val_pos) else 0.5
    report = {"threshold": round(threshold, 6), "seconds": round(time.perf_counter() - t0, 1),
              "train": _accuracy(probs["train"], data["train"][1].numpy(), data["train"][2], threshold),
              "val": _accuracy(probs["val"], data["val"][1].numpy(), data["val"][2], threshold),
              "heldout_test": _accuracy(probs["test"], data["test"][1].numpy(), data["test"][2], threshold)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out))
    config = {**head.config, "threshold": report["threshold"], "recogniser": recogniser.name,
              "trained_on": root.resolve().name, "train_photos": len(pos["train"]),
              "train_negatives": negatives_per_split, "negative_kinds": list(NEGATIVE_KINDS), "seed": seed,
              "epochs": epochs, "min_positive_recall": min_positive_recall, "mirror": mirror,
              "heldout_test": report["heldout_test"]}
    out.with_suffix(".json").write_text(json.dumps(config, indent=2))
    if attach:
        rel = out.name if out.parent.resolve() == recogniser.parent.resolve() else str(out.resolve())
        rec.save_config({"presence": rel, "classes": rec.classes})
        report["attached_to"] = str(recogniser)
    report["out"] = str(out)
    return report
