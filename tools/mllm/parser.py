"""Turn a free-text person description into attribute constraints.

The offline MLLM reads queries with this parser: it finds the words for people, garments,
accessories, colours, patterns, actions and places (a lexicon far wider than the SynthPedes caption
grammar, plus close-spelling matches for typos) and binds each modifier to the noun it describes
("a red coat and black pants": red -> coat, black -> pants), including predicative forms ("her
pants are black") and negations ("no hat", "without a bag").

>>> parse("A young woman with long blonde hair in a red coat, black trousers and no hat.").constraints
{'gender': 'female', 'hair_length': 'long', 'hair_color': 'blonde', 'upper_type': 'coat', 'upper_color': 'red', 'lower_type': 'trousers', 'lower_color': 'black', 'hat': 'none'}
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache

from tools.attributes import COLOR_OF, NONE, SLOTS

# word or phrase -> colour value
COLOUR_WORDS: dict[str, str] = {
    "black": "black", "jet black": "black", "dark": "black",
    "white": "white", "ivory": "white", "off-white": "white", "off white": "white", "snow white": "white",
    "grey": "grey", "gray": "grey", "silver": "grey", "charcoal": "grey", "ash": "grey", "light grey": "grey",
    "light gray": "grey", "dark grey": "grey", "dark gray": "grey",
    "beige": "beige", "tan": "beige", "cream": "beige", "khaki": "beige", "camel": "beige", "sand": "beige",
    "brown": "brown", "chocolate": "brown", "coffee-coloured": "brown", "dark brown": "brown", "light brown": "brown",
    "red": "red", "crimson": "red", "scarlet": "red", "maroon": "red", "burgundy": "red", "wine": "red", "dark red": "red",
    "orange": "orange", "amber": "orange", "rust": "orange",
    "pink": "pink", "rose": "pink", "magenta": "pink", "fuchsia": "pink", "light pink": "pink", "hot pink": "pink",
    "yellow": "yellow", "gold": "yellow", "golden": "yellow", "mustard": "yellow", "lemon": "yellow",
    "green": "green", "olive": "green", "lime": "green", "dark green": "green", "army green": "green", "teal": "green",
    "blue": "blue", "light blue": "blue", "sky blue": "blue", "sky-blue": "blue", "royal blue": "blue", "bright blue": "blue",
    "navy": "navy", "navy blue": "navy", "navy-blue": "navy", "dark blue": "navy", "dark-blue": "navy", "midnight blue": "navy",
    "purple": "purple", "violet": "purple", "lavender": "purple", "lilac": "purple", "plum": "purple", "mauve": "purple",
}
HAIR_COLOUR_WORDS: dict[str, str] = {
    "black": "black", "dark": "black", "jet black": "black", "brown": "brown", "brunette": "brown", "chestnut": "brown",
    "blonde": "blonde", "blond": "blonde", "fair": "blonde", "golden": "blonde", "yellow": "blonde", "light": "blonde",
    "grey": "grey", "gray": "grey", "silver": "grey", "white": "grey",
}

# noun phrase -> (slot of the item, value or None for a generic word)
NOUNS: dict[str, tuple[str, str | None]] = {}


def _add(slot: str, value: str | None, *words: str) -> None:
    for w in words:
        NOUNS[w] = (slot, value)


_add("upper_type", "t-shirt", "t-shirt", "tshirt", "t shirt", "tee", "tee shirt", "tee-shirt", "t-shirts", "tees", "jersey")
_add("upper_type", "shirt", "shirt", "button-up shirt", "button-down shirt", "button up shirt", "dress shirt", "blouse",
     "polo shirt", "polo", "shirts", "blouses", "button-up", "button-down")
_add("upper_type", "sweater", "sweater", "jumper", "pullover", "cardigan", "knit sweater", "sweatshirt", "sweaters")
_add("upper_type", "hoodie", "hoodie", "hooded sweatshirt", "hooded top", "hooded jacket", "hoody", "hoodies")
_add("upper_type", "jacket", "jacket", "windbreaker", "blazer", "bomber jacket", "denim jacket", "jackets", "anorak")
_add("upper_type", "coat", "coat", "long coat", "overcoat", "trench coat", "trenchcoat", "raincoat", "parka", "coats",
     "topcoat", "winter coat")
_add("upper_type", None, "top", "upper garment", "upper body garment", "upper-body garment", "upper clothing",
     "upper body clothing", "upper clothes", "upper body", "clothes", "clothing", "outfit")
_add("lower_type", "trousers", "trousers", "pants", "slacks", "chinos", "leggings", "sweatpants", "joggers",
     "long pants", "dress pants", "trouser")
_add("lower_type", "jeans", "jeans", "denim pants", "denims", "denim trousers")
_add("lower_type", "shorts", "shorts", "short pants", "bermuda shorts", "hot pants")
_add("lower_type", "skirt", "skirt", "skirts", "miniskirt", "mini skirt", "maxi skirt", "midi skirt")
_add("lower_type", None, "bottoms", "lower garment", "lower body garment", "lower-body garment", "lower clothing",
     "lower body clothing", "lower body")
_add("shoes_type", "sneakers", "sneakers", "trainers", "sports shoes", "sport shoes", "running shoes", "tennis shoes",
     "athletic shoes", "sneaker", "kicks", "canvas shoes")
_add("shoes_type", "boots", "boots", "ankle boots", "boot", "high boots", "combat boots")
_add("shoes_type", "leather shoes", "leather shoes", "dress shoes", "loafers", "oxfords", "formal shoes", "brogues")
_add("shoes_type", "sandals", "sandals", "sandal", "flip flops", "flip-flops", "flipflops", "slippers")
_add("shoes_type", None, "shoes", "footwear", "shoe")
_add("eyewear", "glasses", "glasses", "eyeglasses", "spectacles", "specs", "eye glasses")
_add("eyewear", "sunglasses", "sunglasses", "shades", "sun glasses", "sunnies")
_add("scarf", "scarf", "scarf", "muffler", "scarves", "neck scarf")
_add("hand_object", "phone", "phone", "cell phone", "cellphone", "mobile phone", "mobile", "smartphone", "smart phone")
_add("hand_object", "umbrella", "umbrella", "brolly")
_add("hand_object", "cup", "cup", "coffee cup", "mug", "drink", "paper cup", "coffee", "tumbler")
_add("hand_object", "shopping bag", "shopping bag", "paper bag", "plastic bag", "carrier bag", "shopping bags")
_add("hand_object", "book", "book", "notebook", "books")
_add("hand_object", None, "object", "item", "thing")
_add("backpack", "backpack", "backpack", "rucksack", "knapsack", "school bag", "schoolbag", "bookbag", "back pack", "daypack")
_add("bag", "handbag", "handbag", "purse", "hand bag", "tote", "tote bag", "clutch")
_add("bag", "shoulder bag", "shoulder bag", "messenger bag", "crossbody bag", "cross-body bag", "crossbody",
     "satchel", "sling bag", "side bag")
_add("bag", None, "bag", "bags")
_add("hat", "cap", "cap", "baseball cap", "peaked cap", "caps")
_add("hat", "brimmed hat", "brimmed hat", "sun hat", "wide-brimmed hat", "wide brimmed hat", "fedora", "straw hat",
     "bucket hat", "cowboy hat")
_add("hat", "beanie", "beanie", "knit hat", "woolly hat", "wool hat", "knitted hat", "toque", "beanies", "knit cap")
_add("hat", None, "hat", "hats", "headwear")
_add("belt", "belt", "belt", "waistband", "belts")
_add("hair", None, "hair", "hairstyle", "haircut", "ponytail", "bun", "braid", "braids", "curls", "locks")

GENDER_WORDS: dict[str, str] = {w: "male" for w in (
    "man", "men", "male", "gentleman", "guy", "boy", "gent", "dude", "he", "him", "his", "himself", "sir", "mr")}
GENDER_WORDS.update({w: "female" for w in (
    "woman", "women", "female", "lady", "girl", "she", "her", "hers", "herself", "madam", "ms", "mrs", "gal")})
_PRONOUNS = {"he", "him", "his", "himself", "she", "her", "hers", "herself"}

SLEEVE_WORDS = {"short-sleeved": "short", "short sleeved": "short", "short sleeve": "short", "short sleeves": "short",
                "short-sleeve": "short", "sleeveless": "short", "long-sleeved": "long", "long sleeved": "long",
                "long sleeve": "long", "long sleeves": "long", "long-sleeve": "long"}
PATTERN_WORDS = {"striped": "striped", "stripes": "striped", "stripe": "striped", "stripy": "striped",
                 "pinstriped": "striped", "checked": "checked", "plaid": "checked", "checkered": "checked",
                 "chequered": "checked", "tartan": "checked", "checks": "checked", "gingham": "checked",
                 "logo": "logo", "graphic": "logo", "printed": "logo", "print": "logo", "emblem": "logo",
                 "plain": "plain", "solid": "plain", "solid-coloured": "plain", "solid-colored": "plain",
                 "solid colour": "plain", "solid color": "plain", "unpatterned": "plain"}
LENGTH_WORDS = {"long": "long", "short": "short", "mini": "short", "maxi": "long", "midi": "long", "knee-length": "short",
                "ankle-length": "long", "floor-length": "long", "cropped": "short"}
ACTION_WORDS = {"walking": "walking", "walks": "walking", "walk": "walking", "strolling": "walking", "striding": "walking",
                "standing": "standing", "stands": "standing", "stand": "standing", "waiting": "standing",
                "standing still": "standing", "running": "running", "runs": "running", "jogging": "running",
                "jogs": "running", "sprinting": "running", "rushing": "running"}
PLACE_WORDS = {"street": "street", "road": "street", "sidewalk": "street", "pavement": "street", "avenue": "street",
               "streets": "street", "along a street": "street", "park": "park", "garden": "park", "lawn": "park",
               "grass": "park", "trees": "park", "indoors": "indoor", "inside": "indoor", "indoor": "indoor",
               "building": "indoor", "hall": "indoor", "mall": "indoor", "lobby": "indoor", "corridor": "indoor",
               "crosswalk": "crosswalk", "zebra crossing": "crosswalk", "pedestrian crossing": "crosswalk",
               "crossing": "crosswalk"}
CROWD_WORDS = {"other people": "yes", "others": "yes", "crowd": "yes", "people around": "yes", "people nearby": "yes",
               "other pedestrians": "yes", "someone else": "yes", "passers-by": "yes", "passersby": "yes",
               "alone": NONE, "nobody else": NONE, "no one else": NONE, "by herself": NONE, "by himself": NONE}
NEGATIONS = {"no", "not", "without", "nor", "never", "n't", "lacks", "lacking", "free"}
COPULAS = {"was", "were", "looks", "look", "appears", "appear", "seems", "seem", "being", "coloured", "colored"}
# words that end a noun phrase's reach for modifiers
_BREAKS = {"and", "with", "while", "but", "or", ",", ".", ";", "who", "which", "that", "they", "holding", "holds",
           "carrying", "carries", "wearing", "wears", "has", "have", "is", "are", "in", "on", "at", "of"}

_TAG_TABLES = (("colour", COLOUR_WORDS), ("sleeve", SLEEVE_WORDS), ("pattern", PATTERN_WORDS), ("length", LENGTH_WORDS),
               ("action", ACTION_WORDS), ("place", PLACE_WORDS), ("crowd", CROWD_WORDS), ("noun", NOUNS),
               ("gender", GENDER_WORDS))
_MAX_PHRASE = 4


@lru_cache(maxsize=1)
def _phrase_index() -> dict[tuple[str, ...], list[tuple[str, object]]]:
    index: dict[tuple[str, ...], list[tuple[str, object]]] = {}
    for kind, table in _TAG_TABLES:
        for phrase, value in table.items():
            index.setdefault(tuple(_words(phrase)), []).append((kind, value))
    return index


@lru_cache(maxsize=1)
def _single_words() -> list[str]:
    return sorted({k[0] for k in _phrase_index() if len(k) == 1 and len(k[0]) >= 5})


def _words(text: str) -> list[str]:
    text = text.lower().replace("’", "'")
    text = re.sub(r"n't\b", " n't", text)
    return re.findall(r"[a-z]+(?:-[a-z]+)*|n't|[,.;]", text)


@dataclass
class ParsedQuery:
    """Attribute constraints read from a description."""

    constraints: dict[str, str] = field(default_factory=dict)
    corrected: dict[str, str] = field(default_factory=dict)  # misspelt word -> lexicon word

    def __bool__(self) -> bool:
        return bool(self.constraints)


@dataclass
class _Token:
    word: str
    tags: list[tuple[str, object]]


def _tokenise(text: str) -> tuple[list[_Token], dict[str, str]]:
    words = _words(text)
    index = _phrase_index()
    corrected: dict[str, str] = {}
    out: list[_Token] = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            key = tuple(words[i:i + n])
            if key in index:
                # a colour word immediately before a noun phrase is a modifier, not part of it ("blue jeans")
                tags = index[key]
                out.append(_Token(" ".join(key), tags))
                i += n
                break
        else:
            w = words[i]
            tags = []
            if len(w) >= 5 and w.isalpha():
                close = difflib.get_close_matches(w, _single_words(), n=1, cutoff=0.85)
                if close:
                    corrected[w] = close[0]
                    tags = index[(close[0],)]
            out.append(_Token(w, tags))
            i += 1
    return out, corrected


def _kind(tok: _Token, kind: str):
    for k, v in tok.tags:
        if k == kind:
            return v
    return None


def _colour_slot(slot: str) -> str | None:
    return COLOR_OF.get(slot)


def _modifiers(tok: _Token) -> dict[str, str]:
    mods: dict[str, str] = {}
    colour = _kind(tok, "colour")
    if colour is not None:
        mods["colour"] = colour
    if tok.word in HAIR_COLOUR_WORDS:
        mods["hair_colour"] = HAIR_COLOUR_WORDS[tok.word]
    for kind in ("sleeve", "pattern", "length"):
        v = _kind(tok, kind)
        if v is not None:
            mods[kind] = v
    return mods


def parse(text: str) -> ParsedQuery:
    """Read attribute constraints from ``text``. Unknown words are ignored; the first statement
    about a slot wins."""
    tokens, corrected = _tokenise(text)
    result: dict[str, str] = {}

    def put(slot: str, value: str) -> None:
        if slot in SLOTS and value in SLOTS[slot].values and slot not in result:
            result[slot] = value

    def attach(slot: str, noun_value: str | None, mods: dict[str, str], negated: bool) -> None:
        if slot == "hair":
            if "length" in mods:
                put("hair_length", mods["length"])
            if "hair_colour" in mods:
                put("hair_color", mods["hair_colour"])
            return
        if negated and SLOTS[slot].has_absent:
            put(slot, NONE)
            return
        if noun_value is not None:
            put(slot, noun_value)
        colour_slot = _colour_slot(slot)
        if colour_slot and "colour" in mods:
            put(colour_slot, mods["colour"])
        if slot == "upper_type":
            if "sleeve" in mods:
                put("sleeve_length", mods["sleeve"])
            if "pattern" in mods:
                put("pattern", mods["pattern"])
        if slot == "lower_type" and noun_value in ("skirt", None):
            length = mods.get("length") or {"miniskirt": "short", "mini skirt": "short", "maxi skirt": "long",
                                            "midi skirt": "long"}.get(tok.word)
            if length:
                put("lower_length", length)

    pending: dict[str, str] = {}  # attributive modifiers waiting for their noun
    negated_at = -10
    last_item: tuple[str, int] | None = None  # the last noun's slot and position
    predicative = False  # inside "<noun> is <modifier> (and <modifier>)*"
    gender_votes: dict[str, float] = {}
    for i, tok in enumerate(tokens):
        w = tok.word
        prev = tokens[i - 1].word if i else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if w in NEGATIONS:
            negated_at = i
            continue
        if w == "in" and last_item and i - last_item[1] == 1 and nxt is not None and _kind(nxt, "colour") is not None \
                and (i + 2 >= len(tokens) or _kind(tokens[i + 2], "noun") is None):
            predicative = True  # "a coat in red"
            continue
        if w in _BREAKS:
            pending.clear()
            if w in ("is", "are") and last_item and i - last_item[1] <= 2:
                predicative = True
            elif w != "and":
                predicative = False
            continue
        if w in COPULAS and last_item and i - last_item[1] <= 2:
            predicative = True
            continue
        gender = _kind(tok, "gender")
        if gender is not None:
            gender_votes[gender] = gender_votes.get(gender, 0) + (0.4 if w in _PRONOUNS else 1.0)
            predicative = False
            continue
        noun = _kind(tok, "noun")
        if noun is not None:
            slot, value = noun
            attach(slot, value, dict(pending), negated=i - negated_at <= 3)
            pending.clear()
            last_item = (slot, i)
            predicative = False
            continue
        mods = _modifiers(tok)
        # sleeves and patterns only ever describe the top here: no noun needed to place them
        if "sleeve" in mods:
            put("sleeve_length", mods.pop("sleeve"))
        if "pattern" in mods:
            put("pattern", mods.pop("pattern"))
        if mods:
            next_is_noun = nxt is not None and _kind(nxt, "noun") is not None
            if predicative and last_item and not next_is_noun:
                attach(last_item[0], None, mods, negated=False)
                continue
            if mods.get("pattern") == "logo" and last_item and last_item[0] == "upper_type" and i - last_item[1] <= 6:
                put("pattern", "logo")  # "a jumper with a logo on the front"
                continue
            if w in ("blonde", "blond", "brunette") and not next_is_noun:
                put("hair_color", HAIR_COLOUR_WORDS[w])  # "a blonde woman"
                continue
            for key, value in mods.items():
                pending.setdefault(key, value)
            continue
        predicative = predicative and w in ("very", "quite", "mostly", "all", "bright", "dark", "light")
        action = _kind(tok, "action")
        if action is not None:
            put("action", action)
        place = _kind(tok, "place")
        if place is not None:
            put("background", place)
        crowd = _kind(tok, "crowd")
        if crowd is not None:
            put("other_people", NONE if i - negated_at <= 2 else crowd)  # "no other people"
    if gender_votes:
        put("gender", max(gender_votes, key=gender_votes.get))
    return ParsedQuery({s: result[s] for s in SLOTS if s in result}, corrected)
