"""IRRA / RDE / ICL checkpoints: our embeddings against an independent computation from the definition.

The reference below reads the ``best.pth`` file itself and computes CLIP's forward pass, RDE's token
selection and the fused score with plain tensor operations, the way the authors' code defines them
(OpenAI's CLIP with QuickGELU, images squashed with PIL's bilinear filter and OpenAI's mean/std,
CLIP's BPE with the end-of-text token kept on truncation, TSE from the last layer's head-averaged
attention). It shares nothing with ``tools.embedder``, ``tools.checkpoints`` or ``tools.tse``
beyond the BPE vocabulary. The tests at the end change one step of ours at a time (GELU, bicubic,
truncation that drops the end-of-text token, a 168-token table squeezed to 77) and check that the
parity test would then fail.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.research_checkpoints import make_checkpoint
from tools.checkpoints import CheckpointError, read_checkpoint
from tools.embedder import Embedder, EmbedderError

SIZE = (96, 32)  # a 3:1 pedestrian input, 12 x 4 patches of 8 px
PATCH = 8
SMALL = dict(vision_width=128, vision_layers=2, patch=PATCH, image_size=SIZE, text_width=128, text_layers=2,
             embed_dim=64, tse_dim=128)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SOT, EOT = 49406, 49407
RATIO = 0.3
LONG = ("a young woman with long black hair tied in a ponytail wears a bright red coat over a white shirt, "
        "dark blue jeans and white sneakers; she carries a black backpack on her left shoulder and holds a "
        "phone in her right hand while walking past a shop window with a friend ") * 2
TEXTS = ["a man in a red coat", "a woman with a black backpack and white shoes",
         "a person wearing a grey hoodie, blue jeans and glasses, carrying a paper bag", LONG,
         "he wears black trousers", "a girl in a yellow dress holding an umbrella"]


# -- the independent reference -----------------------------------------------------------------


class Reference:
    """CLIP ViT + RDE's TSE computed from a best.pth's tensors, nothing else."""

    def __init__(self, path, context: int | None = None, ratio: float = RATIO, size: tuple[int, int] = SIZE):
        raw = torch.load(path, map_location="cpu", weights_only=False)["model"]
        raw = {k[len("module."):] if k.startswith("module.") else k: v for k, v in raw.items()}
        self.sd = {k[len("base_model."):]: v.float() if v.is_floating_point() else v
                   for k, v in raw.items() if k.startswith("base_model.")}
        self.heads = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()
                      if not k.startswith("base_model.")}
        self.context = context or self.sd["positional_embedding"].shape[0]
        self.ratio = ratio
        self.size = size
        self.patch = self.sd["visual.conv1.weight"].shape[-1]
        from open_clip.tokenizer import SimpleTokenizer

        self.bpe = SimpleTokenizer()  # only its BPE ``encode``: the vocabulary is CLIP's

    # tokens
    def tokens(self, text: str) -> torch.Tensor:
        ids = [SOT] + self.bpe.encode(text) + [EOT]
        if len(ids) > self.context:
            ids = ids[: self.context]
            ids[-1] = EOT
        out = torch.zeros(self.context, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids)
        return out

    # pixels
    @staticmethod
    def pixels(image: Image.Image, size=SIZE) -> torch.Tensor:
        h, w = size
        im = image.convert("RGB").resize((w, h), Image.BILINEAR)
        x = torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1) / 255.0
        return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]

    # transformer
    def _block(self, x: torch.Tensor, p: str, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        sd, width = self.sd, x.shape[-1]
        heads = max(1, width // 64)
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5)
        qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, v = qkv.split(width, dim=-1)
        n, length, _ = x.shape
        split = lambda t: t.view(n, length, heads, width // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        logits = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
        if mask is not None:
            logits = logits + mask
        a = logits.softmax(dim=-1)
        o = (a @ v).transpose(1, 2).reshape(n, length, width)
        x = x + o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
        h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        return x, a.mean(dim=1)

    def _run(self, x, prefix, mask):
        layers = len({k.split(".")[2] if prefix == "transformer." else k.split(".")[3]
                      for k in self.sd if k.startswith(prefix + "resblocks.")})
        attn = None
        for i in range(layers):
            x, attn = self._block(x, f"{prefix}resblocks.{i}.", mask)
        return x, attn

    def image(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        sd = self.sd
        x = torch.stack([self.pixels(im, self.size) for im in images])
        x = F.conv2d(x, sd["visual.conv1.weight"], stride=self.patch).flatten(2).transpose(1, 2)
        cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
        width = x.shape[-1]
        x = F.layer_norm(x, (width,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], eps=1e-5)
        x, attn = self._run(x, "visual.transformer.", None)
        x = F.layer_norm(x, (width,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], eps=1e-5)
        feats = x @ sd["visual.proj"]
        bge = feats[:, 0]
        tse = []
        if "visul_emb_layer.fc.weight" in self.heads:
            k = int((feats.shape[1] - 1) * self.ratio)
            for n in range(feats.shape[0]):
                row = attn[n, 0].clone()
                row[0] = -1
                picked = F.normalize(feats[n, row.topk(k).indices], dim=-1)
                tse.append(self._head("visul_emb_layer", "fc", picked).max(dim=0).values)
        return bge, (torch.stack(tse) if tse else None)

    def text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        sd = self.sd
        ids = torch.stack([self.tokens(t) for t in texts])
        x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
        mask = torch.full((self.context, self.context), float("-inf")).triu(1)
        x, attn = self._run(x, "transformer.", mask)
        width = x.shape[-1]
        x = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"], eps=1e-5)
        feats = x @ sd["text_projection"]
        eot = ids.argmax(dim=-1)
        bge = feats[torch.arange(len(texts)), eot]
        tse = []
        if "texual_emb_layer.linear.weight" in self.heads:
            k = int((self.context - 2) * self.ratio)
            for n in range(len(texts)):
                row = attn[n, eot[n]].clone()
                row[eot[n]] = -1
                row[0] = -1
                row = row * (ids[n] != 0)
                picked = F.normalize(feats[n, row.topk(k).indices], dim=-1)
                words = min(int((ids[n] != 0).sum()) - 2, k)
                tse.append(self._head("texual_emb_layer", "linear", picked)[:words].max(dim=0).values)
        return bge, (torch.stack(tse) if tse else None)

    def _head(self, head: str, skip: str, f: torch.Tensor) -> torch.Tensor:
        h = self.heads
        lin = lambda name, t: t @ h[f"{head}.{name}.weight"].T + h[f"{head}.{name}.bias"]  # noqa: E731
        z = lin("mlp.layers.0", f)
        bn = f"{head}.mlp.bns.0"
        z = (z - h[bn + ".running_mean"]) / torch.sqrt(h[bn + ".running_var"] + 1e-5) * h[bn + ".weight"] + h[bn + ".bias"]
        z = lin("mlp.layers.1", torch.relu(z))
        return z + lin(skip, f)


# -- fixtures -----------------------------------------------------------------------------------


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    """Noise photos larger than the input (so the resize filter shows) with smooth parts (so they differ in content)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.integers(0, 255, (6, 3, 3)).repeat(50, 0).repeat(33, 1)  # 300 x 99, six by three blocks
        noise = rng.integers(-60, 60, base.shape)
        out.append(Image.fromarray(np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("research")
    return {
        "irra": make_checkpoint(root / "irra" / "best.pth", "irra", seed=1, **SMALL),
        "rde": make_checkpoint(root / "rde" / "best.pth", "rde", seed=2, **SMALL),
        "icl": make_checkpoint(root / "icl" / "best.pth", "icl", seed=3, data_parallel=True, **SMALL),
        "icl168": make_checkpoint(root / "icl168" / "best.pth", "icl168", seed=4, **SMALL),
    }


@pytest.fixture(scope="module")
def gallery():
    return _images(16)


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _ours(emb: Embedder, images, texts):
    if emb.has_tse:
        ib, it = emb.encode_images(images, with_tse=True)
        tb, tt = emb.encode_texts(texts, with_tse=True)
        return ib, it, tb, tt
    return emb.encode_images(images), None, emb.encode_texts(texts), None


def _parity(emb: Embedder, ref: Reference, images, texts) -> dict[str, float]:
    """Least cosine of ours against the reference per embedding kind."""
    ib, it, tb, tt = _ours(emb, images, texts)
    rib, rit = ref.image(images)
    rtb, rtt = ref.text(texts)
    out = {"image_bge": _cos(ib, rib).min(), "text_bge": _cos(tb, rtb).min()}
    if it is not None:
        out.update(image_tse=_cos(it, rit).min(), text_tse=_cos(tt, rtt).min())
    return out


def _top10(q: np.ndarray, g: np.ndarray) -> list[list[int]]:
    return np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10].tolist()


# -- recognition and parity ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt,context,tse", [("irra", 77, False), ("rde", 77, True), ("icl", 77, True),
                                             ("icl168", 168, True)])
def test_format_is_recognised_and_loaded_as_the_authors_ran_it(files, fmt, context, tse):
    ckpt = read_checkpoint(files[fmt])
    assert ckpt.format == ("irra" if fmt == "irra" else "rde") and ckpt.has_tse == tse
    assert {"float16", "float32"} <= set(ckpt.stored_dtypes)  # the file mixes both ...
    assert all(v.dtype == torch.float32 for v in ckpt.state_dict.values() if v.is_floating_point())  # ... we do not
    assert ckpt.meta["epoch"] == 17 and "logit_scale" in ckpt.state_dict  # absent from the file, filled in
    emb = Embedder(pretrained=str(files[fmt]), device="cpu")  # no --model: the default model name is overridden
    info = emb.info
    assert info["format"] == ckpt.format and info["activation"] == "QuickGELU"
    assert info["input"] == list(SIZE) and info["resize"] == "squash, bilinear"
    assert np.allclose(info["mean"], MEAN) and np.allclose(info["std"], STD)
    assert info["context"] == context and emb.context_length == context and info["tse"] == tse
    assert info["default_score"] == ("fused" if tse else "bge")
    line = emb.describe()
    assert "QuickGELU" in line and "bilinear" in line and f"context {context}" in line and f"{SIZE[0]}x{SIZE[1]}" in line


@pytest.mark.parametrize("fmt", ["irra", "rde", "icl", "icl168"])
def test_embeddings_equal_the_definition(files, gallery, fmt):
    emb = Embedder(pretrained=str(files[fmt]), device="cpu", batch_size=5)
    ref = Reference(files[fmt])
    got = _parity(emb, ref, gallery, TEXTS)
    assert min(got.values()) >= 0.9999, got
    assert len(got) == (2 if fmt == "irra" else 4)


@pytest.mark.parametrize("fmt", ["rde", "icl", "icl168"])
def test_bge_tse_and_fused_top10_are_the_authors(files, gallery, fmt):
    from tools.tse import similarity

    emb = Embedder(pretrained=str(files[fmt]), device="cpu")
    ref = Reference(files[fmt])
    ib, it, tb, tt = _ours(emb, gallery, TEXTS)
    rib, rit = ref.image(gallery)
    rtb, rtt = ref.text(TEXTS)
    norm = lambda t: F.normalize(t, dim=-1).numpy()  # noqa: E731
    ours = {"bge": ib, "tse": it}, {"bge": tb, "tse": tt}
    theirs = {"bge": norm(rib), "tse": norm(rit)}, {"bge": norm(rtb), "tse": norm(rtt)}
    for score in ("bge", "tse", "fused"):
        a = similarity(ours[1], ours[0], score)
        b = similarity(theirs[1], theirs[0], score)
        if score == "fused":  # RDE's evaluation: the mean of the two cosine similarity matrices
            assert np.allclose(b, (theirs[1]["bge"] @ theirs[0]["bge"].T + theirs[1]["tse"] @ theirs[0]["tse"].T) / 2)
        assert np.abs(a - b).max() < 1e-4, score
        assert np.argsort(-a, axis=1)[:, :10].tolist() == np.argsort(-b, axis=1)[:, :10].tolist(), score
    # the two embeddings rank differently, so the fused score is not one of them in disguise
    assert _top10(tb, ib) != _top10(tt, it)


def test_a_168_token_table_reads_168_tokens(files):
    emb = Embedder(pretrained=str(files["icl168"]), device="cpu")
    ref = Reference(files["icl168"])
    ids = emb.tokenize([LONG])[0]
    assert emb.context_length == 168 and ids.shape == (168,)
    words = len(ref.bpe.encode(LONG))
    assert 77 < words + 2 < 168  # longer than 77 tokens, shorter than 168: nothing is cut
    assert int((ids != 0).sum()) == words + 2 and int(ids[words + 1]) == EOT
    assert torch.equal(ids, ref.tokens(LONG))


def test_the_end_of_text_token_is_kept_on_truncation(files):
    emb = Embedder(pretrained=str(files["rde"]), device="cpu")
    ids = emb.tokenize([LONG])[0]
    assert int(ids[-1]) == EOT and int((ids != 0).sum()) == 77


# -- the parity test fails when one step is wrong ------------------------------------------------


def _fails(emb, ref, images, texts) -> dict[str, float]:
    got = _parity(emb, ref, images, texts)
    assert min(got.values()) < 0.9999, got  # the parity test above would fail
    return got


def test_gelu_instead_of_quickgelu_fails_parity(files, gallery):
    from open_clip.transformer import QuickGELU

    emb = Embedder(pretrained=str(files["rde"]), device="cpu")
    swapped = 0
    for module in emb.model.modules():
        for name, child in module.named_children():
            if isinstance(child, QuickGELU):
                setattr(module, name, torch.nn.GELU())
                swapped += 1
    assert swapped == 4  # two blocks per tower
    got = _fails(emb, Reference(files["rde"]), gallery[:6], TEXTS)
    assert got["image_bge"] < 0.9999 and got["text_bge"] < 0.9999


def test_bicubic_instead_of_bilinear_fails_parity(files, gallery):
    emb = Embedder(pretrained=str(files["rde"]), device="cpu")
    emb.resample = "bicubic"
    got = _fails(emb, Reference(files["rde"]), gallery[:6], TEXTS[:2])
    assert got["image_bge"] < 0.9999 and got["text_bge"] >= 0.9999  # only the images change


def test_truncation_that_drops_the_end_of_text_token_fails_parity(files, gallery):
    emb = Embedder(pretrained=str(files["rde"]), device="cpu")
    keep = emb.tokenizer

    class DropEOT:
        context_length = keep.context_length
        encode = keep.encode

        def __call__(self, texts):
            rows = [[SOT] + keep.encode(t) + [EOT] for t in texts]
            out = torch.zeros(len(rows), 77, dtype=torch.long)
            for i, r in enumerate(rows):
                r = r[:77]  # cut without putting the end-of-text token back
                out[i, : len(r)] = torch.tensor(r)
            return out

    emb.tokenizer = DropEOT()
    got = _fails(emb, Reference(files["rde"]), gallery[:2], [LONG])
    assert got["text_bge"] < 0.9999


def test_a_168_token_checkpoint_read_at_77_tokens_fails_parity(files, gallery):
    import open_clip
    from open_clip.model import resize_text_pos_embed

    from tools.checkpoints import infer_config

    emb = Embedder(pretrained=str(files["icl168"]), device="cpu")
    ckpt = read_checkpoint(files["icl168"])
    cfg = infer_config(ckpt)
    cfg["text_cfg"]["context_length"] = 77
    squeezed = open_clip.CLIP(**cfg)
    sd = dict(ckpt.state_dict)
    resize_text_pos_embed(sd, squeezed)  # what open_clip's loader does to a 168-token table
    squeezed.load_state_dict(sd)
    emb.model = squeezed.eval()
    emb.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    got = _fails(emb, Reference(files["icl168"]), gallery[:2], TEXTS)
    assert got["text_bge"] < 0.9999


# -- explicit architectures and files that do not fit -------------------------------------------


def _register(tmp_path, name: str, width: int) -> str:
    import json

    import open_clip

    cfg = {"embed_dim": 64, "quick_gelu": True,
           "vision_cfg": {"image_size": list(SIZE), "layers": 2, "width": width, "patch_size": PATCH},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
    if name not in open_clip.list_models():
        (tmp_path / f"{name}.json").write_text(json.dumps({**cfg, "vision_cfg": {**cfg["vision_cfg"], "head_width": 64}}))
        open_clip.add_model_config(tmp_path / f"{name}.json")
    return name


def test_an_explicit_architecture_takes_the_checkpoint_s_size_and_context(files, gallery, tmp_path):
    name = _register(tmp_path, "test-small-vit-quickgelu", 128)
    inferred = Embedder(pretrained=str(files["icl168"]), device="cpu")
    explicit = Embedder(name, pretrained=str(files["icl168"]), device="cpu")
    assert explicit.context_length == 168 and explicit.image_size == SIZE and explicit.has_tse
    assert np.allclose(inferred.encode_texts(TEXTS[:3]), explicit.encode_texts(TEXTS[:3]), atol=1e-5)
    assert np.allclose(inferred.encode_images(gallery[:3]), explicit.encode_images(gallery[:3]), atol=1e-5)
    with pytest.raises(EmbedderError, match="makes 32 patches"):
        Embedder(name, pretrained=str(files["rde"]), image_size=(64, 32), device="cpu")


def test_files_that_do_not_fit_name_the_keys_and_the_format_assumed(files, tmp_path):
    wider = _register(tmp_path, "test-wider-vit-quickgelu", 192)
    with pytest.raises(EmbedderError) as e:
        Embedder(wider, pretrained=str(files["rde"]), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "assumed RDE/ICL" in msg and "visual.conv1.weight (128, 3, 8, 8) vs (192, 3, 8, 8)" in msg

    data = torch.load(files["irra"], map_location="cpu", weights_only=False)
    del data["model"]["base_model.ln_final.weight"]
    data["model"]["base_model.visual.extra_thing"] = torch.zeros(3)
    broken = tmp_path / "broken.pth"
    torch.save(data, broken)
    with pytest.raises(EmbedderError) as e:
        Embedder(pretrained=str(broken), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "assumed IRRA" in msg and "ln_final.weight" in msg
    with pytest.raises(CheckpointError, match="no state dict found"):
        torch.save({"model": {"epoch": 3}}, tmp_path / "empty.pth")
        read_checkpoint(tmp_path / "empty.pth")


def test_local_dir_with_only_a_pt_or_a_research_file_fails_clearly(files, tmp_path):
    import json
    import shutil

    from tests.helpers import PREPROCESS, TINY_CFG

    only_pt = tmp_path / "only-pt"
    only_pt.mkdir()
    (only_pt / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS}))
    torch.save({"whatever": torch.zeros(2)}, only_pt / "model.pt")
    with pytest.raises(EmbedderError, match="holds only model.pt"):
        Embedder(f"local-dir:{only_pt}")
    research = tmp_path / "research"
    research.mkdir()
    shutil.copy(only_pt / "open_clip_config.json", research)
    shutil.copy(files["rde"], research / "best.pth")
    with pytest.raises(EmbedderError, match="--pretrained"):
        Embedder(f"local-dir:{research}")
    with pytest.raises(EmbedderError, match="no open_clip_config.json"):
        Embedder(f"local-dir:{files['rde'].parent}")


def test_a_model_without_weights_is_refused_or_runs_with_a_loud_warning(tmp_path, caplog):
    from tests.helpers import tiny_arch

    name = tiny_arch(tmp_path)
    with pytest.raises(EmbedderError, match="RANDOM weights"):
        Embedder(name)
    with caplog.at_level(logging.WARNING):
        emb = Embedder(name, allow_random=True)
    assert emb.info["random_weights"] and emb.info["format"] == "random"
    loud = [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]
    assert len(loud) == 1 and "RANDOM weights" in emb.describe()
