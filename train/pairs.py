"""Training pairs: images held in memory at the model's input size, captions tokenised once.

Batches put two images of the same person side by side whenever the person has two, so identity
-aware losses see positives beyond the diagonal. Augmentation keeps what a caption says true:
horizontal flips, a small shift and zoom, mild brightness and contrast changes; never hue shifts
(they turn red into orange) and never erasing (it can hide the shoes a caption mentions).

When a record carries RDA ``diversity_captions`` (one entry per caption: a list of sub-sentences,
each a list of paraphrases), every time it is drawn a random order of its sub-sentences and a random
paraphrase of each make a *reorganised* caption, returned beside the original. ICL's released files
may hold a plain string for a caption's entry (used as the reorganised caption as it is, as ICL's
loader does) or for a sub-sentence (its only paraphrase): see :func:`reorganised_caption`.
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
from tools.paraphraser import reorganise

log = logging.getLogger(__name__)


@dataclass
class Batch:
    pixels: torch.Tensor  # uint8 [B, H, W, 3]
    tokens: torch.Tensor  # long [B, L]
    pids: torch.Tensor  # long [B] person ids
    labels: torch.Tensor  # long [B] 0..num_ids-1 (for the identity head)
    rda_tokens: torch.Tensor | None = None  # long [B, L] reorganised captions, when RDA data is present
    neg_tokens: torch.Tensor | None = None  # long [B, L] hard negative captions (see hard_negative)
    text_attrs: torch.Tensor | None = None  # long [B, S] value index each caption states (-1: not stated)
    image_attrs: torch.Tensor | None = None  # long [B, S] agreed value over all the image's captions (-1: none)


def reorganised_caption(entry: object, rng: np.random.Generator) -> str | None:
    """A reorganised caption from one caption's ``diversity_captions`` entry, or None where the entry
    holds nothing usable.

    ``entry`` is a list of sub-sentences, each a list of paraphrases (RDA's layout) or a plain
    string (one paraphrase); or a plain string, which is the reorganised caption itself (ICL's
    loader uses such entries as they are).
    """
    if isinstance(entry, str):
        return entry.strip() or None
    if not isinstance(entry, (list, tuple)):
        return None
    parts = []
    for sub in entry:
        options = [sub] if isinstance(sub, str) else [p for p in sub if isinstance(p, str)] \
            if isinstance(sub, (list, tuple)) else []
        options = [o for o in options if o.strip()]
        if options:
            parts.append(options)
    return reorganise(parts, rng) if parts else None


def load_all_pixels(paths: Sequence, size: tuple[int, int], workers: int = 4, progress: bool = True,
                    resample: str = "bicubic") -> np.ndarray:
    """uint8 [N, H, W, 3] of every image, squashed to ``size`` with the PIL filter ``resample``."""
    out = np.zeros((len(paths), size[0], size[1], 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = load_pixels(paths[i], size, resample)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="loading images", unit="img",
                  disable=not progress, mininterval=1.0))
    return out


class PairSet:
    """Images + captions of one split, ready for batching."""

    def __init__(self, records: Sequence[Record], image_size: tuple[int, int], tokenizer, workers: int = 4,
                 progress: bool = True, resample: str = "bicubic"):
        if not records:
            raise ValueError("no training records")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.pixels = torch.from_numpy(load_all_pixels([r.image_path for r in self.records], image_size, workers, progress,
                                                       resample))
        self.pids = np.asarray([r.pid for r in self.records], dtype=np.int64)
        uniq = np.unique(self.pids)
        self.num_ids = len(uniq)
        self.labels = np.searchsorted(uniq, self.pids)
        # flat caption table: caption k belongs to image caption_image[k]
        self.caption_image = np.asarray([i for i, r in enumerate(self.records) for _ in r.captions], dtype=np.int64)
        texts = [c for r in self.records for c in r.captions]
        self.texts = texts
        self.tokens = tokenizer(texts)
        starts = np.searchsorted(self.caption_image, np.arange(len(self.records)))
        ends = np.searchsorted(self.caption_image, np.arange(len(self.records)), side="right")
        self.captions_of = [np.arange(a, b) for a, b in zip(starts, ends)]
        if any(len(c) == 0 for c in self.captions_of):
            raise ValueError("every training image needs at least one caption")
        self.has_rda = any("diversity_captions" in r.extra for r in self.records)
        self._attrs = None

    def caption_attributes(self) -> tuple[np.ndarray, np.ndarray]:
        """(per caption, per image) value indices of every slot as the captions state them (-1 = not
        stated; for an image, -1 also where its captions disagree). Read by the rule-based parser."""
        if self._attrs is None:
            from tools.attributes import SLOT_NAMES, SLOTS
            from tools.mllm.parser import parse

            index = {s: {v: i for i, v in enumerate(SLOTS[s].values)} for s in SLOT_NAMES}
            text = np.full((len(self.texts), len(SLOT_NAMES)), -1, dtype=np.int64)
            for k, caption in enumerate(self.texts):
                for slot, value in parse(caption).constraints.items():
                    text[k, SLOT_NAMES.index(slot)] = index[slot][value]
            image = np.full((len(self.records), len(SLOT_NAMES)), -1, dtype=np.int64)
            for i, caps in enumerate(self.captions_of):
                rows = text[caps]
                for s in range(rows.shape[1]):
                    vals = {int(v) for v in rows[:, s] if v >= 0}
                    if len(vals) == 1:
                        image[i, s] = vals.pop()
            self._attrs = (text, image)
        return self._attrs

    def __len__(self) -> int:
        return len(self.records)

    def neighbours(self, k: int = 8) -> dict[int, np.ndarray]:
        """Each person's k most similar people by the words of their captions (TF-IDF cosine)."""
        if getattr(self, "_neighbours", None) is None:
            import re

            pid_list = list(dict.fromkeys(int(p) for p in self.pids))
            words: dict[int, list[str]] = {p: [] for p in pid_list}
            for i, r in enumerate(self.records):
                for c in r.captions:
                    words[int(self.pids[i])].extend(re.findall(r"[a-z]+", c.lower()))
            vocab = {w: n for n, w in enumerate(sorted({w for ws in words.values() for w in ws}))}
            x = np.zeros((len(pid_list), len(vocab)), dtype=np.float32)
            for row, p in enumerate(pid_list):
                for w in words[p]:
                    x[row, vocab[w]] += 1
            x *= np.log(len(pid_list) / (1 + (x > 0).sum(0)))[None, :]
            x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-8
            nb = {}
            for start in range(0, len(pid_list), 1024):
                sim = x[start:start + 1024] @ x.T
                for r, row in enumerate(sim):
                    row[start + r] = -1
                    nb[pid_list[start + r]] = np.asarray(pid_list)[np.argpartition(-row, k)[:k]]
            self._neighbours = nb
        return self._neighbours

    def epoch_order(self, rng: np.random.Generator, similar: float = 0.0, group: int = 4) -> np.ndarray:
        """All images once, with images of the same person paired next to each other. With
        ``similar`` > 0, that share of people come in runs of ``group`` look-alikes (by caption
        words), so batches hold the hard negatives that separate near-identical outfits."""
        by_pid: dict[int, list[int]] = {}
        for i in rng.permutation(len(self.records)):
            by_pid.setdefault(int(self.pids[i]), []).append(int(i))
        pid_order = list(rng.permutation(list(by_pid)))
        if similar > 0:
            nb = self.neighbours()
            used: set[int] = set()
            runs: list[list[int]] = []
            for p in pid_order:
                p = int(p)
                if p in used:
                    continue
                run = [p]
                used.add(p)
                if rng.random() < similar:
                    for q in nb[p]:
                        q = int(q)
                        if q not in used and len(run) < group:
                            run.append(q)
                            used.add(q)
                runs.append(run)
            pid_order = [p for ri in rng.permutation(len(runs)) for p in runs[ri]]
        order = []
        for p in pid_order:
            items = by_pid[int(p)]
            order.extend(items)
        return np.asarray(order, dtype=np.int64)

    def batches(self, batch_size: int, rng: np.random.Generator, drop_last: bool = True, similar: float = 0.0,
                hard_negatives: bool = False, attributes: bool = False) -> Iterator[Batch]:
        order = self.epoch_order(rng, similar)
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
                    text = None
                    if isinstance(div, (list, tuple)) and local < len(div):
                        text = reorganised_caption(div[local], rng)
                    texts.append(text or self.records[i].captions[local])
                rda = self.tokenizer(texts)
            neg = None
            if hard_negatives:
                neg = self.tokenizer([hard_negative(self.texts[k], rng) or "" for k in cap])
            text_attrs = image_attrs = None
            if attributes:
                t, im = self.caption_attributes()
                text_attrs, image_attrs = torch.from_numpy(t[cap]), torch.from_numpy(im[idx])
            yield Batch(pixels=self.pixels[idx], tokens=self.tokens[cap], pids=torch.from_numpy(self.pids[idx]),
                        labels=torch.from_numpy(self.labels[idx]), rda_tokens=rda, neg_tokens=neg,
                        text_attrs=text_attrs, image_attrs=image_attrs)


_BASE_GRIDS: dict[tuple[int, int, str], torch.Tensor] = {}


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Caption-preserving augmentation of a uint8 [B, H, W, 3] batch -> float [B, 3, H, W] in [0, 1].

    A horizontal flip (half the photos), a small zoom (0.9-1.05) and shift (+-5%), then brightness
    and contrast (0.9-1.1); never hue. The flip, zoom and shift are one bilinear resample through a
    grid built by broadcasting, and brightness/contrast one multiply-add: full-resolution batches
    would otherwise spend as long here as in the network. Runs on the batch's device.
    """
    b, h, w, _ = pixels.shape
    dev = pixels.device
    # the random draws come from the (CPU) generator whatever the device: same seed, same augmentation
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    scale = torch.empty(b).uniform_(0.9, 1.05, generator=generator).to(dev)
    shift = torch.empty(b, 2).uniform_(-0.05, 0.05, generator=generator).to(dev)
    key = (h, w, str(dev))
    if key not in _BASE_GRIDS:
        _BASE_GRIDS[key] = F.affine_grid(torch.eye(2, 3)[None], [1, 3, h, w], align_corners=False)[0].to(dev)
    base = _BASE_GRIDS[key]
    # sampling a mirrored photo at u is sampling the photo at -u
    sx = torch.where(flip, -scale, scale).view(b, 1, 1)
    tx = torch.where(flip, -shift[:, 0], shift[:, 0]).view(b, 1, 1)
    grid = torch.empty(b, h, w, 2, device=dev)
    grid[..., 0] = base[..., 0] * sx + tx
    grid[..., 1] = base[..., 1] * scale.view(b, 1, 1) + shift[:, 1].view(b, 1, 1)
    x = F.grid_sample(pixels.permute(0, 3, 1, 2).float(), grid, mode="bilinear", padding_mode="border",
                      align_corners=False)
    brightness = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=generator).to(dev)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=generator).to(dev)
    mean = x.mean(dim=(1, 2, 3), keepdim=True) / 255.0
    # ((x / 255 - mean) * contrast + mean) * brightness, in one multiply-add
    return x.mul_(contrast * brightness / 255.0).add_(mean * (1 - contrast) * brightness).clamp_(0, 1)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


_COLOUR_RE = None


def _colour_pattern():
    import re

    from tools.attributes import SURFACE_FORMS

    global _COLOUR_RE
    if _COLOUR_RE is None:
        words = sorted({w for forms in SURFACE_FORMS["color"].values() for w in forms}, key=len, reverse=True)
        _COLOUR_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return _COLOUR_RE


_SWAPS = (("man", "woman"), ("male", "female"), ("guy", "lady"), ("he", "she"), ("his", "her"),
          ("coat", "trousers"), ("jacket", "jeans"), ("shirt", "shorts"), ("skirt", "pants"),
          ("sneakers", "boots"), ("backpack", "handbag"), ("cap", "beanie"), ("long", "short"))


def hard_negative(caption: str, rng: np.random.Generator) -> str | None:
    """A caption that reads almost the same but says something false about the same photo:
    two colours swapped between garments ("red coat, black pants" -> "black coat, red pants"),
    one colour replaced, or one word changed for its counterpart (man/woman, coat/trousers...).
    Binding colours to the right garment is what such negatives teach (as NegCLIP's do)."""
    import re

    from tools.attributes import COLORS

    pattern = _colour_pattern()
    spans = [(m.start(), m.end(), m.group(0)) for m in pattern.finditer(caption)]
    r = rng.random()
    if len(spans) >= 2 and r < 0.6:
        i, j = rng.choice(len(spans), size=2, replace=False)
        (a0, a1, aw), (b0, b1, bw) = sorted([spans[i], spans[j]])
        if aw.lower() != bw.lower():
            return caption[:a0] + bw + caption[a1:b0] + aw + caption[b1:]
    if spans and r < 0.85:
        a0, a1, aw = spans[int(rng.integers(len(spans)))]
        other = [c for c in COLORS if c != aw.lower()]
        return caption[:a0] + other[int(rng.integers(len(other)))] + caption[a1:]
    options = []
    for x, y in _SWAPS:
        for src, dst in ((x, y), (y, x)):
            for m in re.finditer(rf"\b{src}\b", caption, flags=re.IGNORECASE):
                options.append((m.start(), m.end(), dst))
    if not options:
        return None
    a0, a1, dst = options[int(rng.integers(len(options)))]
    return caption[:a0] + dst + caption[a1:]
