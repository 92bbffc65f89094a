"""Random-weight checkpoints in the layouts IRRA, RDE and ICL save (``best.pth``), for tests and demos.

The files hold what those codebases' ``Checkpointer.save`` writes: ``{"model": state_dict,
"optimizer", "scheduler", "num_epoch", "iteration", "epoch"}``, the CLIP weights under
``base_model.`` with OpenAI's key names and no ``logit_scale``, the extra heads beside them (IRRA:
``classifier``, ``cross_attn``, ``cross_modal_transformer``, ``ln_pre_t``, ``ln_pre_i``,
``ln_post``, ``mlm_head``; RDE and ICL: ``visul_emb_layer``, ``texual_emb_layer``), linear,
convolution, attention and projection weights in fp16, norms, embeddings and BatchNorm
statistics in fp32. Widths and depths are parameters, so a small file has the same key layout as
a ViT-B/16 one (``--full`` writes that size: about 300 MB).

The weights are drawn so that every step of the computation shows in the embeddings: attention
peaked enough that token selection matters, MLP inputs spread over the range where GELU and
QuickGELU differ.

    python -m tests.research_checkpoints OUT_DIR [--formats irra rde icl icl168] [--full]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

VOCAB = 49408
FORMATS = ("irra", "rde", "icl", "icl168")


def _normal(g: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * std


def _norm(g: torch.Generator, sd: dict, key: str, width: int) -> None:
    sd[f"{key}.weight"] = 1.0 + _normal(g, width, std=0.1)
    sd[f"{key}.bias"] = _normal(g, width, std=0.1)


def _blocks(g: torch.Generator, sd: dict, prefix: str, width: int, layers: int) -> None:
    for i in range(layers):
        p = f"{prefix}resblocks.{i}."
        # q.k logits of several units: attention is peaked, so which tokens TSE selects matters
        sd[p + "attn.in_proj_weight"] = _normal(g, 3 * width, width, std=2.0 * width ** -0.5).half()
        sd[p + "attn.in_proj_bias"] = _normal(g, 3 * width, std=0.1).half()
        sd[p + "attn.out_proj.weight"] = _normal(g, width, width, std=width ** -0.5).half()
        sd[p + "attn.out_proj.bias"] = _normal(g, width, std=0.05).half()
        _norm(g, sd, p + "ln_1", width)
        # MLP pre-activations mostly in the negative tail, where GELU and QuickGELU differ most relative
        # to their value, and an MLP output that weighs in the residual stream: the activation shows
        sd[p + "mlp.c_fc.weight"] = _normal(g, 4 * width, width, std=1.5 * width ** -0.5).half()
        sd[p + "mlp.c_fc.bias"] = (-1.5 + _normal(g, 4 * width, std=0.5)).half()
        sd[p + "mlp.c_proj.weight"] = _normal(g, width, 4 * width, std=3.0 * (4 * width) ** -0.5).half()
        sd[p + "mlp.c_proj.bias"] = _normal(g, width, std=0.05).half()
        _norm(g, sd, p + "ln_2", width)


def clip_state_dict(g: torch.Generator, vision_width: int, vision_layers: int, patch: int, image_size: tuple[int, int],
                    text_width: int, text_layers: int, embed_dim: int, context: int) -> dict[str, torch.Tensor]:
    """OpenAI-named CLIP ViT weights (no prefix), fp16 where IRRA's ``convert_weights`` makes them fp16."""
    sd: dict[str, torch.Tensor] = {}
    grid = (image_size[0] // patch) * (image_size[1] // patch)
    sd["visual.class_embedding"] = _normal(g, vision_width, std=0.5)
    sd["visual.positional_embedding"] = _normal(g, grid + 1, vision_width, std=0.5)
    sd["visual.proj"] = _normal(g, vision_width, embed_dim, std=vision_width ** -0.5).half()
    sd["visual.conv1.weight"] = _normal(g, vision_width, 3, patch, patch, std=(3 * patch * patch) ** -0.5).half()
    _norm(g, sd, "visual.ln_pre", vision_width)
    _blocks(g, sd, "visual.transformer.", vision_width, vision_layers)
    _norm(g, sd, "visual.ln_post", vision_width)
    sd["positional_embedding"] = _normal(g, context, text_width, std=0.5)
    sd["text_projection"] = _normal(g, text_width, embed_dim, std=text_width ** -0.5).half()
    sd["token_embedding.weight"] = _normal(g, VOCAB, text_width, std=0.5)
    _blocks(g, sd, "transformer.", text_width, text_layers)
    _norm(g, sd, "ln_final", text_width)
    return sd


def tse_heads(g: torch.Generator, embed_dim: int, tse_dim: int) -> dict[str, torch.Tensor]:
    """RDE's ``visul_emb_layer`` / ``texual_emb_layer``: ``linear`` (and ``fc`` for images) and a
    two-layer MLP with BatchNorm (the second BatchNorm is built, unused), input ``embed_dim``."""
    sd: dict[str, torch.Tensor] = {}
    hidden = tse_dim // 2
    for head in ("visul_emb_layer", "texual_emb_layer"):
        layers = ["linear", "fc"] if head == "visul_emb_layer" else ["linear"]
        for name in layers:
            sd[f"{head}.{name}.weight"] = _normal(g, tse_dim, embed_dim, std=embed_dim ** -0.5).half()
            sd[f"{head}.{name}.bias"] = _normal(g, tse_dim, std=0.1).half()
        for i, (n_in, n_out) in enumerate(((embed_dim, hidden), (hidden, tse_dim))):
            sd[f"{head}.mlp.layers.{i}.weight"] = _normal(g, n_out, n_in, std=n_in ** -0.5).half()
            sd[f"{head}.mlp.layers.{i}.bias"] = _normal(g, n_out, std=0.1).half()
            bn = f"{head}.mlp.bns.{i}"
            sd[f"{bn}.weight"] = 1.0 + _normal(g, n_out, std=0.2)
            sd[f"{bn}.bias"] = _normal(g, n_out, std=0.2)
            sd[f"{bn}.running_mean"] = _normal(g, n_out, std=0.05)
            sd[f"{bn}.running_var"] = 0.02 + torch.rand(n_out, generator=g) * 0.04
            sd[f"{bn}.num_batches_tracked"] = torch.tensor(1000)
    return sd


def irra_heads(g: torch.Generator, embed_dim: int, classes: int = 11) -> dict[str, torch.Tensor]:
    """IRRA's training-only heads (id classifier, cross-modal MLM): present in its files, unused for retrieval."""
    sd: dict[str, torch.Tensor] = {
        "classifier.weight": _normal(g, classes, embed_dim, std=0.001).half(),
        "classifier.bias": torch.zeros(classes).half(),
        "cross_attn.in_proj_weight": _normal(g, 3 * embed_dim, embed_dim, std=embed_dim ** -0.5).half(),
        "cross_attn.in_proj_bias": torch.zeros(3 * embed_dim).half(),
        "cross_attn.out_proj.weight": _normal(g, embed_dim, embed_dim, std=embed_dim ** -0.5).half(),
        "cross_attn.out_proj.bias": torch.zeros(embed_dim).half(),
        "mlm_head.dense.weight": _normal(g, embed_dim, embed_dim, std=embed_dim ** -0.5).half(),
        "mlm_head.dense.bias": torch.zeros(embed_dim).half(),
        "mlm_head.fc.weight": _normal(g, VOCAB, embed_dim, std=0.02).half(),
        "mlm_head.fc.bias": torch.zeros(VOCAB).half(),
    }
    _norm(g, sd, "mlm_head.ln", embed_dim)
    for name in ("ln_pre_t", "ln_pre_i", "ln_post"):
        _norm(g, sd, name, embed_dim)
    _blocks(g, sd, "cross_modal_transformer.", embed_dim, 1)
    return sd


def make_checkpoint(path: str | Path, format: str = "rde", *, seed: int = 0, vision_width: int = 128,
                    vision_layers: int = 2, patch: int = 16, image_size: tuple[int, int] = (384, 128),
                    text_width: int = 128, text_layers: int = 2, embed_dim: int = 64, tse_dim: int = 128,
                    context: int | None = None, data_parallel: bool = False) -> Path:
    """Write a random-weight ``best.pth`` in ``format`` (``irra``, ``rde``, ``icl``; ``icl168`` =
    ICL with a 168-token text table, as its UFine6926 runs) and return its path."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    g = torch.Generator().manual_seed(seed)
    context = context or (168 if format == "icl168" else 77)
    clip = clip_state_dict(g, vision_width, vision_layers, patch, image_size, text_width, text_layers, embed_dim,
                           context)
    model = {f"base_model.{k}": v for k, v in clip.items()}
    model.update(irra_heads(g, embed_dim) if format == "irra" else tse_heads(g, embed_dim, tse_dim))
    if data_parallel:
        model = {f"module.{k}": v for k, v in model.items()}
    container = {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "weight_decay": 4e-5, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 17, "base_lrs": [1e-5], "milestones": (20, 50), "mode": "cosine"},
        "num_epoch": 60, "iteration": 0, "epoch": 17,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(container, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.research_checkpoints",
                                description="Write random-weight best.pth files in the IRRA / RDE / ICL layouts.")
    p.add_argument("out", type=Path, help="folder; writes OUT/FORMAT/best.pth")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--full", action="store_true", help="ViT-B/16 widths and depths (about 300 MB each)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = dict(vision_width=768, vision_layers=12, text_width=512, text_layers=12, embed_dim=512, tse_dim=1024) \
        if args.full else {}
    for fmt in args.formats:
        path = make_checkpoint(args.out / fmt / "best.pth", fmt, seed=args.seed + FORMATS.index(fmt), **size)
        print(f"{fmt}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
