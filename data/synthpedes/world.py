"""Who is in the SynthPedes world and how each photo of them is taken.

Pure sampling, no drawing: identities come from a fixed catalogue of outfit archetypes (shared by
every world, like fashion) plus per-identity variations, so many people share most attributes and a
short description fits several of them. Each identity is photographed 2 to 6 times by different
cameras with its own viewpoint, pose, framing, lighting, occluders and bystanders; visibility of
every attribute follows from those.

All randomness flows from ``numpy.random.Generator`` objects seeded by (world seed, split, index),
so a split's identities do not depend on how many identities other splits have or on worker count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tools.attributes import COLORS, COLOR_PARENT, IDENTITY_SLOTS, NONE, SLOTS

#: The cameras: each has a fixed place (background) and a lighting cast (RGB gains).
CAMERAS: tuple[dict[str, Any], ...] = (
    {"background": "street", "gain": (1.06, 1.00, 0.92), "brightness": 1.00},
    {"background": "park", "gain": (0.96, 1.04, 0.94), "brightness": 1.04},
    {"background": "indoor", "gain": (1.10, 1.00, 0.84), "brightness": 0.90},
    {"background": "crosswalk", "gain": (0.92, 0.98, 1.10), "brightness": 0.96},
    {"background": "street", "gain": (0.94, 0.98, 1.08), "brightness": 0.86},
    {"background": "park", "gain": (1.04, 1.02, 0.96), "brightness": 1.10},
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Archetypes are drawn once from this seed: the same outfit catalogue in every world.
ARCHETYPE_SEED = 20250611


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. Defaults mirror CUHK-PEDES's split sizes and are tuned so that a test
    caption fits 2 to 5 test identities on average (see ``data.synthpedes.ceiling``)."""

    seed: int = 0
    train_ids: int = 4000
    val_ids: int = 500
    test_ids: int = 1000
    num_archetypes: int = 40
    mutation_rate: float = 0.16
    mention_min: float = 0.4
    mention_max: float = 0.8
    noise_rate: float = 0.03
    captions_per_image: int = 2

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_ids, "val": self.val_ids, "test": self.test_ids}


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (stable across Python runs)."""
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _choice(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = list(options)
    p = np.asarray([options[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


_COLOR_PRIOR = {c: 1.0 for c in COLORS} | {"black": 2.5, "white": 1.8, "grey": 1.6, "blue": 1.5, "navy": 1.2}
_LOWER_COLOR_PRIOR = {c: 0.5 for c in COLORS} | {"black": 3.0, "grey": 1.6, "blue": 1.6, "navy": 1.4,
                                               "beige": 1.2, "brown": 1.0, "white": 1.0}
_JEANS_COLOR_PRIOR = {"blue": 3.0, "navy": 2.0, "black": 2.0, "grey": 1.0, "white": 0.3}
_SHOES_COLOR_PRIOR = {c: 0.25 for c in COLORS} | {"black": 3.0, "white": 2.5, "brown": 1.3, "grey": 1.0}


def _sample_group(rng: np.random.Generator, group: str, a: dict[str, str | None]) -> None:
    """(Re)sample one group of related slots in place, respecting the rest of the outfit."""
    female = a.get("gender") == "female"
    if group == "gender":
        a["gender"] = _choice(rng, {"male": 1.0, "female": 1.0})
    elif group == "hair":
        a["hair_length"] = _choice(rng, {"long": 0.7, "short": 0.3} if female else {"short": 0.9, "long": 0.1})
        a["hair_color"] = _choice(rng, {"black": 3.0, "brown": 2.0, "blonde": 1.2, "grey": 0.5})
    elif group == "upper":
        a["upper_type"] = _choice(rng, {"t-shirt": 1.4, "shirt": 1.0, "sweater": 0.8, "hoodie": 0.7,
                                        "jacket": 1.1, "coat": 0.8})
        if a["upper_type"] == "t-shirt":
            a["sleeve_length"] = _choice(rng, {"short": 0.85, "long": 0.15})
        elif a["upper_type"] == "shirt":
            a["sleeve_length"] = _choice(rng, {"short": 0.4, "long": 0.6})
        else:
            a["sleeve_length"] = "long"
    elif group == "upper_color":
        a["upper_color"] = _choice(rng, _COLOR_PRIOR)
    elif group == "pattern":
        a["pattern"] = _choice(rng, {"plain": 3.0, "striped": 0.9, "checked": 0.7, "logo": 0.8})
    elif group == "lower":
        options = {"trousers": 1.5, "jeans": 1.4, "shorts": 0.6}
        if female:
            options["skirt"] = 1.2
        a["lower_type"] = _choice(rng, options)
        if a["lower_type"] == "shorts":
            a["lower_length"] = "short"
        elif a["lower_type"] == "skirt":
            a["lower_length"] = _choice(rng, {"short": 0.55, "long": 0.45})
        else:
            a["lower_length"] = "long"
    elif group == "lower_color":
        prior = _JEANS_COLOR_PRIOR if a.get("lower_type") == "jeans" else _LOWER_COLOR_PRIOR
        a["lower_color"] = _choice(rng, prior)
    elif group == "shoes":
        short_lower = a.get("lower_length") == "short"
        a["shoes_type"] = _choice(rng, {"sneakers": 2.0, "boots": 0.8, "leather shoes": 1.0,
                                        "sandals": 0.9 if short_lower else 0.2})
    elif group == "shoes_color":
        a["shoes_color"] = _choice(rng, _SHOES_COLOR_PRIOR)
    elif group == "eyewear":
        a["eyewear"] = _choice(rng, {NONE: 3.0, "glasses": 1.0, "sunglasses": 0.6})
    elif group == "scarf":
        a["scarf"] = _choice(rng, {NONE: 4.0, "scarf": 1.0})
    elif group == "hand_object":
        a["hand_object"] = _choice(rng, {NONE: 3.0, "phone": 0.8, "umbrella": 0.5, "cup": 0.5,
                                         "shopping bag": 0.6, "book": 0.4})
        a["hand_object_color"] = None if a["hand_object"] == NONE else _choice(rng, _COLOR_PRIOR)
    elif group == "backpack":
        a["backpack"] = _choice(rng, {NONE: 2.2, "backpack": 1.0})
        a["backpack_color"] = None if a["backpack"] == NONE else _choice(rng, _COLOR_PRIOR)
    elif group == "bag":
        a["bag"] = _choice(rng, {NONE: 3.0, "handbag": 1.0 if female else 0.2, "shoulder bag": 0.8})
        a["bag_color"] = None if a["bag"] == NONE else _choice(rng, _COLOR_PRIOR)
    elif group == "hat":
        a["hat"] = _choice(rng, {NONE: 3.0, "cap": 0.8, "brimmed hat": 0.5, "beanie": 0.5})
        a["hat_color"] = None if a["hat"] == NONE else _choice(rng, _COLOR_PRIOR)
    elif group == "belt":
        a["belt"] = _choice(rng, {NONE: 2.0, "belt": 1.0})
    else:  # pragma: no cover - programming error
        raise KeyError(group)


#: Mutation groups in sampling order (later groups may depend on earlier ones).
GROUPS: tuple[str, ...] = ("gender", "hair", "upper", "upper_color", "pattern", "lower", "lower_color",
                           "shoes", "shoes_color", "eyewear", "scarf", "hand_object", "backpack", "bag",
                           "hat", "belt")


def _fix_coherence(a: dict[str, str | None], rng: np.random.Generator) -> None:
    if a["gender"] == "male" and a["lower_type"] == "skirt":
        _sample_group(rng, "lower", a)
        _sample_group(rng, "lower_color", a)
    if a["bag"] == "handbag" and a["gender"] == "male" and rng.random() < 0.7:
        a["bag"] = "shoulder bag"
    if a["lower_type"] == "jeans" and a["lower_color"] not in _JEANS_COLOR_PRIOR:
        _sample_group(rng, "lower_color", a)


def sample_person(rng: np.random.Generator) -> dict[str, str | None]:
    """One person drawn from the prior (no archetype)."""
    a: dict[str, str | None] = {}
    for group in GROUPS:
        _sample_group(rng, group, a)
    _fix_coherence(a, rng)
    return {s: a.get(s) for s in IDENTITY_SLOTS}


def archetypes(n: int) -> list[dict[str, str | None]]:
    """The outfit catalogue: the same for every world seed."""
    rng = rng_for(ARCHETYPE_SEED, "archetypes")
    return [sample_person(rng) for _ in range(n)]


_NEIGHBOURS: dict[str, list[str]] = {}
for _group in (("red", "orange", "pink"), ("navy", "blue", "purple"), ("white", "grey", "beige"),
               ("black", "navy", "grey"), ("brown", "beige", "orange"), ("yellow", "orange", "beige"),
               ("green", "grey", "blue")):
    for _c in _group:
        _NEIGHBOURS.setdefault(_c, []).extend(x for x in _group if x != _c)


def sample_identity(cfg: WorldConfig, split: str, index: int,
                    catalogue: list[dict[str, str | None]]) -> dict[str, str | None]:
    """An identity: an archetype with some groups of slots changed."""
    rng = rng_for(cfg.seed, "identity", split, index)
    base = catalogue[int(rng.integers(len(catalogue)))]
    a = dict(base)
    for group in GROUPS:
        if rng.random() >= cfg.mutation_rate:
            continue
        colour_slot = {"upper_color": "upper_color", "lower_color": "lower_color",
                       "shoes_color": "shoes_color"}.get(group)
        if colour_slot and rng.random() < 0.5 and a[colour_slot] in _NEIGHBOURS:
            # A near miss: the same outfit in a confusable colour.
            options = _NEIGHBOURS[a[colour_slot]]
            a[colour_slot] = options[int(rng.integers(len(options)))]
        else:
            _sample_group(rng, group, a)
    _fix_coherence(a, rng)
    return {s: a.get(s) for s in IDENTITY_SLOTS}


@dataclass
class Shot:
    """Everything about one photo that is not the person's outfit."""

    camera: int
    viewpoint: str  # front, back, side
    facing: int  # +1 right, -1 left (side views)
    action: str
    phase: float  # gait phase in [0, 1)
    height: float  # person height as a share of the image height
    dx: float  # horizontal offset as a share of the image width
    foot_crop: float  # how far the feet sit below the bottom edge, share of person height
    occluder: str  # none, low, high
    occluder_top: float  # share of person height where the occluder starts
    occluder_kind: int
    bystander: bool
    bystander_side: int
    skin: int
    light: tuple[float, float, float]
    blur: float
    noise: float
    image_seed: int
    bystander_outfit: dict[str, str | None] = field(default_factory=dict)


def sample_shots(cfg: WorldConfig, split: str, index: int) -> list[Shot]:
    """The 2 to 6 photos of one identity, each from a different camera."""
    rng = rng_for(cfg.seed, "shots", split, index)
    count = int(rng.choice([2, 3, 4, 5, 6], p=[0.34, 0.30, 0.20, 0.11, 0.05]))
    cameras = rng.permutation(len(CAMERAS))[:count]
    skin = int(rng.integers(6))
    shots = []
    for cam in cameras:
        cam_info = CAMERAS[int(cam)]
        gain = np.asarray(cam_info["gain"]) * cam_info["brightness"]
        light = tuple(float(g) for g in gain * rng.uniform(0.93, 1.07, size=3))
        occluder = _choice(rng, {"none": 0.78, "low": 0.12, "high": 0.10})
        shots.append(Shot(
            camera=int(cam),
            viewpoint=_choice(rng, {"front": 0.42, "back": 0.33, "side": 0.25}),
            facing=1 if rng.random() < 0.5 else -1,
            action=_choice(rng, {"walking": 0.6, "standing": 0.28, "running": 0.12}),
            phase=float(rng.random()),
            height=float(rng.uniform(0.78, 0.93)),
            dx=float(rng.uniform(-0.08, 0.08)),
            foot_crop=float(rng.uniform(0.05, 0.14)) if rng.random() < 0.10 else float(rng.uniform(-0.04, 0.0)),
            occluder=occluder,
            occluder_top=float(rng.uniform(0.84, 0.9) if occluder == "low" else rng.uniform(0.55, 0.62)),
            occluder_kind=int(rng.integers(3)),
            bystander=bool(rng.random() < 0.3),
            bystander_side=1 if rng.random() < 0.5 else -1,
            skin=skin,
            light=light,  # type: ignore[arg-type]
            blur=float(rng.uniform(0.0, 0.9)),
            noise=float(rng.uniform(1.5, 7.0)),
            image_seed=int(rng.integers(2**31)),
        ))
        if shots[-1].bystander:
            shots[-1].bystander_outfit = sample_person(rng)
    return shots


def visibility(attrs: dict[str, str | None], shot: Shot) -> dict[str, bool]:
    """Which slots can be seen in this photo. Colour slots follow their item; absent items are
    visible as absences (you can see there is no hat), except where the view hides them."""
    vis = {name: True for name in SLOTS}
    shoes_hidden = shot.foot_crop > 0.035 or shot.occluder in ("low", "high")
    for slot in ("shoes_type", "shoes_color"):
        vis[slot] = not shoes_hidden
    if shot.occluder == "high":
        for slot in ("lower_type", "lower_color", "lower_length"):
            vis[slot] = False
    if shot.viewpoint == "back":
        vis["eyewear"] = False
        if attrs["pattern"] == "logo":
            vis["pattern"] = False
    if attrs["hat"] == "beanie" and attrs["hair_length"] == "short":
        vis["hair_length"] = vis["hair_color"] = False
    if attrs["upper_type"] == "coat":
        vis["belt"] = False
    if shot.viewpoint == "side" and attrs["hand_object"] != NONE and shot.facing == 1 and attrs["hand_object"] in ("phone", "cup"):
        # Small objects in the far hand are hidden by the body.
        vis["hand_object"] = False
    for colour, parent in COLOR_PARENT.items():
        vis[colour] = vis[colour] and vis[parent] and attrs.get(parent) not in (None, NONE)
    return vis


def image_attributes(shot: Shot) -> dict[str, str]:
    return {
        "action": shot.action,
        "background": CAMERAS[shot.camera]["background"],
        "other_people": "yes" if shot.bystander else NONE,
    }
