import numpy as np
import pytest

from eval.metrics import rank_metrics


def test_hand_computed_irra_metrics():
    # query 0 (pid 1): ranking g2(1) g0(2) g1(1) g3(3): matches at ranks 1 and 3
    # query 1 (pid 2): ranking g1(1) g3(3) g0(2) g2(1): match at rank 3
    gallery = np.array([2, 1, 1, 3])
    sim = np.array([[0.8, 0.5, 0.9, 0.1],
                    [0.3, 0.9, 0.1, 0.5]])
    m = rank_metrics(sim, np.array([1, 2]), gallery, ks=(1, 2, 3))
    assert m["R1"] == pytest.approx(50.0)
    assert m["R2"] == pytest.approx(50.0)
    assert m["R3"] == pytest.approx(100.0)
    ap0 = (1 / 1 + 2 / 3) / 2
    ap1 = 1 / 3
    assert m["mAP"] == pytest.approx((ap0 + ap1) / 2 * 100)
    inp0, inp1 = 2 / 3, 1 / 3
    assert m["mINP"] == pytest.approx((inp0 + inp1) / 2 * 100)
    assert m["num_queries"] == 2 and m["num_gallery"] == 4


def test_expected_ties_match_the_average_over_orders():
    # one query, four tied items, one of them the match: R1 = 1/4, R2 = 1/2
    sim = np.zeros((1, 4))
    m = rank_metrics(sim, np.array([5]), np.array([1, 5, 2, 3]), ks=(1, 2, 4), ties="expected")
    assert m["R1"] == pytest.approx(25.0)
    assert m["R2"] == pytest.approx(50.0)
    assert m["R4"] == pytest.approx(100.0)
    # expected position of the single match: (4 + 1) / 2 = 2.5
    assert m["mAP"] == pytest.approx(100 / 2.5)
    # two matches in a tie of three after one better item: R1 = 0 (a non-match is first), R2 = 1 - C(1,1)/C(3,1)
    sim = np.array([[2.0, 1.0, 1.0, 1.0]])
    m = rank_metrics(sim, np.array([9]), np.array([0, 9, 9, 4]), ks=(1, 2), ties="expected")
    assert m["R1"] == pytest.approx(0.0)
    assert m["R2"] == pytest.approx((1 - 1 / 3) * 100)


def test_expected_ties_agree_with_monte_carlo():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 3, size=(30, 40)).astype(float)
    q = rng.integers(0, 6, size=30)
    g = rng.integers(0, 6, size=40)
    exact = rank_metrics(sim, q, g, ties="expected")
    runs = [rank_metrics(sim + rng.random(sim.shape) * 1e-3, q, g) for _ in range(400)]
    for k in ("R1", "R5", "R10"):
        assert exact[k] == pytest.approx(np.mean([r[k] for r in runs]), abs=1.5)


def test_bad_shapes_and_queries_without_matches():
    with pytest.raises(ValueError, match="does not match"):
        rank_metrics(np.zeros((2, 3)), np.array([1]), np.array([1, 2, 3]))
    m = rank_metrics(np.array([[1.0, 0.0], [0.5, 0.2]]), np.array([1, 7]), np.array([1, 2]))
    assert m["num_skipped"] == 1 and m["R1"] == 100.0
