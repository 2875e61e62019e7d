"""`stream=true` on /v1/audio/*: the transcript as OpenAI's `transcript.text.*` events over SSE.

The events (openai-python's `types/audio/transcription_text_*_event.py`), one `data:` line each, no
`event:` line (OpenAI's client would take one for an event of its own):
- `transcript.text.delta` `{type, delta[, segment_id][, logprobs]}`: the text of each chunk as it is ready, in
  chunk order (a chunk that finishes before those ahead of it is held until they are in), fed by the
  job's progress events; with `diarized_json`, one per speaker segment once the job is done (speakers
  are known only then), after that segment's `transcript.text.segment` `{type, id, start, end, speaker,
  text}`;
- `transcript.text.done` `{type, text}`; then `data: [DONE]`.
The deltas joined are the text of `done`, which is the text the same request gets unstreamed (a
progress event lost on the way is made up from the result). A failure after the stream began is an
event `{"error": {message, type, code}}` (the client raises it as APIError), and the stream ends.
`: ping` comments keep a quiet stream open (sse-starlette's, every 15 s).

A client that goes away stops nothing: its job runs to the end and its result is dropped here (the
upload expires with its TTL), as for an unstreamed request whose client left.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from loguru import logger

from worker.errors import BrokerUnavailable
from worker.gateway.openai_api import ApiError, broker_lost, diarized_segments, failed, logprobs, timed_out
from worker.messages import ProgressEvent, Result

STREAMED_FORMATS = ("json", "text", "diarized_json")


class InOrder:
    """Chunk texts (and their tokens' logprobs) in, in any order; deltas out, in chunk order, each (but
    the first) after a space."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[str, list | None]] = {}
        self._next = 0
        self.sent = ""

    def add(self, index: int, text: str, logprobs: list | None = None) -> list[tuple[str, list | None]]:
        if index < self._next or index in self._held:
            return []  # a chunk already in (a redelivered chunk task reports again)
        self._held[index] = (text, logprobs)
        deltas = []
        while self._next in self._held:
            text, logprobs = self._held.pop(self._next)
            self._next += 1
            if text:
                deltas.append((self.append(text), logprobs))
        return deltas

    def append(self, text: str) -> str:
        """The delta that sends `text` next."""
        delta = f" {text}" if self.sent else text
        self.sent += delta
        return delta

    def rest(self, text: str) -> str:
        """What the whole text adds to the deltas sent (chunks whose progress never came). The chunks'
        texts joined are the transcript's (worker.pipeline.joined) when it is not diarized; only those
        are sent live."""
        if not text.startswith(self.sent):
            logger.warning("Streamed text is not the start of the transcript; the done event has it all")
            return ""
        rest, self.sent = text[len(self.sent) :], text
        return rest


def _data(document: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(document)}


def _delta(text: str, segment_id: str | None = None, logprobs: list | None = None) -> dict[str, str]:
    document: dict[str, Any] = {"type": "transcript.text.delta", "delta": text}
    if segment_id is not None:
        document["segment_id"] = segment_id
    if logprobs is not None:
        document["logprobs"] = logprobs
    return _data(document)


def _error(error: ApiError) -> dict[str, str]:
    return _data({"error": {"message": str(error), "type": error.type, "code": error.code}})


async def transcript_events(
    job_id: str,
    progress: asyncio.Queue,
    waiting: asyncio.Future,
    response_format: str,
    timeout_seconds: float,
    *,
    live: bool,
) -> AsyncIterator[dict[str, str]]:
    """The stream of one job: deltas while its chunks finish (`live`: a job not diarized, whose text is
    its chunks' in order), then the result's events."""
    order = InOrder()
    deadline = time.monotonic() + timeout_seconds
    while not waiting.done():
        getting = asyncio.ensure_future(progress.get())
        await asyncio.wait({getting, waiting}, timeout=deadline - time.monotonic(), return_when="FIRST_COMPLETED")
        if not getting.done():
            getting.cancel()
            if not waiting.done():  # the deadline
                yield _error(timed_out(job_id, timeout_seconds))
                return
            continue
        event = ProgressEvent.model_validate_json(getting.result()[1])
        if live and event.chunk_index is not None and event.text is not None:
            asked = None if event.logprobs is None else [p.model_dump() for p in event.logprobs]
            for delta, tokens in order.add(event.chunk_index, event.text, asked):
                yield _delta(delta, logprobs=tokens)
    try:
        result: Result = waiting.result()
    except BrokerUnavailable as exc:
        yield _error(broker_lost(exc))
        return
    if result.status != "completed":
        yield _error(failed(result))
        return
    for event in _final(result, response_format, order):
        yield event
    yield {"data": "[DONE]"}


def _final(result: Result, response_format: str, order: InOrder) -> list[dict[str, str]]:
    text = result.text or ""
    events = []
    if response_format == "diarized_json":
        for segment in diarized_segments(result):
            events.append(_data(segment))
            if segment["text"]:
                events.append(_delta(order.append(segment["text"]), segment["id"]))
    rest = order.rest(text)
    if rest:
        events.append(_delta(rest))
    return [*events, _data({"type": "transcript.text.done", "text": text, **logprobs(result)})]
