"""Chat MLLM backends: OpenAI-compatible server, LangChain chat model, local transformers VLM.

Nothing here reaches the network: the OpenAI backend talks to a real HTTP server started on
127.0.0.1 that behaves like vLLM serving Qwen2-VL (``tests/mllm_server.py``) and answers from
annotations; the LangChain
backend wraps langchain-core's fake chat models; the transformers backend loads a tiny, randomly
initialised Qwen2-VL built and saved by the test itself.
"""

from __future__ import annotations

import math
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.mllm_server import server_pool
from tools.attributes import SLOTS, phrase
from tools.mllm.base import Answer, ImageRef, MLLMError, Verdict
from tools.mllm.chat import (answer_value, contains_yes, group_values, parse_numbered, parse_yes_no, read_yes_no,
                             split_numbered, yes_probability)
from tools.mllm.parser import parse
from tools.mllm.protocols import load_protocol

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# -- test images -------------------------------------------------------------------------------

ANNOTATIONS = {
    "red-woman": {"gender": "female", "upper_type": "coat", "upper_color": "red", "hat": "none",
                  "backpack": "backpack", "backpack_color": "black"},
    "blue-man": {"gender": "male", "upper_type": "t-shirt", "upper_color": "blue", "hat": "cap",
                 "backpack": "none", "lower_type": "jeans"},
}
COLOURS = {"red-woman": (200, 30, 30), "blue-man": (30, 30, 200)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, ImageRef]:
    """Small solid-colour 32x64 JPEGs, one per annotated person."""
    folder = tmp_path_factory.mktemp("images")
    out = {}
    for name, rgb in COLOURS.items():
        path = folder / f"{name}.jpg"
        Image.new("RGB", (32, 64), rgb).save(path, "JPEG")
        out[name] = ImageRef(f"{name}.jpg", path)
    return out


# -- a vLLM-like server that answers from annotations -------------------------------------------

QUESTION_SLOT = {spec.question: name for name, spec in SLOTS.items()}
ICL = load_protocol("icl")
ICL_QUESTION = {q.text: q.slots for q in ICL.ask.questions}  # type: ignore[union-attr]


def identify(image: Image.Image) -> dict | None:
    """Which test person a received photo shows: the annotation whose colour is nearest the photo's
    mean (photos arrive resized and re-encoded, so bytes cannot identify them). None: nobody."""
    mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    name = min(COLOURS, key=lambda n: float(np.sum((mean - np.array(COLOURS[n])) ** 2)))
    return ANNOTATIONS[name]


def annotation_answer(body: dict, images: list) -> str:
    """What a perfect MLLM would say: verify from contradictions, ask from the annotation, merge by
    appending the facts."""
    user = [m for m in body["messages"] if m["role"] == "user"][-1]
    content = user["content"]
    if isinstance(content, str):  # text only: a merge request
        query = re.search(r'"(.*)"', content).group(1)
        facts = " ".join(re.findall(r"^(?:- |\d+\. )(.*)$", content, re.M))
        return f"{query.rstrip('.')}. {facts}"
    text = " ".join(b["text"] for b in content if b["type"] == "text")
    truth = identify(images[0])
    if "show a person" in text:
        return "Yes." if truth is not None else "No, there is no person in this photo."
    if truth is None:
        truth = {}
    if "yes or no" in text.lower():
        description = re.search(r'"(.*)"', text).group(1)
        stated = parse(description).constraints
        clash = any(slot in truth and truth[slot] != value for slot, value in stated.items())
        return "No." if clash else "Yes."
    lines = []
    for n, question in re.findall(r"^(\d+)\. (.*?\?)", text, re.M):
        if question in QUESTION_SLOT:  # ours: one slot, answer with its value
            value = truth.get(QUESTION_SLOT[question])
            lines.append(f"{n}. {value.capitalize() if value else 'Not visible'}")
    for n, question in re.findall(r"^(\d+)\. (.*)$", text, re.M):
        if question in ICL_QUESTION:  # icl: free text covering the question's slots, on one line
            said = [phrase(s, truth[s], truth) for s in ICL_QUESTION[question] if s in truth]
            lines.append(f"{n}. {' '.join(said) if said else 'I cannot see that.'}")
    return ("\n" if lines and "Options" in text else " ").join(lines)


@pytest.fixture
def serve():
    """Start vLLM-like servers answering from the annotations; all are shut down after the test."""
    with server_pool(annotation_answer) as start:
        yield start


def _openai(url: str, **kw):
    from tools.mllm.openai_backend import OpenAIMLLM

    kw.setdefault("model", "fake-vlm")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("max_retries", 0)
    return OpenAIMLLM(base_url=url, api_key="test", **kw)


# -- parsing helpers ---------------------------------------------------------------------------

# The yes/no rule (tools.mllm.chat.read_yes_no): the first decisive phrase wins; negated
# affirmations are no, negated doubts are yes; uncertainty is unusable.
YES_NO_TABLE = [
    ("Yes.", "yes"), ("no", "no"), ("YES, the description fits.", "yes"), ("The answer is no", "no"),
    ("**No**", "no"), ("<think>the coat looks red, so yes</think>\nNo.", "no"), ("Answer: yes", "yes"),
    ("Not yes.", "no"), ("No doubt, yes!", "yes"), ("Yes, although the shoes are not visible.", "yes"),
    ("I don't think so.", "no"), ("I do not think so", "no"), ("I think so.", "yes"), ("Absolutely not.", "no"),
    ("Absolutely!", "yes"), ("Definitely not the same person.", "no"), ("Not really.", "no"),
    ("Not at all.", "no"), ("No, the coat is blue.", "no"), ("Of course.", "yes"), ("Of course not.", "no"),
    ("Correct.", "yes"), ("Incorrect.", "no"), ("True", "yes"), ("False", "no"), ("No way.", "no"),
    ("Nope", "no"), ("Yep", "yes"), ("Yeah, that's her.", "yes"), ("Without a doubt.", "yes"),
    ("It does not match the description.", "no"), ("It doesn't fit.", "no"), ("The description fits.", "yes"),
    ("It matches.", "yes"), ("I wouldn't say so.", "no"), ("Never.", "no"), ("Unfortunately, no.", "no"),
    ("Sure.", "yes"), ("That's right.", "yes"), ("The person is not wearing a red coat, so no.", "no"),
    ("Not the person described.", "no"), ("Yes. There is no hat, but everything else fits.", "yes"),
    ("There is no person in this image.", "no-person"), ("The image does not show a person.", "no-person"),
    ("No. There is no person wearing red.", "no"),
]


@pytest.mark.parametrize("reply,expected", YES_NO_TABLE)
def test_read_yes_no(reply, expected):
    assert read_yes_no(reply) == expected
    assert parse_yes_no(reply) is (expected == "yes")


@pytest.mark.parametrize("reply,kind", [
    ("I can't help with that.", "refused"), ("I cannot", "refused"), ("banana", "unparseable"),
    ("Hard to say from this angle.", "unparseable"), ("Not sure.", "unparseable"), ("Maybe.", "unparseable"),
    ("I can't tell from this photo.", "unparseable"), ("It is not clear.", "unparseable"),
    ("Yes and no.", "unparseable"), ("I'm sorry, but I can't identify people.", "refused"),
])
def test_parse_yes_no_failures(reply, kind):
    with pytest.raises(MLLMError) as e:
        parse_yes_no(reply)
    assert e.value.kind == kind


@pytest.mark.parametrize("reply,expected", [
    ("Yes.", True), ("yes", True), ("I would say YES", True), ("No.", False), ("Not yes.", True),
    ("No doubt about it.", False), ("Her eyes are blue.", False), ("", False), ("Yesterday", False),
])
def test_contains_yes_is_icls_rule(reply, expected):
    # ICL's rule counts the word, negations included ("Not yes." is a yes there, by design)
    assert contains_yes(reply) is expected


def test_split_numbered():
    one_line = "1. The person is a woman. 2. Long black hair. 3. A red coat, size 2. 4. Not visible."
    assert split_numbered(one_line, 4) == {1: "The person is a woman.", 2: "Long black hair.",
                                           3: "A red coat, size 2.", 4: "Not visible."}
    assert split_numbered("1) male\n2) short hair\n\n3) jeans", 3) == {1: "male", 2: "short hair", 3: "jeans"}
    assert split_numbered("1. male 3. jeans", 3) == {1: "male", 3: "jeans"}  # a skipped number
    assert split_numbered("A woman.", 1) == {1: "A woman."}
    assert split_numbered("no numbers at all", 2) == {}


def test_yes_probability():
    ln = math.log
    tokens = [("Yes", [("Yes", ln(0.6)), (" yes", ln(0.2)), ("No", ln(0.15)), ("no", ln(0.03)), ("The", ln(0.02))]),
              (".", [(".", ln(0.9))])]
    p, reading = yes_probability(tokens)
    assert reading == "yes" and p == pytest.approx(0.8 / 0.98)
    # the answer token may come after a preamble; byte-level markers and case are ignored
    tokens = [("The", [("The", ln(0.9))]), ("Ġanswer", [("Ġanswer", ln(0.9))]), ("Ġis", [("Ġis", ln(0.9))]),
              ("ĠNO", [("ĠNO", ln(0.7)), ("ĠYes", ln(0.1)), ("Ġno", ln(0.1))])]
    p, reading = yes_probability(tokens)
    assert reading == "no" and p == pytest.approx(0.1 / 0.9)
    assert yes_probability([("Maybe", [("Maybe", ln(0.9)), ("Yes", ln(0.05))])]) is None
    assert yes_probability([]) is None


@pytest.mark.parametrize("slots,answer,values", [
    (("backpack", "backpack_color", "bag", "bag_color"), "Yes, a black backpack.",
     {"backpack": "backpack", "backpack_color": "black", "bag": None, "bag_color": None}),
    (("backpack", "backpack_color", "bag", "bag_color"), "No.",
     {"backpack": "none", "backpack_color": None, "bag": "none", "bag_color": None}),
    (("backpack", "backpack_color", "bag", "bag_color"), "No, but she carries a black handbag.",
     {"backpack": None, "backpack_color": None, "bag": "handbag", "bag_color": "black"}),
    (("hair_length", "hair_color"), "Short black hair.", {"hair_length": "short", "hair_color": "black"}),
    (("hat", "hat_color"), "I cannot see that.", {"hat": None, "hat_color": None}),
    (("upper_type", "upper_color", "sleeve_length"), "A red T-shirt with short sleeves.",
     {"upper_type": "t-shirt", "upper_color": "red", "sleeve_length": "short"}),
    (("action",), "He is walking along the street.", {"action": "walking"}),
])
def test_group_values(slots, answer, values):
    assert group_values(slots, answer) == values


@pytest.mark.parametrize("slot,answer,value", [
    ("upper_color", "Red.", "red"), ("upper_color", "navy blue", "navy"), ("upper_color", "gray", "grey"),
    ("upper_color", "not visible", None), ("upper_color", "Can't tell", None), ("upper_color", "unknown", None),
    ("upper_color", "What colour is the upper-body garment? Answer: red", "red"),
    ("hat", "No", "none"), ("hat", "yes, a baseball cap", "cap"), ("backpack", "Yes", "backpack"),
    ("other_people", "no", "none"), ("hat_color", "no hat", None), ("shoes_type", "trainers", "sneakers"),
    ("upper_type", "A T-shirt", "t-shirt"), ("upper_type", "shirt", "shirt"), ("gender", "Woman", "female"),
    ("sleeve_length", "short sleeves", "short"), ("lower_length", "short, above the knees", "short"),
    ("hair_color", "dark brown", "brown"), ("background", "on a street", "street"), ("upper_color", "banana", None),
])
def test_answer_value(slot, answer, value):
    assert answer_value(slot, answer) == value


def test_parse_numbered():
    assert parse_numbered("1. red\n2) no\n**3.** Not visible\nextra words", 3) == {1: "red", 2: "no", 3: "Not visible"}
    assert parse_numbered("red\nno", 2) == {1: "red", 2: "no"}  # numbering dropped, count matches
    assert parse_numbered("Red", 1) == {1: "Red"}
    assert parse_numbered("a\nb\nc", 2) == {}


# -- OpenAI-compatible server ------------------------------------------------------------------

def test_openai_verify_yes_no_counts_and_cache(serve, images):
    server = serve()
    mllm = _openai(server.url)
    woman, man = images["red-woman"], images["blue-man"]
    yes = mllm.verify(woman, "A woman in a red coat with a backpack.")
    no = mllm.verify(man, "A woman in a red coat with a backpack.")
    assert isinstance(yes, Verdict) and yes.match is True and not yes.cached
    assert no.match is False
    # the server's log-probabilities give each answer 0.8: p(yes) = 0.8 for the yes, 0.2 for the no
    assert yes.confidence == pytest.approx(0.8) and no.confidence == pytest.approx(0.8)
    assert yes.confidence_from == no.confidence_from == "logprobs" and "p(yes) 0.800" in yes.reason
    # a yes is followed by one person-presence question; a no needs none
    assert mllm.stats.calls["verify"] == 2 and server.count("verify") == 2
    assert mllm.stats.calls["person"] == 1 and server.count("person") == 1
    again = mllm.verify(woman, "A woman in a red coat with a backpack.")
    assert again.match is True and again.cached
    assert server.chat_requests == 3 and mllm.stats.cache_hits == 1 and mllm.stats.calls["verify"] == 2
    # the request was a well-formed chat completion with the image as a data URI, asking for logprobs
    body = server.requests[0].body
    assert body["model"] == "fake-vlm" and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    blocks = body["messages"][-1]["content"]
    assert [b["type"] for b in blocks] == ["image_url", "text"]
    assert blocks[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_openai_ask_returns_annotated_values(serve, images):
    server = serve()
    mllm = _openai(server.url)
    slots = ["gender", "upper_color", "hat", "backpack", "shoes_color"]
    answers = mllm.ask(images["red-woman"], slots)
    assert all(isinstance(a, Answer) for a in answers)
    assert {a.slot: a.value for a in answers} == {
        "gender": "female", "upper_color": "red", "hat": "none", "backpack": "backpack", "shoes_color": None}
    # one person question, then one call for all questions
    assert server.count("ask") == 1 and server.count("person") == 1 and mllm.stats.calls["ask"] == 1
    # the prompt listed the allowed values so the model answers in the vocabulary
    prompt = [r for r in server.requests if r.purpose == "ask"][0].text
    assert "1. Is the person a man or a woman? Options: male, female." in prompt
    again = mllm.ask(images["red-woman"], ["upper_color", "hat"])
    assert [a.value for a in again] == ["red", "none"] and server.chat_requests == 2
    man = {a.slot: a.value for a in mllm.ask(images["blue-man"], ["upper_type", "hat", "backpack"])}
    assert man == {"upper_type": "t-shirt", "hat": "cap", "backpack": "none"}


def test_openai_merge_and_model_discovery(serve, images, monkeypatch):
    server = serve()
    monkeypatch.delenv("THI_MLLM_MODEL", raising=False)
    mllm = _openai(server.url, model=None)  # asks the server which model it serves
    facts = [Answer("hat", "cap"), Answer("hat_color", "black"), Answer("shoes_color", None)]
    merged = mllm.merge("a man in a blue t-shirt", facts)
    assert merged.startswith("a man in a blue t-shirt") and "black cap" in merged
    assert mllm.model == "Qwen/Qwen2-VL-7B-Instruct" and server.model_requests == 1
    assert mllm.stats.calls["merge"] == 1
    assert isinstance(server.requests[0].body["messages"][-1]["content"], str)  # text only, no image
    # over the budget: the grammar merge within it
    short = mllm.merge("a man in a blue t-shirt", facts, budget=12, count_tokens=lambda t: len(t.split()))
    assert len(short.split()) <= 12 and short.startswith("a man in a blue t-shirt")


def test_openai_verify_many_is_concurrent(serve, images):
    server = serve("slow", delay=0.2)
    mllm = _openai(server.url, max_concurrency=3)
    texts = ["a woman", "a man", "a red coat", "a blue t-shirt", "a cap", "a backpack"]
    pairs = [(images["red-woman"], t) for t in texts]
    verdicts = mllm.verify_many(pairs)
    assert [v.match for v in verdicts] == [True, False, True, False, False, True]
    assert 2 <= server.max_in_flight <= 3
    assert mllm.stats.calls["verify"] == 6 and server.count("verify") == 6
    assert server.count("person") == 1  # asked once for the photo, though three yes came at once
    assert all(v.cached for v in mllm.verify_many(pairs[:2])) and server.count("verify") == 6
    repeated = mllm.verify_many([(images["blue-man"], "a man in a cap")] * 3)  # asked once, not three times
    assert [v.match for v in repeated] == [True] * 3 and server.count("verify") == 7


def test_openai_timeout(serve, images):
    server = serve("slow", delay=3.0)
    mllm = _openai(server.url, timeout=0.5, max_retries=0)
    with pytest.raises(MLLMError) as e:
        mllm.verify(images["red-woman"], "a woman")
    assert e.value.kind == "timeout"
    # a failed call is a failure, not a call
    assert mllm.stats.failures == 1 and mllm.stats.calls["verify"] == 0
    assert mllm.stats.failures_by_kind == {"timeout": 1}


def test_openai_garbage_is_unparseable(serve, images):
    mllm = _openai(serve(responder=lambda body, ims: "banana").url)
    with pytest.raises(MLLMError) as e:
        mllm.verify(images["red-woman"], "a woman")
    assert e.value.kind == "unparseable"
    with pytest.raises(MLLMError) as e:
        mllm.ask(images["red-woman"], ["gender", "hat"])
    assert e.value.kind == "unparseable"
    # a useless merge answer falls back to the grammar merge instead of failing
    assert mllm.merge("a woman", [Answer("hat", "cap")]) == "a woman. The person wears a cap."


def test_openai_retries_server_error(serve, images):
    server = serve()
    server.queue("error")
    mllm = _openai(server.url, max_retries=2)
    assert mllm.verify(images["red-woman"], "a woman in a red coat").match is True
    assert server.count("verify") == 2  # the 500, then the retry


def test_openai_server_error_without_retries(serve, images):
    server = serve("error")
    mllm = _openai(server.url, max_retries=0)
    with pytest.raises(MLLMError) as e:
        mllm.verify(images["red-woman"], "a woman")
    assert e.value.kind == "error" and "500" in str(e.value) and "the GPU caught fire" in str(e.value)
    assert mllm.unavailable is None  # the server answered: the breaker stays closed


def test_openai_unreachable(images):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mllm = _openai(f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=2.0)
    with pytest.raises(MLLMError) as e:
        mllm.verify(images["red-woman"], "a woman")
    assert e.value.kind == "unreachable"


def test_openai_env_defaults(monkeypatch):
    from tools.mllm.openai_backend import OpenAIMLLM

    monkeypatch.setenv("THI_MLLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("THI_MLLM_MODEL", "qwen2-vl")
    monkeypatch.delenv("THI_MLLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    mllm = OpenAIMLLM()
    assert (mllm.base_url, mllm.model, mllm.client.api_key) == ("http://127.0.0.1:9/v1", "qwen2-vl", "EMPTY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert OpenAIMLLM().client.api_key == "sk-openai"
    monkeypatch.setenv("THI_MLLM_API_KEY", "sk-thi")
    assert OpenAIMLLM().client.api_key == "sk-thi"


# -- LangChain ---------------------------------------------------------------------------------

def _recording_model(responses: list[str], error: Exception | None = None):
    """A fake chat model that records the messages it is given (and may raise ``error``)."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    class Recording(FakeListChatModel):
        seen: list = []
        fail: object = None

        def _call(self, messages, *args, **kwargs):
            self.seen.append(messages)
            if self.fail is not None:
                raise self.fail
            return super()._call(messages, *args, **kwargs)

    return Recording(responses=responses, seen=[], fail=error)


def test_langchain_verify_and_image_block(images):
    from langchain_core.messages import HumanMessage, SystemMessage
    from tools.mllm.langchain_backend import LangChainMLLM

    model = _recording_model(["Yes", "Yes", "No."])  # verify, the person question after a yes, verify
    mllm = LangChainMLLM(model)
    assert mllm.verify(images["red-woman"], "a woman in a red coat").match is True
    assert mllm.verify(images["blue-man"], "a woman in a red coat").match is False
    assert len(model.seen) == 3 and "show a person" in model.seen[1][-1].content[-1]["text"]
    system, human = model.seen[0]
    assert isinstance(system, SystemMessage) and isinstance(human, HumanMessage)
    kinds = [b["type"] for b in human.content]
    assert "image_url" in kinds and "text" in kinds
    image = next(b for b in human.content if b["type"] == "image_url")
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert mllm.stats.calls["verify"] == 2


def test_langchain_ask_maps_numbered_lines(images):
    from tools.mllm.langchain_backend import LangChainMLLM

    mllm = LangChainMLLM(_recording_model(["Yes.", "1. Female\n2. dark red\n3. no\n4. I can't tell"]))
    answers = mllm.ask(images["red-woman"], ["gender", "upper_color", "hat", "shoes_type"])
    assert [a.value for a in answers] == ["female", "red", "none", None]
    assert answers[1].text == "dark red"


def test_langchain_list_content_reply(images):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from tools.mllm.langchain_backend import LangChainMLLM

    reply = AIMessage(content=[{"type": "text", "text": "The answer is "}, {"type": "text", "text": "yes."}])
    mllm = LangChainMLLM(GenericFakeChatModel(messages=iter([reply, AIMessage(content="Yes")])))
    assert mllm.verify(images["red-woman"], "a woman").match is True


@pytest.mark.parametrize("error,kind", [(RuntimeError("model exploded"), "error"), (TimeoutError("slow"), "timeout"),
                                        (ConnectionError("refused"), "unreachable")])
def test_langchain_errors(images, error, kind):
    from tools.mllm.langchain_backend import LangChainMLLM

    mllm = LangChainMLLM(_recording_model(["Yes"], error=error))
    with pytest.raises(MLLMError) as e:
        mllm.verify(images["red-woman"], "a woman")
    assert e.value.kind == kind and mllm.stats.failures == 1


def test_langchain_refusal(images):
    from tools.mllm.langchain_backend import LangChainMLLM

    mllm = LangChainMLLM(_recording_model(["I'm sorry, I can't help with identifying people."]))
    with pytest.raises(MLLMError) as e:
        mllm.verify(images["red-woman"], "a woman")
    assert e.value.kind == "refused"
    assert mllm.merge("a woman", [Answer("hat", "cap")]) == "a woman. The person wears a cap."


# -- transformers: a tiny random Qwen2-VL built here -------------------------------------------

# "yes" is token 0, so a model whose output layer is zeroed (all logits equal) always says "yes"
VOCAB = ["yes", "no", "[UNK]", "1.", "2.", "3.", "red", "blue", "female", "male", "none", "not", "visible",
         "the", "person", "a", "is", "in", "coat", "system", "user", "assistant"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A Qwen2-VL with a 1-layer 32-wide text model, a 1-block vision tower and a word-level
    tokenizer, saved with its processor: about 40k parameters."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = tokenizer.convert_tokens_to_ids
    pixels = dict(min_pixels=28 * 28, max_pixels=56 * 56 * 2, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _vision_calls(mllm) -> list:
    """Record each forward pass of the model's vision tower (proof that the image went in)."""
    calls: list = []
    visual = next(m for name, m in mllm.model.named_modules() if name.endswith("visual"))
    visual.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    return calls


def test_transformers_random_model_runs_on_image(tiny_vlm_dir, images):
    from tools.mllm.transformers_backend import TransformersMLLM

    mllm = TransformersMLLM(tiny_vlm_dir, max_new_tokens=6)
    assert mllm.device.type in ("cpu", "cuda")
    calls = _vision_calls(mllm)
    for run in (lambda: mllm.verify(images["red-woman"], "a woman in a red coat"),
                lambda: mllm.ask(images["red-woman"], ["gender", "upper_color"])):
        try:  # random weights say random words: a typed answer or "unparseable" are both right
            result = run()
            assert isinstance(result, Verdict) or all(isinstance(a, Answer) for a in result)
        except MLLMError as e:
            assert e.kind == "unparseable"
    # one image through the tower per request (verify, ask, and a person question when a yes came)
    requests = mllm.stats.total_calls + mllm.stats.failures
    assert len(calls) == requests and 2 <= requests <= 3 and all(shape[0] > 0 for shape in calls)


def test_transformers_rigged_model_says_yes(tiny_vlm_dir, images):
    import torch
    from tools.mllm.transformers_backend import TransformersMLLM

    mllm = TransformersMLLM(tiny_vlm_dir, max_new_tokens=3)
    with torch.no_grad():
        mllm.model.get_output_embeddings().weight.zero_()  # all logits equal: greedy picks token 0, "yes"
    calls = _vision_calls(mllm)
    verdict = mllm.verify(images["blue-man"], "a man in a blue t-shirt")
    assert verdict.match is True and verdict.reason.startswith("yes")
    # all logits equal: "yes" and "no" (one token each in this vocabulary) are equally likely
    assert verdict.confidence == pytest.approx(0.5) and verdict.confidence_from == "logprobs"
    assert [a.value for a in mllm.ask(images["blue-man"], ["backpack"])] == ["backpack"]  # "yes" -> present
    assert len(calls) == 3  # verify, the person question after its yes (cached for ask), ask


def test_transformers_generation_stops_at_the_deadline(tiny_vlm_dir, images):
    from tools.mllm.base import dialogue_deadline
    from tools.mllm.transformers_backend import TransformersMLLM

    mllm = TransformersMLLM(tiny_vlm_dir, max_new_tokens=3, timeout=7.0)
    seen: list[dict] = []
    generate = mllm.model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return generate(*args, **kwargs)

    mllm.model.generate = recording
    for text in ("a woman", "a man"):
        try:
            mllm.verify(images["red-woman"], text)
        except MLLMError as e:
            assert e.kind == "unparseable"
    with dialogue_deadline(2.0):
        try:
            mllm.verify(images["blue-man"], "a man")
        except MLLMError as e:
            assert e.kind == "unparseable"
    assert 0 < seen[0]["max_time"] <= 7.0 and 0 < seen[-1]["max_time"] <= 2.0  # transformers' MaxTimeCriteria
    with dialogue_deadline(0.0), pytest.raises(MLLMError) as e:
        mllm.verify(images["blue-man"], "a person")
    assert e.value.kind == "deadline"


def test_transformers_missing_or_bad_folder(tmp_path):
    from tools.mllm.transformers_backend import TransformersMLLM

    with pytest.raises(MLLMError, match="not found") as e:
        TransformersMLLM(tmp_path / "nowhere")
    assert e.value.kind == "load"
    (tmp_path / "empty").mkdir()
    with pytest.raises(MLLMError, match="config.json"):
        TransformersMLLM(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "not-a-model"}')
    with pytest.raises(MLLMError, match="cannot load") as e:
        TransformersMLLM(tmp_path / "broken")
    assert "\n" not in str(e.value)
