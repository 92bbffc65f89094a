"""CUHK-PEDES-style captions for SynthPedes photos.

A caption states a random subset of the attributes visible in its photo (40 to 80 percent by
default), says them with a grammar of varied structure and synonyms, and about 3 percent of
captions carry one wrong detail (annotation noise, as in the public datasets). Which attributes a
caption states, and any wrong one, is recorded beside it so the caption-only ceiling and the tests
can read it.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from tools.attributes import NONE, SLOTS, SURFACE_FORMS

#: How likely each slot is to be picked when a caption states a subset (people mention clothes
#: colours far more often than belts).
MENTION_WEIGHT: dict[str, float] = {
    "gender": 4.0, "upper_color": 3.0, "lower_color": 2.6, "upper_type": 2.2, "lower_type": 2.0,
    "hair_length": 1.5, "hair_color": 1.4, "shoes_color": 1.3, "shoes_type": 1.1, "backpack": 1.6,
    "backpack_color": 1.2, "bag": 1.5, "bag_color": 1.1, "hat": 1.5, "hat_color": 1.2, "hand_object": 1.4,
    "hand_object_color": 1.0, "eyewear": 1.2, "scarf": 1.1, "pattern": 1.0, "sleeve_length": 1.0,
    "lower_length": 1.0, "belt": 0.7, "action": 0.8, "background": 0.6, "other_people": 0.5,
}


def mentionable(attrs: Mapping[str, str | None], visible: Mapping[str, bool]) -> list[str]:
    """Slots a caption of this photo may state: visible, applicable and present (captions describe
    what is there, not what is missing). A skirt's length is the only lower-garment length worth
    saying; the others follow from the garment."""
    out = []
    for slot in SLOTS:
        value = attrs.get(slot)
        if value is None or value == NONE or not visible.get(slot, False):
            continue
        if slot == "lower_length" and attrs.get("lower_type") != "skirt":
            continue
        out.append(slot)
    return out


def choose_mentions(attrs: Mapping[str, str | None], visible: Mapping[str, bool], rng: np.random.Generator,
                    low: float = 0.4, high: float = 0.8) -> dict[str, str]:
    """Pick the subset of visible attributes one caption states."""
    slots = mentionable(attrs, visible)
    if not slots:
        return {}
    n = len(slots)
    share = rng.uniform(low, high)
    # round, but never outside [low, high] of the visible attributes (at least one is stated)
    k = min(max(int(round(share * n)), math.ceil(low * n - 1e-9)), max(1, math.floor(high * n + 1e-9)))
    w = np.asarray([MENTION_WEIGHT[s] for s in slots])
    picked = rng.choice(n, size=k, replace=False, p=w / w.sum())
    return {slots[i]: str(attrs[slots[i]]) for i in sorted(picked)}


_CONFUSABLE = {"red": ["orange", "pink"], "orange": ["red", "yellow"], "pink": ["red", "purple"],
               "navy": ["blue", "black"], "blue": ["navy", "purple"], "purple": ["navy", "pink"],
               "white": ["grey", "beige"], "grey": ["white", "black"], "beige": ["white", "brown"],
               "black": ["navy", "grey"], "brown": ["beige", "black"], "yellow": ["orange", "beige"],
               "green": ["blue", "grey"]}


def add_noise(stated: dict[str, str], attrs: Mapping[str, str | None], rng: np.random.Generator) -> dict | None:
    """Replace one stated value with a wrong one, in place. Returns what was changed."""
    candidates = [s for s in stated if s not in ("lower_length",)]
    if not candidates:
        return None
    slot = candidates[int(rng.integers(len(candidates)))]
    true = stated[slot]
    allowed = SLOTS[slot].present_values()
    options = [v for v in _CONFUSABLE.get(true, []) if v in allowed and slot.endswith("color")]
    if not options or rng.random() >= 0.7:
        options = [v for v in allowed if v != true]
        if slot == "lower_type" and attrs.get("gender") == "male":
            options = [v for v in options if v != "skirt"]
    if not options:
        return None
    wrong = options[int(rng.integers(len(options)))]
    stated[slot] = wrong
    return {"slot": slot, "true": true, "stated": wrong}


# ---------------------------------------------------------------------------------------------
# realisation


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _colour(rng, value: str) -> str:
    return _pick(rng, SURFACE_FORMS["color"][value])


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class _Say:
    """Builds the noun phrases of one caption."""

    def __init__(self, stated: Mapping[str, str], rng: np.random.Generator):
        self.s, self.rng = stated, rng

    def has(self, *slots: str) -> bool:
        return any(s in self.s for s in slots)

    def subject(self) -> tuple[str, str, str]:
        """(noun phrase, pronoun, possessive)."""
        g = self.s.get("gender")
        if g:
            noun = _pick(self.rng, SURFACE_FORMS["gender"][g])
            return noun, ("he" if g == "male" else "she"), ("his" if g == "male" else "her")
        noun = _pick(self.rng, ("person", "pedestrian", "individual"))
        return noun, "the " + noun, "the " + noun + "'s"

    def hair(self) -> str | None:
        length, colour = self.s.get("hair_length"), self.s.get("hair_color")
        if not (length or colour):
            return None
        words = []
        if length:
            words.append(length)
        if colour:
            words.append(_pick(self.rng, SURFACE_FORMS["hair_color"][colour]))
        return " ".join(words) + " hair"

    def upper(self) -> str | None:
        if not self.has("upper_type", "upper_color", "sleeve_length", "pattern"):
            return None
        words = []
        if "upper_color" in self.s:
            words.append(_colour(self.rng, self.s["upper_color"]))
        pattern = self.s.get("pattern")
        if pattern in ("striped", "checked"):
            words.append(_pick(self.rng, {"striped": ("striped",), "checked": ("checked", "plaid")}[pattern]))
        elif pattern == "plain":
            words.append(_pick(self.rng, ("plain", "solid-coloured")))
        if "sleeve_length" in self.s:
            words.append(self.s["sleeve_length"] + "-sleeved")
        t = self.s.get("upper_type")
        words.append(_pick(self.rng, SURFACE_FORMS["upper_type"][t]) if t else _pick(self.rng, ("top", "upper garment")))
        phrase = " ".join(words)
        phrase = f"{_article(phrase)} {phrase}"
        if pattern == "logo":
            phrase += _pick(self.rng, (" with a logo on the front", " with a logo", " printed with a logo"))
        return phrase

    def lower(self) -> str | None:
        if not self.has("lower_type", "lower_color", "lower_length"):
            return None
        t = self.s.get("lower_type")
        words = []
        if "lower_length" in self.s:
            words.append(self.s["lower_length"])
        if "lower_color" in self.s:
            words.append(_colour(self.rng, self.s["lower_color"]))
        words.append(_pick(self.rng, SURFACE_FORMS["lower_type"][t]) if t else
                     _pick(self.rng, ("bottoms", "lower garment")))
        phrase = " ".join(words)
        if t == "skirt" or (not t and phrase.endswith("lower garment")):
            phrase = f"{_article(phrase)} {phrase}"
        return phrase

    def shoes(self) -> str | None:
        if not self.has("shoes_type", "shoes_color"):
            return None
        words = []
        if "shoes_color" in self.s:
            words.append(_colour(self.rng, self.s["shoes_color"]))
        t = self.s.get("shoes_type")
        words.append(_pick(self.rng, SURFACE_FORMS["shoes_type"][t]) if t else _pick(self.rng, ("shoes", "footwear")))
        return " ".join(words)

    def item(self, slot: str, colour_slot: str, generic: str) -> str | None:
        if not self.has(slot, colour_slot):
            return None
        words = []
        if colour_slot in self.s:
            words.append(_colour(self.rng, self.s[colour_slot]))
        value = self.s.get(slot)
        forms = SURFACE_FORMS.get(slot, {}).get(value or "", (value,) if value else (generic,))
        words.append(_pick(self.rng, forms))
        phrase = " ".join(words)
        return f"{_article(phrase)} {phrase}"

    def worn_extras(self) -> list[str]:
        out = []
        if "eyewear" in self.s:
            out.append(_pick(self.rng, SURFACE_FORMS["eyewear"][self.s["eyewear"]]))
        hat = self.item("hat", "hat_color", "hat")
        if hat:
            out.append(hat)
        if "scarf" in self.s:
            out.append("a scarf")
        if "belt" in self.s:
            out.append(_pick(self.rng, ("a belt", "a belt around the waist")))
        return out

    def carried(self) -> list[str]:
        out = []
        backpack = self.item("backpack", "backpack_color", "backpack")
        if backpack:
            out.append(backpack)
        bag = self.item("bag", "bag_color", "bag")
        if bag:
            out.append(bag)
        return out

    def held(self) -> str | None:
        return self.item("hand_object", "hand_object_color", "object")

    def context(self) -> str | None:
        parts = []
        if "action" in self.s:
            parts.append(self.s["action"])
        if "background" in self.s:
            parts.append({"street": _pick(self.rng, ("on the street", "along a street", "on a street")),
                          "park": _pick(self.rng, ("in a park", "in the park")),
                          "indoor": _pick(self.rng, ("indoors", "inside a building")),
                          "crosswalk": _pick(self.rng, ("at a crosswalk", "across a zebra crossing"))}[self.s["background"]])
        if "other_people" in self.s:
            parts.append(_pick(self.rng, ("with other people nearby", "with other people around")))
        if not parts:
            return None
        if "action" not in self.s:
            parts.insert(0, "seen")
        return " ".join(parts)


def _cap(sentence: str) -> str:
    sentence = sentence.strip()
    return sentence[:1].upper() + sentence[1:]


def realise(stated: Mapping[str, str], rng: np.random.Generator) -> str:
    """Turn stated attributes into 1 to 3 sentences of natural English."""
    say = _Say(stated, rng)
    noun, pron, poss = say.subject()
    hair = say.hair()
    clothes = [x for x in (say.upper(), say.lower(), say.shoes()) if x]
    extras = say.worn_extras()
    carried = say.carried()
    held = say.held()
    context = say.context()

    sentences: list[str] = []
    det = _pick(rng, ("a", "the", "this")) if noun not in ("individual",) else _pick(rng, ("an", "the", "this"))
    if det == "a":
        det = _article(noun)
    subject = f"{det} {noun}"
    style = int(rng.integers(4))
    if style == 3 and clothes and not context:
        style = 0
    if style == 0 and clothes:
        # "A woman with long hair is wearing a red coat and black pants."
        head = subject + (f" with {hair}" if hair else "")
        verb = _pick(rng, ("is wearing", "wears", "is dressed in", "has on"))
        sentences.append(f"{head} {verb} {_join(clothes)}.")
        hair = None
    elif style == 1 and clothes:
        # "A man in a white shirt and jeans. He has short black hair."
        subject = f"{_article(noun)} {noun}"
        sentences.append(f"{subject} {_pick(rng, ('in', 'wearing', 'dressed in'))} {_join(clothes)}.")
    elif style == 2 and clothes:
        # "The woman is wearing a red coat and black pants."
        sentences.append(f"{subject} {_pick(rng, ('is wearing', 'wears'))} {_join(clothes)}.")
    else:
        head = subject + (f" with {hair}" if hair else "")
        hair = None
        if context:
            sentences.append(f"{head} is {context}.")
            context = None
        else:
            sentences.append(f"{head} {_pick(rng, ('can be seen', 'is shown', 'is pictured'))} here.")
        if clothes:
            sentences.append(f"{pron} {_pick(rng, ('is wearing', 'wears'))} {_join(clothes)}.")
    if hair:
        sentences.append(f"{pron} has {hair}.")
    extra_bits = []
    if extras:
        extra_bits.append(f"{_pick(rng, ('wears', 'is wearing', 'has on'))} {_join(extras)}")
    if carried:
        extra_bits.append(f"{_pick(rng, ('carries', 'is carrying', 'has'))} {_join(carried)}")
    if held:
        extra_bits.append(f"{_pick(rng, ('is holding', 'holds'))} {held}{_pick(rng, ('', ' in ' + poss + ' hand'))}")
    if extra_bits:
        sentences.append(f"{pron} {_join(extra_bits)}.")
    if context:
        sentences.append(f"{pron} is {context}.")
    # CUHK-PEDES captions run 1 to 3 sentences: fold the tail into the third with "and".
    if len(sentences) > 3:
        tail = [s.rstrip(".") for s in sentences[2:]]
        tail = [tail[0]] + [t[len(pron) + 1:] if t.startswith(pron + " ") else t for t in tail[1:]]
        sentences = sentences[:2] + [", and ".join(tail) + "."]
    return " ".join(_cap(s) for s in sentences)


def make_caption(attrs: Mapping[str, str | None], visible: Mapping[str, bool], rng: np.random.Generator,
                 low: float, high: float, noise_rate: float) -> dict:
    """One caption with what it states: ``{"text", "stated", "noise"}``."""
    stated = choose_mentions(attrs, visible, rng, low, high)
    noise = add_noise(stated, attrs, rng) if rng.random() < noise_rate else None
    return {"text": realise(stated, rng), "stated": stated, "noise": noise}
