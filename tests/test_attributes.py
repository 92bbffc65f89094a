from tools import attributes as A


def test_every_slot_has_values_question_and_phrase():
    for name, slot in A.SLOTS.items():
        assert slot.values, name
        assert slot.question.endswith("?"), name
        for value in slot.values:
            context = {"upper_type": "coat", "lower_type": "jeans", "shoes_type": "boots", "hand_object": "cup",
                       "backpack": "backpack", "bag": "handbag", "hat": "cap"}
            sentence = A.phrase(name, value, context)
            assert sentence.endswith(".") and sentence[0].isupper(), (name, value, sentence)
            if value != A.NONE and name not in ("gender", "lower_length", "other_people", "pattern", "background"):
                assert value.split()[0] in sentence.lower(), (name, value, sentence)


def test_colour_vocabulary_has_confusable_neighbours():
    assert len(A.COLORS) >= 12
    for group in (("red", "orange", "pink"), ("navy", "blue", "purple"), ("white", "grey", "beige")):
        assert set(group) <= set(A.COLORS)


def test_questionnaire_covers_the_papers_fifteen_questions():
    assert len(A.PAPER_QUESTIONNAIRE) == 15
    assert all(A.PAPER_QUESTIONNAIRE)
    covered = {s for group in A.PAPER_QUESTIONNAIRE for s in group}
    assert covered == set(A.SLOT_NAMES)


def test_colour_slots_follow_their_item():
    assert A.COLOR_PARENT["hat_color"] == "hat"
    assert not A.is_applicable("hat_color", {"hat": "none", "hat_color": None})
    assert A.is_applicable("hat_color", {"hat": "cap", "hat_color": "red"})
    assert A.phrase("hat_color", "red", {"hat": "cap"}) == "The person wears a red cap."
    assert A.phrase("lower_color", "blue", {"lower_type": "jeans"}) == "The person wears blue jeans."


def test_bad_values_are_rejected():
    import pytest

    with pytest.raises(ValueError, match="not a value"):
        A.phrase("upper_color", "mauve")
    with pytest.raises(ValueError, match="unknown attribute slot"):
        A.validate({"wings": "yes"})
