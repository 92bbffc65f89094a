"""The query parser on the kinds of human phrasing it used to misread (each with inputs of our own).

Every case lists the facts that must be read and the slots that must stay unread: a wrong fact
drives verification, the questions and the merge, so precision is tested as hard as recall.
"""

from __future__ import annotations

import pytest

from eval.parser import load_descriptions, score
from tools.mllm.parser import correct_word, is_checkable, is_english_word, parse

# (text, facts that must be read, slots that must not be read)
KINDS = {
    "real words are never corrected into other vocabulary words": [
        ("a woman in a patterned skirt", {"lower_type": "skirt"}, ["pattern"]),
        ("black pointed shoes", {"shoes_color": "black"}, ["pattern"]),
        ("a man riding a bicycle", {"gender": "male"}, ["action"]),
        ("a cup in one hand and a bag in the other hand", {}, ["other_people"]),
        ("denim shorts and a white tee", {"lower_type": "shorts", "upper_type": "t-shirt"}, []),
        ("he was waking up on a bench", {"gender": "male"}, ["action"]),
    ],
    "words bind to their own noun phrase": [
        ("a hoodie with a jacket inside, on the sidewalk", {"upper_type": "hoodie", "background": "street"}, []),
        ("a thin strap running across her chest", {"gender": "female"}, ["action"]),
        ("a man with a logo on his shoes", {"gender": "male"}, ["pattern"]),
        ("he or she wears a grey coat", {"upper_type": "coat", "upper_color": "grey"}, ["gender"]),
        ("his or her bag is red", {"bag_color": "red"}, ["gender"]),
        ("a woman in a plaid skirt", {"lower_type": "skirt"}, ["pattern"]),
        ("a striped scarf and a red coat", {"scarf": "scarf", "upper_color": "red"}, ["pattern"]),
        ("a white woman in a blue jacket", {"upper_color": "blue"}, []),
        ("a man walks past a shopping mall", {"action": "walking"}, ["background"]),
        ("standing in front of a store", {"action": "standing"}, ["background"]),
        ("walking inside a train station", {"action": "walking", "background": "indoor"}, []),
        ("two people walk behind a man in a grey coat", {"gender": "male", "other_people": "yes"}, ["action"]),
        ("the man is wearing a white shirt under a black jacket", {"upper_type": "jacket", "upper_color": "black"},
         []),
        ("a vest over a white shirt", {}, ["upper_type", "upper_color"]),
        ("a black bag on his back", {"backpack": "backpack", "backpack_color": "black"}, ["bag", "bag_color"]),
        ("a red bag slung over one shoulder", {"bag": "shoulder bag", "bag_color": "red"}, []),
        ("a short woman in a long coat", {"gender": "female", "upper_type": "coat"}, ["hair_length", "lower_length"]),
    ],
    "colours after the noun and shared by several nouns": [
        ("his trousers and shoes are black", {"lower_color": "black", "shoes_color": "black"}, []),
        ("her jacket and skirt are both red", {"upper_color": "red", "lower_color": "red"}, []),
        ("shoes in a mix of black and blue", {}, ["shoes_color"]),
        ("black and white sneakers", {"shoes_type": "sneakers"}, ["shoes_color"]),
        ("a man in all dark clothing", {"gender": "male"}, ["upper_color", "lower_color"]),
        ("a man dressed in black with white sneakers",
         {"upper_color": "black", "lower_color": "black", "shoes_color": "white"}, []),
        ("a woman in black from head to toe", {"upper_color": "black", "lower_color": "black", "shoes_color": "black"},
         []),
        ("a coat of grey colour", {"upper_type": "coat", "upper_color": "grey"}, []),
        ("a t-shirt that is yellow", {"upper_type": "t-shirt", "upper_color": "yellow"}, []),
        ("a coat in red", {"upper_color": "red"}, []),
        ("a yellow raincoat, his hair is short and grey",
         {"upper_color": "yellow", "hair_length": "short", "hair_color": "grey"}, []),
    ],
    "hair length, sleeves and trouser length": [
        ("her hair falls below her shoulders", {"hair_length": "long"}, []),
        ("a long-haired woman", {"hair_length": "long"}, []),
        ("short-length hair", {"hair_length": "short"}, []),
        ("a man with a crew cut", {"hair_length": "short"}, []),
        ("shoulder-length hair", {}, ["hair_length"]),
        ("a half-sleeved shirt", {"sleeve_length": "short"}, []),
        ("a full sleeved sweater", {"sleeve_length": "long"}, []),
        ("a white tank top", {"sleeve_length": "short", "upper_color": "white"}, ["upper_type"]),
        ("the shirt's sleeves are short", {"sleeve_length": "short"}, []),
        ("ankle-length trousers", {"lower_type": "trousers", "lower_length": "long"}, []),
        ("a skirt that reaches her ankles", {"lower_length": "long"}, []),
        ("a knee-length skirt", {"lower_type": "skirt"}, ["lower_length"]),
    ],
    "people nearby": [
        ("a woman holding a child", {"gender": "female", "other_people": "yes"}, []),
        ("a bystander behind the man", {"gender": "male", "other_people": "yes"}, []),
        ("walking with a friend", {"action": "walking", "other_people": "yes"}, []),
        ("a man talking to a woman", {"gender": "male", "other_people": "yes"}, []),
        ("a child in a red coat", {"upper_color": "red"}, ["other_people"]),
        ("a man standing alone", {"other_people": "none"}, []),
        ("no one else is around", {"other_people": "none"}, []),
    ],
    "walking in other forms": [
        ("the man walked across the road", {"action": "walking", "background": "street"}, []),
        ("the walker wears a red coat", {"action": "walking"}, []),
        ("a woman strolls through the park", {"action": "walking", "background": "park"}, []),
        ("a walking stick in his hand", {}, ["action"]),
        ("white running shoes", {"shoes_type": "sneakers"}, ["action"]),
    ],
    "negation and uncertainty": [
        ("no bag", {"bag": "none", "backpack": "none"}, []),
        ("no backpack", {"backpack": "none"}, ["bag"]),
        ("without hat, glasses or scarf", {"hat": "none", "eyewear": "none", "scarf": "none"}, []),
        ("no hat and a red scarf", {"hat": "none", "scarf": "scarf"}, []),
        ("he isn't carrying anything", {"bag": "none", "backpack": "none", "hand_object": "none"}, []),
        ("holding nothing in his hands", {"hand_object": "none"}, []),
        ("maybe a cap", {}, ["hat"]),
        ("a black or navy coat", {"upper_type": "coat"}, ["upper_color"]),
        ("possibly a woman, in jeans", {"lower_type": "jeans"}, ["gender"]),
        ("a cap or a hat", {}, ["hat"]),
        ("a red coat?", {}, ["upper_type", "upper_color"]),
        ("a shirt that might be blue", {"upper_type": "shirt"}, ["upper_color"]),
        ("not wearing a coat", {}, ["upper_type"]),
    ],
    "garment names and colours people use": [
        ("white capris", {"lower_type": "trousers", "lower_color": "white"}, []),
        ("black wingtips", {"shoes_type": "leather shoes", "shoes_color": "black"}, []),
        ("a bespectacled man", {"eyewear": "glasses", "gender": "male"}, []),
        ("a sea-green top", {"upper_color": "green"}, []),
        ("a salmon blouse", {"upper_type": "shirt", "upper_color": "pink"}, []),
        ("a brown sack on her back", {"backpack": "backpack", "backpack_color": "brown"}, []),
        ("a dak blue coat", {"upper_type": "coat", "upper_color": "navy"}, []),
        ("a grey jaket and blue jeens", {"upper_type": "jacket", "lower_type": "jeans", "lower_color": "blue"}, []),
        ("a woman in a white dress", {"gender": "female"}, ["upper_color", "lower_color", "lower_type"]),
        ("dark jeans", {"lower_type": "jeans"}, ["lower_color"]),
        ("a blue-ish shirt", {"upper_color": "blue"}, []),
        ("dark glasses", {"eyewear": "sunglasses"}, []),
        ("a coat in shades of blue", {"upper_type": "coat"}, ["upper_color", "eyewear"]),
    ],
}

CASES = [(kind, *case) for kind, cases in KINDS.items() for case in cases]


@pytest.mark.parametrize("kind, text, facts, unread", CASES, ids=[f"{c[0][:20]}: {c[1]}" for c in CASES])
def test_each_kind_is_read_right(kind, text, facts, unread):
    got = parse(text).constraints
    for slot, value in facts.items():
        assert got.get(slot) == value, (slot, got)
    for slot in unread:
        assert slot not in got, (slot, got)


@pytest.mark.parametrize("word", ["patterned", "pointed", "riding", "denim", "other", "hand", "waking", "sweeter",
                                  "stripped", "capris", "wingtips", "salmon", "sack"])
def test_real_words_are_never_corrected(word):
    assert is_english_word(word)
    assert correct_word(word) is None


def test_typos_are_corrected_to_one_reading():
    assert correct_word("sneekers") == "sneakers"
    assert correct_word("trousres") == "trousers"
    assert correct_word("dak", before_modified=True) == "dark"  # "dak blue": a colour follows
    assert correct_word("dak") is None  # alone: dark or dad? no guess
    p = parse("a woman in a blak coat and whte sneekers")
    assert p.constraints["upper_color"] == "black" and p.constraints["shoes_color"] == "white"
    assert p.corrected == {"blak": "black", "whte": "white", "sneekers": "sneakers"}


def test_hedged_facts_are_kept_apart():
    p = parse("a man in a blue shirt, maybe a cap on his head")
    assert "hat" not in p.constraints and p.uncertain == {"hat": "cap"}


@pytest.mark.parametrize("text, why", [
    ("", "no words"), ("???", "no words"), ("一个穿红色外套的女人", "does not look like English"),
    ("Una mujer con un abrigo rojo y pantalones", "English"), ("someone I saw near the entrance yesterday", "names no"),
])
def test_unreadable_descriptions_say_why(text, why):
    p = parse(text)
    assert not p.readable and not is_checkable(text) and p.constraints == {}
    assert why in p.problem


def test_a_readable_description_has_no_problem():
    assert parse("a man in a red coat").problem is None and is_checkable("a man in a red coat")


def test_the_description_set_is_read_with_precision_first():
    """The hand-labelled set (tests/data/descriptions.jsonl): precision >= 0.99, recall >= 0.97, on
    every part (the held-out part was written after the parser and scored unchanged)."""
    items = load_descriptions()
    assert len(items) >= 150
    for part in sorted({it["part"] for it in items}):
        r = score([it for it in items if it["part"] == part])
        assert r["precision"] >= 0.99 and r["recall"] >= 0.97, (part, r["precision"], r["recall"], r["wrong"][:5])


def test_generated_captions_are_read_as_before():
    """SynthPedes captions go through the same parser: nothing they state may be lost or misread."""
    from eval.parser import synthpedes_captions

    r = score(synthpedes_captions(150, seed=21))
    assert r["recall"] >= 0.999
    # the only extra facts: a backpack named by its colour's caption ("a pink backpack") while the
    # generator recorded only the colour as stated
    assert all(w["slot"] == "backpack" for w in r["wrong"]), r["wrong"][:5]
