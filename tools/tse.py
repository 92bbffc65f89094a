"""Token-selection embedding (TSE) and the fused BGE + TSE score of RDE and ICL.

RDE ("Noisy-Correspondence Learning for Text-to-Image Person Re-identification", CVPR 2024) ranks
by two embeddings per image and per text:

* **BGE** (basic global embedding): the CLS token (image) or the end-of-text token (text) after the
  last layer norm and the projection, as in CLIP;
* **TSE** (token-selection embedding): the tokens the last transformer layer's CLS / end-of-text
  query attends to most (attention averaged over heads; the CLS / start / end tokens themselves
  excluded, text padding excluded), each projected like BGE and L2-normalised, passed through a
  residual MLP head (``fc`` or ``linear`` + a two-layer MLP with BatchNorm and ReLU), then
  max-pooled over the selected tokens. ``k = int((L - 1) * ratio)`` image tokens of ``L`` (CLS
  included) and ``k = int((C - 2) * ratio)`` text tokens for a context of ``C``, pooled over the
  first ``min(k, n - 2)`` of a text of ``n`` tokens; ``ratio`` = 0.3 (the released training scripts).

The score is the mean of the two cosine similarities, ``(BGE + TSE) / 2`` (RDE's and ICL's
evaluation; ICL's xi gate is set on it). The heads' weights come from the checkpoint's
``visul_emb_layer`` / ``texual_emb_layer`` (:mod:`tools.checkpoints`).

>>> heads = TSEHeads.from_state_dict(ckpt.tse_state())                      # doctest: +SKIP
>>> bge, tse = image_embeddings(model, heads, pixels)                        # doctest: +SKIP
>>> sim = similarity({"bge": t_bge, "tse": t_tse}, {"bge": g_bge, "tse": g_tse}, "fused")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: Share of tokens TSE selects (RDE's and ICL's ``--select_ratio``, 0.3 in their scripts).
DEFAULT_RATIO = 0.3
#: Scores a gallery can be ranked by.
SCORES = ("bge", "tse", "fused")


class TSEError(ValueError):
    """TSE heads are missing or malformed, or a score needs embeddings that are absent."""


class TSEBranch(nn.Module):
    """One tower's head: ``skip(f) + mlp(f)`` per selected token, then the maximum over tokens.

    ``mlp`` is ``Linear -> BatchNorm1d -> ReLU`` for every layer but the last, then ``Linear``
    (the last BatchNorm of the released module is built but unused; it is not loaded here).
    Shapes: in ``[N, k, D]`` -> out ``[N, E]``.
    """

    def __init__(self, skip: nn.Linear, layers: list[nn.Linear], norms: list[nn.BatchNorm1d]):
        super().__init__()
        self.skip = skip
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)

    def tokens(self, f: torch.Tensor) -> torch.Tensor:
        """Per-token output ``[N, k, E]`` of L2-normalised token features ``f`` ``[N, k, D]``."""
        n, k, d = f.shape
        x = f.reshape(n * k, d)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.relu(self.norms[i](h))
        return (h + self.skip(x)).view(n, k, -1)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], skip: str, where: str) -> "TSEBranch":
        if f"{skip}.weight" not in sd:
            raise TSEError(f"{where}: no {skip}.weight")
        idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"mlp\.layers\.(\d+)\.weight$", k))})
        if not idx or idx != list(range(len(idx))):
            raise TSEError(f"{where}: no mlp.layers.N.weight")

        def linear(prefix: str) -> nn.Linear:
            w = sd[f"{prefix}.weight"]
            lin = nn.Linear(w.shape[1], w.shape[0], bias=f"{prefix}.bias" in sd)
            lin.weight.data.copy_(w.float())
            if lin.bias is not None:
                lin.bias.data.copy_(sd[f"{prefix}.bias"].float())
            return lin

        layers = [linear(f"mlp.layers.{i}") for i in idx]
        norms = []
        for i in idx[:-1]:
            p = f"mlp.bns.{i}"
            if f"{p}.running_mean" not in sd:
                raise TSEError(f"{where}: no {p}.running_mean (BatchNorm statistics)")
            bn = nn.BatchNorm1d(sd[f"{p}.running_mean"].shape[0])
            bn.load_state_dict({k[len(p) + 1:]: v.float() if v.is_floating_point() else v
                                for k, v in sd.items() if k.startswith(p + ".")}, strict=False)
            norms.append(bn)
        branch = cls(linear(skip), layers, norms)
        if branch.skip.out_features != layers[-1].out_features or branch.skip.in_features != layers[0].in_features:
            raise TSEError(f"{where}: {skip} and mlp shapes disagree")
        return branch.eval()


class TSEHeads(nn.Module):
    """The image and text TSE heads of an RDE / ICL checkpoint.

    The image head's skip layer is ``visul_emb_layer.fc`` (its ``linear`` is built but unused by
    the released forward pass); the text head's is ``texual_emb_layer.linear``.
    """

    def __init__(self, image: TSEBranch, text: TSEBranch, ratio: float = DEFAULT_RATIO):
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise TSEError(f"the TSE select ratio must lie in (0, 1], not {ratio}")
        self.image = image
        self.text = text
        self.ratio = ratio

    @property
    def dim(self) -> int:
        return self.image.skip.out_features

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], ratio: float = DEFAULT_RATIO) -> "TSEHeads":
        """From ``visul_emb_layer.*`` and ``texual_emb_layer.*`` weights (any float dtype).

        Raises:
            TSEError: a head or one of its layers is missing, or their shapes disagree.
        """
        def part(prefix: str) -> dict[str, torch.Tensor]:
            got = {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")}
            if not got:
                raise TSEError(f"no {prefix}.* weights")
            return got

        image = TSEBranch.from_state_dict(part("visul_emb_layer"), "fc", "visul_emb_layer")
        text = TSEBranch.from_state_dict(part("texual_emb_layer"), "linear", "texual_emb_layer")
        if image.skip.out_features != text.skip.out_features:
            raise TSEError("the image and text TSE heads make embeddings of different sizes")
        return cls(image, text, ratio)


# -- token selection -------------------------------------------------------------------------


def select_image(tokens: torch.Tensor, attention: torch.Tensor, branch: TSEBranch, ratio: float) -> torch.Tensor:
    """Image TSE ``[N, E]`` (not normalised).

    Args:
        tokens: projected, last-norm'd image tokens ``[N, L, D]``, CLS first.
        attention: the last layer's attention weights averaged over heads ``[N, L, L]``.
    """
    n, length, _ = tokens.shape
    k = max(1, int((length - 1) * ratio))
    row = attention[:, 0, :].clone()
    row[:, 0] = -1.0  # never the CLS token itself
    idx = row.topk(k, dim=-1).indices
    picked = F.normalize(torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[2])), dim=-1)
    return branch.tokens(picked).max(dim=1).values


def select_text(tokens: torch.Tensor, attention: torch.Tensor, ids: torch.Tensor, branch: TSEBranch,
                ratio: float) -> torch.Tensor:
    """Text TSE ``[N, E]`` (not normalised).

    Args:
        tokens: projected, last-norm'd text tokens ``[N, C, D]``.
        attention: the last layer's (causal) attention weights averaged over heads ``[N, C, C]``.
        ids: the token ids ``[N, C]``; 0 is padding and the end-of-text token has the highest id.
    """
    n, context, _ = tokens.shape
    k = max(1, int((context - 2) * ratio))
    eot = ids.argmax(dim=-1)
    rows = torch.arange(n, device=ids.device)
    row = attention[rows, eot, :].clone()
    row[rows, eot] = -1.0  # never the end-of-text token
    row[:, 0] = -1.0  # nor the start token
    row = row * (ids != 0)  # padding scores 0, below every word
    idx = row.topk(k, dim=-1).indices
    picked = F.normalize(torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[2])), dim=-1)
    out = branch.tokens(picked)  # [N, k, E], best-attended first
    words = ((ids != 0).sum(dim=1) - 2).clamp(min=1, max=k)  # pool over the words only (at least one)
    keep = torch.arange(k, device=ids.device)[None, :] < words[:, None]
    return out.masked_fill(~keep[..., None], float("-inf")).max(dim=1).values


# -- capturing what the towers compute -------------------------------------------------------


class _Tap:
    """Hooks on an open_clip tower: the last block's attention weights and the last norm's output."""

    def __init__(self, last_block: nn.Module, final_norm: nn.Module):
        self.block, self.norm = last_block, final_norm
        self.attention: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> "_Tap":
        def ask_weights(_module, args, kwargs):
            kwargs = {**kwargs, "need_weights": True, "average_attn_weights": True}
            return args, kwargs

        def keep_weights(_module, _args, _kwargs, output):
            self.attention = output[1]

        def keep_tokens(_module, _args, output):
            self.tokens = output

        attn = self.block.attn
        self._handles = [attn.register_forward_pre_hook(ask_weights, with_kwargs=True),
                         attn.register_forward_hook(keep_weights, with_kwargs=True),
                         self.norm.register_forward_hook(keep_tokens)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def _check_tower(model: nn.Module) -> None:
    from open_clip.model import CLIP
    from open_clip.transformer import VisionTransformer

    if not isinstance(model, CLIP) or not isinstance(model.visual, VisionTransformer):
        raise TSEError("TSE needs an open_clip CLIP with a ViT image tower (the layout of IRRA / RDE / ICL checkpoints)")


def image_embeddings(model: nn.Module, heads: TSEHeads, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BGE ``[N, D]``, TSE ``[N, E]``) of normalised images ``x`` ``[N, 3, H, W]``, neither L2-normalised."""
    _check_tower(model)
    visual = model.visual
    with _Tap(visual.transformer.resblocks[-1], visual.ln_post) as tap:
        bge = model.encode_image(x)
    tokens = tap.tokens @ visual.proj
    return bge, select_image(tokens, tap.attention, heads.image, heads.ratio)


def text_embeddings(model: nn.Module, heads: TSEHeads, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BGE ``[N, D]``, TSE ``[N, E]``) of token ids ``[N, C]`` (the full context), neither L2-normalised."""
    _check_tower(model)
    with _Tap(model.transformer.resblocks[-1], model.ln_final) as tap:
        bge = model.encode_text(ids)
    tokens = tap.tokens @ model.text_projection
    return bge, select_text(tokens, tap.attention, ids, heads.text, heads.ratio)


# -- scores ----------------------------------------------------------------------------------


def fused_similarity(bge: np.ndarray, tse: np.ndarray) -> np.ndarray:
    """RDE's and ICL's ranking score: the mean of the BGE and TSE cosine similarities (same shapes)."""
    bge, tse = np.asarray(bge), np.asarray(tse)
    if bge.shape != tse.shape:
        raise TSEError(f"BGE and TSE similarities differ in shape: {bge.shape} vs {tse.shape}")
    return (bge + tse) / 2.0


def similarity(query: Mapping[str, np.ndarray | None], gallery: Mapping[str, np.ndarray | None],
               score: str = "fused") -> np.ndarray:
    """Similarity of L2-normalised queries to gallery items under ``score``.

    Args:
        query: ``{"bge": [Q, D] or [D], "tse": [Q, E] or [E] or None}``.
        gallery: ``{"bge": [G, D], "tse": [G, E] or None}``.
        score: ``bge``, ``tse`` or ``fused`` (``(bge + tse) / 2``).

    Returns:
        float32 ``[Q, G]`` (``[G]`` for a single query vector).

    Raises:
        TSEError: ``score`` needs TSE embeddings one side lacks, or is unknown.
    """
    if score not in SCORES:
        raise TSEError(f"unknown score {score!r} (choose from: {', '.join(SCORES)})")

    def part(kind: str) -> np.ndarray:
        q, g = query.get(kind), gallery.get(kind)
        if q is None or g is None:
            raise TSEError(f"score {score!r} needs {kind.upper()} embeddings of both queries and gallery")
        return np.asarray(q, dtype=np.float32) @ np.asarray(g, dtype=np.float32).T

    if score == "bge":
        return part("bge")
    if score == "tse":
        return part("tse")
    return fused_similarity(part("bge"), part("tse")).astype(np.float32)
