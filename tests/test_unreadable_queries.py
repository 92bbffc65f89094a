"""Descriptions THI cannot read: no words, another script, another language whose words a
dictionary takes for English (German "Hose", "roter"; "Jacke" one letter from "jacket"), English
naming nothing the parser knows. No anchor, no added facts, one line saying why."""

import pytest

from graphs.config import THIConfig
from graphs.server import live_context
from graphs.thi import run
from graphs.thi.cli import main as thi_main
from tools.mllm.parser import parse

from .test_thi import ScriptedMLLM, setup  # noqa: F401 - the module fixture

NOT_ENGLISH = [
    "Ein Mann mit roter Jacke und schwarzer Hose",  # "Jacke" would be corrected to "jacket"
    "Eine Frau trägt einen roten Mantel und eine schwarze Tasche",
    "Un homme avec une veste rouge et un sac noir",
    "Una mujer con chaqueta roja y pantalones negros",
    "Een man met een rode jas en een zwarte broek",
    "一个穿红色夹克的男人",
    "Мужчина в красной куртке",
]
NO_WORDS = ["???", "  ...  ", "12345", "🙂🙂"]


@pytest.mark.parametrize("text", NOT_ENGLISH)
def test_other_languages_are_read_as_nothing_and_say_so(text):
    reading = parse(text)
    assert reading.constraints == {} and reading.uncertain == {} and not reading.readable
    assert reading.problem.startswith("the description does not look like English")


@pytest.mark.parametrize("text", NO_WORDS)
def test_texts_without_words_are_read_as_nothing_and_say_so(text):
    reading = parse(text)
    assert not reading.readable and reading.problem.startswith("the description has no words")


@pytest.mark.parametrize("text, slots", [
    ("A man in a red jacket with a sac on his back", {"gender", "upper_type", "upper_color"}),  # one French word
    ("A woman with a die-cast toy, a red coat and la-di-da shoes", {"gender", "upper_type", "upper_color"}),
    ("The man de-icing his car wears a blue hoodie", {"gender", "upper_type", "upper_color"}),
])
def test_english_with_a_foreign_looking_word_is_still_read(text, slots):
    assert slots <= set(parse(text).constraints)


@pytest.mark.parametrize("text", [NOT_ENGLISH[0], NO_WORDS[0], "a person"])
def test_thi_with_the_offline_parser_keeps_the_ranking_and_asks_nothing(setup, text):  # noqa: F811
    mllm = ScriptedMLLM([True, True, True])
    mllm.parses_descriptions = True  # like the offline and oracle backends
    state = run(text, live_context(setup["index"], mllm, THIConfig(policy="adaptive")))
    assert state["rounds"] == [] and state["anchor"] is None and not state["facts"]
    assert state["ranking"] == state["original_ranking"] and state["current_query"] == text
    assert mllm.stats.total_calls == 0
    assert state["stopped_because"].endswith("THI asks nothing and keeps the original ranking")


def test_a_chat_backend_still_gets_english_without_known_attributes_but_not_german(setup):  # noqa: F811
    cfg = THIConfig(policy="paper", xi=-1.0)
    english = run("a person who looks lost", live_context(setup["index"], ScriptedMLLM([True]), cfg))
    assert len(english["rounds"]) == 1 and english["anchor"] is not None  # a real MLLM may read it
    german = ScriptedMLLM([True])
    state = run(NOT_ENGLISH[0], live_context(setup["index"], german, cfg))
    assert state["rounds"] == [] and state["anchor"] is None and german.stats.total_calls == 0
    assert "does not look like English" in state["stopped_because"]


def test_with_a_user_the_dialogue_goes_on_since_the_answers_carry_the_facts(setup):  # noqa: F811
    from agents.users import SimulatedUser

    idx = setup["index"]
    target = idx.ids[0]
    user = SimulatedUser(ScriptedMLLM([]), idx.image(target))
    state = run("a person", live_context(idx, ScriptedMLLM([True, True]), THIConfig(policy="adaptive"), user=user))
    assert state["rounds"] and state["rounds"][0]["inspected"]
    assert "asks nothing" not in (state["stopped_because"] or "")


def test_the_cli_says_it_in_one_line(setup, capsys):  # noqa: F811
    args = ["--query", NOT_ENGLISH[2], "--gallery", str(setup["world"]), "--model", setup["model"],
            "--data-dir", str(setup["db"]), "--quiet"]
    assert thi_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    stops = [line for line in out if line.startswith("stopped:")]
    assert stops == ["stopped: the description does not look like English (the offline parser reads English "
                     "only): THI asks nothing and keeps the original ranking"]
    assert not any(line.startswith("-- round") for line in out)
