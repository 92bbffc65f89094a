"""Our timm-registered image tower, as open_clip builds, saves and reloads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import PREPROCESS, TINY_CFG
from tools.embedder import Embedder, load_clip
from tools.towers import PedestrianCNN, pedestrian_cnn

TOWER_CFG = {**TINY_CFG, "vision_cfg": {"timm_model_name": "pedestrian_cnn", "timm_pool": "abs_attn", "timm_proj": "",
                                        "image_size": [64, 32]}}


def _folder(tmp_path, seed=0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.model.CustomTextCLIP(**{k: v for k, v in TOWER_CFG.items() if k != "custom_text"})
    # non-trivial batch-norm statistics, so a reload that lost the buffers would show
    model.train()
    with torch.no_grad():
        model.encode_image(torch.randn(8, 3, 64, 32) * 3 + 1)
    folder = tmp_path / f"tower-{seed}"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TOWER_CFG, "preprocess_cfg": PREPROCESS}))
    return folder, model.eval()


def test_open_clip_builds_the_tower_at_a_non_square_size(tmp_path):
    folder, _ = _folder(tmp_path)
    loaded = load_clip(f"local-dir:{folder}", random_init=True)
    assert loaded.image_size == (64, 32)
    assert isinstance(loaded.model.visual.trunk, PedestrianCNN)
    # the pool's position embeddings are made for 256x128 (an 8x4 grid at stride 32) and resampled
    # for other sizes, here a 2x1 grid
    assert loaded.model.visual.trunk.default_cfg["pool_size"] == (8, 4)
    out = loaded.model.encode_image(torch.randn(3, 3, 64, 32))
    assert out.shape == (3, TINY_CFG["embed_dim"])


def test_saved_tower_reloads_to_the_same_embeddings(tmp_path):
    folder, model = _folder(tmp_path)
    emb = Embedder(f"local-dir:{folder}")
    pixels = np.random.default_rng(0).integers(0, 255, (4, 64, 32, 3), dtype=np.uint8)
    got = emb.encode_pixels(pixels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    x = (x - 0.5) / 0.25
    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_tower_learns(tmp_path):
    """A few steps on two separable image classes lower the loss: gradients reach the trunk."""
    torch.manual_seed(0)
    tower = PedestrianCNN(widths=(8, 16, 16, 16), stem=8, input_size=(64, 32))
    head = torch.nn.Linear(16, 2)
    x = torch.randn(16, 3, 64, 32)
    x[:8, 0] += 2.0  # class 0 is redder
    y = torch.tensor([0] * 8 + [1] * 8)
    opt = torch.optim.Adam([*tower.parameters(), *head.parameters()], lr=1e-2)
    tower.reset_classifier(0, global_pool="avg")
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(head(tower(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert tower.features[0][0].weight.grad is not None


def test_tower_refuses_what_it_does_not_have():
    with pytest.raises(ValueError, match="no pretrained weights"):
        pedestrian_cnn(pretrained=True)
    tower = PedestrianCNN()
    with pytest.raises(ValueError, match="no classifier"):
        tower.reset_classifier(10)
    with pytest.raises(ValueError, match="global_pool"):
        tower.reset_classifier(0, global_pool="max")


# -- BatchNorm folded into the convolutions (inference) ---------------------------------------------


def test_the_shipped_models_tower_with_folded_batchnorm_gives_the_same_embeddings(small_world):
    """The shipped model's ModifiedResNet image tower: every BatchNorm (stem, blocks, downsample
    paths) folded at load, embeddings of real test photos equal to the unfolded tower's within 1e-5."""
    from tools.towers import fold_batchnorm

    emb = Embedder(device="cpu")
    assert emb.folded_batchnorms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in emb.model.visual.modules())
    unfolded = load_clip(device="cpu").model
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.visual.modules())
    assert n_bn == emb.folded_batchnorms  # every one of them
    photos = sorted((small_world / "imgs" / "test").glob("*.jpg"))[:16]
    pixels = np.stack([emb.load_pixels(p) for p in photos])
    folded = emb.encode_pixels(pixels)
    from tools.embedder import to_tensor

    with torch.inference_mode():
        ref = torch.nn.functional.normalize(unfolded.encode_image(to_tensor(pixels, emb.mean, emb.std)), dim=-1).numpy()
    assert np.abs(folded - ref).max() < 1e-5
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(unfolded.visual.train())


def test_the_pedestrian_tower_folds_too(tmp_path):
    from tools.towers import fold_batchnorm

    _, model = _folder(tmp_path, seed=3)
    x = torch.randn(4, 3, 64, 32)
    with torch.inference_mode():
        before = model.encode_image(x)
        folded = fold_batchnorm(model.visual)
        after = model.encode_image(x)
    assert folded == 9  # the stem and two per block, four blocks
    assert torch.allclose(before, after, atol=1e-5)
