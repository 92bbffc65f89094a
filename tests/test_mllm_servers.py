"""Chat backends against a server that behaves like vLLM serving Qwen2-VL (tests/mllm_server.py):
image limits, deadlines, the circuit breaker, log-probabilities, bad replies, person presence.

The deadline tests use deadlines of 1-2 s and bound how long a call may take by the deadline plus
a few seconds (the contract), not how fast anything runs.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.mllm_server import ClosingServer, server_pool
from tools.mllm import make_mllm
from tools.mllm.base import Answer, ImageRef, MLLMError, dialogue_deadline
from tools.mllm.chat import NO_PERSON, CircuitBreaker
from tools.mllm.images import load_rgb

GREEN = (30, 200, 30)  # the colour of the photo without a person


def _photo(folder, name: str, size: tuple[int, int], rgb=(200, 30, 30), noise: int = 0, **save) -> ImageRef:
    array = np.empty((size[1], size[0], 3), dtype=np.uint8)
    array[:] = rgb
    if noise:
        rng = np.random.default_rng(0)
        array = np.clip(array.astype(np.int16) + rng.integers(-noise, noise + 1, array.shape), 0, 255).astype(np.uint8)
    path = folder / name
    Image.fromarray(array).save(path, **save)
    return ImageRef(name, path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, ImageRef]:
    folder = tmp_path_factory.mktemp("photos")
    return {
        "person": _photo(folder, "person.jpg", (64, 128)),
        "other": _photo(folder, "other.jpg", (60, 120), (30, 30, 200)),
        "tiny": _photo(folder, "tiny.jpg", (10, 10)),
        # a 12-megapixel camera photo: about 5 MB as a JPEG, 7 MB as a data URL, 15,000 Qwen2-VL tokens
        "huge": _photo(folder, "huge.jpg", (3000, 4000), noise=40, quality=90),
        "empty-street": _photo(folder, "empty.jpg", (64, 128), GREEN),
    }


def is_green(image: Image.Image) -> bool:
    r, g, b = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return g > 150 and r < 100


def simple_answer(body: dict, images: list) -> str:
    """A model that sees a person in every photo but the green one and says yes to every description."""
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(user, str):
        return "A woman in a red coat. She wears a cap."
    text = " ".join(b["text"] for b in user if b["type"] == "text")
    if "show a person" in text:
        return "No, there is no person in this photo." if is_green(images[0]) else "Yes."
    if "yes or no" in text.lower():
        return "Yes."
    return "1. Female\n2. Red"


@pytest.fixture
def serve():
    with server_pool(simple_answer) as start:
        yield start


def _openai(url: str, **kw):
    kw.setdefault("model", "qwen2-vl")
    kw.setdefault("timeout", 10.0)
    kw.setdefault("max_retries", 0)
    return make_mllm("openai", base_url=url, api_key="test", **kw)


def _free_port_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


# -- images ------------------------------------------------------------------------------------

def test_small_and_huge_photos_get_verdicts(serve, photos):
    server = serve()
    mllm = _openai(server.url)
    for name in ("tiny", "huge"):
        verdict = mllm.verify(photos[name], "a woman in a red coat")
        assert verdict.match is True, name
        sent = mllm.image_sent(photos[name].id)
        w, h, nbytes = [r for r in server.requests if r.purpose == "verify"][-1].images[0]
        assert (sent["width"], sent["height"], sent["bytes"]) == (w, h, nbytes)
        assert min(w, h) >= 28 and w * h <= 1_003_520 and nbytes <= 1_000_000
    assert mllm.image_sent(photos["huge"].id)["original"] == [3000, 4000]
    huge = mllm.image_sent(photos["huge"].id)
    assert abs(huge["width"] / huge["height"] - 0.75) < 0.01  # the aspect ratio is kept
    assert mllm.stats.failures == 0


def test_unresized_photos_are_what_the_server_refuses(serve, photos):
    """The same photos sent as they are: the server refuses both (the reason for resizing)."""
    server = serve()
    raw = _openai(server.url, image_limits={"min_side": 1, "min_pixels": 1, "max_pixels": 20_000_000,
                                            "max_bytes": 30_000_000, "max_aspect": 1000})
    for name, says in (("tiny", "must be larger than factor:28"), ("huge", "")):
        with pytest.raises(MLLMError) as e:
            raw.verify(photos[name], "a woman")
        assert e.value.kind == "rejected-image" and says in str(e.value)


def test_a_rejected_photo_is_sent_once(serve, photos):
    server = serve()
    mllm = _openai(server.url, image_limits={"min_side": 1, "min_pixels": 1})  # sends the 10x10 as it is
    with pytest.raises(MLLMError) as first:
        mllm.verify(photos["tiny"], "a woman in a red coat")
    assert first.value.kind == "rejected-image" and "HTTP 400" in str(first.value)
    for call in (lambda: mllm.verify(photos["tiny"], "someone else"), lambda: mllm.ask(photos["tiny"], ["gender"])):
        with pytest.raises(MLLMError) as again:
            call()
        assert again.value.kind == "rejected-image" and "not sent again" in str(again.value)
        assert str(first.value) in str(again.value)
    assert server.chat_requests == 1  # the photo went out once
    assert mllm.rejected_images() == {"tiny.jpg": str(first.value)}
    assert mllm.stats.failures_by_kind == {"rejected-image": 3} and mllm.stats.total_calls == 0
    assert mllm.unavailable is None and mllm.verify(photos["person"], "a woman").match is True


def test_payload_cap(serve, photos):
    """A server with a small body limit (HTTP 413) refuses the photo at the default byte cap and
    accepts it once the backend's cap fits under its limit."""
    server = serve(max_body=150_000)
    default = _openai(server.url)
    with pytest.raises(MLLMError) as e:
        default.verify(photos["huge"], "a woman")
    assert e.value.kind == "rejected-image" and "413" in str(e.value)
    assert default.image_sent("huge.jpg")["bytes"] > 150_000 * 3 // 4  # over the limit once in base64
    capped = _openai(server.url, image_limits={"max_bytes": 80_000})
    assert capped.verify(photos["huge"], "a woman").match is True
    assert capped.image_sent("huge.jpg")["bytes"] <= 80_000


def test_photos_are_sent_upright_and_in_8_bits(serve, tmp_path):
    received = []

    def keep(body, images):
        received.extend(images)
        return simple_answer(body, images)

    server = serve(responder=keep)
    mllm = _openai(server.url)
    # upright 60x120: red top half, blue bottom half; stored rotated with EXIF orientation 6
    upright = np.zeros((120, 60, 3), dtype=np.uint8)
    upright[:60] = (220, 20, 20)
    upright[60:] = (20, 20, 220)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    # 16-bit grey at half scale (32768 of 65535): 8-bit grey 128, not white
    Image.fromarray(np.full((120, 60), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    mllm.verify(ImageRef("rotated", tmp_path / "rotated.jpg"), "a woman")
    mllm.verify(ImageRef("grey16", tmp_path / "grey16.png"), "a woman")
    rotated, grey = received[0], received[2]  # each verify is followed by its person question
    assert rotated.height > rotated.width
    top, bottom = np.asarray(rotated)[5, rotated.width // 2], np.asarray(rotated)[-5, rotated.width // 2]
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    assert abs(float(np.asarray(grey).mean()) - 128) < 3
    assert abs(float(np.asarray(load_rgb(tmp_path / "grey16.png")).mean()) - 128) < 1


# -- no server, dead server, circuit breaker -------------------------------------------------------

def test_no_server_fails_fast_and_says_so_once(photos):
    mllm = _openai(_free_port_url(), max_retries=2, timeout=5.0)
    t0 = time.monotonic()
    with pytest.raises(MLLMError) as first:
        mllm.verify(photos["person"], "a woman")
    assert first.value.kind == "unreachable" and "cannot reach http://127.0.0.1:" in str(first.value)
    kinds = []
    for n in range(20):
        with pytest.raises(MLLMError) as e:
            mllm.verify(photos["person"], f"a woman, take {n}")
        kinds.append(e.value.kind)
    assert time.monotonic() - t0 < 5.0 + 5.0  # the timeout plus a few seconds, for 21 calls
    assert kinds == ["unavailable"] * 20
    assert mllm.unavailable is first.value  # what a CLI prints in one line before exiting non-zero
    assert "\n" not in str(mllm.unavailable)
    assert mllm.stats.total_calls == 0 and mllm.stats.failures == 21
    assert mllm.stats.failures_by_kind == {"unreachable": 1, "unavailable": 20}


def test_preflight_checks_the_server_and_its_model(serve):
    server = serve()
    assert _openai(server.url, model=None).preflight() is None
    with pytest.raises(MLLMError) as e:
        _openai(server.url, model="qwen2-vl-72b").preflight()
    assert e.value.kind == "error" and "does not serve 'qwen2-vl-72b' (it serves Qwen/Qwen2-VL-7B-Instruct)" in str(e.value)
    found = _openai(server.url, model=None)
    found.preflight()
    assert found.model == "Qwen/Qwen2-VL-7B-Instruct"
    down = _openai(_free_port_url())
    with pytest.raises(MLLMError) as e:
        down.preflight()
    assert e.value.kind == "unreachable" and down.unavailable is e.value


def test_breaker_stops_connecting_to_a_dead_server(photos):
    dead = ClosingServer()  # accepts and hangs up: the server process is gone behind a proxy
    try:
        mllm = _openai(dead.url, max_retries=1)
        with pytest.raises(MLLMError) as e:
            mllm.verify(photos["person"], "a woman")
        assert e.value.kind == "unreachable"
        tried = dead.connections
        assert tried == 2  # the attempt and one retry
        for _ in range(10):
            with pytest.raises(MLLMError):
                mllm.ask(photos["person"], ["gender"])
        assert dead.connections == tried
    finally:
        dead.close()


def test_circuit_breaker_cooldown_lets_one_call_try():
    breaker = CircuitBreaker(cooldown=0.0)
    breaker.before_call()
    breaker.record(MLLMError("cannot reach x", kind="unreachable"))
    assert breaker.error is not None and breaker.error.kind == "unreachable"
    breaker.before_call()  # the cool-down has passed: this call tries...
    with pytest.raises(MLLMError) as e:  # ...and only this one while it is in flight
        breaker.before_call()
    assert e.value.kind == "unavailable" and "cannot reach x" in str(e.value)
    breaker.record(None)  # it worked: closed
    assert breaker.error is None
    breaker.before_call()
    stays = CircuitBreaker(cooldown=None)
    stays.record(MLLMError("slow", kind="timeout"))
    for _ in range(3):
        with pytest.raises(MLLMError):
            stays.before_call()
    stays.record(MLLMError("the dialogue's time is spent", kind="deadline"))  # says nothing about the server
    assert stays.error.kind == "timeout"


# -- deadlines -----------------------------------------------------------------------------------

def _wait_for(predicate, seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("mode", ["trickle", "silent"])
def test_trickling_or_silent_server_ends_within_the_deadline(serve, photos, mode):
    server = serve(mode, trickle_interval=0.2)
    mllm = _openai(server.url, timeout=1.5, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(MLLMError) as e:
        mllm.verify(photos["person"], "a woman")
    elapsed = time.monotonic() - t0
    assert e.value.kind == "timeout" and "within 1.5 s" in str(e.value)
    assert elapsed < 1.5 + 3.0
    # the connection was closed at the deadline: the server saw the client go
    assert _wait_for(lambda: server.requests[0].disconnected_at is not None)
    assert server.requests[0].disconnected_at - server.requests[0].at < 1.5 + 3.0
    assert mllm.unavailable is e.value  # a server that never answers stops the backend
    with pytest.raises(MLLMError) as again:
        mllm.verify(photos["other"], "a man")
    assert again.value.kind == "unavailable" and server.chat_requests == 1


def test_dialogue_deadline_bounds_all_calls_of_a_dialogue(serve, photos):
    server = serve("slow", delay=0.8, responder=lambda body, images: "No.")
    mllm = _openai(server.url, timeout=30.0)
    t0 = time.monotonic()
    with mllm.deadline(1.2) as d:
        assert mllm.verify(photos["person"], "a man").match is False  # 0.8 s of 1.2
        with pytest.raises(MLLMError) as cut:  # in flight when the deadline passes
            mllm.verify(photos["other"], "a man")
        assert cut.value.kind == "deadline" and time.monotonic() - t0 < 1.2 + 3.0
        with pytest.raises(MLLMError) as spent:  # after it: not sent
            mllm.ask(photos["other"], ["gender"])
        assert spent.value.kind == "deadline" and d.expired
    assert server.chat_requests == 2
    with mllm.deadline(d):  # the same dialogue, resumed: its time is still spent
        with pytest.raises(MLLMError) as resumed:
            mllm.verify(photos["person"], "a woman")
        assert resumed.value.kind == "deadline"
    assert server.chat_requests == 2
    assert mllm.unavailable is None  # the dialogue ran out of time; the server is fine
    assert mllm.verify(photos["other"], "a man").match is False  # the next dialogue has its own time


def test_concurrent_dialogues_do_not_share_a_deadline(serve, photos):
    server = serve("slow", delay=0.8, responder=lambda body, images: "No.")
    mllm = _openai(server.url, timeout=30.0)
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def dialogue(name: str, seconds: float | None, image: ImageRef) -> None:
        start.wait()
        with dialogue_deadline(seconds):
            try:
                results[name] = mllm.verify(image, f"dialogue {name}").match
            except MLLMError as e:
                results[name] = e.kind

    threads = [threading.Thread(target=dialogue, args=("short", 0.3, photos["person"])),
               threading.Thread(target=dialogue, args=("long", None, photos["other"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == {"short": "deadline", "long": False}


def test_dialogue_deadline_reaches_langgraph_nodes_and_verify_many_workers(serve, photos):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    server = serve()
    mllm = _openai(server.url, max_concurrency=3)

    class State(TypedDict, total=False):
        kinds: list

    def node(state: State) -> State:
        out = mllm.verify_many([(photos["person"], "a"), (photos["other"], "b")], return_exceptions=True)
        return {"kinds": [getattr(r, "kind", "verdict") for r in out]}

    graph = StateGraph(State)
    graph.add_node("check", node)
    graph.add_edge(START, "check")
    graph.add_edge("check", END)
    app = graph.compile()
    with dialogue_deadline(0.0):  # spent before it starts
        assert app.invoke({})["kinds"] == ["deadline", "deadline"]
    assert server.chat_requests == 0
    assert app.invoke({})["kinds"] == ["verdict", "verdict"]


def test_rate_limit_waits_for_retry_after(serve, photos):
    server = serve(retry_after=1.0, responder=lambda body, images: "No.")
    server.queue("rate-limit")
    mllm = _openai(server.url, max_retries=2)
    assert mllm.verify(photos["person"], "a man").match is False
    first, second = server.requests
    assert first.mode == "rate-limit" and second.at - first.at >= 0.9  # the server's Retry-After, honoured


def test_retry_after_longer_than_the_deadline_ends_at_the_deadline(serve, photos):
    server = serve("rate-limit", retry_after=30.0)
    mllm = _openai(server.url, max_retries=2, timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(MLLMError) as e:
        mllm.verify(photos["person"], "a man")
    assert e.value.kind == "timeout" and time.monotonic() - t0 < 1.5 + 3.0


# -- log-probabilities ------------------------------------------------------------------------------

def test_p_yes_from_logprobs_when_offered(serve, photos):
    server = serve(p_answer=0.9)
    mllm = _openai(server.url)
    verdict = mllm.verify(photos["person"], "a woman in a red coat")
    assert verdict.match is True and verdict.confidence_from == "logprobs"
    assert verdict.confidence == pytest.approx(0.9)  # (0.9*0.98) / (0.9*0.98 + 0.1*0.98)
    no = _openai(serve(p_answer=0.7, responder=lambda body, images: "No.").url)
    v = no.verify(photos["person"], "a man")
    assert v.match is False and v.confidence == pytest.approx(0.7)  # p(yes) 0.3


def test_fixed_confidence_when_logprobs_are_refused_or_useless(serve, photos):
    server = serve("no-logprobs-param")
    mllm = _openai(server.url)
    verdict = mllm.verify(photos["person"], "a woman in a red coat")
    assert verdict.match is True and verdict.confidence == 1.0 and verdict.confidence_from == "fixed"
    assert server.requests[0].body.get("logprobs") is True and "logprobs" not in server.requests[1].body
    mllm.verify(photos["other"], "a man")
    assert all("logprobs" not in r.body for r in server.requests[1:])  # not asked again
    # the first yes/no token says no, the reply says yes: the log-probabilities are not used
    mixed = _openai(serve(responder=lambda body, images: "No doubt, yes!").url)
    v = mixed.verify(photos["person"], "a woman")
    assert v.match is True and v.confidence == 1.0 and "differs" in v.reason
    # a protocol that does not ask for them says so
    icl = _openai(serve().url, protocol="icl").verify(photos["person"], "a woman")
    assert icl.confidence == 1.0 and icl.confidence_from == "fixed" and "not requested" in icl.reason


# -- bad replies, hostile text ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["malformed", "empty", "null-message", "no-choices"])
def test_bad_bodies_are_one_skipped_step(serve, photos, mode):
    server = serve(mode)
    mllm = _openai(server.url)
    with pytest.raises(MLLMError) as e:
        mllm.verify(photos["person"], "a woman")
    assert e.value.kind == "bad-reply" and "\n" not in str(e.value)
    with pytest.raises(MLLMError) as e:
        mllm.ask(photos["person"], ["gender"])
    assert e.value.kind == "bad-reply"
    # the merge falls back to the grammar merge; the backend keeps working
    assert mllm.merge("a woman", [Answer("hat", "cap")]) == "a woman. The person wears a cap."
    assert mllm.unavailable is None and mllm.stats.failures == 3


def test_escape_sequences_never_leave_the_backend(serve, photos):
    evil = "\x1b[2J\x1b]0;pwned\x07"

    def hostile(body, images):
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        text = user if isinstance(user, str) else " ".join(b["text"] for b in user if b["type"] == "text")
        if "show a person" in text or "yes or no" in text.lower():
            return f"Yes{evil}."
        return f"1. Fe{evil}male\n2. {evil}Red"

    server = serve(responder=hostile)
    mllm = _openai(server.url)
    verdict = mllm.verify(photos["person"], "a woman")
    answers = mllm.ask(photos["person"], ["gender", "upper_color"])
    assert verdict.match is True and verdict.reason.startswith("Yes.")
    assert [a.value for a in answers] == ["female", "red"]
    for text in [verdict.reason] + [a.text for a in answers]:
        assert "\x1b" not in text and "\x07" not in text
    rude = serve("error")
    rude.responder = hostile
    with pytest.raises(MLLMError) as e:
        _openai(rude.url).verify(photos["person"], "a woman")
    assert e.value.kind == "error" and "\x1b" not in str(e.value)


# -- person presence ---------------------------------------------------------------------------------

def test_no_person_in_the_photo_abstains(serve, photos):
    server = serve()
    mllm = _openai(server.url)
    verdict = mllm.verify(photos["empty-street"], "a woman in a red coat")  # the model says yes anyway
    assert verdict.match is None and verdict.confidence == 0.0 and verdict.reason.startswith(NO_PERSON)
    answers = mllm.ask(photos["empty-street"], ["gender", "upper_color"])
    assert [(a.value, a.text) for a in answers] == [(None, NO_PERSON), (None, NO_PERSON)]
    assert server.count("person") == 1 and server.count("ask") == 0  # asked once, nothing invented
    # a verification reply that itself says nobody is there abstains without another question
    says = _openai(serve(responder=lambda body, images: "There is no person in this image.").url)
    v = says.verify(photos["person"], "a woman")
    assert v.match is None and says.stats.calls["person"] == 0
