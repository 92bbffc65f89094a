import pytest

from tools.mllm.parser import parse

CASES = [
    # generator-like phrasing
    ("A young woman with long blonde hair in a red coat, black trousers and no hat.",
     {"gender": "female", "hair_length": "long", "hair_color": "blonde", "upper_type": "coat", "upper_color": "red",
      "lower_type": "trousers", "lower_color": "black", "hat": "none"}),
    # phrasing the caption grammar never produces
    ("guy in grey hoodie w/ blue jeans, white trainers, carrying a rucksack, not wearing glasses",
     {"gender": "male", "upper_type": "hoodie", "upper_color": "grey", "lower_type": "jeans", "lower_color": "blue",
      "shoes_type": "sneakers", "shoes_color": "white", "backpack": "backpack", "eyewear": "none"}),
    ("The lady has a navy blue backpack and holds a cup of coffee. Her pants are black and her hair is long.",
     {"gender": "female", "backpack": "backpack", "backpack_color": "navy", "hand_object": "cup",
      "lower_type": "trousers", "lower_color": "black", "hair_length": "long"}),
    ("Female, dark-blue denims, crimson sneekers, jogging across a zebra crossing, no other people around.",
     {"gender": "female", "lower_type": "jeans", "lower_color": "navy", "shoes_type": "sneakers", "shoes_color": "red",
      "action": "running", "background": "crosswalk", "other_people": "none"}),
    ("Gentleman wearing a plaid shirt with short sleeves and khaki slacks; he has a messenger bag and a baseball cap.",
     {"gender": "male", "upper_type": "shirt", "pattern": "checked", "lower_type": "trousers", "lower_color": "beige",
      "bag": "shoulder bag", "hat": "cap"}),
    ("a blonde woman in a maxi skirt holding a violet umbrella, standing in the park",
     {"gender": "female", "hair_color": "blonde", "lower_type": "skirt", "lower_length": "long",
      "hand_object": "umbrella", "hand_object_color": "purple", "action": "standing", "background": "park"}),
    ("Person in a jumper with a logo on the front, shades on, lilac woolly hat",
     {"upper_type": "sweater", "pattern": "logo", "eyewear": "sunglasses", "hat": "beanie", "hat_color": "purple"}),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_parser_reads_varied_phrasing(text, expected):
    got = parse(text).constraints
    for slot, value in expected.items():
        assert got.get(slot) == value, (slot, got)


def test_modifiers_bind_to_their_own_noun():
    got = parse("a man in a red coat and black pants").constraints
    assert got["upper_color"] == "red" and got["lower_color"] == "black"
    got = parse("black shoes and a white shirt").constraints
    assert got["shoes_color"] == "black" and got["upper_color"] == "white"
    got = parse("the coat is red").constraints
    assert got["upper_color"] == "red"


def test_typos_are_corrected_and_reported():
    p = parse("a woman with a backpak and sneekers")
    assert p.constraints["backpack"] == "backpack" and p.constraints["shoes_type"] == "sneakers"
    assert p.corrected == {"backpak": "backpack", "sneekers": "sneakers"}


def test_nothing_known_gives_nothing():
    assert not parse("someone I saw yesterday")
    assert parse("").constraints == {}


def test_parser_recovers_what_generated_captions_state():
    from data.synthpedes import WorldConfig, plan

    records, anns, _ = plan(WorldConfig(seed=21, train_ids=0, val_ids=0, test_ids=150))
    right = total = 0
    for r, a in zip(records, anns):
        for text, cap in zip(r["captions"], a["captions"]):
            got = parse(text).constraints
            for slot, value in cap["stated"].items():
                total += 1
                right += got.get(slot) == value
    assert right / total > 0.98
