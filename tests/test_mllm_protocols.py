"""MLLM protocol presets (tools.mllm.protocols): ``ours`` as it always was, ``icl`` as ICL's THI
talks to its MLLM, custom JSON files; the ``icl`` protocol end to end against the vLLM-like server."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.mllm_server import QwenLikeServer
from tools.attributes import PAPER_QUESTIONNAIRE, phrase
from tools.mllm import make_mllm
from tools.mllm.base import Answer, ImageRef, MLLMError
from tools.mllm.protocols import PRESETS, Protocol, ProtocolError, load_protocol

# The ``ours`` prompts, byte for byte: the preset must send exactly these (its results, and the
# offline MLLM's comparisons with chat servers, were measured with them).
OURS_BEFORE = {
    "system": "You look at photos of pedestrians taken by street cameras and answer questions about the "
              "appearance of the main person in the photo. Answer only from what the photo shows, briefly, "
              "in exactly the format asked for.",
    "verify": 'Description: "{text}"\n\nDoes this description fit the person in the photo? Details the photo '
              'cannot show do not count against it; answer "no" only if something visible contradicts the '
              'description.\nAnswer with one word: yes or no.',
    "ask": 'Answer these questions about the person in the photo.\n\n{questions}\n\nReply with one line per '
           'question, in the same order, in the form "<number>. <answer>". Answer each question with one of the '
           'options listed after it ("none" means the person has no such thing), or with "not visible" when the '
           'photo does not show it. No other text.',
    "question": "{n}. {question} Options: {options}.",
    "merge_system": "You edit short descriptions of pedestrians for a person-search engine.",
    "merge": 'Description: "{query}"\n\nNew facts about the same person:\n{facts}\n\nWrite one fluent description of '
             'this person: keep the description above word for word at the start, then continue it with the new '
             'facts, joining facts about the same item ("a black cap") and leaving out what the description already '
             'says. Do not invent anything else.{limit} Reply with the description only.',
    "limit": " Use at most {words} words.",
}


def test_ours_sends_the_prompts_it_always_sent():
    ours = load_protocol("ours")
    assert load_protocol() is ours and ours.name == "ours"
    assert (ours.system_prompt, ours.verify.prompt, ours.ask.prompt, ours.ask.question, ours.merge.system_prompt,
            ours.merge.prompt, ours.merge.limit) == (
        OURS_BEFORE["system"], OURS_BEFORE["verify"], OURS_BEFORE["ask"], OURS_BEFORE["question"],
        OURS_BEFORE["merge_system"], OURS_BEFORE["merge"], OURS_BEFORE["limit"])
    assert ours.temperature == 0.0 and ours.ask.questions == "slots" and ours.merge.checked
    assert ours.question_lines(["gender", "hat"]) == (
        "1. Is the person a man or a woman? Options: male, female.\n"
        "2. Is the person wearing a hat? Options: none, cap, brimmed hat, beanie.")


def test_icl_preset_is_icls_protocol():
    icl = load_protocol("icl")
    assert icl.temperature == 0.01 and icl.verify.yes_rule == "contains" and not icl.logprobs
    assert icl.image.max_pixels == 50_176 and icl.image.factor == 28
    assert icl.system_prompt is None and not icl.merge.checked and icl.person_check.mode == "off"
    assert icl.ask.answers == "text" and icl.ask.split == "numbers"
    # fifteen questions, grouped as the paper's questionnaire
    assert [q.slots for q in icl.ask.questions] == list(PAPER_QUESTIONNAIRE)
    assert len(icl.ask.questions) == 15
    assert icl.questions_for(["hat_color", "gender"]) == [
        (icl.ask.questions[0].text, ("gender",)), (icl.ask.questions[10].text, ("hat", "hat_color"))]


def test_custom_protocol_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text("\ufeff" + json.dumps({  # with the byte-order mark Windows editors write
        "name": "icl-negation", "extends": "icl", "temperature": 0.2,
        "verify": {"yes_rule": "negation"}, "image": {"max_pixels": 100_352}}), encoding="utf-8")
    mine = load_protocol(path)
    icl = load_protocol("icl")
    assert mine.name == "icl-negation" and mine.temperature == 0.2 and mine.verify.yes_rule == "negation"
    assert mine.verify.prompt == icl.verify.prompt and mine.image.factor == 28 and mine.image.max_pixels == 100_352
    assert mine.digest != icl.digest
    assert load_protocol(str(path)) == mine and load_protocol(mine) is mine


@pytest.mark.parametrize("content,says", [
    ({"extends": "icl", "verify": {"prompt": "Does it match?"}}, "verify.prompt must contain {text}"),
    ({"extends": "ours", "ask": {"prompt": "{questions} {colour}"}}, "unknown fields {colour}"),
    ({"extends": "icl", "ask": {"questions": [{"text": "Hat?", "slots": ["headgear"]}]}}, "unknown attribute slots"),
    ({"extends": "icl", "ask": {"questions": [{"text": "Hat?", "slots": ["hat"]}]}}, "leave slots without a question"),
    ({"extends": "ours", "temperature": 5}, "temperature"),
    ({"extends": "ours", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"extends": "theirs"}, '"extends" must name a shipped preset'),
    ({"extends": "ours", "image": {"max_pixels": 100}}, "max_pixels 100 is below"),
    ({"name": "bare"}, "verify: Field required"),
])
def test_bad_protocol_files_say_what_is_wrong(tmp_path, content, says):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ProtocolError) as e:
        load_protocol(path)
    assert says in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_protocol_names_and_files_that_do_not_exist(tmp_path):
    with pytest.raises(ProtocolError, match="unknown MLLM protocol 'theirs'"):
        load_protocol("theirs")
    with pytest.raises(ProtocolError, match="not found"):
        load_protocol(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"name": ')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        load_protocol(tmp_path / "broken.json")
    assert set(PRESETS) == {"ours", "icl"} and all(isinstance(load_protocol(p), Protocol) for p in PRESETS)


def test_make_mllm_protocol_selection():
    icl = make_mllm("openai", protocol="icl", base_url="http://127.0.0.1:9/v1", model="m")
    ours = make_mllm("openai", base_url="http://127.0.0.1:9/v1", model="m")
    assert icl.protocol.name == "icl" and icl.temperature == 0.01 and icl.image_limits.max_pixels == 50_176
    assert ours.fingerprint == "openai" and icl.fingerprint.startswith("openai[protocol=icl:")
    limited = make_mllm("openai", protocol="icl", image_limits={"max_pixels": 25_088}, base_url="http://x/v1", model="m")
    assert limited.image_limits.max_pixels == 25_088 and limited.image_limits.factor == 28  # per backend over preset
    with pytest.raises(ValueError, match="no prompts"):
        make_mllm("offline", protocol="icl")
    with pytest.raises(ProtocolError):
        make_mllm("openai", protocol="theirs", base_url="http://127.0.0.1:9/v1")


# -- icl end to end --------------------------------------------------------------------------------

TRUTH = {"gender": "female", "hair_length": "long", "hair_color": "black", "upper_type": "coat",
         "upper_color": "red", "lower_type": "jeans", "lower_color": "blue", "backpack": "backpack",
         "backpack_color": "black", "hat": "none", "action": "walking"}
ICL_QUESTIONS = {q.text: q.slots for q in load_protocol("icl").ask.questions}  # type: ignore[union-attr]


def icl_model(merge_reply: str = "A young woman with long black hair in a red coat and blue jeans, with a black backpack."):
    """A model answering ICL's prompts about TRUTH: 'Yes, ...' when nothing contradicts, free text
    answers on one line, and a fixed aggregation."""
    def answer(body: dict, images: list) -> str:
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        if isinstance(user, str):
            return merge_reply
        text = " ".join(b["text"] for b in user if b["type"] == "text")
        if "yes or no" in text.lower():
            return "Yes, the person in the image matches." if "red coat" in text else "No."
        parts = []
        for n, question in re.findall(r"^(\d+)\. (.*)$", text, re.M):
            said = [phrase(s, TRUTH[s], TRUTH) for s in ICL_QUESTIONS[question] if s in TRUTH]
            parts.append(f"{n}. {' '.join(said) if said else 'I cannot see that in the image.'}")
        return " ".join(parts)
    return answer


@pytest.fixture
def photo(tmp_path) -> ImageRef:
    path = tmp_path / "0001.jpg"
    Image.fromarray(np.full((384, 128, 3), 180, dtype=np.uint8)).save(path)  # a CUHK-PEDES-sized crop
    return ImageRef("0001.jpg", path)


@pytest.fixture
def server():
    s = QwenLikeServer(icl_model())
    yield s
    s.close()


def test_icl_verify_request_and_rule(server, photo):
    mllm = make_mllm("openai", protocol="icl", base_url=server.url, api_key="t", model="qwen2-vl", max_retries=0)
    yes = mllm.verify(photo, "a woman in a red coat")
    no = mllm.verify(photo, "a man in a green jacket")
    assert yes.match is True and no.match is False and server.count("verify") == 2 and server.count("person") == 0
    body = server.requests[0].body
    assert body["temperature"] == 0.01 and "logprobs" not in body
    assert [m["role"] for m in body["messages"]] == ["user"]  # no system prompt
    w, h, _ = server.requests[0].images[0]
    # 128x384 is resized as qwen_vl_utils does: multiples of 28, within 50,176 pixels
    assert (w, h) == (112, 364) and w * h <= 50_176
    assert mllm.image_sent("0001.jpg")["original"] == [128, 384]


def test_icl_yes_rule_differs_from_ours_on_negations(photo):
    def says(reply):
        s = QwenLikeServer(lambda body, images: reply)
        s.mode = "answer"
        return s

    s = says("Not yes.")
    try:
        icl = make_mllm("openai", protocol="icl", base_url=s.url, model="m", max_retries=0)
        ours = make_mllm("openai", protocol="ours", base_url=s.url, model="m", max_retries=0)
        assert icl.verify(photo, "a woman").match is True  # contains the word: ICL counts it as yes
        assert ours.verify(photo, "a woman").match is False
    finally:
        s.close()


def test_icl_ask_keeps_free_text_and_maps_what_it_can(server, photo):
    mllm = make_mllm("openai", protocol="icl", base_url=server.url, model="m", max_retries=0)
    slots = [s for group in PAPER_QUESTIONNAIRE for s in group]  # what the paper policy asks
    answers = mllm.ask(photo, slots)
    assert server.count("ask") == 1 and [a.slot for a in answers] == slots
    prompt = server.requests[0].text
    assert len(re.findall(r"^\d+\. ", prompt, re.M)) == 15
    by_slot = {a.slot: a for a in answers}
    assert by_slot["hair_length"].text == by_slot["hair_color"].text == "The person has long hair. The person has black hair."
    assert by_slot["hair_length"].question == ICL_QUESTIONS_BY_SLOT["hair_length"]
    values = {a.slot: a.value for a in answers if a.value is not None}
    assert values == {k: v for k, v in TRUTH.items()}  # every fact stated is read, nothing else
    assert by_slot["scarf"].value is None and by_slot["scarf"].text == "I cannot see that in the image."
    # a later question on a slot already answered by a grouped question costs nothing
    assert [a.value for a in mllm.ask(photo, ["backpack_color"])] == ["black"] and server.count("ask") == 1


ICL_QUESTIONS_BY_SLOT = {s: text for text, slots in ICL_QUESTIONS.items() for s in slots}


def test_icl_merge_uses_the_texts_and_is_not_checked(server, photo):
    mllm = make_mllm("openai", protocol="icl", base_url=server.url, model="m", max_retries=0)
    answers = mllm.ask(photo, ["hair_length", "hair_color", "upper_color", "backpack"])
    merged = mllm.merge("a lady in red", answers)
    # the aggregation is the new query as it is, although it drops the query's own words
    assert merged == "A young woman with long black hair in a red coat and blue jeans, with a black backpack."
    prompt = server.requests[-1].body["messages"][-1]["content"]
    assert '"a lady in red"' in prompt
    assert "1. Describe the person's hair: its style, length and colour. The person has long hair. The person has black hair." in prompt
    assert prompt.count("The person has long hair.") == 1  # one line per question, not per slot
    assert [m["role"] for m in server.requests[-1].body["messages"]] == ["user"]
    # facts known only as values are phrased
    assert mllm.merge("a lady in red", [Answer("hat", "cap")]).startswith("A young woman")
    assert "- " not in server.requests[-1].body["messages"][-1]["content"]
    assert "1. Is the person wearing a hat? The person wears a cap." in server.requests[-1].body["messages"][-1]["content"]


def test_icl_merge_with_an_empty_reply_fails_the_step(photo):
    s = QwenLikeServer(icl_model(merge_reply="   "))
    try:
        mllm = make_mllm("openai", protocol="icl", base_url=s.url, model="m", max_retries=0)
        with pytest.raises(MLLMError) as e:
            mllm.merge("a lady in red", [Answer("hat", "cap")])
        assert e.value.kind == "unparseable"
    finally:
        s.close()


def test_protocol_applies_to_the_langchain_backend(photo):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from tools.mllm.langchain_backend import LangChainMLLM

    mllm = LangChainMLLM(FakeListChatModel(responses=["Not yes."]), protocol="icl")
    assert mllm.verify(photo, "a woman").match is True and mllm.stats.calls["person"] == 0
    assert mllm.image_sent("0001.jpg")["width"] * mllm.image_sent("0001.jpg")["height"] <= 50_176
