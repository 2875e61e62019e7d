"""The speaker stage: a job's segments labelled with who said them (diarize "channels" or "speakers")."""

import dataclasses
import time
from collections.abc import Callable

import numpy as np
from loguru import logger

from worker.engine.transcriber import Segment, Word
from worker.errors import InvalidReference, TranscriptionError
from worker.media.audio import SAMPLE_RATE
from worker.media.chunking import Chunk
from worker.media.turns import (
    Turn,
    TurnOptions,
    anchored,
    cluster,
    named,
    speaker_of,
    turns,
    voices_of,
    windows,
)
from worker.messages import REFERENCE_SECONDS
from worker.pipeline.model import Diarization, KnownVoice, Prepared, VoiceEmbedder

# A reference clip quieter than this (RMS, dBFS) holds no voice to match.
SILENT_DBFS = -60.0


class VoiceLabeller:
    """Labels segments by voice: turns found by clustering voice embeddings of the job's speech (on the
    coordinator for a fanned-out job: one clustering, labels consistent)."""

    def __init__(self, voices: Callable[[], VoiceEmbedder] | None, options: TurnOptions) -> None:
        self._voices = voices  # made on first use: only diarize "speakers" needs the voice encoder
        self.options = options

    @property
    def available(self) -> bool:
        """Whether this worker can tell voices apart (it has the voice encoder)."""
        return self._voices is not None

    def label(self, prepared: Prepared, segments: tuple[Segment, ...], how: Diarization) -> tuple[Segment, ...]:
        """Segments split at speaker turns and labelled."""
        found, name = self.turns(prepared, how)
        return tuple(
            piece for segment in segments for piece in split_at_turns(segment, found, words=how.words, name=name)
        )

    def turns(self, prepared: Prepared, how: Diarization) -> tuple[list[Turn], Callable[[int], str]]:
        """Who spoke when in the job's speech, and each speaker number's label."""
        if self._voices is None:
            raise TranscriptionError('diarize "speakers" needs the voice encoder, and this worker has none')
        started = time.perf_counter()
        spans = windows(list(prepared.voiced))
        embeddings = self._voices().embed_windows(prepared.audio.read(s, e) for s, e in spans)
        labels = cluster(
            embeddings,
            self.options,
            num_speakers=how.num_speakers,
            min_speakers=how.min_speakers or 1,
            max_speakers=how.max_speakers,
        )
        found = turns(spans, embeddings, labels, self.options)
        name = speaker_label
        if how.known:
            found, name = self._known(found, spans, embeddings, labels, how.known)
        logger.info(
            "Diarized: {} speakers over {} windows in {:.2f} s",
            len({t.speaker for t in found}),
            len(spans),
            time.perf_counter() - started,
        )
        return found, name

    def _known(
        self,
        found: list[Turn],
        spans: list[tuple[int, int]],
        embeddings: np.ndarray,
        labels: np.ndarray,
        known: tuple[KnownVoice, ...],
    ) -> tuple[list[Turn], Callable[[int], str]]:
        """The turns with known speakers found, and each speaker number's label: a known speaker's name
        when their clip is close enough to that voice, the others A, B, ... in order of first appearance.
        A known speaker whom no voice matches may have been merged with another by the count estimate:
        the windows that clearly sound like them are split out, and the turns found again."""
        assert self._voices is not None
        references = self._voices().embed_windows(k.samples for k in known)
        least = self.options.known_similarity
        matched = named(voices_of(found, spans, embeddings), references, least)
        missing = np.array([k not in matched.values() for k in range(len(known))])
        if missing.any():
            split = anchored(labels, embeddings, np.where(missing[:, None], references, 0.0), self.options)
            if not np.array_equal(split, labels):
                found = turns(spans, embeddings, split, self.options)
                matched = named(voices_of(found, spans, embeddings), references, least)
        names = {s: known[k].name for s, k in matched.items()}
        taken = {k.name for k in known}  # a known speaker named "A" leaves the letter to nobody else
        letters = (speaker_label(n) for n in range(len(found) + len(known) + 1) if speaker_label(n) not in taken)
        names |= {s: next(letters) for s in dict.fromkeys(t.speaker for t in found) if s not in matched}
        logger.info("Known speakers found: {} of {}", len(matched), len(known))
        return found, lambda speaker: names.get(speaker, speaker_label(speaker))


def speaker_label(number: int) -> str:
    """A, B, C, ... for speakers (or channels) 0, 1, 2, ..."""
    return chr(ord("A") + number)


def labelled(segment: Segment, speaker: str) -> Segment:
    """A segment and its words said by `speaker`."""
    words = None if segment.words is None else tuple(dataclasses.replace(w, speaker=speaker) for w in segment.words)
    return dataclasses.replace(segment, speaker=speaker, words=words)


def known_voice(name: str, samples: np.ndarray) -> KnownVoice:
    """A known speaker's clip, checked: 2-10 s (OpenAI's limits) and audible. InvalidReference if not."""
    seconds = samples.size / SAMPLE_RATE
    low, high = REFERENCE_SECONDS
    if not low <= seconds <= high:
        raise InvalidReference(
            f"known speaker {name!r}: the reference is {seconds:.1f} s; it must be {low:g}-{high:g} s"
        )
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms == 0.0 or 20 * np.log10(rms) < SILENT_DBFS:
        raise InvalidReference(f"known speaker {name!r}: the reference is silent")
    return KnownVoice(name, samples)


def split_at_turns(
    segment: Segment, found: list[Turn], *, words: bool, name: Callable[[int], str] = speaker_label
) -> list[Segment]:
    """A segment cut where its words change speaker (each piece labelled `name(speaker)`); `words`: keep
    the words.

    Needs the segment's words (diarize "speakers" always asks whisper for them); a segment without
    any is labelled whole, by overlap."""
    if not segment.words:
        speaker = speaker_of(found, segment.start, segment.end)
        return [segment if speaker is None else labelled(segment, name(speaker))]
    groups: list[tuple[int | None, list[Word]]] = []
    for word in segment.words:
        speaker = speaker_of(found, word.start, word.end)
        if groups and groups[-1][0] == speaker:
            groups[-1][1].append(word)
        else:
            groups.append((speaker, [word]))
    pieces = []
    for (speaker, _), piece in zip(groups, _pieces(segment, [group for _, group in groups]), strict=True):
        if speaker is not None:
            piece = labelled(piece, name(speaker))
        pieces.append(piece if words else dataclasses.replace(piece, words=None))
    return pieces


def split_at_pauses(segment: Segment, pause_seconds: float) -> list[Segment]:
    """A segment cut where its speaker pauses `pause_seconds` or more between two words (a segment of a
    channel otherwise spans its speaker's silences, while the other channel's speaker talks)."""
    if not segment.words:
        return [segment]
    groups: list[list[Word]] = [[segment.words[0]]]
    for before, word in zip(segment.words, segment.words[1:], strict=False):
        if word.start - before.end >= pause_seconds:
            groups.append([word])
        else:
            groups[-1].append(word)
    return _pieces(segment, groups)


def _pieces(segment: Segment, groups: list[list[Word]]) -> list[Segment]:
    """The segment as one piece per group of its words (itself, when there is one group)."""
    if len(groups) == 1:
        return [dataclasses.replace(segment, words=tuple(groups[0]))]
    return [
        dataclasses.replace(
            segment,
            start=group[0].start,
            end=group[-1].end,
            text="".join(w.word for w in group).strip(),
            tokens=(),  # whisper's tokens and their logprobs are the whole segment's
            logprobs=None,
            words=tuple(group),
        )
        for group in groups
    ]


def by_channel(
    chunks: list[Chunk], per_chunk: list[list[Segment]], pause_seconds: float, *, words: bool
) -> tuple[Segment, ...]:
    """Every channel's segments labelled with its speaker (A = the first channel), those with words cut
    at their speaker's pauses (`split_at_pauses`), merged in time order; `words`: keep the words."""
    merged = [
        (
            piece.start,
            chunk.source,
            labelled(piece if words else dataclasses.replace(piece, words=None), speaker_label(chunk.source)),
        )
        for chunk, segments in zip(chunks, per_chunk, strict=True)
        for segment in segments
        for piece in split_at_pauses(segment, pause_seconds)
    ]
    return tuple(segment for _, _, segment in sorted(merged, key=lambda item: item[:2]))
