import math

import pytest

from agents.inspector import agreement


def test_agreement_is_a_log_likelihood_ratio_fact_by_fact():
    answers = {"hat": ["cap", 0.9], "upper_color": ["red", 0.6], "gender": [None, 0.2], "background": ["park", 0.8]}
    known = {"hat": "cap", "upper_color": "blue", "gender": "male", "background": "park", "bag": "handbag"}
    a = agreement(answers, known, prior=0.3, floor=0.02, weights={"background": 0.5})
    # hat agrees, upper colour differs, gender "cannot tell" and bag unasked add nothing,
    # the photo's context counts half
    expected = math.log(0.9 / 0.3) + math.log(0.4 / 0.7) + 0.5 * math.log(0.8 / 0.3)
    assert a.score == pytest.approx(expected)
    assert a.agree == ["hat", "background"] and a.differ == ["upper_color"]
    assert a.match and a.confidence == pytest.approx(1 / (1 + math.exp(-expected)))


def test_a_sure_misreading_costs_a_bounded_amount_and_nothing_known_is_neutral():
    sure_wrong = agreement({"hat": ["cap", 1.0]}, {"hat": "none"}, prior=0.3, floor=0.02)
    assert sure_wrong.score == pytest.approx(math.log(0.02 / 0.7))
    assert not sure_wrong.match
    assert agreement({"hat": ["cap", 0.9]}, {}).score == 0.0
    with pytest.raises(ValueError):
        agreement({}, {}, prior=1.0)
