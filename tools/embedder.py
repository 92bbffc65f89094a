"""open_clip image and text encoder.

A small callable facade over any open_clip model: a shipped model by its registered name
(``synthpedes-small-v7``, the default; also ``synthpedes-small`` and ``synthpedes-small-v5``), any
open_clip architecture with a ``pretrained`` tag or checkpoint file, or a folder (``local-dir:PATH``,
the layout ``train/`` writes). Images are resized by squashing to the model's input size (no centre
crop: a pedestrian crop keeps head and feet); features are L2-normalised float32 numpy arrays.

>>> emb = Embedder()                                   # the default shipped model, CPU
>>> img = emb.encode_images(["a.jpg", "b.jpg"])        # doctest: +SKIP
>>> txt = emb.encode_texts(["a woman in a red coat"])
>>> txt.shape[1] == emb.dim
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The model used wherever none is named: the shipped model that meets the retrieval quality target
#: (docs/training.md). ``synthpedes-small`` (v3, the earlier default) keeps its name.
DEFAULT_MODEL = "synthpedes-small-v7"
#: IRRA's input size for ViT-B/16 on pedestrian crops (height, width).
IRRA_IMAGE_SIZE = (384, 128)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Union[str, Path, Image.Image]


class EmbedderError(ValueError):
    """A model cannot be loaded (unknown name, missing or unfitting checkpoint)."""


def shipped_models() -> dict[str, Path]:
    """Models carried by this package: name -> ``local-dir`` folder."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "open_clip_config.json").is_file()}


def register_shipped_configs() -> None:
    """Make shipped architectures known to ``open_clip.create_model`` by name (for random init)."""
    import tempfile

    import open_clip

    for name, folder in shipped_models().items():
        if name in open_clip.list_models():
            continue
        cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
        config_file = Path(tempfile.mkdtemp(prefix="thi-reid-config-")) / f"{name}.json"
        config_file.write_text(json.dumps(cfg))
        open_clip.add_model_config(config_file)


def _register_config_folder(folder: Path) -> str:
    """Register a folder's open_clip_config.json under a name (random init from a config file)."""
    import tempfile

    import open_clip

    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise EmbedderError(f"{folder}: no open_clip_config.json")
    cfg = json.loads(config.read_text())["model_cfg"]
    name = "cfg-" + hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    if name not in open_clip.list_models():
        path = Path(tempfile.mkdtemp(prefix="thi-reid-config-")) / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    return name


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    image_size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    fingerprint: str  # identifies architecture + weights (for gallery collections)


def _fingerprint(*parts: str | Path | None) -> str:
    h = hashlib.sha1()
    for p in parts:
        if p is None:
            continue
        path = Path(p)
        if path.is_file():
            st = path.stat()
            h.update(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:10]


def load_clip(model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str | torch.device | None = None,
              image_size: tuple[int, int] | None = None, random_init: bool = False) -> LoadedModel:
    """Load an open_clip model and its tokenizer without downloading anything that is not cached.

    Args:
        model: a shipped model name, an open_clip architecture name, or ``local-dir:PATH``.
        pretrained: for an architecture name: an open_clip pretrained tag (needs its weights in the
            local cache) or a checkpoint file (``.pt``, ``.bin``, ``.safetensors``).
        image_size: override the input size (height, width); ViT-B/16 defaults to 384x128 as IRRA.
        random_init: build the architecture with random weights (training from scratch).
    """
    import open_clip

    import tools.towers  # noqa: F401  registers our image towers with timm (here: importing timm costs ~2 s)

    device = pick_device(str(device) if device else None)
    shipped = shipped_models()
    name = model
    if random_init:
        if pretrained:
            raise EmbedderError("random initialisation takes an architecture, not weights")
        if model.startswith("local-dir:"):  # an architecture given as a config folder
            model = _register_config_folder(Path(model[len("local-dir:"):]))
    elif model in shipped and not pretrained:
        model = f"local-dir:{shipped[model]}"
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise EmbedderError(f"{folder}: no open_clip_config.json (not a model folder written by train/)")
        weights = [p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt")]
        if not weights:
            raise EmbedderError(f"{folder}: no weights file (.safetensors, .bin, .pth) found")
        fingerprint_src: tuple = (folder / "open_clip_config.json", *sorted(weights))
    else:
        if model in shipped:
            register_shipped_configs()
        if model.replace("/", "-") not in open_clip.list_models():
            known = ", ".join(sorted(shipped)) + " (shipped); " + ", ".join(open_clip.list_models()[:12]) + ", ..."
            raise EmbedderError(f"unknown model {model!r}; known: {known}")
        if pretrained and not Path(pretrained).is_file() and pretrained not in open_clip.list_pretrained_tags_by_model(model):
            raise EmbedderError(f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {model}")
        fingerprint_src = (model, pretrained)
        if image_size is None and model in ("ViT-B-16", "ViT-B/16"):
            image_size = IRRA_IMAGE_SIZE
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=device, force_image_size=image_size, image_resize_mode="squash")
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
            raise EmbedderError(f"checkpoint {pretrained or model} does not fit model {name}: {msg[:300]}") from None
        raise EmbedderError(f"cannot load {name}: {msg[:300]}") from None
    except (FileNotFoundError, ValueError, OSError) as e:
        raise EmbedderError(f"cannot load {name}: {str(e).splitlines()[0][:300]}") from None
    tokenizer = open_clip.get_tokenizer(model)
    size = clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    norm = [t for t in getattr(preprocess, "transforms", []) if t.__class__.__name__ == "Normalize"]
    mean = tuple(norm[0].mean) if norm else OPENAI_MEAN
    std = tuple(norm[0].std) if norm else OPENAI_STD
    clip.eval()
    return LoadedModel(clip, tokenizer, size, mean, std, name, _fingerprint(*fingerprint_src))


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` without the cost of padding, where the text tower allows it.

    A caption of 35 tokens padded to a 77-token context spends over half the text tower's work on
    padding. open_clip's ``TextTransformer`` (``custom_text`` models) slices its position embeddings
    to the input length but not its causal mask, so the mask buffer is sliced here to match. The
    classic ``CLIP`` class needs the full context and gets it. The result equals the padded one
    (causal attention never looks at the padding after the end token).
    """
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if not isinstance(text, TextTransformer) or getattr(text, "attn_mask", None) is None or text.cls_emb is not None:
        return model.encode_text(tokens)
    length = max(int((tokens != 0).sum(1).max()), 1)
    full = getattr(text, "_full_causal_mask", None)
    if full is None or full.device != text.attn_mask.device:
        full = text.attn_mask
        text._full_causal_mask = full
    text.attn_mask = full[:length, :length]
    try:
        return model.encode_text(tokens[:, :length])
    finally:
        text.attn_mask = full


def load_pixels(image: ImageInput, size: tuple[int, int]) -> np.ndarray:
    """Read an image and squash it to ``size`` (height, width): uint8 [H, W, 3]."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = im.convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    h, w = size
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def to_tensor(pixels: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or [H, W, 3]) -> normalised float32 [N, 3, H, W]."""
    t = torch.as_tensor(pixels)
    if t.ndim == 3:
        t = t[None]
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=t.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=t.dtype).view(1, 3, 1, 1)
    return (t - m) / s


class Embedder:
    """Encode pedestrian images and descriptions into one L2-normalised space.

    Args:
        model: shipped model name (default ``synthpedes-small-v7``), open_clip architecture, or
            ``local-dir:PATH``.
        pretrained: pretrained tag or checkpoint file for an architecture name.
        device: ``cpu``, ``cuda``, ... (default: CUDA when present).
        batch_size: images or texts per forward pass.
        image_size: input (height, width) override.
    """

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str | None = None,
                 batch_size: int = 128, image_size: tuple[int, int] | None = None):
        loaded = load_clip(model, pretrained, device, image_size)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.image_size = loaded.image_size
        self.mean, self.std = loaded.mean, loaded.std
        self.name = loaded.name
        self.fingerprint = loaded.fingerprint
        self.device = next(self.model.parameters()).device
        self.batch_size = batch_size
        self.context_length = int(getattr(self.tokenizer, "context_length", 77))
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])

    # -- text ------------------------------------------------------------------------------

    @property
    def token_budget(self) -> int:
        """Tokens available to the words of a query (the context minus start and end tokens)."""
        return self.context_length - 2

    def count_tokens(self, text: str) -> int:
        """Word-piece tokens of ``text`` (without start/end tokens)."""
        return len(self.tokenizer.encode(text)) if hasattr(self.tokenizer, "encode") else len(text.split())

    def fits(self, text: str) -> bool:
        return self.count_tokens(text) <= self.token_budget

    def truncated_part(self, text: str) -> str:
        """The tail of ``text`` the encoder will not see ('' when it fits)."""
        if self.fits(text):
            return ""
        words = text.split()
        lo, hi = 0, len(words)
        while lo < hi:  # longest word prefix that fits
            mid = (lo + hi + 1) // 2
            if self.count_tokens(" ".join(words[:mid])) <= self.token_budget:
                lo = mid
            else:
                hi = mid - 1
        return " ".join(words[lo:])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """float32 [N, D], L2-normalised. Texts over the token budget are truncated (logged)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        bs = batch_size or self.batch_size
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for t in texts:
            if not self.fits(t):
                log.warning("text exceeds the %d-token budget and is truncated: %r", self.token_budget,
                            self.truncated_part(t))
        show = progress if progress is not None else len(texts) > 4 * bs
        for i in tqdm(range(0, len(texts), bs), desc="encoding texts", unit="batch", disable=not show):
            feats = encode_text(self.model, self.tokenize(texts[i:i + bs]).to(self.device))
            out[i:i + bs] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        return out

    # -- images ----------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Encode images already squashed to ``image_size`` (uint8 [N, H, W, 3])."""
        x = to_tensor(pixels, self.mean, self.std).to(self.device)
        feats = self.model.encode_image(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: Sequence[ImageInput], batch_size: int | None = None,
                      progress: bool | None = None) -> np.ndarray:
        """float32 [N, D], L2-normalised. Paths or PIL images; unreadable files raise ``OSError``."""
        if isinstance(images, (str, Path, Image.Image)):
            raise TypeError("encode_images takes a list of images or paths")
        bs = batch_size or self.batch_size
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        show = progress if progress is not None else len(images) > 4 * bs
        for i in tqdm(range(0, len(images), bs), desc="encoding images", unit="batch", disable=not show):
            batch = np.stack([load_pixels(im, self.image_size) for im in images[i:i + bs]])
            out[i:i + bs] = self.encode_pixels(batch)
        return out

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        return self.encode_texts(list(texts))

    def __repr__(self) -> str:
        return (f"Embedder({self.name!r}, dim={self.dim}, image_size={self.image_size}, "
                f"context={self.context_length}, device={self.device})")


def default_home() -> Path:
    """Where the project keeps generated data and indexes: ``$THI_HOME`` or ``~/.cache/thi-reid``."""
    return Path(os.environ.get("THI_HOME") or Path.home() / ".cache" / "thi-reid")
