"""The web UI in a real browser: headless Debian Chromium driven by Playwright (the system browser, nothing
downloaded), with a fake microphone that plays a wav file. Hands-free mode: the page streams the microphone, the
server detects the end of the question, the answer's text appears in the transcript and its audio is played.

Needs `scripts/install_browser_deps.sh` (apt chromium + pip playwright); skipped with the reason otherwise.
"""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from glm4voice.audio import load_audio
from glm4voice.pipeline.voice_chat import VoiceChat
from glm4voice.server.config import ServerConfig
from tests.conftest import reference_root
from tests.test_pipeline_fixtures import ANSWER_TEXT, build_models
from tests.test_server_fixtures import live_server

CHROMIUM = os.environ.get("GLM4VOICE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: run scripts/install_browser_deps.sh "
                                                         "(apt chromium) or set GLM4VOICE_CHROMIUM")
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 300_000  # one spoken answer on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = build_models(tmp_path_factory.mktemp("models"))
    chat = VoiceChat.from_pretrained(model=root, max_sessions=2, max_seq=1024)
    with live_server(chat, ServerConfig(max_sessions=2)) as url:
        yield url


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory):
    """What the fake microphone plays (in a loop): 0.5 s silence, ~3 s of speech, 30 s silence. The long pause keeps
    the loop's next question from barging in on the answer when a loaded machine makes the answer slow."""
    speech = load_audio(reference_root() / "tokenizer" / "inputs" / "a01_16k_mono_3s.wav").numpy()
    x = np.concatenate([np.zeros(8000), speech, np.zeros(30 * 16000)]).astype(np.float32)
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(mic_wav):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
            "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def test_hands_free_spoken_question_shows_text_and_plays_audio(browser, server):
    ctx = browser.new_context(viewport=PHONE, permissions=["microphone"])
    page = ctx.new_page()
    console = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(server + "/")
    page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
    # phone-sized screen: nothing overflows horizontally, the controls are visible
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.check('input[name="mode"][value="handsfree"]')
    page.click("#handsfree")
    page.wait_for_function("window.glm4voice.turns.length >= 1", timeout=TIMEOUT_MS)
    page.wait_for_function("window.glm4voice.played > 22050", timeout=60_000)  # > 1 s of answer audio played
    state = page.evaluate("({turns: window.glm4voice.turns, errors: window.glm4voice.errors,"
                          " audioBytes: window.glm4voice.audioBytes, underruns: window.glm4voice.underruns})")
    turn = state["turns"][0]
    assert turn["text"] == ANSWER_TEXT and turn["reason"] == "stop_token", (state, console)
    assert state["errors"] == [] and state["audioBytes"] > 0
    assert "time_to_first_audio" in turn["timings"]
    user = page.locator(".turn.user").first.inner_text()
    assert "s of speech" in user
    bot = page.locator(".turn.assistant").first.inner_text()
    assert ANSWER_TEXT in bot and "first audio" in bot  # the latency breakdown is shown under the answer
    ctx.close()


def test_typed_message_and_error_display(browser, server):
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(server + "/")
    page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
    page.click("#settings summary")  # open the settings panel
    page.select_option("#output", "text")
    page.fill("#text", "What is the capital of France?")
    page.click("#send")
    page.wait_for_function("window.glm4voice.turns.length >= 1", timeout=TIMEOUT_MS)
    assert page.evaluate("window.glm4voice.turns[0].text") == ANSWER_TEXT
    # a protocol error is shown to the user
    page.evaluate("window.glm4voice.ws.send('{not json')")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "bad_message" in page.inner_text("#error")
    ctx.close()
