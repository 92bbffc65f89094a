from agents.rewriter import Rewriter
from tools.mllm.base import Answer, grammar_merge

QUERY = "A man in a red coat."


def words(text: str) -> int:
    return len(text.split())


def test_facts_are_appended_and_absences_count_as_added():
    rw = Rewriter(grammar_merge, words, budget=40)
    facts = [Answer("hand_object", "none", 1.0, "none"), Answer("hat", "cap", 1.0, "cap")]
    out = rw(QUERY, facts)
    assert out.text.startswith(QUERY) and out.text != QUERY
    assert set(out.added) == {"hand_object", "hat"} and not out.truncated


def test_the_budget_drops_facts_never_the_users_words():
    rw = Rewriter(grammar_merge, words, budget=words(QUERY) + 4)
    facts = [Answer(s, v, 1.0, v) for s, v in (("hat", "cap"), ("backpack", "backpack"), ("scarf", "scarf"),
                                                ("eyewear", "sunglasses"))]
    out = rw(QUERY, facts)
    assert out.text.startswith(QUERY) and words(out.text) <= words(QUERY) + 4
    assert 0 < len(out.added) < len(facts)


def test_a_query_over_the_budget_is_kept_whole_and_its_cut_part_reported():
    long_query = "A man in a red coat " * 30
    rw = Rewriter(grammar_merge, words, budget=20, truncated_part=lambda t: " ".join(t.split()[20:]))
    out = rw(long_query, [Answer("hat", "cap", 1.0, "cap")])
    assert out.text == long_query and out.added == [] and out.truncated
