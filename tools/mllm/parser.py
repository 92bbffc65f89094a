"""Turn a free-text person description into attribute constraints.

The offline MLLM, THI and RDA read descriptions with this parser. It is built for precision: a
wrong fact (the photo's reading would be rejected for it, and it is merged into the query) costs
more than a missing one, so it states a slot only where the text binds a word to it.

How a description is read:

1. **Words.** Lower case, hyphens split ("long-sleeved" -> long sleeved), "n't" and "'s" apart.
   A word that is neither in the lexicon below nor a real English word (by a word-frequency list,
   ``pyspellchecker``) is corrected to the one lexicon word within one edit (two for long words),
   and only where that correction is unambiguous; a real word is never turned into another
   ("patterned", "pointed", "riding", "denim" stay what they are).
2. **Noun phrases.** Modifiers (colours, sleeve and trouser lengths, patterns, materials, unknown
   adjectives) gather up to their head noun: a garment, an item, hair, a person, a place, a garment
   part, or a garment the vocabulary has no value for (a dress, a suit: it takes its modifiers, so
   they do not leak to the next noun). Several colours on one noun ("black and white shoes", "a
   black or navy coat") state no colour.
3. **Binding.** Phrases after the noun bind to it: "with short sleeves", "with a logo" (only a logo
   on a top is a pattern), "in red", "of grey colour", "that is yellow", "on her back" (a bag on the
   back is a backpack), "over a white shirt" (of layered tops, the outer one is the upper garment).
   A predicate binds to every noun of its subject ("his trousers and shoes are black"); "dressed in
   black" colours the whole outfit. An action word binds to the person, not to a strap "running
   across her chest", nor to "two people walk"; "inside" is indoors only with a building after it.
4. **Scope.** Negation reaches the next noun phrase and lists joined by "or" ("no hat or glasses");
   hedges ("maybe", "possibly", "not sure", "?", "he or she", "a cap or a hat") void what they
   reach up to the next comma or full stop.
5. **People.** The gender is the described person's (the first person noun that is not a
   companion, else the pronouns when they agree); people with the person ("holding a child", "a
   bystander", "walking with a friend") set ``other_people``.

>>> parse("A young woman with long blonde hair in a red coat, black trousers and no hat.").constraints
... # doctest: +NORMALIZE_WHITESPACE
{'gender': 'female', 'hair_length': 'long', 'hair_color': 'blonde', 'upper_type': 'coat', 'upper_color': 'red',
 'lower_type': 'trousers', 'lower_color': 'black', 'hat': 'none'}
>>> parse("his trousers and shoes are black").constraints
{'gender': 'male', 'lower_type': 'trousers', 'lower_color': 'black', 'shoes_color': 'black'}
>>> parse("???").readable
False
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

from tools.attributes import COLOR_OF, NONE, SLOTS

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# lexicon (surface words -> vocabulary values of tools.attributes)

#: word or phrase -> colour value of a garment or item
COLOUR_WORDS: dict[str, str] = {
    "black": "black", "jet black": "black", "pitch black": "black", "blackish": "black",
    "white": "white", "ivory": "white", "off white": "white", "snow white": "white", "whitish": "white",
    "grey": "grey", "gray": "grey", "silver": "grey", "charcoal": "grey", "ash grey": "grey", "greyish": "grey",
    "grayish": "grey", "slate grey": "grey", "slate gray": "grey",
    "beige": "beige", "tan": "beige", "cream": "beige", "khaki": "beige", "camel": "beige", "sand": "beige",
    "brown": "brown", "light brown": "brown", "dark brown": "brown", "chocolate": "brown", "coffee coloured": "brown",
    "coffee colored": "brown", "brownish": "brown",
    "red": "red", "crimson": "red", "scarlet": "red", "maroon": "red", "burgundy": "red", "wine": "red",
    "wine red": "red", "reddish": "red", "cherry red": "red",
    "orange": "orange", "amber": "orange", "rust": "orange", "orangish": "orange",
    "pink": "pink", "rose": "pink", "magenta": "pink", "fuchsia": "pink", "hot pink": "pink", "salmon": "pink",
    "salmon pink": "pink", "pinkish": "pink",
    "yellow": "yellow", "gold": "yellow", "golden": "yellow", "mustard": "yellow", "lemon": "yellow",
    "yellowish": "yellow", "yelowish": "yellow",
    "green": "green", "olive": "green", "lime": "green", "army green": "green", "sea green": "green",
    "forest green": "green", "emerald": "green", "mint green": "green", "greenish": "green",
    "blue": "blue", "sky blue": "blue", "royal blue": "blue", "baby blue": "blue", "powder blue": "blue",
    "cobalt": "blue", "denim blue": "blue", "bluish": "blue",
    "navy": "navy", "navy blue": "navy", "dark blue": "navy", "midnight blue": "navy", "dark navy": "navy",
    "purple": "purple", "violet": "purple", "lavender": "purple", "lilac": "purple", "plum": "purple",
    "mauve": "purple", "purplish": "purple",
}
#: word or phrase -> hair colour value ("dark hair" is black hair, as the SynthPedes captions say)
HAIR_COLOUR_WORDS: dict[str, str] = {
    "black": "black", "dark": "black", "jet black": "black", "brown": "brown", "brunette": "brown",
    "chestnut": "brown", "dark brown": "brown", "light brown": "brown", "blonde": "blonde", "blond": "blonde",
    "fair": "blonde", "golden": "blonde", "yellow": "blonde", "grey": "grey", "gray": "grey", "silver": "grey",
    "white": "grey",
}
#: colour words that are not a colour of their own: "dark clothing" says no colour
COLOUR_MODIFIERS = {"dark", "light", "bright", "pale", "deep", "pastel", "vivid", "faded", "dull", "muted", "neon"}
#: words that say "several colours": the noun gets none
MIXED_WORDS = {"multicoloured", "multicolored", "multi coloured", "multi colored", "colourful", "colorful", "rainbow",
               "two tone", "two toned", "mix", "mixture", "combination", "shades of", "variety", "mix of",
               "mixture of", "combination of", "variety of", "shade of"}

# noun phrase -> (slot, value); value None: a generic word for the slot's item ("top", "shoes", "bag")
NOUNS: dict[str, tuple[str, str | None]] = {}


def _add(slot: str, value: str | None, *words: str) -> None:
    for w in words:
        NOUNS[w] = (slot, value)


_add("upper_type", "t-shirt", "t shirt", "tshirt", "tee", "tee shirt", "t shirts", "tshirts", "tees")
_add("upper_type", "shirt", "shirt", "button up shirt", "button down shirt", "dress shirt", "blouse", "polo shirt",
     "polo", "shirts", "blouses", "button up", "button down", "flannel shirt", "oxford shirt")
_add("upper_type", "sweater", "sweater", "jumper", "pullover", "cardigan", "knit sweater", "sweatshirt", "sweaters",
     "jumpers", "sweat shirt")
_add("upper_type", "hoodie", "hoodie", "hooded sweatshirt", "hooded top", "hoody", "hoodies", "hooded sweater")
_add("upper_type", "jacket", "jacket", "windbreaker", "blazer", "bomber jacket", "denim jacket", "jackets", "anorak",
     "suit jacket", "down jacket", "puffer jacket", "puffer", "sports jacket", "leather jacket", "jean jacket")
_add("upper_type", "coat", "coat", "long coat", "overcoat", "trench coat", "trenchcoat", "raincoat", "rain coat",
     "parka", "coats", "topcoat", "winter coat", "down coat", "puffer coat")
_add("upper_type", None, "top", "upper garment", "upper body garment", "upper clothing", "upper body clothing",
     "upper clothes", "upper body", "jersey", "tank top", "crop top", "vest top", "tops", "tank", "singlet")
#: tops worn over another top that the vocabulary has no value for: they are the outer layer
LAYER_NOUNS = {"vest", "waistcoat", "gilet", "vests", "body warmer", "bodywarmer", "suit vest", "sweater vest",
               "suit", "suits", "tuxedo"}
_add("upper_type", None, *LAYER_NOUNS)
_add("lower_type", "trousers", "trousers", "pants", "slacks", "chinos", "sweatpants", "sweat pants", "joggers",
     "long pants", "dress pants", "trouser", "track pants", "trackpants", "cargo pants", "khakis", "capris",
     "capri pants", "capri", "yoga pants", "jogging pants", "jogging bottoms", "tracksuit bottoms", "pant")
_add("lower_type", "jeans", "jeans", "denim pants", "denims", "denim trousers", "jean")
_add("lower_type", "shorts", "shorts", "short pants", "bermuda shorts", "hot pants", "bermudas", "jean shorts",
     "board shorts")
_add("lower_type", "skirt", "skirt", "skirts", "miniskirt", "mini skirt", "maxi skirt", "midi skirt")
_add("lower_type", None, "bottoms", "lower garment", "lower body garment", "lower clothing", "lower body clothing",
     "lower body", "bottom")
_add("shoes_type", "sneakers", "sneakers", "trainers", "sports shoes", "sport shoes", "running shoes", "tennis shoes",
     "athletic shoes", "sneaker", "canvas shoes", "runners", "high tops", "trainer")
_add("shoes_type", "boots", "boots", "ankle boots", "boot", "high boots", "combat boots", "rain boots", "work boots",
     "booties", "wellies", "wellingtons")
_add("shoes_type", "leather shoes", "leather shoes", "dress shoes", "loafers", "oxfords", "formal shoes", "brogues",
     "wingtips", "wingtip shoes", "wing tips", "derby shoes")
_add("shoes_type", "sandals", "sandals", "sandal", "flip flops", "flipflops", "flip flop", "thongs")
_add("shoes_type", None, "shoes", "footwear", "shoe")
_add("eyewear", "glasses", "glasses", "eyeglasses", "spectacles", "specs", "eye glasses", "bespectacled")
_add("eyewear", "sunglasses", "sunglasses", "sun glasses", "sunnies", "dark glasses", "shades")
_add("scarf", "scarf", "scarf", "muffler", "scarves", "neck scarf")
_add("hand_object", "phone", "phone", "cell phone", "cellphone", "mobile phone", "smartphone", "smart phone",
     "mobile")
_add("hand_object", "umbrella", "umbrella", "brolly", "umbrellas")
_add("hand_object", "cup", "cup", "coffee cup", "mug", "paper cup", "coffee", "tumbler", "cup of coffee")
_add("hand_object", "shopping bag", "shopping bag", "paper bag", "plastic bag", "carrier bag", "shopping bags",
     "plastic bags", "paper bags")
_add("hand_object", "book", "book", "notebook", "books")
_add("hand_object", None, "object", "item")
_add("backpack", "backpack", "backpack", "rucksack", "knapsack", "school bag", "schoolbag", "bookbag", "back pack",
     "daypack", "backpacks")
_add("bag", "handbag", "handbag", "purse", "hand bag", "tote", "tote bag", "clutch", "handbags")
_add("bag", "shoulder bag", "shoulder bag", "messenger bag", "crossbody bag", "cross body bag", "crossbody",
     "cross body", "satchel", "sling bag", "side bag")
_add("bag", None, "bag", "bags", "sack")
_add("hat", "cap", "cap", "baseball cap", "peaked cap", "caps", "snapback", "flat cap", "trucker cap")
_add("hat", "brimmed hat", "brimmed hat", "sun hat", "wide brimmed hat", "fedora", "straw hat", "bucket hat",
     "cowboy hat", "panama hat", "sunhat")
_add("hat", "beanie", "beanie", "knit hat", "woolly hat", "wool hat", "knitted hat", "toque", "beanies", "knit cap",
     "woolen hat", "woollen hat", "knitted cap", "bobble hat")
_add("hat", None, "hat", "hats", "headwear")
_add("belt", "belt", "belt", "belts")

#: heads that are hair ("long-haired" -> long haired)
HAIR_NOUNS = {"hair", "hairs", "hairstyle", "hairdo", "haircut", "ponytail", "pony tail", "bun", "braid", "braids",
              "plait", "plaits", "curls", "locks", "haired", "ponytails", "pigtails"}
#: known garments, items and things the vocabulary has no value for: they take their own modifiers
OTHER_NOUNS = {
    "dress", "dresses", "gown", "sundress", "uniform", "leggings", "tights", "stockings",
    "socks", "sock", "heels", "high heels", "stilettos", "pumps", "slides", "flats", "slippers",
    "overalls", "jumpsuit", "romper", "apron", "mask", "face mask", "gloves", "glove", "watch", "necklace",
    "earrings", "headband", "helmet", "hood", "collar", "lining", "briefcase", "suitcase", "luggage", "stroller",
    "pram", "bicycle", "bike", "motorbike", "motorcycle", "scooter", "car", "dog", "cat", "earphones", "headphones",
    "tie", "bow tie", "necktie", "beard", "mustache", "moustache", "camera", "bottle", "newspaper", "laptop", "keys",
    "cane", "stick", "walking stick", "leash", "wall", "bench", "picture", "image", "photo", "print", "pattern",
    "design", "polka dots", "dots", "flowers", "zipper", "zip", "buttons", "button", "pockets", "pocket", "strap",
    "straps", "band", "stripe down", "drawstring", "shawl", "poncho", "cape", "kimono", "robe", "sari", "saree",
    "hijab", "headscarf", "head scarf", "turban", "wig", "lanyard", "badge", "bracelet", "ring", "backpack straps",
    "belt bag", "fanny pack", "waist bag", "bum bag", "duffel bag", "duffle bag", "gym bag", "suit pants",
    "jacket sleeves", "lace", "fur", "sweatband", "wristband", "tag", "cord", "chain", "string", "seam", "trim", "hem",
    "cuffs", "cuff", "brim", "heel", "sole", "soles", "laces", "lining", "stripe", "line", "lines", "letters",
    "lettering", "writing", "text", "words", "graphic print", "floral print", "animal print", "tattoo", "tattoos",
}
#: parts of the body or of a garment: where a bag hangs, where a logo is, where hair reaches
PART_WORDS = {
    "back", "shoulder", "shoulders", "chest", "body", "arm", "arms", "hip", "hips", "waist", "hand", "hands", "head",
    "neck", "feet", "foot", "legs", "leg", "knee", "knees", "ankle", "ankles", "front", "side", "sides", "sleeve",
    "sleeves", "torso", "elbow", "elbows", "wrist", "wrists", "breast", "left chest", "right chest", "ground", "floor",
    "ears", "ear", "chin", "face", "forehead", "thigh", "thighs", "calf", "calves", "toe", "toes",
}
#: person nouns -> gender (None: says nothing of it)
PERSON_WORDS: dict[str, str | None] = {w: "male" for w in (
    "man", "men", "male", "gentleman", "gentlemen", "guy", "guys", "boy", "boys", "gent", "dude", "sir", "mr",
    "young man", "old man", "elderly man", "businessman", "schoolboy", "lad", "males")}
PERSON_WORDS.update({w: "female" for w in (
    "woman", "women", "female", "lady", "ladies", "girl", "girls", "madam", "ms", "mrs", "gal", "young woman",
    "old woman", "elderly woman", "businesswoman", "schoolgirl", "females")})
PERSON_WORDS.update({w: None for w in (
    "person", "pedestrian", "individual", "someone", "somebody", "adult", "teenager", "teen", "youngster", "student",
    "walker", "jogger", "runner", "figure", "human", "subject", "child", "kid", "baby", "toddler", "infant")})
#: people who are never the described person: with them, others are nearby
COMPANION_WORDS = {
    "friend", "friends", "companion", "companions", "partner", "boyfriend", "girlfriend", "husband", "wife",
    "children", "kids", "babies", "son", "daughter", "mother", "father", "mom", "mum", "dad", "colleague",
    "colleagues", "family", "bystander", "bystanders", "passer by", "passers by", "passersby", "passerby", "people",
    "pedestrians", "others", "other people", "crowd", "group", "couple", "another person", "someone else",
    "somebody else", "other pedestrians", "persons", "persons nearby",
}
PRONOUNS = {"he": "male", "him": "male", "his": "male", "himself": "male",
            "she": "female", "her": "female", "hers": "female", "herself": "female"}
#: the walker, the jogger: a person noun that also says what they do
PERSON_ACTION = {"walker": "walking", "jogger": "running", "runner": "running"}

SLEEVE_WORDS = {"short sleeved": "short", "short sleeve": "short", "short sleeves": "short", "half sleeved": "short",
                "half sleeve": "short", "half sleeves": "short", "sleeveless": "short", "no sleeves": "short",
                "without sleeves": "short", "long sleeved": "long", "long sleeve": "long", "long sleeves": "long",
                "full sleeved": "long", "full sleeve": "long", "full sleeves": "long", "full length sleeves": "long"}
#: pattern words -> value; "" for patterns the vocabulary has no value for (not plain either)
PATTERN_WORDS = {"striped": "striped", "stripes": "striped", "stripy": "striped", "pinstriped": "striped",
                 "pinstripe": "striped", "pin striped": "striped", "checked": "checked", "plaid": "checked",
                 "checkered": "checked", "chequered": "checked", "tartan": "checked", "gingham": "checked",
                 "checks": "checked", "check": "checked", "logo": "logo", "graphic": "logo", "emblem": "logo",
                 "logos": "logo", "plain": "plain", "solid": "plain", "solid coloured": "plain",
                 "solid colored": "plain", "solid colour": "plain", "solid color": "plain", "unpatterned": "plain",
                 "patterned": "", "floral": "", "flowered": "", "flowery": "", "polka dot": "", "polka dotted": "",
                 "dotted": "", "spotted": "", "camouflage": "", "camo": "", "leopard": "", "printed": "",
                 "embroidered": "", "tie dye": "", "paisley": "", "houndstooth": ""}
#: length words -> value; "" for lengths between the two values ("knee-length", "shoulder-length")
LENGTH_WORDS = {"long": "long", "short": "short", "mini": "short", "maxi": "long", "ankle length": "long",
                "floor length": "long", "full length": "long", "waist length": "long", "short length": "short",
                "chin length": "short", "ear length": "short", "cropped": "", "knee length": "", "midi": "",
                "shoulder length": "", "medium length": "", "medium": "", "mid length": "", "three quarter": "",
                "calf length": "", "mid calf": "", "neck length": ""}
HAIR_SHORT_PHRASES = {"crew cut", "buzz cut", "buzzcut", "close cropped", "crewcut", "pixie cut"}
MATERIAL_WORDS = {"denim", "leather", "wool", "woolen", "woollen", "cotton", "knit", "knitted", "fur", "velvet",
                  "silk", "canvas", "suede", "corduroy", "nylon", "linen", "fleece", "lace", "satin", "jean"}
ACTION_WORDS = {"walking": "walking", "walks": "walking", "walk": "walking", "walked": "walking",
                "strolling": "walking", "strolls": "walking", "striding": "walking", "strides": "walking",
                "standing": "standing", "stands": "standing", "stand": "standing", "stood": "standing",
                "standing still": "standing", "running": "running", "runs": "running", "run": "running",
                "ran": "running", "jogging": "running", "jogs": "running", "jogged": "running",
                "sprinting": "running", "sprints": "running"}
#: place words -> background; indoor nouns count only after in/inside/into/within/through
PLACE_WORDS = {"street": "street", "streets": "street", "road": "street", "roads": "street", "sidewalk": "street",
               "sidewalks": "street", "pavement": "street", "avenue": "street", "roadside": "street",
               "pedestrian street": "street", "park": "park", "indoors": "indoor", "indoor": "indoor",
               "crosswalk": "crosswalk", "zebra crossing": "crosswalk", "pedestrian crossing": "crosswalk",
               "crossing": "crosswalk", "zebra": "crosswalk", "crosswalks": "crosswalk"}
INDOOR_NOUNS = {"building", "mall", "shopping mall", "shopping centre", "shopping center", "hall", "hallway", "lobby",
                "corridor", "office", "shop", "store", "supermarket", "station", "train station", "subway station",
                "metro station", "railway station", "room", "classroom", "library", "airport", "terminal",
                "restaurant", "cafe", "museum", "gym", "underground passage", "subway", "metro", "arcade"}
CROWD_NONE = {"alone", "by himself", "by herself", "by themselves", "on his own", "on her own", "nobody else",
              "no one else", "nobody around", "no one around", "nobody nearby", "no one nearby", "no one",
              "nobody"}
NEGATIONS = {"no", "not", "without", "nor", "neither", "never", "n't", "lacks", "lacking", "none"}
HEDGES = {"maybe", "perhaps", "possibly", "probably", "likely", "might", "may", "could", "not sure", "unsure",
          "unclear", "i think", "i guess", "i believe", "i suppose", "looks like", "look like", "seems like",
          "kind of", "sort of", "some kind of", "some sort of", "either", "hard to tell", "can't tell",
          "cannot tell", "not certain", "uncertain", "or so", "not clear", "probable", "presumably", "apparently",
          "guess", "unknown"}
COPULAS = {"is", "are", "was", "were", "be", "been", "being", "looks", "look", "appears", "appear", "seems", "seem",
           "appear to be", "appears to be", "seems to be", "seem to be", "'s", "remain", "remains", "stays"}
#: words between a copula and its complement that change nothing
COMPLEMENT_FILLERS = {"all", "both", "mostly", "entirely", "completely", "also", "quite", "very", "too", "fully",
                      "rather", "pretty", "a", "an", "the", "mainly", "predominantly", "largely", "totally",
                      "coloured", "colored", "in", "of", "colour", "color"}
CLOTHES_WORDS = {"clothes", "clothing", "outfit", "attire", "garments", "apparel", "outfits", "clothings"}
HEAD_TO_TOE = {"from head to toe", "head to toe", "from head to foot", "head to foot", "from top to bottom",
               "top to bottom"}
#: verbs of hair or a skirt reaching somewhere ("hair falls below her shoulders")
REACH_VERBS = {"falls", "fall", "falling", "reaches", "reach", "reaching", "comes", "come", "coming", "hangs",
               "hang", "hanging", "goes", "go", "going", "extends", "extend", "extending", "stops", "stop",
               "stopping", "ends", "ending", "runs", "down"}
#: words that tie a clause's modifiers to no noun and end noun-phrase building
_STOP_WORDS = {
    "with", "while", "but", "who", "which", "that", "holding", "holds", "hold", "held", "carrying", "carries",
    "carry", "carried", "wearing", "wears", "wear", "wore", "has", "have", "had", "having", "in", "on", "at", "of",
    "over", "under", "underneath", "beneath", "inside", "across", "along", "through", "into", "onto", "near", "by",
    "beside", "behind", "next", "to", "from", "around", "toward", "towards", "past", "outside", "above", "below",
    "and", "or", "dressed", "showing", "shows", "plus", "also", "as", "for", "there", "it", "its", "they", "them",
    "their", "is", "are", "was", "were", "be", "been", "being", "can", "seen", "appears", "seems", "looks",
    "pushing", "pulling", "talking", "looking", "using", "riding", "sitting", "crossing", "waiting", "heading",
    "going", "coming", "tucked", "slung", "worn", "hanging", "paired", "matched", "up", "down", "off", "out",
    "this", "these", "those", "where", "when", "then", "just", "only", "if", "so", "because", "though",
    "although", "against", "among", "between", "alongside", "upon", "within", "without", "walking", "standing",
    "running", "jogging", "i", "we", "you", "am", "do", "does", "did", "not", "no", "nor", "n't", "neither",
}
DETERMINERS = {"a", "an", "the", "his", "her", "their", "its", "my", "some", "any", "one", "pair of", "a pair of",
               "two", "three", "several", "few", "a few", "many", "both", "another", "other", "this", "that", "these",
               "those", "'s", "each", "every", "couple of", "a couple of"}
#: words that make a person noun a companion ("with a man", "holding a child", "another woman")
COMPANION_MARKERS = {"with", "beside", "behind", "near", "next", "by", "holding", "carrying", "pushing", "and",
                     "another", "other", "talking", "to", "following", "followed", "among", "alongside", "between",
                     "accompanied", "two", "three", "several", "few", "some", "many", "hugging", "chatting",
                     "walks", "meets", "meeting", "passing", "past", "joined", "than"}

_MAX_PHRASE = 4
_REAL_WORD_COUNT = 100  # pyspellchecker counts at or above this are real English words, never corrected


def _normalise_words(text: str) -> list[str]:
    text = text.lower().replace("’", "'").replace("‘", "'").replace("`", "'")
    text = re.sub(r"\bw/o\b", " without ", text)
    text = re.sub(r"\bw/", " with ", text)
    text = re.sub(r"\b(s)/he\b", "she or he", text)
    text = re.sub(r"([a-z])/([a-z])", r"\1 or \2", text)
    text = text.replace("&", " and ")
    text = re.sub(r"\bprinted with\b", "with", text)
    text = re.sub(r"\b([a-z]+?)e?-ish\b", r"\1ish", text)  # "blue-ish" -> bluish
    text = re.sub(r"n't\b", " n't", text)
    text = re.sub(r"'s\b", " 's", text)
    text = re.sub(r"-+", " ", text)
    return re.findall(r"[a-z]+|n't|'s|[,.;:!?()]", text)


def _phrase_key(phrase: str) -> tuple[str, ...]:
    return tuple(_normalise_words(phrase))


@lru_cache(maxsize=1)
def _phrase_index() -> dict[tuple[str, ...], dict[str, object]]:
    """phrase (as words) -> {kind: value}: every reading a phrase has."""
    tables: list[tuple[str, dict]] = [
        ("colour", COLOUR_WORDS), ("hair_colour", HAIR_COLOUR_WORDS), ("colour_mod", dict.fromkeys(COLOUR_MODIFIERS)),
        ("mixed", dict.fromkeys(MIXED_WORDS)), ("noun", NOUNS), ("hair", dict.fromkeys(HAIR_NOUNS)),
        ("other", dict.fromkeys(OTHER_NOUNS)), ("part", dict.fromkeys(PART_WORDS)), ("person", PERSON_WORDS),
        ("companion", dict.fromkeys(COMPANION_WORDS)), ("hair", dict.fromkeys(HAIR_SHORT_PHRASES)),
        ("pronoun", PRONOUNS), ("sleeve", SLEEVE_WORDS),
        ("pattern", PATTERN_WORDS), ("length", LENGTH_WORDS), ("hair_short", dict.fromkeys(HAIR_SHORT_PHRASES)),
        ("material", dict.fromkeys(MATERIAL_WORDS)), ("action", ACTION_WORDS), ("place", PLACE_WORDS),
        ("indoor_noun", dict.fromkeys(INDOOR_NOUNS)), ("crowd_none", dict.fromkeys(CROWD_NONE)),
        ("neg", dict.fromkeys(NEGATIONS)), ("hedge", dict.fromkeys(HEDGES)), ("copula", dict.fromkeys(COPULAS)),
        ("clothes", dict.fromkeys(CLOTHES_WORDS)), ("head_to_toe", dict.fromkeys(HEAD_TO_TOE)),
        ("det", dict.fromkeys(DETERMINERS)), ("colour_noun", dict.fromkeys(("colour", "color", "colours", "colors",
                                                                            "coloured", "colored", "tone"))),
        ("nothing", dict.fromkeys(("nothing", "anything", "empty handed", "nothing in his hands",
                                   "nothing in her hands", "nothing in hand"))),
        ("layer_in", dict.fromkeys(("inside", "underneath", "beneath", "under", "under it", "underneath it",
                                    "beneath it", "inside it", "below it"))),
        ("layer_out", dict.fromkeys(("over", "on top of", "over it", "on top", "on top of it", "atop"))),
        ("reach", dict.fromkeys(REACH_VERBS)),
        # multi-word fillers that would otherwise be misread word by word
        ("adjective", dict.fromkeys(("low top", "low tops", "high waisted", "straight leg", "wide leg", "street style",
                                     "zip up", "button up front", "crew neck", "v neck", "round neck", "turtle neck",
                                     "turtleneck", "hooded", "slim fit", "loose fitting", "tight fitting",
                                     "well fitted", "knee high", "mid rise", "low rise", "high rise", "lace up", "slip on"))),
        ("filler", dict.fromkeys(("on foot", "other hand", "the other", "in front of", "front of", "in the front",
                                  "walking distance", "parking lot", "car park", "stand up collar", "at the back",
                                  "in the back", "in the background", "background", "foreground", "colour of",
                                  "color of", "in his hand", "in her hand", "in hand", "in one hand",
                                  "in his hands", "in her hands", "in the other hand", "in his right hand",
                                  "in his left hand", "in her right hand", "in her left hand", "by the hand",
                                  "holding hands", "hand in hand"))),
    ]
    index: dict[tuple[str, ...], dict[str, object]] = {}
    for kind, table in tables:
        for phrase, value in table.items():
            index.setdefault(_phrase_key(phrase), {}).setdefault(kind, value)
    return index


#: words the parser reads structurally (besides the lexicon), also the targets of spelling correction
_GRAMMAR_WORDS = _STOP_WORDS | COMPANION_MARKERS | COMPLEMENT_FILLERS | {"he", "she", "or", "and", "else"}


@lru_cache(maxsize=1)
def _lexicon_words() -> frozenset[str]:
    words = {w for key in _phrase_index() for w in key}
    return frozenset(words | _GRAMMAR_WORDS)


#: grammar words a typo may stand for ("wering", "carring"); other function words are no targets
_CORRECTABLE_GRAMMAR = {"wearing", "wears", "carrying", "carries", "holding", "holds", "dressed", "without",
                        "walking", "standing", "running", "with"}


@lru_cache(maxsize=1)
def _correction_targets() -> dict[str, tuple[str, ...]]:
    """Lexicon words a typo may be corrected to, by length (content words of three letters or more)."""
    out: dict[int, list[str]] = {}
    content = ("colour", "hair_colour", "colour_mod", "noun", "hair", "other", "person", "companion", "sleeve",
               "pattern", "length", "material", "action", "place", "indoor_noun", "clothes", "part")
    lexicon = {w for key, kinds in _phrase_index().items() if any(k in kinds for k in content) for w in key}
    lexicon |= _CORRECTABLE_GRAMMAR
    for w in lexicon:
        if len(w) >= 3 and w.isalpha():
            out.setdefault(len(w), []).append(w)
    return {str(k): tuple(sorted(v)) for k, v in out.items()}


@lru_cache(maxsize=1)
def _english() -> dict[str, int] | None:
    """Word -> count in pyspellchecker's English frequency list (None when the package is missing:
    then nothing is corrected, which loses recall on typos and never precision)."""
    try:
        from spellchecker import SpellChecker
    except ImportError:  # pragma: no cover - the dependency is declared; stay safe without it
        log.warning("pyspellchecker is not installed: typos in descriptions are not corrected")
        return None
    return dict(SpellChecker(language="en", distance=1).word_frequency.dictionary)


def is_english_word(word: str) -> bool:
    """Whether ``word`` is a real English word (so it is never corrected into another one)."""
    english = _english()
    return word in _lexicon_words() or (english is not None and english.get(word, 0) >= _REAL_WORD_COUNT)


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap two neighbours), or
    ``limit + 1`` once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def correct_word(word: str, before_modified: bool = False) -> str | None:
    """The lexicon word a misspelt ``word`` stands for, or None. Only a word that is neither in the
    lexicon nor a real English word is corrected, to the closest lexicon word within one edit (two
    for words of eight letters or more), and only when every closest word reads the same; where
    they differ and the next word is a colour or a garment (``before_modified``), a unique
    modifier among them wins ("dak blue": dark, not dad)."""
    found = _closest(word)
    if not found:
        return None
    index = _phrase_index()
    readings = {repr(sorted(index.get((c,), {"grammar": c}).items())) for c in found}
    if len(readings) == 1:
        return sorted(found)[0]
    if before_modified:
        modifiers = [c for c in found if any(k in index.get((c,), {}) for k in _MODIFIER_KINDS)]
        if len(modifiers) == 1:
            return modifiers[0]
    return None  # "cip": cap or cup? no guess


_MODIFIER_KINDS = ("colour", "colour_mod", "pattern", "length", "material", "sleeve")


@lru_cache(maxsize=4096)
def _closest(word: str) -> tuple[str, ...]:
    if len(word) < 3 or not word.isalpha() or is_english_word(word) or _english() is None:
        return ()
    limit = 2 if len(word) >= 8 else 1
    targets = _correction_targets()
    best, found = limit + 1, []
    for n in range(len(word) - limit, len(word) + limit + 1):
        for cand in targets.get(str(n), ()):
            if limit == 2 and len(cand) < 6:
                continue
            d = _edit_distance(word, cand, limit)
            if d < best:
                best, found = d, [cand]
            elif d == best:
                found.append(cand)
    if not found or best > limit:
        return ()
    return tuple(sorted(found))


# ---------------------------------------------------------------------------------------------
# tokens and noun phrases


@dataclass
class _Tok:
    i: int
    text: str
    kinds: dict[str, object]

    def has(self, kind: str) -> bool:
        return kind in self.kinds

    def get(self, kind: str):
        return self.kinds.get(kind)


@dataclass
class _NP:
    """A noun phrase: its head and the modifiers gathered for it."""

    start: int
    end: int  # index of the head token (inclusive)
    kind: str  # noun, hair, other, part, person, companion, place, indoor_noun, pattern, clothes, bare
    head: _Tok | None = None
    slot: str | None = None
    value: str | None = None
    colours: list[str] = field(default_factory=list)
    hair_colours: list[str] = field(default_factory=list)
    mixed: bool = False  # several colours, "or" between them, or a word saying so
    dark: bool = False  # a "dark" modifier (hair: black)
    sleeve: str | None = None
    patterns: list[str] = field(default_factory=list)
    lengths: list[str] = field(default_factory=list)
    materials: list[str] = field(default_factory=list)
    det: str | None = None
    negated: bool = False
    hedged: bool = False
    inner: bool = False  # a layer under another top
    outer: bool = False
    carried_on: str | None = None  # back, shoulder, hand

    @property
    def colour(self) -> str | None:
        if self.mixed or len(set(self.colours)) != 1:
            return None
        return self.colours[0]

    @property
    def hair_colour(self) -> str | None:
        values = set(self.hair_colours)
        if self.mixed or len(values) > 1:
            return None
        if values:
            return values.pop()
        return "black" if self.dark else None


_CONTENT_KINDS = ("noun", "hair", "other", "person", "companion", "place", "indoor_noun", "clothes")


def _tokenise(text: str) -> tuple[list[_Tok], dict[str, str]]:
    words = _normalise_words(text)
    corrected: dict[str, str] = {}
    index = _phrase_index()
    fixed = list(words)
    # right to left, so that a typo before a corrected typo sees what it stands before ("blck backpak")
    for n in range(len(words) - 1, -1, -1):
        nxt = index.get((fixed[n + 1],), {}) if n + 1 < len(words) else {}
        c = correct_word(words[n], any(k in nxt for k in ("colour", "noun", "hair", "other")))
        if c is not None:
            corrected[words[n]] = c
            fixed[n] = c
    index = _phrase_index()
    out: list[_Tok] = []
    i = 0
    while i < len(fixed):
        for n in range(min(_MAX_PHRASE, len(fixed) - i), 0, -1):
            key = tuple(fixed[i:i + n])
            if key in index:
                out.append(_Tok(len(out), " ".join(key), dict(index[key])))
                i += n
                break
        else:
            w = fixed[i]
            kinds: dict[str, object] = {}
            if w in {",", ";", ":", "(", ")"}:
                kinds["comma"] = w
            elif w in {".", "!"}:
                kinds["stop"] = w
            elif w == "?":
                kinds["question"] = w
            elif w == "or":
                kinds["or"] = w
            elif w == "and":
                kinds["and"] = w
            elif w in _STOP_WORDS or w in COMPANION_MARKERS:
                kinds["word"] = w
            else:
                kinds["unknown"] = w
            out.append(_Tok(len(out), w, kinds))
            i += 1
    return out, corrected


def _is_break(t: _Tok) -> bool:
    return t.has("comma") or t.has("stop") or t.has("question")


def _premodifier(t: _Tok) -> bool:
    """Can this token stand before a head noun inside one noun phrase?"""
    if any(t.has(k) for k in ("colour", "hair_colour", "colour_mod", "mixed", "sleeve", "pattern", "length",
                              "material", "det", "unknown", "hair_short", "colour_noun", "adjective")):
        return not t.has("neg") and not t.has("hedge") and not t.has("copula")
    return False


def _head_kind(t: _Tok) -> str | None:
    for k in ("noun", "hair", "other", "clothes", "person", "companion", "place", "indoor_noun", "part"):
        if t.has(k):
            return k
    return None


# ---------------------------------------------------------------------------------------------
# the reading


@dataclass
class ParsedQuery:
    """Attribute constraints read from a description.

    Attributes:
        constraints: slot -> value of ``tools.attributes`` that the text states.
        corrected: misspelt word -> the lexicon word it was read as.
        uncertain: slot -> value the text mentions only with a hedge ("maybe a cap"); not facts.
        words: how many words the text has (letters only).
        english_words: how many of them are English words or lexicon words.
    """

    constraints: dict[str, str] = field(default_factory=dict)
    corrected: dict[str, str] = field(default_factory=dict)
    uncertain: dict[str, str] = field(default_factory=dict)
    words: int = 0
    english_words: int = 0

    def __bool__(self) -> bool:
        return bool(self.constraints)

    @property
    def readable(self) -> bool:
        """Whether the text states at least one attribute this parser can check."""
        return bool(self.constraints)

    @property
    def problem(self) -> str | None:
        """None when readable; else one line saying why nothing could be read."""
        if self.constraints:
            return None
        if self.words == 0:
            return "the description has no words (the offline parser reads English)"
        if self.english_words < 0.5 * self.words:
            return "the description does not look like English (the offline parser reads English only)"
        return "the description names no attribute the offline parser knows (clothes, colours, bags, hair, ...)"


def is_checkable(text: str) -> bool:
    """Whether a description states anything a verifier can check against a photo: False for empty
    text, "???", another language, or English that names no attribute of ``tools.attributes``."""
    return parse(text).readable


class _Reader:
    """One description's reading: noun phrases, bindings, scopes, then facts."""

    def __init__(self, toks: list[_Tok]):
        self.toks = toks
        self.nps: list[_NP] = []
        self.np_at: dict[int, _NP] = {}  # token index of a phrase's head -> phrase
        self.np_of: dict[int, _NP] = {}  # every token index inside a phrase -> phrase
        self.hedged_at: set[int] = set()
        self.negated_at: set[int] = set()
        self.outfit: list[tuple[str, bool, bool]] = []  # (colour or "", head to toe, hedged)
        self.facts: dict[str, list[tuple[int, str]]] = {}  # slot -> [(priority, value)]
        self.hedged_facts: dict[str, str] = {}
        self.sleeves: list[tuple[str, bool]] = []  # standalone sleeve statements (value, hedged)
        self.patterns: list[tuple[str, _NP | None]] = []  # (pattern, the top it is on; None: the top)
        self.outfit_phrases: list[_NP] = []
        self.gender_blocked = False  # "he or she"

    # -- phrases -----------------------------------------------------------------------------

    def chunk(self) -> None:
        toks = self.toks
        i = 0
        while i < len(toks):
            j = i
            while j < len(toks) and (_premodifier(toks[j]) and _head_kind(toks[j]) is None or self._adjectival(j)):
                j += 1
                # "black and white shoes", "a red, white and blue jacket", "black or navy coat"
                if j + 1 < len(toks) and (toks[j].has("and") or toks[j].has("or") or toks[j].text == ",") \
                        and j > i and self._colourish(toks[j - 1]) and self._colourish(toks[j + 1]):
                    j += 1
            if j < len(toks) and _head_kind(toks[j]) is not None:
                self._make_np(i, j, _head_kind(toks[j]))
                i = j + 1
                continue
            if j > i:
                # modifiers with no head noun: a weak head (a garment part, a pattern word) or a bare run
                self._make_np(i, j - 1, "bare")
                i = j
                continue
            i += 1

    def _adjectival(self, j: int) -> bool:
        """A word that is a modifier here because a garment follows: "a running jacket", "a baby stroller"."""
        toks = self.toks
        t = toks[j]
        if j + 1 >= len(toks) or not (t.has("action") or t.has("companion") or t.has("person")):
            return False
        nxt = toks[j + 1]
        if t.has("action"):
            return nxt.has("noun") or nxt.has("other")
        return nxt.has("other") and nxt.text in ("stroller", "pram", "carrier", "seat", "bag", "clothes")

    @staticmethod
    def _colourish(t: _Tok) -> bool:
        return t.has("colour") or t.has("hair_colour") or t.has("colour_mod")

    def _make_np(self, start: int, end: int, kind: str) -> None:
        toks = self.toks
        head = toks[end] if kind != "bare" else None
        np_ = _NP(start, end, kind, head)
        if head is not None:
            if kind == "noun":
                np_.slot, np_.value = head.get("noun")  # type: ignore[misc]
            if kind == "person":
                np_.value = head.get("person")  # type: ignore[assignment]
        mods = toks[start:end] if head is not None else toks[start:end + 1]
        for t in mods:
            if t.has("or") and any(self._colourish(m) for m in mods):
                np_.mixed = True
            if t.has("and") or t.text == ",":
                if sum(1 for m in mods if m.has("colour") or m.has("hair_colour")) > 1:
                    np_.mixed = True
            if t.has("mixed"):
                np_.mixed = True
            if t.has("colour"):
                np_.colours.append(t.get("colour"))  # type: ignore[arg-type]
            if t.has("hair_colour"):
                np_.hair_colours.append(t.get("hair_colour"))  # type: ignore[arg-type]
            if t.text == "dark":
                np_.dark = True
            if t.has("sleeve"):
                np_.sleeve = t.get("sleeve")  # type: ignore[assignment]
            if t.has("pattern"):
                np_.patterns.append(t.get("pattern"))  # type: ignore[arg-type]
            if t.has("length"):
                np_.lengths.append(t.get("length"))  # type: ignore[arg-type]
            if t.has("hair_short"):
                np_.lengths.append("short")
            if t.has("material"):
                np_.materials.append(t.text)
            if t.has("det") and np_.det is None:
                np_.det = t.text
        if head is not None:
            # a head's own reading: "miniskirt", "tank top", "short pants", "long-haired"
            if head.text in ("miniskirt", "mini skirt"):
                np_.lengths.append("short")
            elif head.text == "maxi skirt":
                np_.lengths.append("long")
            elif head.text in ("short pants",):
                np_.lengths.append("short")
            elif head.text in ("long pants",):
                np_.lengths.append("long")
            elif head.text in ("tank top", "vest top", "singlet", "tank"):
                np_.sleeve = np_.sleeve or "short"
            if head.has("hair_short"):
                np_.lengths.append("short")
            if kind == "hair":
                hair_colour_words = [t for t in mods if t.has("colour") and not t.has("hair_colour")]
                if hair_colour_words:  # "red hair", "pink hair": no hair colour of the vocabulary
                    np_.mixed = True
        self.nps.append(np_)
        self.np_at[end] = np_
        for k in range(start, end + 1):
            self.np_of[k] = np_

    # -- scopes ------------------------------------------------------------------------------

    def scopes(self) -> None:
        toks = self.toks
        # a question mark hedges its sentence
        sentence_start = 0
        for i, t in enumerate(toks):
            if t.has("stop") or t.has("question"):
                if t.has("question"):
                    self.hedged_at.update(range(sentence_start, i + 1))
                sentence_start = i + 1
        for i, t in enumerate(toks):
            if t.has("hedge") and not t.has("neg"):
                j = i + 1
                while j < len(toks) and not _is_break(toks[j]) and toks[j].text != "but":
                    self.hedged_at.add(j)
                    j += 1
                # "a woman, possibly ...": a hedge right after a comma reaches back to nothing; but
                # "a black coat, perhaps" hedges the phrase before it when nothing follows
                if j == i + 1:
                    k = i - 1
                    while k >= 0 and toks[k].text == ",":
                        k -= 1
                    if k >= 0 and k in self.np_of:
                        np_ = self.np_of[k]
                        self.hedged_at.update(range(np_.start, np_.end + 1))
            elif t.has("neg") or t.text == "n't":
                if i + 1 < len(toks) and toks[i + 1].text in ("sure", "certain", "clear"):
                    continue  # "not sure" is a hedge (read as a phrase)
                j = i + 1
                reached = False
                while j < len(toks):
                    u = toks[j]
                    if _is_break(u) and not (u.text == "," and reached and j + 1 < len(toks)
                                             and self._continues_list(j + 1)):
                        break
                    if u.text in ("but", "and", "while", "who", "which") or u.has("copula") and reached:
                        break
                    if u.has("or") or u.text == "nor" or u.has("neg"):
                        self.negated_at.add(j)
                        j += 1
                        continue
                    self.negated_at.add(j)
                    if j in self.np_at or u.has("nothing") or u.has("crowd_none"):
                        reached = True
                    j += 1
        for np_ in self.nps:
            span = range(np_.start, np_.end + 1)
            np_.hedged = any(k in self.hedged_at for k in span)
            if np_.head is not None and np_.head.i in self.negated_at:
                np_.negated = True
        # "X or Y" outside negation: alternatives, both uncertain
        for i, t in enumerate(toks):
            if not t.has("or") or i in self.negated_at:
                continue
            before = self._np_ending_before(i)
            after = self._np_starting_after(i)
            if before is not None and after is not None:
                same = (before.kind == after.kind and before.slot == after.slot) or \
                       {before.kind, after.kind} <= {"person", "companion"}
                if same or before.kind == "noun" and after.kind == "noun" and \
                        {before.slot, after.slot} <= {"bag", "backpack", "hand_object"}:
                    before.hedged = after.hedged = True
            # "he or she", "his or her"
            if i > 0 and i + 1 < len(toks) and toks[i - 1].has("pronoun") and toks[i + 1].has("pronoun"):
                self.gender_blocked = True

    def _continues_list(self, j: int) -> bool:
        """After a comma inside a negation: does a list of items go on ("no hat, glasses or scarf")?"""
        toks = self.toks
        k = j
        while k < len(toks) and toks[k].has("det"):
            k += 1
        if k < len(toks) and k in self.np_at and self.np_at[k].kind == "noun":
            # only when an "or"/"nor" closes the list later in the clause
            m = k + 1
            while m < len(toks) and not _is_break(toks[m]) and not toks[m].has("and"):
                if toks[m].has("or") or toks[m].text == "nor":
                    return True
                m += 1
        return False

    def _np_ending_before(self, i: int) -> _NP | None:
        return self.np_of.get(i - 1) if (i - 1) in self.np_of and self.np_of[i - 1].end == i - 1 else None

    def _np_starting_after(self, i: int) -> _NP | None:
        np_ = self.np_of.get(i + 1)
        return np_ if np_ is not None and np_.start == i + 1 else None

    # -- bindings ----------------------------------------------------------------------------

    def _next_np(self, i: int, skip: Iterable[str] = ("det",), limit: int = 4) -> _NP | None:
        """The phrase starting at or soon after token ``i`` (skipping determiners etc.)."""
        toks = self.toks
        k = i
        while k < len(toks) and k - i < limit:
            if k in self.np_of and self.np_of[k].start == k:
                return self.np_of[k]
            if not any(toks[k].has(s) for s in skip):
                return None
            k += 1
        return None

    def bind(self) -> None:
        toks = self.toks
        for idx, np_ in enumerate(self.nps):
            if np_.kind == "bare":
                continue
            k = np_.end + 1
            if k >= len(toks):
                continue
            t = toks[k]
            # "with short sleeves", "with a logo", "with black stripes", "with a jacket inside"
            if t.text == "with":
                other = self._next_np(k + 1)
                if other is not None:
                    self._attach_with(np_, other)
            # "her top has a logo on it", "his shoes have a white logo"
            elif t.text in ("has", "have", "had", "features", "bears", "shows") and np_.kind in ("noun", "clothes"):
                other = self._next_np(k + 1)
                if other is not None and other.kind == "bare" and other.patterns:
                    self._attach_with(np_, other)
            # "a coat in red", "shoes in a mix of black and blue", "a coat in shades of blue"
            elif t.text == "in":
                other = self._next_np(k + 1)
                if other is not None and other.kind == "bare" and (other.colours or other.mixed):
                    self._colour_to(np_, other)
            # "a coat of grey colour"
            elif t.text == "of":
                other = self._next_np(k + 1)
                if other is not None and other.kind == "bare" and other.colours and \
                        toks[other.end].has("colour_noun"):
                    self._colour_to(np_, other)
            # "a jacket over a white shirt" / "a white shirt under a jacket" / "denim jacket over it"
            if t.has("layer_out") or t.has("layer_in"):
                other = self._next_np(k + 1)
                outward = t.has("layer_out")
                if other is not None and other.slot == "upper_type" and np_.slot == "upper_type":
                    (np_ if outward else other).outer = True
                    (other if outward else np_).inner = True
                elif other is None and np_.slot == "upper_type" and t.text in (
                        "over it", "on top", "on top of it", "inside", "underneath", "beneath", "under it",
                        "underneath it", "beneath it", "inside it"):
                    if outward:
                        np_.outer = True
                    else:
                        np_.inner = True
            # "a grey jacket which is open, showing a white shirt"
            # a bag's place: "on his back", "over her shoulder", "across her body", "slung over one shoulder"
            if np_.kind == "noun" and np_.slot in ("bag", "backpack"):
                self._carried_on(np_, k)
            if np_.kind == "noun" and np_.slot == "hat":
                self._hat_brim(np_, k)
        for i, t in enumerate(toks):
            if t.text == "showing":
                other = self._next_np(i + 1)
                if other is not None and other.slot == "upper_type":
                    other.inner = True
        self._predicates()
        self._logos()
        for i, t in enumerate(toks):
            if t.has("reach"):
                self._reach(i)
            if t.has("head_to_toe"):
                self._head_to_toe(i)
        self._outfit_phrases()

    def _attach_with(self, np_: _NP, other: _NP) -> None:
        toks = self.toks
        after = other.end + 1
        nxt = toks[after] if after < len(toks) else None
        if other.kind == "bare" or other.kind == "other" or other.kind == "part" or \
                (other.head is not None and other.head.has("part")):
            head_text = toks[other.end].text
            if other.sleeve and np_.slot == "upper_type" and not other.hedged:
                np_.sleeve = np_.sleeve or other.sleeve
            if head_text in ("sleeves", "sleeve") and other.lengths and np_.slot == "upper_type":
                np_.sleeve = np_.sleeve or (other.lengths[0] or None)
            if other.patterns and (np_.slot == "upper_type" or np_.kind == "clothes"):
                # "with black stripes on the sleeves" is a detail, not the top's pattern
                if not (nxt is not None and nxt.text == "on" and self._part_after(after + 1) in
                        {"sleeves", "sleeve", "collar", "pocket", "pockets", "cuffs", "hood", "shoulder",
                         "shoulders", "hem", "arm", "arms"}):
                    for p in other.patterns:
                        self.patterns.append((p, np_ if np_.kind == "noun" else None))
            if np_.slot == "hat" and head_text in ("brim",) and other.lengths == [] and \
                    any(t.text in ("wide", "broad", "big", "large") for t in toks[other.start:other.end]):
                np_.value = "brimmed hat" if np_.value in (None, "brimmed hat") else np_.value
        elif other.slot == "upper_type" and np_.slot == "upper_type":
            if nxt is not None and nxt.has("layer_in") and nxt.text in ("inside", "underneath", "beneath", "under it",
                                                                         "underneath it", "beneath it", "inside it"):
                other.inner = True
                np_.outer = True

    @staticmethod
    def _colour_to(np_: _NP, other: _NP) -> None:
        """A colour phrase after a noun ("a coat in red", "shoes in a mix of black and blue")."""
        if np_.kind not in ("noun", "clothes", "other", "hair"):
            return
        if other.mixed or len(set(other.colours)) > 1 or other.hedged:
            np_.mixed = True
        else:
            np_.colours.extend(other.colours)
            np_.hair_colours.extend(other.hair_colours)

    def _part_after(self, k: int) -> str | None:
        toks = self.toks
        while k < len(toks) and (toks[k].has("det") or toks[k].has("pronoun") or toks[k].has("unknown")
                                 and toks[k].text in ("left", "right")):
            k += 1
        if k < len(toks) and (toks[k].has("part") or toks[k].text in PART_WORDS):
            return toks[k].text
        if k < len(toks) and k in self.np_of:
            np_ = self.np_of[k]
            return toks[np_.end].text
        return None

    def _carried_on(self, np_: _NP, k: int) -> None:
        toks = self.toks
        m = k
        while m < len(toks) and toks[m].text in ("slung", "hanging", "worn", "carried", "strapped", "draped"):
            m += 1
        if m >= len(toks):
            return
        prep = toks[m].text
        if prep in ("in", "on", "over", "across", "around", "at", "from", "under"):
            part = self._part_after(m + 1)
            words = " ".join(t.text for t in toks[m + 1:m + 4])
            if part == "back" or part == "shoulders" and "both" in words:
                np_.carried_on = "back"
            elif part in ("shoulder", "body", "chest"):
                np_.carried_on = "shoulder"
            elif part in ("hand", "hands", "arm", "arms", "wrist"):
                np_.carried_on = "hand"
        elif prep == "with" and self._part_after(m + 1) == "shoulders":
            if "both" in " ".join(t.text for t in toks[m + 1:m + 3]):
                np_.carried_on = "back"
        elif toks[m].has("filler") and toks[m].text.startswith("in ") and toks[m].text.endswith(("hand", "hands")):
            np_.carried_on = "hand"

    def _hat_brim(self, np_: _NP, k: int) -> None:
        toks = self.toks
        if k < len(toks) and toks[k].text == "with":
            span = [t.text for t in toks[k + 1:k + 5]]
            if "brim" in span and any(w in span for w in ("wide", "broad", "big", "large")):
                if np_.value is None:
                    np_.value = "brimmed hat"

    def _subject_group(self, copula_at: int) -> list[_NP]:
        """The noun phrases a predicate at ``copula_at`` speaks of: "his trousers and shoes are"."""
        toks = self.toks
        group: list[_NP] = []
        k = copula_at - 1
        if k >= 0 and toks[k].text in ("that", "which", "who"):
            k -= 1
        while k >= 0:
            np_ = self.np_of.get(k)
            if np_ is None or np_.end != k or np_.kind == "bare":
                break
            group.append(np_)
            k = np_.start - 1
            if k >= 0 and toks[k].has("and"):
                # only "and" between two garments of one subject ("his trousers and shoes are black")
                prev = self.np_of.get(k - 1)
                if prev is not None and prev.end == k - 1 and prev.kind in ("noun", "clothes") \
                        and np_.kind in ("noun", "clothes") and np_.det in (None, prev.det):
                    k -= 1
                    continue
            break
        return group

    def _predicates(self) -> None:
        toks = self.toks
        for i, t in enumerate(toks):
            if not t.has("copula"):
                continue
            group = self._subject_group(i)
            if not group:
                continue
            # the complement: fillers, then a bare phrase of modifiers (perhaps several joined by "and")
            k = i + 1
            while k < len(toks) and toks[k].text in COMPLEMENT_FILLERS and not (k in self.np_of and
                                                                               self.np_of[k].start == k):
                k += 1
            comps: list[_NP] = []
            while k < len(toks):
                np_ = self.np_of.get(k)
                if np_ is None or np_.start != k or np_.kind != "bare":
                    break
                comps.append(np_)
                k = np_.end + 1
                if k < len(toks) and toks[k].has("and") and k + 1 < len(toks) and \
                        self.np_of.get(k + 1) is not None and self.np_of[k + 1].kind == "bare" and \
                        self.np_of[k + 1].start == k + 1:
                    k += 1
                    continue
                break
            if not comps:
                # "the top is (printed) with a logo"
                if k < len(toks) and toks[k].text == "with" and i not in self.hedged_at and i not in self.negated_at:
                    other = self._next_np(k + 1)
                    if other is not None:
                        for subject in group:
                            self._attach_with(subject, other)
                continue
            colours = [c for comp in comps for c in comp.colours]
            hair_colours = [c for comp in comps for c in comp.hair_colours]
            mixed = any(comp.mixed for comp in comps) or len(set(colours)) > 1
            hedged = any(comp.hedged for comp in comps) or i in self.hedged_at
            negated = i in self.negated_at or any(toks[m].has("neg") for m in range(i, comps[0].start))
            if hedged or negated:
                continue
            for subject in group:
                if subject.kind == "hair":
                    subject.hair_colours.extend(hair_colours)
                    subject.mixed = subject.mixed or len(set(hair_colours)) > 1
                    subject.dark = subject.dark or any(comp.dark for comp in comps)
                else:
                    if not mixed:
                        subject.colours.extend(colours)
                    else:
                        subject.mixed = True
                for comp in comps:
                    subject.lengths.extend(comp.lengths)
                    if subject.kind == "noun" and subject.slot == "upper_type":
                        for p in comp.patterns:
                            self.patterns.append((p, subject))
                    elif subject.kind == "clothes":  # "the clothes are plain": the pattern question's words
                        for p in comp.patterns:
                            self.patterns.append((p, None))
                        if comp.sleeve:
                            subject.sleeve = subject.sleeve or comp.sleeve
                    if subject.head is not None and subject.head.text in ("sleeves", "sleeve") and comp.lengths:
                        self.sleeves.append((comp.lengths[0], False))
                # "her top is white with black stripes"
                after = comps[-1].end + 1
                if after < len(toks) and toks[after].text == "with" and subject.slot == "upper_type":
                    other = self._next_np(after + 1)
                    if other is not None:
                        self._attach_with(subject, other)

    def _logos(self) -> None:
        """A pattern phrase standing alone ("a logo on his shirt", "his shoes have a white logo")
        binds to the noun it is on; only a top's pattern is a fact."""
        toks = self.toks
        bound = {id(np_) for _, np_ in self.patterns if np_ is not None}
        for np_ in self.nps:
            if np_.kind != "bare" or not np_.patterns or id(np_) in bound:
                continue
            k = np_.end + 1
            if k < len(toks) and toks[k].text == "on":
                target = self._next_np(k + 1, skip=("det", "pronoun"))
                if target is not None and target.kind == "noun" and target.slot == "upper_type":
                    for p in np_.patterns:
                        self.patterns.append((p, target))
                elif target is None or target.kind in ("part", "bare"):
                    part = self._part_after(k + 1)
                    if part in ("front", "chest", "breast", "left chest", "right chest", "back"):
                        for p in np_.patterns:
                            self.patterns.append((p, None))  # on the front: of the top

    # -- facts -------------------------------------------------------------------------------

    def put(self, slot: str, value: str | None, priority: int = 1, hedged: bool = False) -> None:
        if value is None or value == "" or slot not in SLOTS or value not in SLOTS[slot].values:
            return
        if hedged:
            self.hedged_facts.setdefault(slot, value)
            return
        self.facts.setdefault(slot, []).append((priority, value))

    def facts_from_phrases(self) -> None:
        toks = self.toks
        negated_values: dict[str, set[str]] = {}  # "no handbag or shoulder bag": every value denied
        uppers = [np_ for np_ in self.nps if np_.kind == "noun" and np_.slot == "upper_type" and not np_.negated]
        self._upper(uppers)
        for np_ in self.nps:
            hedged = np_.hedged
            if np_.kind == "hair":
                if np_.negated:
                    continue
                for length in np_.lengths:
                    self.put("hair_length", length, hedged=hedged)
                self.put("hair_color", np_.hair_colour, hedged=hedged)
                continue
            if np_.kind == "bare":
                # "sleeveless", "wearing short sleeves", a standalone "plain"
                if np_.sleeve and not np_.negated:
                    self.sleeves.append((np_.sleeve, hedged))
                continue
            if np_.kind == "person":
                # "a blonde woman"
                if any(toks[k].text in ("blonde", "blond", "brunette") for k in range(np_.start, np_.end)):
                    self.put("hair_color", np_.hair_colour, hedged=hedged)
                continue
            if np_.kind == "clothes":
                if np_.colours or np_.mixed:
                    self.outfit.append((np_.colour or "", False, hedged or np_.negated))
                continue
            if np_.kind != "noun" or np_.slot == "upper_type":
                continue
            slot = np_.slot
            assert slot is not None
            if np_.negated:
                if slot == "bag" and np_.value is None:
                    self.put("bag", NONE, 2, hedged)
                    self.put("backpack", NONE, 2, hedged)
                elif slot in ("backpack", "scarf", "belt"):
                    self.put(slot, NONE, 2, hedged)
                elif slot == "hat" and np_.value is None:
                    self.put("hat", NONE, 2, hedged)
                elif slot == "eyewear" and np_.value == "glasses":
                    self.put("eyewear", NONE, 2, hedged)
                elif np_.value is not None and not hedged:
                    negated_values.setdefault(slot, set()).add(np_.value)
                continue
            value = np_.value
            if slot == "bag":
                if np_.carried_on == "back" and value is None:
                    slot, value = "backpack", "backpack"
                elif np_.carried_on == "shoulder":
                    if value is None:
                        value = "shoulder bag"
                    elif value == "handbag":
                        value = None  # "a purse over her shoulder": which of the two? no guess
            if slot == "lower_type":
                self.put("lower_type", value, 2 if value else 1, hedged)
                self.put("lower_color", np_.colour, 2 if value else 1, hedged)
                lengths = [x for x in np_.lengths]
                if value == "shorts":
                    lengths = [x for x in lengths if x == "short"]
                if len(set(lengths)) == 1:
                    self.put("lower_length", lengths[0], 2, hedged)
                continue
            self.put(slot, value, 2 if value else 1, hedged)
            colour_slot = COLOR_OF.get(slot)
            if colour_slot:
                self.put(colour_slot, np_.colour, 2 if value else 1, hedged)
        for slot, denied in negated_values.items():
            if SLOTS[slot].has_absent and denied >= set(SLOTS[slot].present_values()):
                self.put(slot, NONE, 2)
        for sleeve, hedged in self.sleeves:
            self.put("sleeve_length", sleeve, 1, hedged)
        for colour, head_to_toe, hedged in self.outfit:
            if not colour:
                continue
            self.put("upper_color", colour, 0, hedged)
            self.put("lower_color", colour, 0, hedged)
            if head_to_toe:
                self.put("shoes_color", colour, 0, hedged)

    def _upper(self, uppers: list[_NP]) -> None:
        """Of layered tops, the outer one is the upper garment; a generic "top" merges into it."""
        rank = {"coat": 5, "jacket": 4, "hoodie": 3, "sweater": 2, "shirt": 1, "t-shirt": 0}
        specific = [np_ for np_ in uppers if np_.value is not None or np_.head is not None and
                    np_.head.text in LAYER_NOUNS]
        generic = [np_ for np_ in uppers if np_.value is None]
        candidates = [np_ for np_ in specific if not np_.inner]
        if any(np_.outer for np_ in candidates):
            candidates = [np_ for np_ in candidates if np_.outer]
        chosen: _NP | None = None
        if candidates:
            top = max(rank.get(np_.value or "", 3) for np_ in candidates)
            best = [np_ for np_ in candidates if rank.get(np_.value or "", 3) == top]
            values = {np_.value for np_ in best}
            if len(values) == 1:
                chosen = best[0]
                if len(best) > 1:  # the same garment named twice: pool what each says
                    for other in best[1:]:
                        chosen.colours.extend(other.colours)
                        chosen.mixed = chosen.mixed or other.mixed
                        chosen.sleeve = chosen.sleeve or other.sleeve
        if chosen is not None and chosen.value is None:
            return  # a vest over a shirt: the outer top has no value of the vocabulary
        pool = [chosen] if chosen is not None else []
        outer_is_layer = chosen is not None and rank.get(chosen.value or "", 3) >= 3 and len(specific) >= 1
        # "a white top and a black jacket": the top is under the jacket; "a white top ... the t-shirt": one garment
        if not specific or (chosen is not None and not outer_is_layer):
            pool += [np_ for np_ in generic if not np_.inner]
        if not pool:
            return
        hedged = any(np_.hedged for np_ in pool)
        if chosen is not None:
            self.put("upper_type", chosen.value, 2, chosen.hedged)
        colours = [c for np_ in pool for c in np_.colours]
        if not any(np_.mixed for np_ in pool) and len(set(colours)) == 1:
            self.put("upper_color", colours[0], 2, hedged)
        sleeves = {np_.sleeve for np_ in pool if np_.sleeve}
        if len(sleeves) == 1:
            self.put("sleeve_length", sleeves.pop(), 2, hedged)
        self._upper_pool = pool

    def facts_from_patterns(self) -> None:
        pool = getattr(self, "_upper_pool", [])
        found = []
        for p, np_ in self.patterns:
            if np_ is None or np_ in pool or (np_.slot == "upper_type" and not np_.inner and not pool):
                found.append((p, np_ is not None and np_.hedged))
        for np_ in pool:
            for p in np_.patterns:
                found.append((p, np_.hedged))
        values = {p for p, _ in found}
        if len(values) == 1:
            value = values.pop()
            self.put("pattern", value, 2, any(h for _, h in found))

    def facts_from_words(self) -> None:
        """Actions, places, people nearby, hair phrasings, outfit colours, things carried."""
        toks = self.toks
        actions: list[tuple[str, bool]] = []
        places: list[tuple[str, bool]] = []
        others: list[tuple[str, bool]] = []
        for i, t in enumerate(toks):
            hedged = i in self.hedged_at
            negated = i in self.negated_at
            if t.has("action") and not (i in self.np_of and self.np_of[i].kind != "bare"):
                if self._is_persons_action(i) and not negated:
                    actions.append((t.get("action"), hedged))  # type: ignore[arg-type]
            if t.has("person") and t.text in PERSON_ACTION and not negated:
                actions.append((PERSON_ACTION[t.text], hedged))
            if t.has("place") and not negated:
                place = t.get("place")
                if place == "indoor" and i + 1 < len(toks) and _head_kind(toks[i + 1]) in ("noun", "other"):
                    continue  # "indoor shoes"
                if t.text == "crossing" and not self._crossing_is_noun(i):
                    continue
                if t.text == "zebra" and not (i + 1 < len(toks) and toks[i + 1].text in ("crossing", "crosswalk")):
                    if not (i > 0 and toks[i - 1].has("det")):
                        continue
                places.append((place, hedged))  # type: ignore[arg-type]
            if t.has("indoor_noun") and not negated and self._inside(i):
                places.append(("indoor", hedged))
            if t.has("crowd_none") and not hedged:
                others.append((NONE, hedged))
            if t.has("companion") and i in self.np_at:
                np_ = self.np_at[i]
                if np_.negated or (i > 0 and toks[i - 1].text in ("no",)):
                    others.append((NONE, hedged))
                else:
                    others.append(("yes", hedged))
            if t.has("nothing") and negated or t.text in ("empty handed", "nothing in his hands",
                                                          "nothing in her hands", "nothing in hand"):
                self._nothing(i, hedged)
            if t.has("nothing") and t.text == "nothing" and i > 0 and toks[i - 1].text in (
                    "holding", "holds", "carrying", "carries", "hold", "carry", "has", "have"):
                self._nothing(i, hedged)
        self._people(others)
        for slot, found in (("action", actions), ("background", places)):
            sure = {v for v, h in found if not h}
            if slot == "background" and "crosswalk" in sure:
                sure = {"crosswalk"}  # "crossing the street at a zebra crossing"
            if len(sure) == 1:
                self.put(slot, sure.pop(), 2)
            elif not sure and found:
                self.hedged_facts.setdefault(slot, found[0][0])

    def _crossing_is_noun(self, i: int) -> bool:
        toks = self.toks
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is not None and (nxt.has("det") or nxt.has("place") or nxt.has("indoor_noun")):
            return False  # "crossing the road": a verb
        return prev is not None and (prev.has("det") or prev.text in ("at", "on", "near", "across", "by"))

    def _inside(self, i: int) -> bool:
        toks = self.toks
        k = i - 1
        while k >= 0 and (toks[k].has("det") or toks[k].has("unknown") or toks[k].has("colour")) and i - k <= 3:
            k -= 1
        if k < 0:
            return False
        if toks[k].text in ("inside", "into", "within", "through", "throughout", "in") or \
                toks[k].has("layer_in") and toks[k].text == "inside":
            return not (k + 1 < len(toks) and toks[k + 1].text == "front")
        return False

    def _is_persons_action(self, i: int) -> bool:
        """Is the action word at ``i`` said of the described person?"""
        toks = self.toks
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is not None and _head_kind(nxt) in ("noun", "other") and nxt.get("noun") != ("hand_object", None):
            if not (nxt.has("other") and nxt.text in ("dog", "bike", "bicycle")):
                return False  # "walking boots", "running shorts"
        k = i - 1
        while k >= 0 and toks[k].text in ("is", "are", "was", "were", "be", "been", "slowly", "quickly", "fast",
                                          "currently", "also", "just", "seen", "and"):
            k -= 1
        prev = toks[k] if k >= 0 else None
        if prev is not None and k in self.np_of:
            np_ = self.np_of[k]
            if np_.kind == "companion" or (np_.kind == "person" and self._is_companion(np_)):
                return False  # "two people walk behind a man", "with other people walking around"
            if np_.kind in ("other", "part", "bare") and self._motion_over_body(i):
                return False  # "a strap running across her chest"
            if np_.kind == "bare" and any(toks[m].text in ("stripe", "strap", "line", "zipper")
                                          for m in range(np_.start, np_.end + 1)):
                return False
        if i > 0 and toks[i - 1].text in ("strap", "straps", "stripe", "stripes", "line", "lines", "zipper", "zip",
                                          "band", "cord", "string", "chain", "seam", "trim", "lace", "laces"):
            return False  # "a strap running across", "a stripe running down"
        return True

    def _motion_over_body(self, i: int) -> bool:
        toks = self.toks
        k = i + 1
        if k < len(toks) and toks[k].text in ("across", "down", "along", "through", "over", "around", "up", "from",
                                              "diagonally", "on", "layer_out") or (k < len(toks) and
                                                                                   toks[k].has("layer_out")):
            part = self._part_after(k + 1)
            return part is not None and (part in PART_WORDS or part in ("sleeves",))
        return False

    def _nothing(self, i: int, hedged: bool) -> None:
        toks = self.toks
        window = " ".join(t.text for t in toks[max(0, i - 3):i + 4])
        carry = any(w in window for w in ("carrying", "carry", "carries"))
        hold = any(w in window for w in ("holding", "hold", "holds", "hand", "hands", "empty handed"))
        if carry or hold:
            self.put("hand_object", NONE, 2, hedged)
        if carry:
            self.put("bag", NONE, 2, hedged)
            self.put("backpack", NONE, 2, hedged)

    def _head_to_toe(self, i: int) -> None:
        """Colours "from head to toe" ("in black from head to toe"): the whole outfit and the shoes."""
        np_ = self.np_of.get(i - 1)
        if np_ is not None and np_.kind == "bare" and np_.colours:
            self.outfit.append((np_.colour or "", True, np_.hedged))

    def _outfit_phrases(self) -> None:
        """Outfit colours: "dressed in black", "wearing black", "a man in black", "all in white"."""
        toks = self.toks
        for np_ in self.nps:
            if np_.kind != "bare" or not (np_.colours or np_.mixed):
                continue
            end = np_.end + 1
            if end < len(toks) and (_head_kind(toks[end]) is not None or toks[end].has("head_to_toe")):
                continue
            k = np_.start - 1
            prev = toks[k] if k >= 0 else None
            if prev is None:
                continue
            ok = False
            if prev.text in ("wearing", "wears", "wear", "dressed", "clad"):
                ok = True
            elif prev.text == "in":
                before = k - 1
                while before >= 0 and toks[before].text in ("all", "entirely", "completely", "mostly", "dressed",
                                                            "clad", "head"):
                    before -= 1
                b = self.np_of.get(before)
                if (b is not None and b.kind == "person") or (before >= 0 and toks[before].text in
                                                               ("dressed", "clad", "all", "wearing")) or \
                        toks[k - 1].text in ("dressed", "clad", "all"):
                    ok = True
            elif prev.text == "all" and k > 0 and toks[k - 1].text in ("in", "wearing", "dressed", "wears"):
                ok = True
            if ok:
                # an outfit colour: "wearing black and white" states none
                if any(np_ is o for o in self.outfit_phrases):
                    continue
                self.outfit_phrases.append(np_)
                self.outfit.append((np_.colour or "", False, np_.hedged or np_.negated))

    def _reach(self, i: int) -> None:
        """Lengths said by where hair or a skirt reaches: "hair falls below her shoulders"."""
        toks = self.toks
        # the subject: the phrase before the verb (through "that"/"which")
        k = i - 1
        if k >= 0 and toks[k].text in ("that", "which"):
            k -= 1
        while k >= 0 and toks[k].text in ("is", "are", "down", "all", "just", "well"):
            k -= 1
        subject = self.np_of.get(k)
        if subject is None or subject.end != k or subject.hedged:
            return
        words = [t.text for t in toks[i + 1:i + 6]]
        preps = set(words[:3])
        part = None
        for w in words:
            if w in PART_WORDS:
                part = w
                break
        if part is None:
            return
        if subject.kind == "hair":
            if part in ("shoulders", "shoulder") and preps & {"below", "past", "beyond", "over", "under"}:
                subject.lengths.append("long")
            elif part in ("waist", "back", "chest", "hips", "hip", "elbows") and not preps & {"above"}:
                subject.lengths.append("long")
            elif part in ("shoulders", "chin", "ears", "neck") and "above" in preps:
                subject.lengths.append("short")
        elif subject.kind == "noun" and subject.slot == "lower_type" and subject.value != "shorts":
            if part in ("ankles", "ankle", "feet", "floor", "ground", "toes") and "above" not in preps:
                subject.lengths.append("long")
            elif part in ("knees", "knee") and "above" in preps:
                subject.lengths.append("short")

    def _is_companion(self, np_: _NP) -> bool:
        """Does a person phrase name someone with the described person ("with a man", "another woman")?"""
        toks = self.toks
        if np_.kind == "companion":
            return True
        if np_.det in ("another", "other", "two", "three", "several", "few", "a few", "many"):
            return True
        definite = np_.det in ("the", "this", "that")
        k = np_.start - 1
        while k >= 0 and toks[k].has("det"):
            k -= 1
        if k >= 0 and toks[k].text in COMPANION_MARKERS and not definite:
            if toks[k].text == "and" and np_.det is None:
                return True
            return True
        return False

    def _people(self, others: list[tuple[str, bool]]) -> None:
        """The described person's gender and whether anybody else is nearby."""
        toks = self.toks
        persons = [np_ for np_ in self.nps if np_.kind == "person"]
        subject = None
        for np_ in persons:
            if not self._is_companion(np_):
                subject = np_
                break
        companions = [np_ for np_ in persons if np_ is not subject and self._is_companion(np_)]
        if subject is None:
            gendered = [np_ for np_ in persons if np_.value is not None]
            if gendered:
                subject = gendered[0]
                companions = [np_ for np_ in companions if np_ is not subject]
        for np_ in companions:
            others.append((NONE, np_.hedged) if np_.negated else ("yes", np_.hedged))
        # people nearby
        sure = {v for v, h in others if not h}
        if len(sure) == 1:
            self.put("other_people", sure.pop(), 2)
        # gender
        if self.gender_blocked:
            return
        if subject is not None and subject.value is not None:
            self.put("gender", subject.value, 2, subject.hedged)
            return
        if subject is not None and subject.hedged:
            return
        # "the walker is a woman": a gendered noun said of the (neutral) subject
        for np_ in persons:
            k = np_.start - 1
            while k >= 0 and toks[k].has("det"):
                k -= 1
            if np_.value is not None and k >= 0 and toks[k].has("copula") and not np_.hedged:
                self.put("gender", np_.value, 2)
                return
        votes = {PRONOUNS[t.text] for i, t in enumerate(toks) if t.has("pronoun") and i not in self.hedged_at}
        if len(votes) == 1:
            self.put("gender", votes.pop(), 1)

    def resolve(self) -> tuple[dict[str, str], dict[str, str]]:
        out: dict[str, str] = {}
        for slot in SLOTS:
            found = self.facts.get(slot)
            if not found:
                continue
            top = max(p for p, _ in found)
            values = {v for p, v in found if p == top}
            if len(values) == 1:
                out[slot] = values.pop()
        # a colour without its item, where the item is known to be absent, is no fact
        for colour_slot, parent in (("bag_color", "bag"), ("backpack_color", "backpack"), ("hat_color", "hat"),
                                    ("hand_object_color", "hand_object")):
            if out.get(parent) == NONE:
                out.pop(colour_slot, None)
        uncertain = {s: v for s, v in self.hedged_facts.items() if s not in out}
        return out, uncertain


#: Function words of the languages a pedestrian description is most often written in besides
#: English (German, French, Spanish, Italian, Portuguese, Dutch), none of them an English word in
#: a description. Two of them outnumbering the English function words mark a text as not English.
FOREIGN_FUNCTION_WORDS = frozenset("""
ein eine einen einem einer der die das den dem des und mit ist trägt tragt hat auf einer schwarzer roter blauer
un une le la les des et avec est porte sur du au aux dans
el los las una y con lleva tiene unos unas del
il lo gli uno della con che indossa ha
um uma os com e está usa
een het en met draagt heeft
""".split())
#: English function words of descriptions (articles, prepositions, pronouns, auxiliaries).
ENGLISH_FUNCTION_WORDS = frozenset("""
a an the and with in on of is has his her he she wears wearing wore carries carrying holding at to by
from this that who which are was its their they
""".split())


def _foreign(words: Sequence[str]) -> bool:
    """Whether ``words`` (lower-case) read as another language than English (see
    :data:`FOREIGN_FUNCTION_WORDS`)."""
    foreign = sum(1 for w in words if w in FOREIGN_FUNCTION_WORDS)
    return foreign >= 2 and foreign > sum(1 for w in words if w in ENGLISH_FUNCTION_WORDS)


def parse(text: str) -> ParsedQuery:
    """Read attribute constraints from ``text`` (see the module docstring for how).

    Returns a :class:`ParsedQuery`; ``constraints`` is empty when nothing can be read (check
    ``readable`` and ``problem``). Never raises on any string.
    """
    toks, corrected = _tokenise(text or "")
    words = [t for t in _normalise_words(text or "") if t.isalpha()]
    english = sum(1 for w in words if is_english_word(w) or w in corrected)
    if not words and any(ch.isalpha() for ch in text or ""):
        return ParsedQuery(words=1, english_words=0)  # letters of another script only: not English
    if _foreign(words):
        # another language whose words look English to a dictionary ("Hose", "roter"): the
        # spelling correction would read "Jacke" as a jacket; nothing is read
        return ParsedQuery(words=len(words), english_words=0)
    reader = _Reader(toks)
    reader.chunk()
    reader.scopes()
    reader.bind()
    reader.facts_from_phrases()
    reader.facts_from_patterns()
    reader.facts_from_words()
    constraints, uncertain = reader.resolve()
    return ParsedQuery({s: constraints[s] for s in SLOTS if s in constraints}, corrected, uncertain, len(words),
                       english)
