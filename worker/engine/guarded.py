"""The hallucination guard around one backend's decodes: its filters on every call, and its retries.

The guard's rules and checks live in `worker.engine.guard`; this applies them to a decode, which the
transcriber hands over with everything but the beam size and the context already bound.
"""

import dataclasses
from collections.abc import Callable

from loguru import logger

from worker.engine.backends import WhisperBackend
from worker.engine.guard import GuardOptions, assess, filter_segments, needs_retry, preferred
from worker.engine.segments import Transcription


class GuardedDecoding:
    """Decodes through the guard for one backend: `guard` is what it applies (its retry turned off on a
    backend whose beam search is not repeatable), `beam_size` the first decode's."""

    def __init__(self, backend: WhisperBackend, guard: GuardOptions, *, beam_size: int) -> None:
        self._backend = backend
        self.guard = _guard_for(backend, guard)
        self.beam_size = beam_size

    def __call__(self, decode: Callable[..., Transcription], n_samples: int, *, sampled: bool) -> Transcription:
        """`decode` once, again as the guard's retries if it failed (the best one kept); its speech only.

        A sampled call (temperature > 0) is not decoded again: its caller chose text that varies.
        """
        result = decode(beam_size=self.beam_size)
        if self.guard.retry and not sampled:
            result = self._retried(decode, result, n_samples)
        return dataclasses.replace(result, segments=filter_segments(result.segments, self.guard))

    def _retried(self, decode: Callable[..., Transcription], first: Transcription, n_samples: int) -> Transcription:
        """`first`, or the best of its retries while the best so far needs one (`guard.preferred`).

        Every retry has the full 30 s encoder context, the one whisper was trained on: measured on 3 s
        windows of ../shared/audio, every loop tiny.en-f16 made with a fitted context was gone with
        the full one, and most were still there with beam search on the fitted one (docs/performance.md).
        A retry that would repeat the first decode exactly (same beam size, full context already) is skipped.
        """
        best, check = first, assess(first.segments, self._backend.eot, self.guard)
        for beam_size in self.guard.retry_beam_sizes:
            if not needs_retry(check, self.guard):
                break
            if beam_size == self.beam_size and not self._backend.fitted(n_samples):
                continue
            retry = decode(beam_size=beam_size, full_context=True)
            again = assess(retry.segments, self._backend.eot, self.guard)
            kept = preferred(check, again, self.guard)
            logger.info(
                "A decode looked like a failure ({}); {} over the full context gave {}: kept the {}",
                check.summary(),
                "greedy decoding" if beam_size == 1 else f"beam search of {beam_size}",
                again.summary(),
                "retry" if kept else "decode before it",
            )
            if kept:
                best, check = retry, again
        return best


def _guard_for(backend: WhisperBackend, guard: GuardOptions) -> GuardOptions:
    """`guard`, without its retry on a backend whose beam search is not repeatable (the Model pool: its
    filters still run)."""
    if not guard.retry or backend.repeatable_beam_search:
        return guard
    logger.warning(
        "The hallucination guard's retry is off on the {} backend: its beam search depends on what each "
        "Model decoded before, and the guard's retry must give the same text for the same audio",
        backend.name,
    )
    return dataclasses.replace(guard, retry=False)
