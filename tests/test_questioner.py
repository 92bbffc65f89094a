import pytest

from agents.questioner import CONTEXT_ORDER, FALLBACK_ORDER, AdaptiveQuestioner, with_items


def _scores(table):
    return lambda slots: {s: table.get(s, 0.0) for s in slots}


def test_asks_where_candidates_disagree_most_and_skips_what_is_known():
    q = AdaptiveQuestioner(_scores({"hat": 0.5, "gender": 0.3, "upper_color": 0.9, "bag": 0.01}), per_round=2)
    assert q.choose(known={"upper_color": "red"}, asked=[]) == ["hat", "gender"]
    assert q.choose(known={"upper_color": "red"}, asked=["hat"]) == ["gender"]  # bag is below the floor


def test_photo_context_only_for_someone_who_knows_the_target_photo():
    table = {"background": 0.8, "action": 0.4, "gender": 0.2}
    without = AdaptiveQuestioner(_scores(table), per_round=3)
    assert without.choose({}, []) == ["gender"]
    with_user = AdaptiveQuestioner(_scores(table), per_round=3, include_context=True)
    assert with_user.choose({}, []) == ["background", "action", "gender"]
    assert set(CONTEXT_ORDER).isdisjoint(FALLBACK_ORDER)


def test_colour_questions_come_with_their_item():
    assert with_items(["hat_color", "gender"]) == ["gender", "hat", "hat_color"]


def test_answer_disagreement_is_the_entropy_of_what_the_candidates_say():
    import math

    from agents.questioner import answer_disagreement

    answers = [{"hat": ["cap", 0.9], "bag": ["none", 0.8]}, {"hat": ["none", 0.9], "bag": ["none", 0.7]},
               {"hat": [None, 0.2]}, {"hat": ["cap", 0.6]}]
    d = answer_disagreement(answers, ["hat", "bag", "gender"])
    # hat: cap, none, cap among the 3 of 4 that can tell; bag: all say none; gender: nobody asked
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) * 3 / 4
    assert d["hat"] == pytest.approx(expected) and d["bag"] == 0.0 and d["gender"] == 0.0
