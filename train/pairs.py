"""Training pairs: images held in memory at the model's input size, captions tokenised once.

Batches put two images of the same person side by side whenever the person has two, so identity
-aware losses see positives beyond the diagonal. Augmentation keeps what a caption says true:
horizontal flips, a small shift and zoom, mild brightness and contrast changes; never hue shifts
(they turn red into orange) and never erasing (it can hide the shoes a caption mentions).

When a record carries RDA ``diversity_captions`` (one entry per caption: a list of sub-sentences,
each a list of paraphrases), every time it is drawn a random order of its sub-sentences and a random
paraphrase of each make a *reorganised* caption, returned beside the original.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.readers import Record
from tools.embedder import load_pixels

log = logging.getLogger(__name__)


@dataclass
class Batch:
    pixels: torch.Tensor  # uint8 [B, H, W, 3]
    tokens: torch.Tensor  # long [B, L]
    pids: torch.Tensor  # long [B] person ids
    labels: torch.Tensor  # long [B] 0..num_ids-1 (for the identity head)
    rda_tokens: torch.Tensor | None = None  # long [B, L] reorganised captions, when RDA data is present


def load_all_pixels(paths: Sequence, size: tuple[int, int], workers: int = 4, progress: bool = True) -> np.ndarray:
    """uint8 [N, H, W, 3] of every image, squashed to ``size``."""
    out = np.zeros((len(paths), size[0], size[1], 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = load_pixels(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="loading images", unit="img",
                  disable=not progress, mininterval=1.0))
    return out


def reorganise(diversity: Sequence[Sequence[str]], rng: np.random.Generator) -> str:
    """A random order of the sub-sentences, each in a random one of its paraphrases."""
    parts = [list(p) for p in diversity if p]
    order = rng.permutation(len(parts))
    chosen = []
    for i in order:
        options = parts[i]
        sentence = options[int(rng.integers(len(options)))].strip()
        if sentence and sentence[-1] not in ".!?":
            sentence += "."
        chosen.append(sentence[:1].upper() + sentence[1:])
    return " ".join(chosen)


class PairSet:
    """Images + captions of one split, ready for batching."""

    def __init__(self, records: Sequence[Record], image_size: tuple[int, int], tokenizer, workers: int = 4,
                 progress: bool = True):
        if not records:
            raise ValueError("no training records")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.pixels = torch.from_numpy(load_all_pixels([r.image_path for r in self.records], image_size, workers, progress))
        self.pids = np.asarray([r.pid for r in self.records], dtype=np.int64)
        uniq = np.unique(self.pids)
        self.num_ids = len(uniq)
        self.labels = np.searchsorted(uniq, self.pids)
        # flat caption table: caption k belongs to image caption_image[k]
        self.caption_image = np.asarray([i for i, r in enumerate(self.records) for _ in r.captions], dtype=np.int64)
        texts = [c for r in self.records for c in r.captions]
        self.tokens = tokenizer(texts)
        starts = np.searchsorted(self.caption_image, np.arange(len(self.records)))
        ends = np.searchsorted(self.caption_image, np.arange(len(self.records)), side="right")
        self.captions_of = [np.arange(a, b) for a, b in zip(starts, ends)]
        if any(len(c) == 0 for c in self.captions_of):
            raise ValueError("every training image needs at least one caption")
        self.has_rda = any("diversity_captions" in r.extra for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        """All images once, with images of the same person paired next to each other."""
        by_pid: dict[int, list[int]] = {}
        for i in rng.permutation(len(self.records)):
            by_pid.setdefault(int(self.pids[i]), []).append(int(i))
        groups: list[list[int]] = []
        for items in by_pid.values():
            groups.extend(items[j:j + 2] for j in range(0, len(items), 2))
        order = rng.permutation(len(groups))
        return np.asarray([i for g in order for i in groups[g]], dtype=np.int64)

    def batches(self, batch_size: int, rng: np.random.Generator, drop_last: bool = True) -> Iterator[Batch]:
        order = self.epoch_order(rng)
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                break
            cap = np.asarray([self.captions_of[i][int(rng.integers(len(self.captions_of[i])))] for i in idx])
            rda = None
            if self.has_rda:
                texts = []
                for i, k in zip(idx, cap):
                    div = self.records[i].extra.get("diversity_captions")
                    local = int(k - self.captions_of[i][0])
                    if div and local < len(div) and div[local]:
                        texts.append(reorganise(div[local], rng))
                    else:
                        texts.append(self.records[i].captions[local])
                rda = self.tokenizer(texts)
            yield Batch(pixels=self.pixels[idx], tokens=self.tokens[cap], pids=torch.from_numpy(self.pids[idx]),
                        labels=torch.from_numpy(self.labels[idx]), rda_tokens=rda)


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Caption-preserving augmentation of a uint8 [B, H, W, 3] batch -> float [B, 3, H, W] in [0, 1]."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    # a small zoom (0.9-1.05) and shift (+-5%) through one batched affine resample
    scale = torch.empty(b).uniform_(0.9, 1.05, generator=generator)
    shift = torch.empty(b, 2).uniform_(-0.05, 0.05, generator=generator)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=generator)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    return x.clamp_(0, 1)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
