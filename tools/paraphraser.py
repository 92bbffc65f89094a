"""RDA text operations: decompose a description into single-attribute sub-sentences and
paraphrase each one.

An *attribute* here is one item of ICL's questionnaire (``tools.attributes.PAPER_QUESTIONNAIRE``):
gender; hair; the upper garment (its type, colour and sleeves); the lower garment; the pattern;
shoes; glasses; scarf; the object in hand; bags; hat; belt; action; place; other people. Each
sub-sentence says exactly one of them. The rule-based paraphraser varies the subject (he / the
man / this person), the verb and voice ("wears" / "is dressed in" / "... is worn by"), the clause
order ("a red coat" / "a coat that is red") and the synonyms; an LLM paraphraser can replace it.

>>> parts = decompose({"gender": "female", "upper_type": "coat", "upper_color": "red", "hat": "cap"})
>>> [sub_sentence(p) for p in parts]
['The person is a woman.', 'The person wears a red coat.', 'The person wears a cap.']
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np

from tools.attributes import COLOR_OF, COLOR_PARENT, NONE, PAPER_QUESTIONNAIRE, SLOTS, SURFACE_FORMS, phrase

log = logging.getLogger(__name__)

Group = dict[str, str]


#: One attribute each: an item of ICL's questionnaire, with bags split into backpack and other bag.
UNITS: tuple[tuple[str, ...], ...] = tuple(
    part for group in PAPER_QUESTIONNAIRE
    for part in ((("backpack", "backpack_color"), ("bag", "bag_color")) if "backpack" in group else (group,)))


def decompose(constraints: Mapping[str, str]) -> list[Group]:
    """Split attribute constraints into single attributes (:data:`UNITS`), in questionnaire order."""
    groups = []
    for item in UNITS:
        # captions describe what is there; absences ("no hat") are left out, as in the public datasets
        g = {s: constraints[s] for s in item if constraints.get(s) not in (None, NONE)}
        if g:
            groups.append(g)
    return groups


def sub_sentence(group: Group) -> str:
    """The plain single-attribute sentence for one item."""
    sentences = _plain(group)
    return sentences[0]


def _plain(group: Group) -> list[str]:
    for item, colour in (("upper_type", "upper_color"), ("lower_type", "lower_color"), ("shoes_type", "shoes_color")):
        if item in group or colour in group:  # "The person wears a red long-sleeved coat."
            rng = np.random.default_rng(0)
            np_ = _item_phrases(rng, group, item, colour, plain=True)[0]
            return [f"The person wears {np_}."]
    out = []
    for s in _order(group):
        if COLOR_PARENT.get(s) in group:
            continue  # said together with its item
        v = group[s]
        if s in COLOR_OF:
            colour = COLOR_OF[s] if COLOR_OF[s] in group else None
            if colour and v != NONE:
                out.append(phrase(colour, group[colour], {s: v}))
                continue
        out.append(phrase(s, v, {COLOR_PARENT[s]: group.get(COLOR_PARENT[s])} if s in COLOR_PARENT else None))
    if len(out) > 1:  # one item, one sentence: "The person wears a red coat with long sleeves."
        return [" ".join(out)]
    return out


def _order(group: Group) -> list[str]:
    return [s for s in SLOTS if s in group]


# ------------------------------------------------------------------------------------------
# rule-based paraphrases

_SUBJECTS = {
    "male": ("He", "The man", "This man", "The gentleman", "The guy", "This person"),
    "female": ("She", "The woman", "This woman", "The lady", "The girl", "This person"),
    None: ("The person", "This person", "The pedestrian", "This pedestrian", "The individual"),
}
_WEAR = ("wears", "is wearing", "is dressed in", "has on", "is in")
_CARRY = ("carries", "is carrying", "has", "is holding")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _colour_word(rng, value: str) -> str:
    return _pick(rng, SURFACE_FORMS["color"].get(value, (value,)))


def _noun(rng, slot: str, value: str | None) -> str:
    generic = {"upper_type": "top", "lower_type": "bottoms", "shoes_type": "shoes", "hand_object": "object",
               "backpack": "backpack", "bag": "bag", "hat": "hat"}
    if value is None:
        return generic[slot]
    return _pick(rng, SURFACE_FORMS.get(slot, {}).get(value, (value,)))


def _article(np_: str) -> str:
    plural = np_.split()[-1] in {"trousers", "pants", "slacks", "jeans", "shorts", "sneakers", "trainers", "shoes",
                                 "boots", "sandals", "glasses", "sunglasses", "shades", "bottoms", "footwear",
                                 "spectacles", "eyeglasses"} or np_.endswith("shoes") or np_.endswith("pants")
    if plural:
        return np_
    return ("an " if np_[0] in "aeiou" else "a ") + np_


def _item_phrases(rng, group: Group, item_slot: str, colour_slot: str | None, plain: bool = False) -> list[str]:
    """Noun-phrase variants of one item with its colour: 'a red coat', 'a coat that is red', ..."""
    value = group.get(item_slot)
    colour = group.get(colour_slot) if colour_slot else None
    extras = []
    if item_slot == "upper_type":
        if "sleeve_length" in group:
            extras.append(group["sleeve_length"] + "-sleeved")
    if item_slot == "lower_type" and "lower_length" in group:
        extras.append(group["lower_length"])
    noun = value if plain and value and item_slot != "lower_type" else _noun(rng, item_slot, value)
    if plain and item_slot == "lower_type" and value:
        noun = {"trousers": "trousers", "jeans": "jeans", "shorts": "shorts", "skirt": "skirt"}[value]
    pre = " ".join(extras)
    out = []
    if colour:
        c = colour if plain else _colour_word(rng, colour)
        out.append(_article(" ".join(x for x in (pre, c, noun) if x)))
        copula = "are" if _article(noun) == noun else "is"
        out.append(_article(" ".join(x for x in (pre, noun) if x)) + f" that {copula} {c}")
        out.append(_article(" ".join(x for x in (pre, noun) if x)) + f" in {c}")
    else:
        out.append(_article(" ".join(x for x in (pre, noun) if x)))
    return out


def rule_paraphrases(group: Group, m: int, rng: np.random.Generator, gender: str | None = None) -> list[str]:
    """Up to ``m`` distinct sentences that each say exactly this item (first: the plain one)."""
    plain = _plain(group)[0]
    seen, out = {plain}, [plain]
    subjects = _SUBJECTS.get(gender, _SUBJECTS[None])
    for _ in range(m * 8):
        if len(out) >= m:
            break
        s = _one_paraphrase(group, rng, subjects)
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _one_paraphrase(group: Group, rng: np.random.Generator, subjects: Sequence[str]) -> str | None:
    subj = _pick(rng, subjects)
    slots = _order(group)
    first = slots[0]
    if first == "gender":
        noun = _pick(rng, SURFACE_FORMS["gender"][group["gender"]])
        return _pick(rng, (f"The person is {_article(noun)}.", f"This is {_article(noun)}.",
                           f"The pedestrian is {_article(noun)}.", f"It is {_article(noun)}."))
    if first in ("hair_length", "hair_color"):
        words = [group.get("hair_length", ""), _pick(rng, SURFACE_FORMS["hair_color"][group["hair_color"]])
                 if "hair_color" in group else ""]
        hair = " ".join(w for w in words if w) + " hair"
        said = " and ".join(w for w in words if w)
        return _pick(rng, (f"{subj} has {hair}.", f"{subj} has got {hair}.", f"The hair is {said}.",
                           f"{subj}'s hair is {said}." if subj not in ("He", "She") else f"{subj} has {hair}."))
    for item in ("upper_type", "lower_type", "shoes_type"):
        colour_slot = COLOR_OF[item]
        if item in group or colour_slot in group:
            np_ = _pick(rng, _item_phrases(rng, group, item, colour_slot))
            verb = _pick(rng, _WEAR)
            if rng.random() < 0.2:  # passive voice
                obj = {"He": "him", "She": "her"}.get(subj, subj[0].lower() + subj[1:])
                be = "is" if np_.startswith(("a ", "an ")) else "are"
                return f"{np_[0].upper()}{np_[1:]} {be} worn by {obj}."
            return f"{subj} {verb} {np_}."
        if item == "upper_type" and "sleeve_length" in group and len(group) == 1:
            return f"{subj}'s top has {group['sleeve_length']} sleeves." if subj not in ("He", "She") else \
                f"{subj} {_pick(rng, _WEAR)} a {group['sleeve_length']}-sleeved top."
        if item == "lower_type" and "lower_length" in group and len(group) == 1:
            return f"{subj} {_pick(rng, _WEAR)} {_article(group['lower_length'] + ' bottoms')}."
    if first == "pattern":
        word = {"striped": ("striped", "stripy"), "checked": ("checked", "plaid", "checkered"), "plain": ("plain", "solid-coloured"),
                "logo": ("logo-printed",)}[group["pattern"]]
        w = _pick(rng, word)
        if group["pattern"] == "logo":
            return _pick(rng, (f"{subj}'s top has a logo on it." if subj not in ("He", "She") else f"{subj} wears a top with a logo.",
                               "There is a logo on the top.", f"{subj} {_pick(rng, _WEAR)} a top with a logo."))
        return _pick(rng, (f"{subj} {_pick(rng, _WEAR)} {_article(w + ' top')}.", f"The top is {w}.",
                           f"The clothes are {w}."))
    if first == "eyewear":
        v = group["eyewear"]
        if v == NONE:
            return _pick(rng, (f"{subj} wears no glasses.", f"{subj} has no glasses on."))
        return f"{subj} {_pick(rng, _WEAR)} {_noun(rng, 'eyewear', v)}."
    if first == "scarf":
        return f"{subj} {_pick(rng, _WEAR)} a scarf." if group["scarf"] != NONE else f"{subj} wears no scarf."
    if first in ("hand_object", "hand_object_color", "backpack", "backpack_color", "bag", "bag_color"):
        item = COLOR_PARENT.get(first, first)
        colour_slot = COLOR_OF[item]
        if group.get(item) == NONE:
            return None
        verbs = ("is holding", "holds", "has", "carries") if item == "hand_object" else _CARRY
        np_ = _pick(rng, _item_phrases(rng, group, item, colour_slot))
        tail = _pick(rng, ("", " in one hand")) if item == "hand_object" else _pick(rng, ("", " with them" if subj == "They" else ""))
        return f"{subj} {_pick(rng, verbs)} {np_}{tail}."
    if first in ("hat", "hat_color"):
        if group.get("hat") == NONE:
            return f"{subj} wears no hat."
        np_ = _pick(rng, _item_phrases(rng, group, "hat", "hat_color"))
        return _pick(rng, (f"{subj} {_pick(rng, _WEAR)} {np_}.", f"On the head is {np_}."))
    if first == "belt":
        return f"{subj} {_pick(rng, _WEAR)} a belt." if group["belt"] != NONE else None
    if first == "action":
        return _pick(rng, (f"{subj} is {group['action']}.", f"{subj} appears to be {group['action']}."))
    if first == "background":
        place = {"street": ("on the street", "on a street", "along a road"), "park": ("in a park", "in the park"),
                 "indoor": ("indoors", "inside a building"), "crosswalk": ("at a crosswalk", "on a zebra crossing")}
        return _pick(rng, (f"{subj} is {_pick(rng, place[group['background']])}.",
                           f"The photo was taken {_pick(rng, place[group['background']])}."))
    if first == "other_people":
        return _pick(rng, ("There are other people nearby.", "Other people are around.")) if group["other_people"] != NONE \
            else _pick(rng, ("Nobody else is nearby.", f"{subj} is alone."))
    return None


class LLMParaphraser:
    """Paraphrases from any chat backend (``tools.mllm.chat.ChatMLLM``): one request per sub-sentence,
    one rewrite per line. Falls back to the rule-based paraphrases when the answer is unusable."""

    PROMPT = ("Rewrite the sentence below in {m} different ways. Keep exactly the same meaning and the same single "
              "fact; change the words and the structure. One rewrite per line, no numbering.\n\nSentence: {sentence}")

    def __init__(self, complete: Callable[[str], str]):
        self.complete = complete

    def __call__(self, group: Group, m: int, rng: np.random.Generator, gender: str | None = None) -> list[str]:
        from tools.mllm.base import MLLMError
        from tools.mllm.parser import parse

        plain = _plain(group)[0]
        try:
            reply = self.complete(self.PROMPT.format(m=m - 1, sentence=plain))
        except MLLMError as e:
            log.info("LLM paraphrase failed (%s); using the rule-based one", e)
            return rule_paraphrases(group, m, rng, gender)
        out, seen = [plain], {plain}
        expected = {s: v for s, v in group.items()}
        for line in reply.splitlines():
            line = line.strip().lstrip("-*0123456789.) ").strip()
            if not line or line in seen:
                continue
            said = parse(line).constraints
            if all(said.get(s) == v for s, v in expected.items() if s in said):  # no contradiction
                out.append(line)
                seen.add(line)
            if len(out) >= m:
                break
        if len(out) < 2:
            return rule_paraphrases(group, m, rng, gender)
        return out


def reorganise(diversity: Sequence[Sequence[str]], rng: np.random.Generator) -> str:
    """A random order of the sub-sentences, each in a random one of its paraphrases."""
    parts = [list(p) for p in diversity if p]
    order = rng.permutation(len(parts))
    chosen = []
    for i in order:
        options = parts[i]
        sentence = options[int(rng.integers(len(options)))].strip()
        if sentence and sentence[-1] not in ".!?":
            sentence += "."
        chosen.append(sentence[:1].upper() + sentence[1:])
    return " ".join(chosen)


def rephrase(text: str, rng: np.random.Generator, m: int = 5) -> str:
    """The description said the way RDA says it: parsed, one attribute per sentence, each in a random
    one of ``m`` paraphrases, in a random order. What the parser does not read is dropped, so this
    tests phrasing robustness, not the text kept; a text it reads nothing from comes back as it was."""
    from tools.mllm.parser import parse  # importing tools.mllm loads its backends; only this needs it

    constraints = parse(text).constraints
    parts = decompose(constraints)
    if not parts:
        return text
    return reorganise([rule_paraphrases(g, m, rng, constraints.get("gender")) for g in parts], rng)
