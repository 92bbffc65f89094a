import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tools.embedder import Embedder, EmbedderError, encode_text, load_pixels

from .helpers import tiny_arch, tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Embedder(f"local-dir:{tiny_model_dir(tmp_path_factory.mktemp('m'))}", device="cpu", batch_size=4)


def test_features_are_normalised_float32_and_batch_independent(tiny, small_world):
    paths = sorted((small_world / "imgs" / "test").glob("*.jpg"))[:6]
    a = tiny.encode_images(paths)
    assert a.dtype == np.float32 and a.shape == (6, tiny.dim)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    b = tiny.encode_images(paths[:1] + [Image.open(p) for p in paths[1:]], batch_size=2)
    assert np.allclose(a, b, atol=1e-5)
    t = tiny.encode_texts(["a man in a red coat", "a woman with long hair", "x"])
    assert t.shape == (3, tiny.dim) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.allclose(t[:1], tiny.encode_texts(["a man in a red coat"]), atol=1e-5)


def test_squash_resize_keeps_the_whole_crop():
    img = Image.new("RGB", (128, 256), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 128, 8))  # a red band at the very top
    img.paste((0, 0, 255), (0, 248, 128, 256))  # a blue band at the very bottom
    px = load_pixels(img, (64, 32))
    assert px.shape == (64, 32, 3)
    assert px[0, 16, 0] > 200 and px[-1, 16, 2] > 200  # nothing cropped away


def test_short_text_path_equals_full_context(tiny):
    tokens = tiny.tokenize(["a man", "a woman with long black hair and a red coat"])
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        short = encode_text(tiny.model, tokens)
    assert torch.allclose(full, short, atol=1e-5)
    assert tiny.model.text.attn_mask.shape == (77, 77)  # restored


def test_checkpoint_file_and_architecture_name(tmp_path):
    folder = tiny_model_dir(tmp_path, seed=3)
    name = tiny_arch(tmp_path)
    from_dir = Embedder(f"local-dir:{folder}", device="cpu")
    from_file = Embedder(name, pretrained=str(folder / "open_clip_model.safetensors"), device="cpu")
    texts = ["a person with a backpack"]
    assert np.allclose(from_dir.encode_texts(texts), from_file.encode_texts(texts), atol=1e-6)
    assert from_dir.fingerprint != Embedder(f"local-dir:{tiny_model_dir(tmp_path, seed=4)}", device="cpu").fingerprint


def test_bad_models_give_clear_errors(tmp_path):
    with pytest.raises(EmbedderError, match="unknown model 'no-such-model'"):
        Embedder("no-such-model")
    name = tiny_arch(tmp_path)
    bad = tmp_path / "bad.pt"
    torch.save({"token_embedding.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(EmbedderError, match="does not fit"):
        Embedder(name, pretrained=str(bad))
    with pytest.raises(EmbedderError, match="neither a checkpoint file nor a pretrained tag"):
        Embedder(name, pretrained="laion2b_s34b_b88k")
    with pytest.raises(EmbedderError, match="no open_clip_config.json"):
        Embedder(f"local-dir:{tmp_path}")


def test_token_budget_and_truncation_report(tiny, caplog):
    assert tiny.token_budget == 75
    short = "a man in a red coat"
    assert tiny.fits(short) and tiny.truncated_part(short) == ""
    long = " ".join(["a woman in a red coat with a black backpack"] * 12) + " ENDWORD"
    assert not tiny.fits(long)
    tail = tiny.truncated_part(long)
    assert tail.endswith("ENDWORD") and tiny.fits(long[: len(long) - len(tail)])
    with caplog.at_level(logging.WARNING):
        tiny.encode_texts([long])
    assert "truncated" in caplog.text and "ENDWORD" in caplog.text


@pytest.mark.parametrize("name", ["synthpedes-small", "synthpedes-small-v5", "synthpedes-small-v7"])
def test_shipped_models_load_by_name_and_match_captions_to_their_photos(name, small_world):
    from data.readers import read_dataset
    from tools.embedder import shipped_models

    assert name in shipped_models()
    emb = Embedder(name, device="cpu")
    records = read_dataset(small_world, "auto").records[:60]  # a world neither model was trained on
    images = emb.encode_images([r.image_path for r in records])
    texts = emb.encode_texts([r.captions[0] for r in records])
    assert images.shape == (len(records), 256) and np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-4)
    pids = np.array([r.pid for r in records])
    hit = pids[(texts @ images.T).argmax(1)] == pids
    # trained weights: far above the ~1-in-20 a random model gets here
    assert hit.mean() > 0.3, hit.mean()


def test_the_default_model_is_the_shipped_model_that_meets_the_quality_target():
    from tools.embedder import DEFAULT_MODEL, shipped_models

    # v7 is the shipped model that meets the retrieval quality target (docs/results.md, "Targets at a glance")
    assert DEFAULT_MODEL == "synthpedes-small-v7" and DEFAULT_MODEL in shipped_models()
    default = Embedder(device="cpu")
    v7, v3 = Embedder("synthpedes-small-v7", device="cpu"), Embedder("synthpedes-small", device="cpu")
    assert default.fingerprint == v7.fingerprint != v3.fingerprint
    text = ["a man in a blue jacket walking in a park"]
    assert np.allclose(default.encode_texts(text), v7.encode_texts(text))


def test_registering_a_config_folder_leaves_no_temporary_files(tmp_path, monkeypatch):
    import json
    import tempfile

    import open_clip

    from tools.embedder import _register_config_folder

    from .helpers import TINY_CFG

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the registration writes its file
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = dict(TINY_CFG)
    cfg["text_cfg"] = dict(cfg["text_cfg"], width=cfg["text_cfg"]["width"] + 8)  # an architecture not seen yet
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    name = _register_config_folder(folder)
    assert name in open_clip.list_models()
    assert list(scratch.iterdir()) == []  # read once by open_clip, then removed
    open_clip.add_model_config(tmp_path / "absent.json")  # a later rescan still knows the architecture
    assert name in open_clip.list_models()
