"""open_clip image and text encoder.

A small callable facade over any open_clip model: a shipped model by its registered name
(``synthpedes-small-v7``, the default; also ``synthpedes-small`` and ``synthpedes-small-v5``), any
open_clip architecture with a ``pretrained`` tag or checkpoint file, or a folder (``local-dir:PATH``,
the layout ``train/`` writes). Images are resized by squashing to the model's input size (no centre
crop: a pedestrian crop keeps head and feet); features are L2-normalised float32 numpy arrays.

A ``best.pth`` of IRRA, RDE or ICL given as ``pretrained`` is recognised by its keys and loaded as
the authors ran it (:mod:`tools.checkpoints`): the architecture read from its tensor shapes,
QuickGELU, a 384x128 squash with PIL's bilinear filter and OpenAI's mean/std, the checkpoint's own
text context (77 or 168). Where it has TSE heads (RDE, ICL), ``with_tse=True`` also returns the
token-selection embeddings and :attr:`Embedder.default_score` is ``fused`` (:mod:`tools.tse`).
:meth:`Embedder.describe` says in one line what was loaded; every CLI prints it.

A model name without weights (``--model RN50`` and no ``--pretrained``) is refused unless random
weights are allowed explicitly, and then runs with one loud warning.

>>> emb = Embedder()                                   # the default shipped model, CPU
>>> img = emb.encode_images(["a.jpg", "b.jpg"])        # doctest: +SKIP
>>> txt = emb.encode_texts(["a woman in a red coat"])
>>> txt.shape[1] == emb.dim
True
>>> rde = Embedder(pretrained="best.pth")              # doctest: +SKIP
>>> bge, tse = rde.encode_texts(["a woman in a red coat"], with_tse=True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .photos import read_photo

if TYPE_CHECKING:
    from .checkpoints import Checkpoint

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


def _add_open_clip_config(name: str, cfg: dict) -> None:
    """Register an architecture config with open_clip under ``name``. open_clip reads configs from
    files, and only once (later rescans skip files that are gone), so the file lives in a temporary
    folder removed right after."""
    import tempfile

    import open_clip

    with tempfile.TemporaryDirectory(prefix="thi-reid-config-") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)


def register_shipped_configs() -> None:
    """Make shipped architectures known to ``open_clip.create_model`` by name (for random init)."""
    import open_clip

    for name, folder in shipped_models().items():
        if name in open_clip.list_models():
            continue
        _add_open_clip_config(name, json.loads((folder / "open_clip_config.json").read_text())["model_cfg"])


def _register_config_folder(folder: Path) -> str:
    """Register a folder's open_clip_config.json under a name (random init from a config file)."""
    import open_clip

    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise EmbedderError(f"{folder}: no open_clip_config.json")
    cfg = json.loads(config.read_text())["model_cfg"]
    name = "cfg-" + hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    if name not in open_clip.list_models():
        _add_open_clip_config(name, cfg)
    return name


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedModel:
    """A model with everything needed to feed it the way it was trained.

    ``format``: ``shipped`` (a model carried by this package), ``local-dir`` (a folder written by
    ``train/``), ``open_clip`` (an architecture name with a tag or state-dict file), ``irra`` or
    ``rde`` (an IRRA / RDE / ICL ``best.pth``), ``random`` (no weights). ``resample``: the PIL filter
    name images are squashed with. ``trained_on``: the dataset format the weights were trained on
    where known (``synthpedes`` for the shipped models).
    """

    model: torch.nn.Module
    tokenizer: object
    image_size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    fingerprint: str  # identifies architecture + weights (for gallery collections)
    format: str = "open_clip"
    resample: str = "bicubic"
    activation: str = "GELU"
    source: str = ""  # the weights file or tag
    tse: object = None  # tools.tse.TSEHeads where the checkpoint has them
    random: bool = False
    trained_on: str | None = None
    config: dict | None = None  # open_clip_config.json contents (model_cfg, preprocess_cfg)


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


class _QuietOpenClip(logging.Filter):
    """Drop open_clip's root-logger notice that a model was built without weights: here weights are
    loaded right after building (and a model that really has none is reported by :func:`load_clip`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _create(name: str, device: torch.device, **kwargs) -> torch.nn.Module:
    import open_clip

    quiet = _QuietOpenClip()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, load_weights=False, device=device, **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError, OSError, KeyError, TypeError) as e:
        raise EmbedderError(f"cannot build {name}: {str(e).splitlines()[0][:300]}") from None
    finally:
        root.removeFilter(quiet)


#: Weight files a ``local-dir:`` folder is read from, in open_clip's order of preference.
_LOCAL_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                  "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def _local_weights(folder: Path) -> Path:
    """The weights file of a ``local-dir`` folder, or a one-line error saying why there is none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    for name in _LOCAL_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    readable = [p for p in files if p.suffix != ".pt"]
    if readable:
        return readable[0]
    if files:
        raise EmbedderError(f"{folder}: holds only {', '.join(p.name for p in files)}; a local-dir: model reads "
                            f"open_clip_model.safetensors (or .bin/.pth); load a checkpoint file with --pretrained FILE")
    raise EmbedderError(f"{folder}: no weights file (.safetensors, .bin, .pth) found")


def _load_state(model: torch.nn.Module, path: Path, target: str) -> "Checkpoint":
    """Load an open_clip state-dict file into ``model`` (all keys, same shapes), else a one-line error."""
    from open_clip.model import convert_to_custom_text_state_dict

    from .checkpoints import CheckpointError, load_weights, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
        if ckpt.is_research:
            raise CheckpointError(f"{path} is an {ckpt.label}; load it with --pretrained {path} (and no --model, or "
                                  f"--model ViT-B-16-quickgelu)")
        if "positional_embedding" in ckpt.state_dict and not hasattr(model, "positional_embedding"):
            ckpt.state_dict = convert_to_custom_text_state_dict(ckpt.state_dict)
        pos = ckpt.state_dict.get("visual.positional_embedding")
        want = getattr(getattr(model, "visual", None), "positional_embedding", None)
        if pos is not None and want is not None and pos.shape != want.shape \
                and math.isqrt(pos.shape[0] - 1) ** 2 == pos.shape[0] - 1:
            # e.g. OpenAI's 14x14 grid used at 384x128, as IRRA does once at training start; the text
            # table is never resized (a 168-token table squeezed to 77 changes every text embedding)
            from open_clip.model import resize_pos_embed

            log.info("resizing the image position table of %s from %s to %s", path, tuple(pos.shape), tuple(want.shape))
            resize_pos_embed(ckpt.state_dict, model)
        load_weights(model, ckpt, target)
    except CheckpointError as e:
        raise EmbedderError(str(e)) from None
    return ckpt


def _trained_on(folder: Path) -> str | None:
    """The dataset format a ``train/`` output folder was trained on (its train_config.json)."""
    try:
        return json.loads((folder / "train_config.json").read_text()).get("format")
    except (OSError, ValueError):
        return None


def _preprocess(model: torch.nn.Module) -> tuple[tuple, tuple, str]:
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean") or OPENAI_MEAN)
    std = tuple(cfg.get("std") or OPENAI_STD)
    resample = str(cfg.get("interpolation") or "bicubic")
    return mean, std, resample


def _activation(model: torch.nn.Module) -> str:
    from open_clip.transformer import QuickGELU

    kinds = {type(m).__name__ for m in model.modules() if isinstance(m, (torch.nn.GELU, QuickGELU))}
    return "QuickGELU" if kinds == {"QuickGELU"} else "GELU" if kinds == {"GELU"} else "+".join(sorted(kinds)) or "n/a"


def _tokenizer(model: torch.nn.Module, name: str):
    import open_clip

    context = int(getattr(model, "context_length", 0) or 77)
    try:
        return open_clip.get_tokenizer(name, context_length=context)
    except Exception:  # a config-less architecture (a research checkpoint): CLIP's BPE
        return open_clip.tokenizer.SimpleTokenizer(context_length=context)


def _research(ckpt, model: str, shipped: dict, device: torch.device, image_size, tse_ratio: float,
              quick_gelu: bool = True) -> LoadedModel:
    """An IRRA / RDE / ICL checkpoint: as what its shapes say, or into an explicitly named architecture."""
    from .checkpoints import CheckpointError, build_clip, infer_config, load_weights
    from .tse import TSEError, TSEHeads

    path = ckpt.path
    try:
        if model in shipped or model == "auto":
            clip, cfg = build_clip(ckpt, image_size, quick_gelu=quick_gelu, device=device)
            name = f"{ckpt.format}:{path.name}"
        else:
            cfg = infer_config(ckpt, image_size)  # the input size and context the file was trained at
            size = tuple(cfg["vision_cfg"]["image_size"])
            clip = _create(model, device, force_image_size=size,
                           force_context_length=cfg["text_cfg"]["context_length"])
            load_weights(clip, ckpt, model)
            clip.eval()
            name = model
    except CheckpointError as e:
        raise EmbedderError(str(e)) from None
    tse = None
    if ckpt.has_tse:
        try:
            tse = TSEHeads.from_state_dict(ckpt.tse_state(), tse_ratio).to(device)
        except TSEError as e:
            raise EmbedderError(f"{path}: TSE heads unusable ({e})") from None
    activation = _activation(clip)
    if activation != "QuickGELU":
        log.warning("%s uses %s, but %s was trained with QuickGELU: rankings will differ from the authors'; "
                    "leave out --model (the architecture is read from the file) or use ViT-B-16-quickgelu",
                    name, activation, path.name)
    size = clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return LoadedModel(clip, _tokenizer(clip, name if name == model else ""), size, OPENAI_MEAN, OPENAI_STD, name,
                       _fingerprint("research", path, f"{size}", name), format=ckpt.format, resample="bilinear",
                       activation=activation, source=str(path), tse=tse,
                       config={"model_cfg": cfg, "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                                                                    "interpolation": "bilinear",
                                                                    "resize_mode": "squash"}})


def load_clip(model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str | torch.device | None = None,
              image_size: tuple[int, int] | None = None, random_init: bool = False, allow_random: bool = False,
              tse_ratio: float | None = None) -> LoadedModel:
    """Load an open_clip model and its tokenizer without downloading anything that is not cached.

    Args:
        model: a shipped model name, an open_clip architecture name, or ``local-dir:PATH``.
        pretrained: an open_clip pretrained tag (its weights must be in the local cache) or a
            checkpoint file: an open_clip state dict (``.safetensors``, ``.bin``, ``.pt``, ``.pth``)
            for the architecture ``model``, or an IRRA / RDE / ICL ``best.pth``. A research
            checkpoint given with a shipped model name (the default) is built as what its tensor
            shapes say; with an architecture name (``ViT-B-16-quickgelu``) it is loaded into it.
        image_size: input (height, width); default: the model's own (a research checkpoint's is
            read from its image position table, e.g. 384x128).
        random_init: build the architecture with random weights (training from scratch).
        allow_random: an architecture without weights runs on random weights with a loud warning;
            otherwise it is refused.
        tse_ratio: the share of tokens TSE selects (default :data:`tools.tse.DEFAULT_RATIO`).

    Raises:
        EmbedderError: one line: unknown name, unreadable or unfitting weights (first missing /
            unexpected keys named, the format assumed), or random weights not allowed.
    """
    import open_clip

    import tools.towers  # noqa: F401  registers our image towers with timm (here: importing timm costs ~2 s)

    from .checkpoints import CheckpointError, read_checkpoint
    from .tse import DEFAULT_RATIO

    device = pick_device(str(device) if device else None)
    shipped = shipped_models()
    name = model
    size_override = tuple(image_size) if image_size else None
    if random_init:
        if pretrained:
            raise EmbedderError("random initialisation takes an architecture, not weights")
        if model.startswith("local-dir:"):  # an architecture given as a config folder
            model = _register_config_folder(Path(model[len("local-dir:"):]))
        elif model in shipped:
            register_shipped_configs()
        if model.replace("/", "-") not in open_clip.list_models():
            raise EmbedderError(f"unknown model {model!r}")
        clip = _create(model, device, force_image_size=size_override)
        return _finish(clip, name, model, _fingerprint(model, "random"), fmt="random", random=True)

    if pretrained and Path(pretrained).is_file():
        try:
            ckpt = read_checkpoint(pretrained)
        except CheckpointError as e:
            raise EmbedderError(str(e)) from None
        if ckpt.is_research:
            if model.startswith("local-dir:"):
                raise EmbedderError(f"a local-dir: model takes its weights from its folder; give {pretrained} "
                                    f"with --pretrained alone")
            if model not in shipped and model.replace("/", "-") not in open_clip.list_models():
                raise EmbedderError(f"unknown model {model!r}")
            return _research(ckpt, model, shipped, device, size_override, tse_ratio or DEFAULT_RATIO)
    if model in shipped and not pretrained:
        model = f"local-dir:{shipped[model]}"
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise EmbedderError(f"{folder}: no open_clip_config.json (not a model folder written by train/)")
        weights = _local_weights(folder)
        clip = _create(model, device, force_image_size=size_override)
        ckpt = _load_state(clip, weights, f"the architecture of {folder / 'open_clip_config.json'}")
        config = json.loads((folder / "open_clip_config.json").read_text())
        is_shipped = folder.resolve().parent == MODELS_DIR.resolve()
        return _finish(clip, name, model, _fingerprint(folder / "open_clip_config.json", weights),
                       fmt="shipped" if is_shipped else "local-dir", source=str(weights),
                       trained_on="synthpedes" if is_shipped else _trained_on(folder), config=config)
    if model in shipped:
        register_shipped_configs()
    if model.replace("/", "-") not in open_clip.list_models():
        known = ", ".join(sorted(shipped)) + " (shipped); " + ", ".join(open_clip.list_models()[:12]) + ", ..."
        raise EmbedderError(f"unknown model {model!r}; known: {known}")
    if image_size is None and model in ("ViT-B-16", "ViT-B/16", "ViT-B-16-quickgelu"):
        size_override = IRRA_IMAGE_SIZE
    if pretrained and Path(pretrained).is_file():
        clip = _create(model, device, force_image_size=size_override)
        _load_state(clip, Path(pretrained), model)
        return _finish(clip, name, model, _fingerprint(model, pretrained), fmt="open_clip", source=str(pretrained))
    if pretrained:
        if pretrained not in open_clip.list_pretrained_tags_by_model(model):
            raise EmbedderError(f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {model}")
        try:
            clip = open_clip.create_model(model, pretrained=pretrained, device=device, force_image_size=size_override)
        except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
            raise EmbedderError(f"cannot load {name} ({pretrained}): {str(e).splitlines()[0][:300]}") from None
        return _finish(clip, name, model, _fingerprint(model, pretrained), fmt="open_clip", source=pretrained)
    message = (f"model {name} has no weights (no --pretrained tag or file): it runs on RANDOM weights and ranks at "
               f"chance")
    if not allow_random:
        raise EmbedderError(message + "; give --pretrained TAG_OR_FILE (e.g. an IRRA/RDE/ICL best.pth), or allow "
                                      "random weights explicitly")
    log.warning("RANDOM WEIGHTS: %s", message)
    clip = _create(model, device, force_image_size=size_override)
    return _finish(clip, name, model, _fingerprint(model, "random"), fmt="random", random=True)


def _finish(clip: torch.nn.Module, name: str, arch: str, fingerprint: str, fmt: str, source: str = "",
            random: bool = False, trained_on: str | None = None, config: dict | None = None) -> LoadedModel:
    clip.eval()
    size = clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean, std, resample = _preprocess(clip)
    return LoadedModel(clip, _tokenizer(clip, arch), size, mean, std, name, fingerprint, format=fmt,
                       resample=resample, activation=_activation(clip), source=source, random=random,
                       trained_on=trained_on, config=config)


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


#: PIL filters by the names open_clip configs use.
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def load_pixels(image: ImageInput, size: tuple[int, int], resample: str = "bicubic") -> np.ndarray:
    """Read an image and squash it to ``size`` (height, width) with the PIL filter ``resample``
    (``bicubic``: the shipped models; ``bilinear``: IRRA / RDE / ICL, torchvision's ``Resize``
    default on PIL images): uint8 [H, W, 3]. Read upright and as 8-bit RGB by
    :func:`tools.photos.read_photo` (EXIF orientation, 16-bit grey); an unreadable file raises
    :class:`tools.photos.PhotoError` (an ``OSError``) naming it."""
    image = read_photo(image)
    h, w = size
    if image.size != (w, h):
        try:
            image = image.resize((w, h), RESAMPLE[resample])
        except KeyError:
            raise ValueError(f"unknown resize filter {resample!r} (choose from: {', '.join(RESAMPLE)})") from None
    return np.asarray(image, dtype=np.uint8)


def to_tensor(pixels: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
              out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or [H, W, 3]) -> normalised float32 [N, 3, H, W], ``(x / 255 - mean) / std``
    computed in place (in ``out`` when given: a float32 buffer of that shape, reused across batches)."""
    t = torch.as_tensor(pixels)
    if t.ndim == 3:
        t = t[None]
    t = t.permute(0, 3, 1, 2)
    x = out.copy_(t) if out is not None and out.shape == t.shape else t.float()
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.div_(255.0).sub_(m).div_(s)


FORMAT_NAMES = {"shipped": "shipped model", "local-dir": "model folder", "open_clip": "open_clip weights",
                "irra": "IRRA checkpoint", "rde": "RDE/ICL checkpoint", "random": "RANDOM weights"}


class Embedder:
    """Encode pedestrian images and descriptions into one L2-normalised space.

    Args:
        model: shipped model name (default ``synthpedes-small-v7``), open_clip architecture, or
            ``local-dir:PATH``.
        pretrained: pretrained tag or checkpoint file: an open_clip state dict for ``model``, or an
            IRRA / RDE / ICL ``best.pth`` (used as what it is unless ``model`` names an architecture).
        device: ``cpu``, ``cuda``, ... (default: CUDA when present).
        batch_size: images or texts per forward pass.
        image_size: input (height, width) override.
        allow_random: run an architecture without weights (random weights; warns loudly) instead of
            refusing it.
        tse_ratio: the share of tokens TSE selects (RDE / ICL checkpoints; default 0.3).
        fold_batchnorm: fold the image tower's BatchNorms into its convolutions (inference; same
            embeddings within 1e-5, faster on a CPU).

    Where the checkpoint has TSE heads (RDE, ICL), ``encode_images(..., with_tse=True)`` and
    ``encode_texts(..., with_tse=True)`` return ``(bge, tse)`` and :attr:`default_score` is ``fused``.

    Raises:
        EmbedderError: the model cannot be loaded (one line saying why).
    """

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str | None = None,
                 batch_size: int = 128, image_size: tuple[int, int] | None = None, allow_random: bool = False,
                 tse_ratio: float | None = None, fold_batchnorm: bool = True):
        loaded = load_clip(model, pretrained, device, image_size, allow_random=allow_random, tse_ratio=tse_ratio)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.image_size = loaded.image_size
        self.mean, self.std = loaded.mean, loaded.std
        self.resample = loaded.resample
        self.name = loaded.name
        self.fingerprint = loaded.fingerprint
        self.tse = loaded.tse
        # inference only: BatchNorm folded into the convolutions before it (the shipped models' CNN
        # towers; outputs equal within 1e-5, tests/test_towers.py)
        from .towers import fold_batchnorm as fold

        self.folded_batchnorms = fold(self.model.visual) if fold_batchnorm and not self.model.visual.training else 0
        self.device = next(self.model.parameters()).device
        self.batch_size = batch_size
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or 77)
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])

    # -- what was loaded ---------------------------------------------------------------------

    @property
    def has_tse(self) -> bool:
        """Whether TSE embeddings (and so the fused score) are available."""
        return self.tse is not None

    @property
    def tse_dim(self) -> int | None:
        return self.tse.dim if self.tse is not None else None

    @property
    def default_score(self) -> str:
        """``fused`` where the checkpoint has TSE heads, else ``bge``."""
        return "fused" if self.has_tse else "bge"

    @property
    def trained_on(self) -> str | None:
        """The dataset format the weights were trained on, where known (``synthpedes``: the shipped models)."""
        return self.loaded.trained_on

    @property
    def synthetic_only(self) -> bool:
        """Trained on SynthPedes renders only (the shipped models)."""
        return self.trained_on == "synthpedes"

    @property
    def info(self) -> dict:
        """What was loaded: ``model``, ``format``, ``source``, ``activation``, ``input`` (H, W),
        ``resize``, ``mean``/``std``, ``context``, ``tse`` (bool), ``tse_ratio``, ``default_score``."""
        return {"model": self.name, "format": self.loaded.format, "source": self.loaded.source,
                "activation": self.loaded.activation, "input": list(self.image_size), "resize": f"squash, {self.resample}",
                "mean": [round(float(x), 8) for x in self.mean], "std": [round(float(x), 8) for x in self.std],
                "context": self.context_length, "tse": self.has_tse,
                "tse_ratio": self.tse.ratio if self.tse is not None else None, "default_score": self.default_score,
                "random_weights": self.loaded.random, "trained_on": self.trained_on}

    def describe(self) -> str:
        """One line for a CLI: what was loaded and how inputs are prepared."""
        i = self.info
        mean = "OpenAI mean/std" if tuple(self.mean) == tuple(round(x, 8) for x in OPENAI_MEAN) or \
            np.allclose(self.mean, OPENAI_MEAN) else f"mean {i['mean']}, std {i['std']}"
        tse = f"TSE heads: yes (ratio {i['tse_ratio']})" if i["tse"] else "TSE heads: no"
        src = f" {i['source']}" if i["source"] and self.loaded.format != "shipped" else ""
        return (f"model {i['model']} ({FORMAT_NAMES.get(i['format'], i['format'])}{src}): {i['activation']}, input "
                f"{self.image_size[0]}x{self.image_size[1]} squashed ({self.resample}, {mean}), text context "
                f"{self.context_length}, {tse}")

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
        """Token ids ``[N, context]``: start token, CLIP BPE, end-of-text token, zero padding; a text
        over the context is cut and its last token replaced by end-of-text (as CLIP and IRRA do)."""
        return self.tokenizer(list(texts))

    def _need_tse(self) -> None:
        if self.tse is None:
            raise EmbedderError(f"model {self.name} has no TSE heads (only RDE / ICL checkpoints do); use score bge")

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None, progress: bool | None = None,
                     with_tse: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """float32 [N, D], L2-normalised; with ``with_tse`` (TSE heads needed) ``(bge [N, D], tse [N, E])``.
        Texts over the token budget are truncated (logged)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        if with_tse:
            self._need_tse()
        bs = batch_size or self.batch_size
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tse_out = np.zeros((len(texts), self.tse_dim), dtype=np.float32) if with_tse else None
        for t in texts:
            if not self.fits(t):
                log.warning("text exceeds the %d-token budget and is truncated: %r", self.token_budget,
                            self.truncated_part(t))
        show = progress if progress is not None else len(texts) > 4 * bs
        for i in tqdm(range(0, len(texts), bs), desc="encoding texts", unit="batch", disable=not show):
            ids = self.tokenize(texts[i:i + bs]).to(self.device)
            if with_tse:
                from .tse import text_embeddings

                feats, tse = text_embeddings(self.model, self.tse, ids)
                tse_out[i:i + bs] = torch.nn.functional.normalize(tse.float(), dim=-1).cpu().numpy()
            else:
                feats = encode_text(self.model, ids)
            out[i:i + bs] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        return (out, tse_out) if with_tse else out

    # -- images ----------------------------------------------------------------------------

    def load_pixels(self, image: ImageInput) -> np.ndarray:
        """An image squashed to this model's input the way it was trained: uint8 [H, W, 3]."""
        return load_pixels(image, self.image_size, self.resample)

    def _input_buffer(self, pixels) -> torch.Tensor | None:
        """A float32 [N, 3, H, W] buffer reused by every batch of the same shape (CPU only: the
        image tower reads it before the next batch is prepared; one per thread)."""
        if self.device.type != "cpu" or getattr(pixels, "ndim", 0) != 4:
            return None
        n, h, w, c = pixels.shape
        shape = (n, c, h, w)
        local = self.__dict__.setdefault("_buffers", threading.local())
        buf = getattr(local, "pixels", None)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=torch.float32)
            local.pixels = buf
        return buf

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray | torch.Tensor,
                      with_tse: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Encode images already squashed to ``image_size`` (uint8 [N, H, W, 3]); see :meth:`encode_images`."""
        x = to_tensor(pixels, self.mean, self.std, out=self._input_buffer(pixels)).to(self.device)
        if with_tse:
            from .tse import image_embeddings

            self._need_tse()
            feats, tse = image_embeddings(self.model, self.tse, x)
            return (torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy(),
                    torch.nn.functional.normalize(tse.float(), dim=-1).cpu().numpy())
        feats = self.model.encode_image(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: Sequence[ImageInput], batch_size: int | None = None,
                      progress: bool | None = None,
                      with_tse: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """float32 [N, D], L2-normalised; with ``with_tse`` (TSE heads needed) ``(bge [N, D], tse [N, E])``.
        Paths or PIL images; unreadable files raise ``OSError``."""
        if isinstance(images, (str, Path, Image.Image)):
            raise TypeError("encode_images takes a list of images or paths")
        if with_tse:
            self._need_tse()
        bs = batch_size or self.batch_size
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        tse_out = np.zeros((len(images), self.tse_dim), dtype=np.float32) if with_tse else None
        show = progress if progress is not None else len(images) > 4 * bs
        for i in tqdm(range(0, len(images), bs), desc="encoding images", unit="batch", disable=not show):
            batch = np.stack([self.load_pixels(im) for im in images[i:i + bs]])
            got = self.encode_pixels(batch, with_tse=with_tse)
            if with_tse:
                out[i:i + bs], tse_out[i:i + bs] = got
            else:
                out[i:i + bs] = got
        return (out, tse_out) if with_tse else out

    def text_features(self, texts: Sequence[str], progress: bool | None = None) -> dict[str, np.ndarray]:
        """``{"bge": [N, D]}``, plus ``"tse": [N, E]`` where the model has TSE heads; L2-normalised."""
        if self.has_tse:
            bge, tse = self.encode_texts(texts, progress=progress, with_tse=True)
            return {"bge": bge, "tse": tse}
        return {"bge": self.encode_texts(texts, progress=progress)}

    def image_features(self, images: Sequence[ImageInput], progress: bool | None = None) -> dict[str, np.ndarray]:
        """``{"bge": [N, D]}``, plus ``"tse": [N, E]`` where the model has TSE heads; L2-normalised."""
        if self.has_tse:
            bge, tse = self.encode_images(images, progress=progress, with_tse=True)
            return {"bge": bge, "tse": tse}
        return {"bge": self.encode_images(images, progress=progress)}

    def resolve_score(self, score: str | None) -> str:
        """``score`` checked against what this model offers; None means :attr:`default_score`.

        Raises:
            EmbedderError: ``tse`` or ``fused`` asked of a model without TSE heads, or an unknown name.
        """
        from .tse import SCORES

        if score in (None, "auto"):
            return self.default_score
        if score not in SCORES:
            raise EmbedderError(f"unknown score {score!r} (choose from: {', '.join(SCORES)})")
        if score != "bge" and not self.has_tse:
            raise EmbedderError(f"score {score} needs TSE heads, which model {self.name} lacks (only RDE / ICL "
                                f"checkpoints have them); use --score bge")
        return score

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        return self.encode_texts(list(texts))

    def __repr__(self) -> str:
        return (f"Embedder({self.name!r}, dim={self.dim}, image_size={self.image_size}, "
                f"context={self.context_length}, device={self.device}, tse={self.has_tse})")


def add_model_arguments(parser, image_size: bool = True, score: bool = True) -> None:
    """The model flags every CLI shares: ``--model``, ``--pretrained``, ``--image-size H W``,
    ``--random-weights``, ``--trust-checkpoint``, ``--device`` and (``score``) ``--score``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="shipped model name, open_clip architecture (e.g. ViT-B-16-quickgelu) or local-dir:PATH "
                             "(default %(default)s; with --pretrained BEST.PTH of IRRA/RDE/ICL and no --model, the "
                             "architecture is read from the file)")
    parser.add_argument("--pretrained", metavar="TAG_OR_FILE",
                        help="weights: an open_clip tag (cached) or file, or an IRRA / RDE / ICL best.pth (format, "
                             "activation, input size, resize filter and text context are read from it)")
    if image_size:
        parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                            help="input height and width (default: the model's; 384 128 for ViT-B-16 and "
                                 "research checkpoints)")
    parser.add_argument("--random-weights", action="store_true",
                        help="run an architecture that has no weights on random weights (pipeline tests only)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a --pretrained file in full when it holds Python objects beyond tensors and "
                             "plain values (this can run code the file carries; refused by default; the same as "
                             "THI_TRUST_CHECKPOINTS=1)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    if score:
        parser.add_argument("--score", choices=("bge", "tse", "fused"),
                            help="similarity to rank by: bge (CLS / end-of-text embeddings), tse (token-selection "
                                 "embeddings) or fused ((bge + tse) / 2, RDE's and ICL's score); default fused "
                                 "where the checkpoint has TSE heads, else bge")


def embedder_from_args(args, **kwargs) -> "Embedder":
    """An :class:`Embedder` from the flags of :func:`add_model_arguments`."""
    if getattr(args, "trust_checkpoint", False):
        from .checkpoints import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # the process is the one command the user trusted the file for
    size = getattr(args, "image_size", None)
    return Embedder(args.model, args.pretrained, device=args.device, image_size=tuple(size) if size else None,
                    allow_random=getattr(args, "random_weights", False), **kwargs)


def default_home() -> Path:
    """Where the project keeps generated data and indexes: ``$THI_HOME`` or ``~/.cache/thi-reid``."""
    return Path(os.environ.get("THI_HOME") or Path.home() / ".cache" / "thi-reid")
