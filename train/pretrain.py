"""Attribute pre-training of the image and text towers on *separate* SynthPedes worlds.

Retrieval models in the literature start from image towers pre-trained elsewhere (ImageNet, CLIP,
pedestrian-attribute datasets such as PA-100K). Nothing like that can be downloaded here, so the
project makes its own: a SynthPedes world with another seed (never a benchmark world) whose
attribute annotations teach the image tower to see colours, garments and accessories in the
right places before contrastive training teaches the text tower to point at them. The training
split of the retrieval dataset is still used through its captions only.

The text tower gets the same treatment from the same worlds' captions: a linear head per slot
reads, from the caption's embedding, the value the caption states (or "not stated"). Without it,
contrastive training on 26k captions leaves much of what a caption says out of its embedding
(linear probes on the previous shipped model's test captions read a stated shoe colour 49% of
the time, a bag colour 72%): a detail the text tower drops cannot be matched however well the
image tower sees it.

>>> pretrain_visual(clip.visual, "synthpedes-pretrain", (128, 128), mean, std, epochs=6)  # doctest: +SKIP
>>> pretrain_text(clip, "synthpedes-pretrain", tokenizer, epochs=1)                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.synthpedes.ceiling import AnnotationError, load_annotations
from tools.attributes import SLOT_NAMES

from .pairs import augment, load_all_pixels, normalise

log = logging.getLogger(__name__)


NOT_STATED = "not stated"


def _worlds(world: str | Path | Sequence[str | Path], forbidden: str | Path | None) -> list[Path]:
    worlds = [Path(world)] if isinstance(world, (str, Path)) else [Path(w) for w in world]
    if not worlds:
        raise ValueError("no pre-training world given")
    for w in worlds:
        if forbidden is not None and w.resolve() == Path(forbidden).resolve():
            raise ValueError(f"{w}: the pre-training world must not be the dataset being trained on")
    return worlds


def stated_captions(world: Path, split: str | None = None) -> tuple[list[str], np.ndarray]:
    """Every caption of a world (of one split; ``None``: all) and [N, S] class indices of what it
    states: the slot's value, or its last class, "not stated"."""
    import json

    raw_path = world / "reid_raw.json"
    if not raw_path.is_file():
        raise AnnotationError(f"{world}: no reid_raw.json (captions)")
    texts_by_file = {r["file_path"]: r["captions"] for r in json.loads(raw_path.read_text())}
    texts, rows = [], []
    for im in load_annotations(world)["images"]:
        if split is not None and im["split"] != split:
            continue
        captions = texts_by_file.get(im["file_path"])
        if captions is None or len(captions) != len(im["captions"]):
            raise AnnotationError(f"{world}: captions of {im['file_path']} do not match its annotations")
        for text, cap in zip(captions, im["captions"]):
            texts.append(text)
            rows.append([text_classes(s).index(cap["stated"][s]) if s in cap["stated"] else len(text_classes(s)) - 1
                         for s in SLOT_NAMES])
    if not texts:
        raise AnnotationError(f"{world}: no captions" + (f" in split {split!r}" if split else ""))
    return texts, np.asarray(rows, dtype=np.int64)


def text_classes(slot: str) -> list[str]:
    from tools.attributes import SLOTS

    return list(SLOTS[slot].values) + [NOT_STATED]


def _train_slot_heads(model_params: list, batch_input, encode, dim: int, y_all: torch.Tensor, classes: Sequence[int],
                      epochs: int, batch_size: int, lr: float, seed: int, device: torch.device, autocast,
                      progress: bool, desc: str) -> list[dict]:
    """The loop both pre-trainings share: one linear head per slot on ``10 * normalise(encode(x))``,
    ``x = batch_input(idx)`` made outside autocast, mean cross-entropy over slots, AdamW with a
    one-cycle schedule; returns the per-epoch history."""
    heads = torch.nn.ModuleList(torch.nn.Linear(dim, n) for n in classes).to(device)
    opt = torch.optim.AdamW(list(model_params) + list(heads.parameters()), lr=lr, weight_decay=0.02)
    steps = max(1, epochs * (len(y_all) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    history = []
    ctx = autocast if autocast is not None else torch.autocast(device.type, enabled=False)
    for epoch in range(epochs):
        order = rng.permutation(len(y_all))
        n = len(order) // batch_size
        correct = total = 0
        losses = []
        for b in tqdm(range(n), desc=f"{desc} {epoch + 1}/{epochs}", unit="batch",
                      disable=not progress, mininterval=2.0):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = batch_input(idx)
            y = y_all[idx].to(device)
            with ctx:
                feats = 10.0 * F.normalize(encode(x).float(), dim=-1)
                logits = [h(feats).float() for h in heads]
                loss = sum(F.cross_entropy(lg, y[:, j]) for j, lg in enumerate(logits)) / len(heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            correct += sum(int((lg.detach().argmax(-1) == y[:, j]).sum()) for j, lg in enumerate(logits))
            total += y.numel()
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                        "train_accuracy": round(correct / max(1, total), 4)})
        log.info("%s epoch %d: %s", desc, epoch + 1, history[-1])
    return history


def pretrain_text(clip: torch.nn.Module, world: str | Path | Sequence[str | Path], tokenizer, epochs: int = 1,
                  batch_size: int = 128, lr: float = 1e-3, seed: int = 0, device: torch.device | None = None,
                  autocast=None, progress: bool = True, forbidden: str | Path | None = None) -> dict:
    """Train the text tower of ``clip`` (``encode_text``) with one linear head per slot on what the
    captions of one or more worlds state; the heads are thrown away afterwards."""
    from tools.embedder import encode_text

    texts, y = [], []
    for w in _worlds(world, forbidden):
        t, labels = stated_captions(w)
        texts += t
        y.append(labels)
    y_all = torch.from_numpy(np.concatenate(y))
    tokens = tokenizer(texts)
    device = device or next(clip.parameters()).device
    with torch.no_grad():
        dim = int(encode_text(clip, tokens[:1].to(device)).shape[-1])
    clip.train()
    t0 = time.perf_counter()
    history = _train_slot_heads(
        [p for n, p in clip.named_parameters() if not n.startswith("visual.")],
        lambda idx: tokens[idx].to(device), lambda x: encode_text(clip, x), dim, y_all,
        [len(text_classes(s)) for s in SLOT_NAMES], epochs, batch_size, lr, seed + 1, device, autocast, progress,
        "text pre-training")
    return {"captions": len(texts), "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1),
            "history": history}


def pretrain_visual(visual: torch.nn.Module, world: str | Path | Sequence[str | Path], image_size: tuple[int, int], mean, std,
                    epochs: int = 6, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                    device: torch.device | None = None, autocast=None, progress: bool = True,
                    workers: int = 4, forbidden: str | Path | None = None) -> dict:
    """Train ``visual`` (an open_clip image tower) with one linear head per attribute slot on the
    annotations (all splits) of one or more worlds; the heads are thrown away afterwards."""
    from .attributes import targets

    worlds = _worlds(world, forbidden)
    images, paths = [], []
    for w in worlds:
        world_images = load_annotations(w)["images"]
        if not world_images:
            raise AnnotationError(f"{w}: no annotated images")
        images += world_images
        paths += [w / "imgs" / im["file_path"] for im in world_images]
    pixels = load_all_pixels(paths, image_size, workers, progress)
    y_all = torch.from_numpy(targets(images))
    device = device or next(visual.parameters()).device
    with torch.no_grad():
        dim = int(visual(torch.zeros(1, 3, *image_size, device=device)).shape[-1])
    from tools.mllm.recogniser import slot_classes

    gen = torch.Generator().manual_seed(seed)

    def batch_input(idx: np.ndarray) -> torch.Tensor:
        batch = pixels[idx] if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels[idx])
        return normalise(augment(batch, gen), mean, std).to(device).contiguous(memory_format=torch.channels_last)

    visual.train().to(memory_format=torch.channels_last)  # faster convolutions on CPU (see train.loop)
    t0 = time.perf_counter()
    history = _train_slot_heads(list(visual.parameters()), batch_input, visual, dim, y_all,
                                [len(slot_classes(s)) for s in SLOT_NAMES], epochs, batch_size, lr, seed, device,
                                autocast, progress, "attribute pre-training")
    return {"world": ", ".join(map(str, worlds)), "images": len(images), "epochs": epochs,
            "seconds": round(time.perf_counter() - t0, 1), "history": history}
