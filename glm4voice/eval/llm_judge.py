"""The paper's judge-model score for open questions, through any OpenAI-compatible chat-completions endpoint.

GLM-4-Voice (arXiv 2412.02612, §5) rates spoken answers to general and knowledge questions with a strong text model
on a 1-10 scale ("ChatGPT score"), on the text answer and on an ASR transcript of the spoken answer. We do the same
with the endpoint the user configures (``--judge-url http://host/v1 --judge-model NAME``; the key, if any, from
``--judge-api-key-env``, default ``OPENAI_API_KEY``). The prompt below is ours (the paper does not publish one).
Standard library HTTP only; never used in CI (tests run it against a local fake server).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from glm4voice.errors import ConfigError, Glm4VoiceError

TIMEOUT_S = 60
MAX_RETRIES = 2
SCORE_RE = re.compile(r"(?i)score\s*[:=]?\s*(10|[1-9])\b")
SYSTEM_PROMPT = (
    "You are grading a voice assistant. You get a user's question, optionally a reference answer, and the "
    "assistant's answer (it may be an automatic transcript of speech, so ignore spelling and punctuation). "
    "Judge helpfulness, correctness and relevance. Reply with one line 'Score: N' where N is an integer from 1 "
    "(useless or wrong) to 10 (excellent), then at most one sentence of reason.")


class JudgeError(Glm4VoiceError):
    """The judge endpoint failed (unreachable, HTTP error, unexpected JSON)."""


def parse_score(content: str) -> int | None:
    """The 1-10 score in a judge reply ('Score: 7', 'score=10'), or a lone integer 1-10; None if absent."""
    m = SCORE_RE.search(content)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"\s*(10|[1-9])\s*(?:/\s*10)?\s*\.?\s*", content)
    return int(m.group(1)) if m else None


class ChatJudge:
    def __init__(self, url: str | None, model: str | None, *, api_key: str | None = None, timeout: float = TIMEOUT_S):
        if not url or not model:
            raise ConfigError("the judge_score suite needs an OpenAI-compatible endpoint: --judge-url "
                              "(e.g. http://127.0.0.1:8000/v1) and --judge-model")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout

    def messages(self, question: str, answer: str, reference: str | None) -> list[dict]:
        user = f"Question: {question}\n"
        if reference:
            user += f"Reference answer: {reference}\n"
        user += f"Assistant's answer: {answer or '(no answer)'}"
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def complete(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": 100})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for _ in range(MAX_RETRIES + 1):
            req = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = e
                if e.code < 500 and e.code != 429:
                    break  # a client error will not go away by retrying
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = e
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                raise JudgeError(f"judge endpoint {self.url} answered with unexpected JSON ({e!r})") from e
        raise JudgeError(f"judge endpoint {self.url} failed: {last}") from last

    def score(self, question: str, answer: str, reference: str | None = None) -> int | None:
        return parse_score(self.complete(self.messages(question, answer, reference)))
