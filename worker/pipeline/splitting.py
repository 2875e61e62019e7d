"""The splitting stage: decoded audio -> the chunks whisper will hear, and where speech is.

Speech regions (Silero VAD, on the recording with its quiet stretches raised) or the level-based
splitter, as the job or the worker's options say; for diarize "channels", each channel's own speech.
"""

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from loguru import logger

from worker.engine.speech import SpeechDetector
from worker.errors import SingleChannel, TranscriptionError
from worker.media.audio import SAMPLE_RATE, Audio, ChannelsPcm
from worker.media.chunking import LEVEL_BLOCK, Chunk, block_levels, split_levels
from worker.media.speech import (
    Levelled,
    VadOptions,
    detection_gains,
    dominant,
    same_sound,
    speech_chunks,
    window_levels,
)
from worker.media.turns import voiced_regions
from worker.messages import MAX_SPEAKERS
from worker.pipeline.model import PipelineOptions, VadChoice


@dataclass(frozen=True)
class Split:
    """A recording's chunks, the audio they are read from (by `Chunk.source`: the recording as whisper
    hears it, or each channel), and its stretches of speech without a pause (for diarize "speakers")."""

    sources: tuple[Audio, ...]
    chunks: list[Chunk]
    voiced: tuple[tuple[int, int], ...] = ()


class Splitter:
    """Splits one recording at a time; safe to call from several threads (the detector is)."""

    def __init__(self, options: PipelineOptions, speech: SpeechDetector | None) -> None:
        if options.chunker == "vad" and speech is None:
            raise ValueError("VAD chunking needs a speech detector")
        self.options = options
        self.speech = speech

    def mono(self, audio: Audio, vad: VadChoice = None) -> Split:
        """The chunks of one channel; with VAD, the audio whisper hears has its quiet stretches raised,
        as the detector heard it; without, the voiced stretches are the chunks'."""
        options = self._vad_options(vad)
        if options is None:
            chunks = split_levels(block_levels(_blocks(audio)), audio.n_samples, self.options.chunking)
            return Split((audio,), chunks, tuple(span for chunk in chunks for span in chunk.spans))
        started = time.perf_counter()
        probabilities, _, heard = detect_speech(self._detector("VAD chunking was asked for"), audio, options)
        chunks = speech_chunks(probabilities, audio.n_samples, options, max_seconds=self.options.chunking.max_seconds)
        logger.debug(
            "Speech detection: {:.1f} s of speech in {:.1f} s of audio, {} chunks ({:.2f} s)",
            sum(c.seconds for c in chunks),
            audio.n_samples / SAMPLE_RATE,
            len(chunks),
            time.perf_counter() - started,
        )
        return Split((heard,), chunks, tuple(voiced_regions(probabilities, audio.n_samples, options)))

    def channels(self, audio: ChannelsPcm, vad: VadChoice = None) -> Split:
        """One speaker per channel: each channel's own speech (VAD; a window another channel is much
        louder in is that channel's speaker bleeding in, not this one's), as chunks labelled by channel."""
        if not 2 <= audio.n_channels <= MAX_SPEAKERS:
            raise SingleChannel(
                f'diarize "channels" needs 2 to {MAX_SPEAKERS} channels, one per speaker; this recording has '
                f'{audio.n_channels} (diarize "speakers" tells voices apart in one channel)'
            )
        speech = self._detector('diarize "channels" needs speech detection')
        options = self._vad_options(vad) or self.options.vad  # channels are always split by speech
        channels = tuple(audio.channel(k) for k in range(audio.n_channels))
        probabilities, levels, sources = zip(*(detect_speech(speech, c, options) for c in channels), strict=True)
        if same_sound(list(levels)):
            raise SingleChannel(
                'diarize "channels": every channel carries the same sound (a mono recording stored as '
                'multichannel), so channels cannot tell speakers apart; use diarize "speakers"'
            )
        limit = self.options.chunking.max_seconds
        found = [
            chunk
            for number, p in enumerate(dominant(list(probabilities), list(levels)))
            for chunk in speech_chunks(p, audio.n_samples, options, max_seconds=limit, source=number)
        ]
        # In time order across the channels, renumbered: chunk order is transcript order.
        ordered = sorted(found, key=lambda c: (c.start, c.source))
        return Split(sources, [dataclasses.replace(chunk, index=index) for index, chunk in enumerate(ordered)])

    def _vad_options(self, vad: VadChoice) -> VadOptions | None:
        """The speech detection a job gets (None: the level-based splitter)."""
        if vad is None:
            return self.options.vad if self.options.chunker == "vad" else None
        if vad is False:
            return None
        return self.options.vad if vad is True else vad

    def _detector(self, need: str) -> SpeechDetector:
        if self.speech is None:
            raise TranscriptionError(f"{need}, but this worker has no speech detector")
        return self.speech


def detect_speech(speech: SpeechDetector, audio: Audio, options: VadOptions) -> tuple[np.ndarray, np.ndarray, Audio]:
    """Speech probability and level (dBFS) of every 512-sample window, and the recording as the detector
    hears it: with its quiet stretches raised (worker.media.speech.detection_gains) when `level_quiet`."""
    levels = np.concatenate([np.zeros(0), *map(window_levels, _blocks(audio))])
    heard = Levelled(audio, detection_gains(levels)) if options.level_quiet else audio
    return speech.probabilities(heard.read, heard.n_samples), levels, heard


def _blocks(audio: Audio) -> Iterator[np.ndarray]:
    for start in range(0, audio.n_samples, LEVEL_BLOCK):
        yield audio.read(start, start + LEVEL_BLOCK)
