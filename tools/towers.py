"""Image towers of our own, registered with timm so open_clip configs can name them.

open_clip builds an image tower from its config: a ViT, its ModifiedResNet (square input only,
its attention pool has a square grid) or any *timm* model by name. A pedestrian photo is twice as
tall as it is wide, and squashing it to a square halves the pixels a bag or a hat is drawn with, so
the shipped model uses ``pedestrian_cnn``: a plain strided CNN at the photo's own 256x128, about as
cheap to train on a CPU as ModifiedResNet at 128x128. open_clip puts its attention pool on top
(``"timm_pool": "abs_attn"``), whose position embeddings keep *where* a colour is, which tells
which garment it belongs to.

>>> import open_clip
>>> cfg = {"embed_dim": 64, "vision_cfg": {"timm_model_name": "pedestrian_cnn", "timm_pool": "abs_attn",
...        "timm_proj": "", "image_size": [256, 128]}, "text_cfg": {"width": 64, "heads": 1, "layers": 1}}
>>> register_towers()
>>> model = open_clip.CLIP(**cfg)                      # doctest: +SKIP

The module registers on import (``tools.embedder.load_clip`` imports it), so any model config
naming a tower here loads wherever the embedder loads a model.

For inference, :func:`fold_batchnorm` folds every BatchNorm that follows a convolution into the
convolution's weights and bias (the shipped models' ModifiedResNet tower, ``pedestrian_cnn``):
the image encoder is memory-bound on a CPU, and each unfused BatchNorm is one more pass over
its activations (27-29% of the encoder's time, measured on the CI machine).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

#: timm names of the towers defined here.
TOWERS = ("pedestrian_cnn",)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class PedestrianCNN(nn.Module):
    """A cheap stride-2 stem, then one strided two-convolution block per width.

    Implements what open_clip's ``TimmModel`` asks of a timm trunk: ``num_features``,
    ``default_cfg["pool_size"]`` (the feature grid at the default input size, for the attention
    pool's position embeddings) and ``reset_classifier``; it has no classifier, so the forward pass
    returns the feature map (or its average when a global pool is set).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 160, 320), stem: int = 16,
                 input_size: tuple[int, int] = (256, 128), global_pool: str = "", **_: Any):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
                                                 nn.BatchNorm2d(stem), nn.ReLU(inplace=True))]
        cin = stem
        for w in widths:
            layers.append(_block(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.num_features = cin
        stride = 2 ** (len(widths) + 1)
        self.default_cfg = {"pool_size": (input_size[0] // stride, input_size[1] // stride),
                            "input_size": (3, *input_size)}
        self.pretrained_cfg = self.default_cfg
        self.global_pool = global_pool

    def reset_classifier(self, num_classes: int = 0, global_pool: str | None = None) -> None:
        if num_classes:
            raise ValueError("pedestrian_cnn has no classifier; open_clip adds its own pool and projection")
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"pedestrian_cnn supports global_pool '' or 'avg', not {global_pool!r}")
            self.global_pool = global_pool

    def set_grad_checkpointing(self, enable: bool = True) -> None:  # open_clip may ask; too small to need it
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return x.mean((2, 3)) if self.global_pool == "avg" else x


def pedestrian_cnn(pretrained: bool = False, **kwargs: Any) -> PedestrianCNN:
    if pretrained:
        raise ValueError("pedestrian_cnn has no pretrained weights; its weights come with the model that uses it")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "num_classes", "drop_path_rate",
                "patch_drop_rate"):
        kwargs.pop(key, None)
    return PedestrianCNN(**kwargs)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each ``BatchNorm2d`` that follows a ``Conv2d`` into that convolution, in place, for
    inference (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the BatchNorm becomes ``Identity``).
    Pairs are a ``convN``/``bnN`` attribute pair (open_clip's ModifiedResNet) or a convolution
    directly followed by a BatchNorm in an ``nn.Sequential``. The module must be in eval mode (the
    running statistics are what is folded). Returns the number of BatchNorms folded.

    Raises:
        ValueError: the module is in training mode.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if module.training:
        raise ValueError("fold_batchnorm folds running statistics: call it on a module in eval mode")
    folded = 0

    def fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        nonlocal folded
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                and bn.num_features == conv.out_channels:
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            folded += 1

    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for name in children:
            if name.startswith("conv") and f"bn{name[4:]}" in children:
                fold(parent, name, f"bn{name[4:]}")
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                fold(parent, a, b)
    return folded


def register_towers() -> None:
    """Make the towers here known to ``timm.create_model`` (idempotent)."""
    import timm
    from timm.models import register_model

    if "pedestrian_cnn" not in timm.list_models("pedestrian_cnn"):
        register_model(pedestrian_cnn)


register_towers()
