"""A pedestrian attribute recogniser: the eyes of the offline MLLM.

A small CNN, independent of the retrieval model, that reads a 128x256 pedestrian photo and gives,
for every slot of ``tools.attributes``, a probability for each value plus one for *unseen* (not
visible in this photo, or not applicable: the colour of a hat nobody wears). Trained by
``python -m train.attributes`` on SynthPedes train annotations; its weights ship with the package.

>>> rec = Recogniser.load()                          # the shipped weights
>>> probs = rec.predict(["photo.jpg"])[0]           # doctest: +SKIP
>>> probs["upper_color"]                             # doctest: +SKIP
{'black': 0.01, ..., 'red': 0.93, ..., 'unseen': 0.0}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from tools.attributes import SLOT_NAMES, SLOTS
from tools.embedder import ImageInput, load_pixels, pick_device

log = logging.getLogger(__name__)

UNSEEN = "unseen"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "recogniser.safetensors"
INPUT_SIZE = (256, 128)  # height, width: SynthPedes' full resolution (small items need every pixel)
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def slot_classes(slot: str) -> list[str]:
    """The classes of one slot's head: its values, then ``unseen``."""
    return list(SLOTS[slot].values) + [UNSEEN]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class AttributeNet(nn.Module):
    """CNN with a spatial (not pooled) head: where a colour is tells which garment it belongs to.

    ``stem`` > 0 adds one cheap stride-2 convolution in front, so a full-resolution photo costs
    about what a half-resolution one costs without it while small items keep their pixels.
    ``classes`` (slot -> class names, ``unseen`` last) fixes each head's outputs; by default every
    slot of ``tools.attributes`` with its values. Weights keep the classes they were trained with,
    so a vocabulary extended later still loads them (the new values are never predicted).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 192), hidden: int = 384,
                 input_size: tuple[int, int] = INPUT_SIZE, stem: int = 16,
                 classes: dict[str, list[str]] | None = None):
        super().__init__()
        layers, cin = [], 3
        if stem:
            layers.append(nn.Sequential(nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem),
                                        nn.ReLU(inplace=True)))
            cin = stem
        for w in widths:
            layers.append(_block(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        stride = 2 ** (len(widths) + (1 if stem else 0))
        cells = (input_size[0] // stride) * (input_size[1] // stride)
        self.neck = nn.Sequential(nn.Conv2d(cin, 64, 1), nn.ReLU(inplace=True), nn.Flatten(),
                                  nn.Dropout(0.2), nn.Linear(64 * cells, hidden), nn.ReLU(inplace=True))
        self.classes = {s: list(c) for s, c in (classes or {s: slot_classes(s) for s in SLOT_NAMES}).items()}
        self.heads = nn.ModuleDict({s: nn.Linear(hidden, len(c)) for s, c in self.classes.items()})
        self.config = {"widths": list(widths), "hidden": hidden, "input_size": list(input_size), "stem": stem,
                       "classes": self.classes}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The shared features every head reads: float [N, hidden]."""
        return self.neck(self.features(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(x)
        return {s: head(h) for s, head in self.heads.items()}


class PresenceHead(nn.Module):
    """p(a person is in the photo) from the recogniser's features (every member's, concatenated).

    The recogniser's own weights stay frozen; this small MLP is trained by ``python -m
    train.attributes DIR --presence`` on SynthPedes photos against pictures with no person in them
    (SynthPedes scenes without the person, occluders, textures, pages of text, animal shapes,
    shuffled photos). ``mean``/``std`` standardise the features as seen in training.
    """

    def __init__(self, in_dim: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        self.config = {"in_dim": in_dim, "hidden": hidden}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """float [N, in_dim] -> logit [N]."""
        return self.mlp((features - self.mean) / self.std).squeeze(-1)


def to_input(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W]."""
    t = torch.as_tensor(pixels)
    if t.ndim == 3:
        t = t[None]
    t = t.permute(0, 3, 1, 2).float().div(255.0)
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return (t - m) / s


MEMBER_PREFIX = "member"


def _member_prefix(i: int) -> str:
    # member 0 keeps unprefixed names, so single-network files and ensembles load alike
    return f"{MEMBER_PREFIX}{i}." if i else ""


class Recogniser:
    """Batched, cached attribute recognition with the shipped (or given) weights."""

    def __init__(self, net: AttributeNet, device: str | torch.device | None = None, config: dict | None = None,
                 path: Path | None = None, extra_members: Sequence[AttributeNet] = (),
                 presence: PresenceHead | None = None, presence_config: dict | None = None):
        self.device = pick_device(str(device) if device else None)
        self.net = net.to(self.device).eval()
        self.presence = presence.to(self.device).eval() if presence is not None else None
        self.presence_config = dict(presence_config or {})
        # an ensemble: independently trained networks of the same architecture, probabilities averaged
        self.members = [self.net] + [m.to(self.device).eval() for m in extra_members]
        if any(m.config != net.config for m in self.members):
            raise ValueError("ensemble members must share one architecture")
        self.input_size = tuple(net.config["input_size"])
        self.config = self._with_members(config or net.config)  # architecture plus e.g. the verifier
        self.path = path

    def _with_members(self, config: dict) -> dict:
        """``config`` plus the member count that ``load`` reads (absent for a single network)."""
        return {**config, **({"members": len(self.members)} if len(self.members) > 1 else {})}

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS, device: str | None = None) -> "Recogniser":
        path = Path(path)
        config_path = path.with_suffix(".json")
        if not path.is_file() or not config_path.is_file():
            raise FileNotFoundError(f"recogniser weights not found: {path} (+ {config_path.name}); "
                                    f"train them with: python -m train.attributes SYNTHPEDES_DIR --out {path}")
        config = json.loads(config_path.read_text())
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        classes = config.get("classes") or _classes_of(state)
        nets = []
        for i in range(int(config.get("members", 1))):
            # weights saved before the stem existed have no "stem" key and none in the network
            net = AttributeNet(config["widths"], config["hidden"], tuple(config["input_size"]), config.get("stem", 0),
                               classes)
            prefix = _member_prefix(i)
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix) and (i > 0 or not k.startswith(MEMBER_PREFIX))})
            nets.append(net)
        presence, presence_config = None, None
        if config.get("presence"):
            presence, presence_config = load_presence(path.parent / config["presence"])
        return cls(nets[0], device, config, path, nets[1:], presence, presence_config)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_items()}, str(path))
        self.path = path
        self.config = self._with_members({**self.net.config, **(extra or {})})
        path.with_suffix(".json").write_text(json.dumps(self.config, indent=2))

    def save_config(self, extra: dict) -> None:
        """Add settings (such as a calibrated threshold) to the weights' JSON file."""
        if self.path is None:
            raise ValueError("this recogniser was not loaded from a file")
        self.config.update(extra)
        self.path.with_suffix(".json").write_text(json.dumps(self.config, indent=2))

    @property
    def flip_average(self) -> bool:
        """Average each photo's probabilities with its mirror image's (set in the weights' JSON)."""
        return bool(self.config.get("flip_average", False))

    @property
    def classes(self) -> dict[str, list[str]]:
        """slot -> the classes its head predicts (``unseen`` last)."""
        return self.net.classes

    @torch.inference_mode()
    def predict_pixels(self, pixels: np.ndarray) -> list[dict[str, dict[str, float]]]:
        return self._predict_pixels(pixels)[0]

    @torch.inference_mode()
    def features(self, pixels: np.ndarray) -> torch.Tensor:
        """Every member's shared features of uint8 [N, H, W, 3] photos, concatenated: float [N, members * hidden]
        (what :class:`PresenceHead` reads)."""
        x = to_input(pixels).to(self.device)
        return torch.cat([member.embed(x).float() for member in self.members], dim=-1)

    @torch.inference_mode()
    def _predict_pixels(self, pixels: np.ndarray) -> tuple[list[dict[str, dict[str, float]]], list[float | None]]:
        x = to_input(pixels).to(self.device)
        # left/right does not change what a person wears, and mirrored errors are partly independent
        views = [x, x.flip(-1)] if self.flip_average else [x]
        embedded = [(member, [member.embed(v) for v in views]) for member in self.members]
        outputs = [{s: head(h) for s, head in member.heads.items()} for member, hs in embedded for h in hs]
        classes = self.classes
        probs = {s: (sum(torch.softmax(o[s].float(), dim=-1) for o in outputs) / len(outputs)).cpu().numpy()
                 for s in classes}
        out = []
        for i in range(len(pixels)):
            out.append({s: dict(zip(classes[s], probs[s][i].tolist())) for s in classes})
        person: list[float | None] = [None] * len(pixels)
        if self.presence is not None:
            features = torch.cat([hs[0].float() for _, hs in embedded], dim=-1)
            person = torch.sigmoid(self.presence(features)).cpu().tolist()
        return out, person

    def state_items(self) -> list[tuple[str, torch.Tensor]]:
        """Every member's parameters and buffers under the names they are saved with."""
        return [(_member_prefix(i) + k, v) for i, member in enumerate(self.members)
                for k, v in member.state_dict().items()]

    def predict(self, images: Sequence[ImageInput], batch_size: int = 64) -> list[dict[str, dict[str, float]]]:
        """Per image: slot -> {value: probability, ..., "unseen": probability}."""
        return self.predict_with_presence(images, batch_size)[0]

    def predict_with_presence(self, images: Sequence[ImageInput], batch_size: int = 64
                              ) -> tuple[list[dict[str, dict[str, float]]], list[float | None]]:
        """Per image: the slot probabilities of :meth:`predict` and p(a person is in the photo)
        (None without a presence head). One pass over the photos for both."""
        out: list = []
        person: list = []
        for i in range(0, len(images), batch_size):
            batch = np.stack([load_pixels(im, self.input_size) for im in images[i:i + batch_size]])
            probs, p = self._predict_pixels(batch)
            out.extend(probs)
            person.extend(p)
        return out, person

    @property
    def presence_threshold(self) -> float:
        """Below this p(person) the photo is taken to show no person."""
        return float(self.presence_config.get("threshold", 0.5))


def _classes_of(state: dict[str, torch.Tensor]) -> dict[str, list[str]] | None:
    """Classes for a weights file saved before they were stored: the current vocabulary, checked
    against each head's size (a file from another vocabulary cannot be read without its classes)."""
    classes = {}
    for s in SLOT_NAMES:
        weight = state.get(f"heads.{s}.weight")
        if weight is None:
            continue
        if weight.shape[0] != len(slot_classes(s)):
            raise ValueError(f"recogniser head {s!r} has {weight.shape[0]} classes but the vocabulary has "
                             f"{len(slot_classes(s))}, and the weights' JSON names no classes")
        classes[s] = slot_classes(s)
    return classes or None


def load_presence(path: str | Path) -> tuple[PresenceHead, dict]:
    """A :class:`PresenceHead` and its settings (threshold, how it was trained) from
    ``path`` (.safetensors) and the .json beside it."""
    path = Path(path)
    config_path = path.with_suffix(".json")
    if not path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"presence weights not found: {path} (+ {config_path.name}); train them with: "
                                f"python -m train.attributes SYNTHPEDES_DIR --presence --out {path}")
    config = json.loads(config_path.read_text())
    head = PresenceHead(int(config["in_dim"]), int(config["hidden"]))
    head.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return head.eval(), config


# what a network's config says about how it was trained
PROVENANCE_KEYS = ("trained_on", "train_photos", "epochs", "seed", "init")


def provenance(config: dict) -> dict:
    """The part of a network's config that says how it was trained."""
    return {k: config[k] for k in PROVENANCE_KEYS if k in config}


def _worlds_seen(config: dict) -> list:
    """Every world a network was trained on, those of the run it continued (``init``) included."""
    return list(config.get("trained_on", [])) + (_worlds_seen(config["init"]) if "init" in config else [])


def combine(paths: Sequence[str | Path], out: str | Path, device: str | None = None) -> Recogniser:
    """Write one ensemble file from recogniser files trained with different seeds (same architecture).

    Their probabilities are averaged. The verifier depends on the probabilities, so the ensemble
    starts without one: fit it with ``python -m eval.mllm DIR --split val --calibrate``.
    """
    if len(paths) < 2:
        raise ValueError("an ensemble needs at least two recogniser files")
    loaded = [Recogniser.load(p, device) for p in paths]
    nets = [m for r in loaded for m in r.members]
    first = loaded[0].config
    # the verifier and a presence head read the members' outputs: an ensemble needs its own
    config = {k: v for k, v in first.items()
              if k not in ("verifier", "members", "member_training", "presence") + PROVENANCE_KEYS}
    config["seeds"] = [r.config.get("seed") for r in loaded]
    config["trained_on"] = sorted({str(t) for r in loaded for t in _worlds_seen(r.config)})
    # how each network was trained (photos, epochs, a run it continued): members may differ
    config["member_training"] = [provenance(r.config) for r in loaded]
    config["flip_average"] = any(r.flip_average for r in loaded)
    rec = Recogniser(nets[0], device, config, extra_members=nets[1:])
    rec.save(out, {k: v for k, v in config.items() if k not in nets[0].config})
    log.info("wrote a %d-network ensemble to %s; calibrate its verifier before use", len(nets), out)
    return rec
