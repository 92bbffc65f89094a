"""The human-attribute vocabulary: the single source of truth.

Every part of the project that talks about what a person looks like uses these slots: the
SynthPedes renderer and caption grammar, the caption-only ceiling, the offline MLLM's recogniser
and query parser, the THI questioner and rewriter. The slots follow the ICL paper's 15-question
questionnaire (gender; hair; upper garment; trousers; patterns; shoes; glasses; scarf; object in
hand; backpack; hat; belt; action; background; other people), split one fact per slot.

Each slot knows its allowed values, the question a person would ask about it, and how an answer
is phrased as a short sentence.

>>> SLOTS["upper_color"].question
'What colour is the upper-body garment?'
>>> phrase("upper_color", "red", {"upper_type": "coat"})
'The person wears a red coat.'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

#: Colour names, with confusable neighbours (red/orange/pink, navy/blue/purple, white/grey/beige).
COLORS: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "beige",
    "brown",
    "red",
    "orange",
    "pink",
    "yellow",
    "green",
    "blue",
    "navy",
    "purple",
)

#: Colours a human head of hair comes in.
HAIR_COLORS: tuple[str, ...] = ("black", "brown", "blonde", "grey")

#: Groups of colour names people confuse, used to make lighting ambiguity and questions honest.
CONFUSABLE_COLORS: tuple[tuple[str, ...], ...] = (
    ("red", "orange", "pink"),
    ("navy", "blue", "purple"),
    ("white", "grey", "beige"),
    ("black", "navy"),
    ("brown", "beige"),
    ("yellow", "orange"),
)

#: The value that means "this thing is absent" for presence slots.
NONE = "none"

Scope = Literal["identity", "image"]


@dataclass(frozen=True)
class Slot:
    """One human attribute.

    Attributes:
        name: machine name, e.g. ``upper_color``.
        values: the allowed values. Presence slots include :data:`NONE`.
        question: the question a person would ask about it.
        scope: ``identity`` for what a person wears or is, ``image`` for what differs per photo
            (action, background, other people).
        parent: for colour slots, the slot whose item they colour (``hat_color`` -> ``hat``);
            the colour is only applicable when the parent is present.
        template: how a value is said as a short sentence; ``{value}`` and ``{item}`` (the
            parent's value) are filled in. ``absent`` is used for :data:`NONE`.
        absent: sentence for the absent value, if the slot has one.
    """

    name: str
    values: tuple[str, ...]
    question: str
    scope: Scope = "identity"
    parent: str | None = None
    template: str = "{value}"
    absent: str | None = None
    paper_question: int = 0
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def has_absent(self) -> bool:
        return NONE in self.values

    def present_values(self) -> tuple[str, ...]:
        return tuple(v for v in self.values if v != NONE)


_SLOTS: tuple[Slot, ...] = (
    Slot("gender", ("male", "female"), "Is the person a man or a woman?",
         template="The person is {value_noun}.", paper_question=1),
    Slot("hair_length", ("short", "long"), "How long is the person's hair?",
         template="The person has {value} hair.", paper_question=2),
    Slot("hair_color", HAIR_COLORS, "What colour is the person's hair?",
         template="The person has {value} hair.", paper_question=2),
    Slot("upper_type", ("t-shirt", "shirt", "sweater", "hoodie", "jacket", "coat"),
         "What kind of garment is on the upper body?",
         template="The person wears a {value}.", paper_question=3),
    Slot("upper_color", COLORS, "What colour is the upper-body garment?", parent="upper_type",
         template="The person wears a {value} {item}.", paper_question=3),
    Slot("sleeve_length", ("short", "long"), "Are the sleeves short or long?",
         template="The top has {value} sleeves.", paper_question=3),
    Slot("lower_type", ("trousers", "jeans", "shorts", "skirt"),
         "What kind of garment is on the lower body?",
         template="The person wears {value_article}.", paper_question=4),
    Slot("lower_color", COLORS, "What colour is the lower-body garment?", parent="lower_type",
         template="The person wears {value_article_item}.", paper_question=4),
    Slot("lower_length", ("short", "long"), "Does the lower garment reach the ankles or stop above the knees?",
         template="The lower garment is {value_length}.", paper_question=4),
    Slot("pattern", ("plain", "striped", "checked", "logo"), "Is there a pattern on the clothes?",
         template="The top is {value_pattern}.", paper_question=5),
    Slot("shoes_type", ("sneakers", "boots", "leather shoes", "sandals"),
         "What kind of shoes is the person wearing?",
         template="The person wears {value}.", paper_question=6),
    Slot("shoes_color", COLORS, "What colour are the shoes?", parent="shoes_type",
         template="The person wears {value} {item}.", paper_question=6),
    Slot("eyewear", (NONE, "glasses", "sunglasses"), "Is the person wearing glasses or sunglasses?",
         template="The person wears {value}.", absent="The person wears no glasses.",
         paper_question=7),
    Slot("scarf", (NONE, "scarf"), "Is the person wearing a scarf?",
         template="The person wears a scarf.", absent="The person wears no scarf.",
         paper_question=8),
    Slot("hand_object", (NONE, "phone", "umbrella", "cup", "shopping bag", "book"),
         "Is the person holding anything in their hands?",
         template="The person is holding a {value}.", absent="The person holds nothing in their hands.",
         paper_question=9),
    Slot("hand_object_color", COLORS, "What colour is the object in their hand?", parent="hand_object",
         template="The person is holding a {value} {item}.", paper_question=9),
    Slot("backpack", (NONE, "backpack"), "Is the person carrying a backpack?",
         template="The person carries a backpack.", absent="The person has no backpack.",
         paper_question=10),
    Slot("backpack_color", COLORS, "What colour is the backpack?", parent="backpack",
         template="The person carries a {value} backpack.", paper_question=10),
    Slot("bag", (NONE, "handbag", "shoulder bag"), "Is the person carrying a handbag or shoulder bag?",
         template="The person carries a {value}.", absent="The person carries no handbag or shoulder bag.",
         paper_question=10),
    Slot("bag_color", COLORS, "What colour is the bag?", parent="bag",
         template="The person carries a {value} {item}.", paper_question=10),
    Slot("hat", (NONE, "cap", "brimmed hat", "beanie"), "Is the person wearing a hat?",
         template="The person wears a {value}.", absent="The person wears no hat.",
         paper_question=11),
    Slot("hat_color", COLORS, "What colour is the hat?", parent="hat",
         template="The person wears a {value} {item}.", paper_question=11),
    Slot("belt", (NONE, "belt"), "Is the person wearing a belt?",
         template="The person wears a belt.", absent="The person wears no belt.",
         paper_question=12),
    Slot("action", ("walking", "standing", "running"), "What is the person doing?",
         scope="image", template="The person is {value}.", paper_question=13),
    Slot("background", ("street", "park", "indoor", "crosswalk"), "Where is the person?",
         scope="image", template="The person is {value_place}.", paper_question=14),
    Slot("other_people", (NONE, "yes"), "Are there other people nearby?",
         scope="image", template="There are other people nearby.",
         absent="There is nobody else nearby.", paper_question=15),
)

#: All slots by name, in questionnaire order.
SLOTS: dict[str, Slot] = {s.name: s for s in _SLOTS}
SLOT_NAMES: tuple[str, ...] = tuple(SLOTS)
IDENTITY_SLOTS: tuple[str, ...] = tuple(s.name for s in _SLOTS if s.scope == "identity")
IMAGE_SLOTS: tuple[str, ...] = tuple(s.name for s in _SLOTS if s.scope == "image")
#: colour slot -> the slot of the item it colours
COLOR_PARENT: dict[str, str] = {s.name: s.parent for s in _SLOTS if s.parent}
#: item slot -> the slot of its colour
COLOR_OF: dict[str, str] = {parent: colour for colour, parent in COLOR_PARENT.items()}

_PLACE = {"street": "on a street", "park": "in a park", "indoor": "indoors", "crosswalk": "at a crosswalk"}
_PATTERN = {"plain": "plain", "striped": "striped", "checked": "checked", "logo": "printed with a logo"}
_PLURAL_LOWER = {"trousers", "jeans", "shorts"}


def is_applicable(slot: str, attributes: Mapping[str, str | None]) -> bool:
    """Whether a slot has a meaningful value for this person (a hat colour needs a hat)."""
    parent = COLOR_PARENT.get(slot)
    if parent is None:
        return attributes.get(slot) is not None
    return attributes.get(parent) not in (None, NONE) and attributes.get(slot) is not None


def phrase(slot: str, value: str, context: Mapping[str, str | None] | None = None) -> str:
    """Say one slot's value as a short sentence.

    ``context`` supplies the parent item for colour slots (``{"hat": "cap"}`` for ``hat_color``).
    """
    spec = SLOTS[slot]
    if value not in spec.values:
        raise ValueError(f"{value!r} is not a value of slot {slot!r} (allowed: {', '.join(spec.values)})")
    if value == NONE:
        assert spec.absent is not None
        return spec.absent
    context = context or {}
    item = None
    if spec.parent:
        item = context.get(spec.parent)
        if item in (None, NONE):
            item = {"upper_type": "top", "lower_type": "lower garment", "shoes_type": "shoes",
                    "hand_object": "object", "backpack": "backpack", "bag": "bag", "hat": "hat"}[spec.parent]
    if slot == "lower_color":
        if item in _PLURAL_LOWER or item == "lower garment":
            return f"The person wears {value} {item}."
        return f"The person wears a {value} {item}."
    if slot == "shoes_color" and item == "shoes":
        return f"The person wears {value} shoes."
    return spec.template.format(
        value=value,
        item=item,
        value_noun="a man" if value == "male" else "a woman",
        value_article=value if value in _PLURAL_LOWER else f"a {value}",
        value_length="long" if value == "long" else "short, above the knees",
        value_pattern=_PATTERN.get(value, value),
        value_place=_PLACE.get(value, value),
    )


def question(slot: str) -> str:
    """The question a person would ask about a slot."""
    return SLOTS[slot].question


def validate(attributes: Mapping[str, str | None]) -> None:
    """Raise ``ValueError`` if any value is not allowed for its slot."""
    for name, value in attributes.items():
        if name not in SLOTS:
            raise ValueError(f"unknown attribute slot {name!r}")
        if value is not None and value not in SLOTS[name].values:
            raise ValueError(f"{value!r} is not a value of slot {name!r}")


#: The paper's questionnaire (ICL, THI step 2), as slot groups: one question each.
PAPER_QUESTIONNAIRE: tuple[tuple[str, ...], ...] = tuple(
    tuple(s.name for s in _SLOTS if s.paper_question == q) for q in range(1, 16)
)


#: How values are said in captions: every surface form the SynthPedes caption grammar may use.
#: The offline query parser reads these and more (see ``tools.mllm.parser``), so queries phrased
#: in words the generator never uses still parse.
SURFACE_FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "color": {
        "black": ("black",), "white": ("white",), "grey": ("grey", "gray"), "beige": ("beige", "tan", "cream"),
        "brown": ("brown",), "red": ("red",), "orange": ("orange",), "pink": ("pink",), "yellow": ("yellow",),
        "green": ("green",), "blue": ("blue",), "navy": ("navy", "navy blue", "dark blue"),
        "purple": ("purple", "violet"),
    },
    "hair_color": {"black": ("black", "dark"), "brown": ("brown",), "blonde": ("blonde", "blond", "fair"),
                   "grey": ("grey", "gray", "silver")},
    "gender": {"male": ("man", "male", "gentleman", "guy", "young man"),
               "female": ("woman", "female", "lady", "girl", "young woman")},
    "upper_type": {"t-shirt": ("t-shirt", "tee", "T-shirt"), "shirt": ("shirt", "button-up shirt"),
                   "sweater": ("sweater", "jumper", "pullover"), "hoodie": ("hoodie", "hooded sweatshirt"),
                   "jacket": ("jacket",), "coat": ("coat", "long coat", "overcoat")},
    "lower_type": {"trousers": ("trousers", "pants", "slacks"), "jeans": ("jeans", "denim pants"),
                   "shorts": ("shorts",), "skirt": ("skirt",)},
    "shoes_type": {"sneakers": ("sneakers", "trainers", "sports shoes"), "boots": ("boots",),
                   "leather shoes": ("leather shoes", "dress shoes"), "sandals": ("sandals",)},
    "hand_object": {"phone": ("phone", "cell phone", "mobile phone"), "umbrella": ("umbrella",),
                    "cup": ("cup", "coffee cup"), "shopping bag": ("shopping bag",), "book": ("book",)},
    "bag": {"handbag": ("handbag", "purse"), "shoulder bag": ("shoulder bag", "messenger bag", "crossbody bag")},
    "hat": {"cap": ("cap", "baseball cap"), "brimmed hat": ("brimmed hat", "sun hat", "wide-brimmed hat"),
            "beanie": ("beanie", "knit hat", "woolly hat")},
    "eyewear": {"glasses": ("glasses", "eyeglasses", "spectacles"), "sunglasses": ("sunglasses", "shades")},
}
