"""Reading checkpoint files: open_clip state dicts and the ``best.pth`` files of IRRA, RDE and ICL.

The research codebases (IRRA, CVPR 2023; RDE, CVPR 2024; ICL, CVPR 2025) save
``{"model": state_dict, "optimizer", "scheduler", "num_epoch", "iteration", "epoch"}``. The CLIP
weights sit under ``base_model.`` with OpenAI's key names (which open_clip's ``CLIP`` class shares),
without ``logit_scale``; beside them are extra heads:

* IRRA: ``classifier``, ``cross_attn``, ``cross_modal_transformer``, ``ln_pre_t``, ``ln_pre_i``,
  ``ln_post``, ``mlm_head`` (training-only; not used for retrieval);
* RDE and ICL: ``visul_emb_layer`` and ``texual_emb_layer``, the token-selection embedding (TSE)
  heads (:mod:`tools.tse`). The two codebases save the same layout, so a file cannot tell which of
  the two wrote it; both are reported as "RDE/ICL".

Linear, convolution, attention and projection weights are stored fp16, norms and embeddings fp32;
everything is converted to fp32 on load. A model wrapped in ``DataParallel`` saves its keys under
``module.``, which is stripped too.

The architecture is read from tensor shapes the way OpenAI's ``build_model`` reads it (widths,
layer counts, heads = width // 64, the embedding size from the projections), so any width loads,
including small random-weight checkpoints with the same key layout. The input size comes from the
image position table (193 = 24 x 8 patches + CLS at patch 16: 384x128, IRRA's input) and the text
context from the text position table (77, or 168 for ICL's UFine6926 runs).

Files are read with PyTorch's safe loader (tensors, plain containers and numbers; the optimizer and
scheduler states these codebases save are such). A file holding other Python objects is refused in
one line unless the user trusts it (``THI_TRUST_CHECKPOINTS=1`` or ``--trust-checkpoint``): unpickling
it in full can run code carried in the file.

>>> ckpt = read_checkpoint("best.pth")                 # doctest: +SKIP
>>> ckpt.format, ckpt.has_tse, ckpt.context_length      # doctest: +SKIP
('rde', True, 77)
>>> model = build_clip(ckpt)                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

log = logging.getLogger(__name__)

#: Format name -> what the user is told.
FORMAT_LABELS = {
    "open_clip": "open_clip state dict",
    "irra": "IRRA checkpoint (base_model. + IRRA heads)",
    "rde": "RDE/ICL checkpoint (base_model. + TSE heads visul_emb_layer/texual_emb_layer)",
}
IRRA_HEADS = ("classifier", "cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head")
TSE_HEADS = ("visul_emb_layer", "texual_emb_layer")
#: IRRA's input size for ViT-B/16 pedestrian crops (height, width) and the patch grid's shape.
IRRA_IMAGE_SIZE = (384, 128)
#: IRRA's CLIP temperature 0.02, for the ``logit_scale`` these files do not store (it plays no part in ranking).
RESEARCH_LOGIT_SCALE = math.log(1 / 0.02)
#: Keys of an open_clip ``CLIP`` that a checkpoint may lack without harm.
OPTIONAL_KEYS = ("logit_scale", "logit_bias", "attn_mask")
_SHOW = 4  # keys named per kind in a mismatch message


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit; the message is one line naming what is wrong."""


@dataclass
class Checkpoint:
    """A checkpoint file read into memory and converted to open_clip's key names.

    Attributes:
        path: the file.
        format: ``open_clip``, ``irra`` or ``rde`` (RDE and ICL; see :data:`FORMAT_LABELS`).
        state_dict: the CLIP weights with open_clip key names, float32 (``logit_scale`` filled in
            where the file lacks it).
        heads: the other weights (IRRA heads, TSE heads) by key without ``base_model.``, float32.
        stored_dtypes: how many tensors the file stored in each dtype (e.g. ``{"float16": 150, "float32": 52}``).
        meta: the container's other fields that are plain values (``epoch``, ``iteration``, ``num_epoch``).
    """

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    stored_dtypes: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return FORMAT_LABELS[self.format]

    @property
    def is_research(self) -> bool:
        """An IRRA / RDE / ICL file (as opposed to an open_clip state dict)."""
        return self.format in ("irra", "rde")

    @property
    def has_tse(self) -> bool:
        return all(any(k.startswith(h + ".") for k in self.heads) for h in TSE_HEADS)

    def tse_state(self) -> dict[str, torch.Tensor]:
        """The TSE heads' weights, keys ``visul_emb_layer.*`` and ``texual_emb_layer.*``."""
        return {k: v for k, v in self.heads.items() if k.split(".", 1)[0] in TSE_HEADS}

    @property
    def context_length(self) -> int | None:
        pos = self.state_dict.get("positional_embedding")
        return int(pos.shape[0]) if pos is not None else None

    @property
    def image_tokens(self) -> int | None:
        """Rows of the image position table (patches + CLS) of a ViT image tower."""
        pos = self.state_dict.get("visual.positional_embedding")
        return int(pos.shape[0]) if pos is not None else None


# -- reading ---------------------------------------------------------------------------------


#: Set to 1 to let files the safe loader refuses be unpickled in full (the CLIs' ``--trust-checkpoint``).
TRUST_ENV = "THI_TRUST_CHECKPOINTS"


def trusting() -> bool:
    """Whether full (code-executing) unpickling was allowed: ``THI_TRUST_CHECKPOINTS=1``."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _load_object(path: Path, trust: bool | None = None) -> Any:
    """The object a checkpoint file holds. ``.pt``/``.pth``/``.bin`` files are read with PyTorch's
    safe loader (``weights_only=True``: tensors and plain containers and numbers, which covers
    model weights and the optimizer and scheduler states of IRRA, RDE and ICL). A file it refuses
    holds other Python objects, whose unpickling can run code carried in the file: it is read in
    full only when ``trust`` (default :func:`trusting`), else refused in one line saying how."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors alike
        if "weights only load failed" not in str(e).lower():
            try:  # a TorchScript archive (OpenAI's own .pt files)
                return torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception:
                raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None
        refused = _refused_object(e)
    if not (trusting() if trust is None else trust):
        raise CheckpointError(f"{path}: refused: it holds Python objects beyond tensors and plain values"
                              f"{refused}, and unpickling it in full can run code the file carries; if you trust "
                              f"the file, set {TRUST_ENV}=1 (or pass --trust-checkpoint)")
    log.warning("%s holds Python objects beyond tensors%s; unpickling it in full because %s=1: load only files you "
                "trust", path, refused, TRUST_ENV)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be unpickled ({_first_line(e)})") from None


def _refused_object(e: BaseException) -> str:
    """`` (e.g. argparse.Namespace)``: the global the safe loader refused, where its message names it."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return f" (e.g. {found.group(1)})" if found else ""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj) and \
            all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return None


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file and convert it to open_clip key names in float32.

    Accepts an open_clip state dict (``.safetensors``, ``.bin``, ``.pt``, ``.pth``; bare or under
    ``state_dict``), a TorchScript archive, and IRRA / RDE / ICL ``best.pth`` files.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no recognisable weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    obj = _load_object(path)
    meta: dict[str, Any] = {}
    sd = _tensor_dict(obj)
    if sd is None and isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and _tensor_dict(obj[key]) is not None:
                sd = _tensor_dict(obj[key])
                meta = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) and k != key}
                break
    if sd is None:
        what = (f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, Mapping)
                else type(obj).__name__)
        raise CheckpointError(f"{path}: no state dict found (found {what}; expected tensors by name, or a "
                              f"'model' / 'state_dict' entry holding them)")
    sd = _strip(sd, "module.")
    stored = Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    if any(k.startswith("base_model.") for k in sd):
        clip = {k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")}
        heads = {k: v for k, v in sd.items() if not k.startswith("base_model.")}
        fmt = "rde" if any(k.split(".", 1)[0] in TSE_HEADS for k in heads) else "irra"
    else:
        clip, heads, fmt = sd, {}, "open_clip"
    if fmt != "open_clip" and (not any(k.startswith("visual.") for k in clip) or "token_embedding.weight" not in clip):
        shown = ", ".join(list(clip)[:_SHOW])
        raise CheckpointError(f"{path}: not CLIP weights (assumed {FORMAT_LABELS[fmt]}; expected keys such as "
                              f"visual.conv1.weight and token_embedding.weight, found {shown}, ...)")

    def fp32(t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.is_floating_point() else t

    clip = {k: fp32(v) for k, v in clip.items()}
    heads = {k: fp32(v) for k, v in heads.items()}
    if fmt != "open_clip" and "logit_scale" not in clip:
        clip["logit_scale"] = torch.tensor(RESEARCH_LOGIT_SCALE)
    return Checkpoint(path, fmt, clip, heads, dict(stored), meta)


def peek_format(path: str | Path) -> str | None:
    """The format of a checkpoint file, or None where it is not one this module reads."""
    try:
        return read_checkpoint(path).format
    except CheckpointError:
        return None


# -- architecture ----------------------------------------------------------------------------


def _layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.attn\.in_proj_weight$")
    return len({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _grid(tokens: int, patch: int) -> tuple[int, int] | None:
    """(height, width) of an input whose patch grid holds ``tokens`` patches: IRRA's 3:1 first, then
    square, then 2:1 (the aspect ratios pedestrian and CLIP inputs use)."""
    for aspect in (3, 1, 2):
        if tokens % aspect:
            continue
        side = math.isqrt(tokens // aspect)
        if side * side * aspect == tokens:
            return side * aspect * patch, side * patch
    return None


def infer_config(ckpt: Checkpoint, image_size: tuple[int, int] | None = None) -> dict:
    """The open_clip model config of a ViT CLIP checkpoint, read from its tensor shapes.

    Args:
        image_size: (height, width); default: read from the image position table (see :func:`_grid`).

    Returns:
        ``{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}`` for ``open_clip.CLIP(**cfg)``.

    Raises:
        CheckpointError: the file is not a ViT CLIP, or ``image_size`` does not fit its position table.
    """
    sd = ckpt.state_dict
    need = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
            "positional_embedding", "token_embedding.weight", "ln_final.weight")
    absent = [k for k in need if k not in sd]
    if absent:
        if "visual.layer1.0.conv1.weight" in sd:
            raise CheckpointError(f"{ckpt.path}: a ResNet image tower; only ViT checkpoints are read from their "
                                  f"shapes (give --model with the architecture)")
        raise CheckpointError(f"{ckpt.path}: cannot read the architecture (assumed {ckpt.label}): missing "
                              f"{_listing(absent)}")
    width = int(sd["visual.conv1.weight"].shape[0])
    patch = int(sd["visual.conv1.weight"].shape[-1])
    tokens = int(sd["visual.positional_embedding"].shape[0]) - 1
    if image_size is not None:
        h, w = image_size
        if h % patch or w % patch or (h // patch) * (w // patch) != tokens:
            raise CheckpointError(f"{ckpt.path}: --image-size {h} {w} makes {(h // patch) * (w // patch)} patches of "
                                  f"{patch} px but the image position table holds {tokens} (+1 CLS)")
    else:
        found = _grid(tokens, patch)
        if found is None:
            raise CheckpointError(f"{ckpt.path}: cannot tell the input size from the image position table "
                                  f"({tokens} patches of {patch} px); give --image-size H W")
        image_size = found
    text_width = int(sd["ln_final.weight"].shape[0])
    v_layers = _layers(sd, "visual.transformer.resblocks.")
    t_layers = _layers(sd, "transformer.resblocks.")
    if not v_layers or not t_layers:
        raise CheckpointError(f"{ckpt.path}: no transformer blocks found (assumed {ckpt.label})")
    v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
    t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width
    return {
        "embed_dim": int(sd["text_projection"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": {"image_size": [int(image_size[0]), int(image_size[1])], "layers": v_layers, "width": width,
                       "patch_size": patch, "head_width": min(64, width), "mlp_ratio": v_mlp},
        "text_cfg": {"context_length": int(sd["positional_embedding"].shape[0]),
                     "vocab_size": int(sd["token_embedding.weight"].shape[0]), "width": text_width,
                     "heads": max(1, text_width // 64), "layers": t_layers, "mlp_ratio": t_mlp},
    }


def architecture_summary(cfg: dict) -> str:
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    name = "ViT-B/16" if (v["width"], v["layers"], v["patch_size"], t["width"], t["layers"]) == (768, 12, 16, 512, 12) \
        else f"ViT/{v['patch_size']}"
    return (f"{name}: image {v['layers']}x{v['width']}, text {t['layers']}x{t['width']}, "
            f"embedding {cfg['embed_dim']}")


# -- loading into a model --------------------------------------------------------------------


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def mismatch(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor],
             optional: Iterable[str] = OPTIONAL_KEYS) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, shape mismatches as 'key (file) vs (model)')."""
    optional = set(optional)
    missing = [k for k in model_sd if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in model_sd]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(model_sd[k].shape)}" for k in model_sd
              if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    return missing, unexpected, shapes


def mismatch_message(source: str, target: str, assumed: str, missing: list[str], unexpected: list[str],
                     shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shapes differ: {_listing(shapes)}")
    return f"checkpoint {source} does not fit {target} (assumed {assumed}): " + "; ".join(parts)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint, target: str) -> None:
    """Copy ``ckpt``'s CLIP weights into ``model``, all or nothing.

    Raises:
        CheckpointError: keys are missing or unexpected, or shapes differ (first few of each named).
    """
    model_sd = model.state_dict()
    missing, unexpected, shapes = mismatch(model_sd, ckpt.state_dict)
    if missing or unexpected or shapes:
        raise CheckpointError(mismatch_message(str(ckpt.path), target, ckpt.label, missing, unexpected, shapes))
    sd = {k: v for k, v in ckpt.state_dict.items() if k in model_sd}
    model.load_state_dict(sd, strict=False)


def build_clip(ckpt: Checkpoint, image_size: tuple[int, int] | None = None, quick_gelu: bool = True,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """An open_clip ``CLIP`` built from ``ckpt``'s shapes and loaded with its weights.

    ``quick_gelu`` is True for every OpenAI-initialised checkpoint (IRRA, RDE, ICL train from
    OpenAI's weights, which use QuickGELU); False exists only to show what the wrong activation does.

    Returns:
        (model in eval mode on ``device``, its open_clip config).
    """
    import open_clip

    cfg = infer_config(ckpt, image_size)
    cfg["quick_gelu"] = quick_gelu
    model = open_clip.CLIP(**cfg)
    load_weights(model, ckpt, f"the architecture read from its shapes ({architecture_summary(cfg)})")
    return model.to(device).eval(), cfg
