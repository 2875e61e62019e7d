"""The speaker stage: a job's segments labelled with who said them (diarize "channels" or "speakers")."""

import dataclasses
import time
from collections.abc import Callable

from loguru import logger

from worker.engine.transcriber import Segment, Word
from worker.errors import TranscriptionError
from worker.media.chunking import Chunk
from worker.media.turns import Turn, TurnOptions, cluster, speaker_of, turns, windows
from worker.pipeline.model import Diarization, Prepared, VoiceEmbedder


class VoiceLabeller:
    """Labels segments by voice: turns found by clustering voice embeddings of the job's speech (on the
    coordinator for a fanned-out job: one clustering, labels consistent)."""

    def __init__(self, voices: Callable[[], VoiceEmbedder] | None, options: TurnOptions) -> None:
        self._voices = voices  # made on first use: only diarize "speakers" needs the voice encoder
        self.options = options

    def label(self, prepared: Prepared, segments: tuple[Segment, ...], how: Diarization) -> tuple[Segment, ...]:
        """Segments split at speaker turns and labelled."""
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
        split = tuple(piece for segment in segments for piece in split_at_turns(segment, found, words=how.words))
        logger.info(
            "Diarized: {} speakers over {} windows in {:.2f} s",
            len({t.speaker for t in found}),
            len(spans),
            time.perf_counter() - started,
        )
        return split


def speaker_label(number: int) -> str:
    """A, B, C, ... for speakers (or channels) 0, 1, 2, ..."""
    return chr(ord("A") + number)


def labelled(segment: Segment, speaker: str) -> Segment:
    """A segment and its words said by `speaker`."""
    words = None if segment.words is None else tuple(dataclasses.replace(w, speaker=speaker) for w in segment.words)
    return dataclasses.replace(segment, speaker=speaker, words=words)


def split_at_turns(segment: Segment, found: list[Turn], *, words: bool) -> list[Segment]:
    """A segment cut where its words change speaker (each piece labelled); `words`: keep the words.

    Needs the segment's words (diarize "speakers" always asks whisper for them); a segment without
    any is labelled whole, by overlap."""
    if not segment.words:
        speaker = speaker_of(found, segment.start, segment.end)
        return [segment if speaker is None else labelled(segment, speaker_label(speaker))]
    groups: list[tuple[int | None, list[Word]]] = []
    for word in segment.words:
        speaker = speaker_of(found, word.start, word.end)
        if groups and groups[-1][0] == speaker:
            groups[-1][1].append(word)
        else:
            groups.append((speaker, [word]))
    pieces = []
    for speaker, group in groups:
        piece = dataclasses.replace(
            segment,
            start=group[0].start if len(groups) > 1 else segment.start,
            end=group[-1].end if len(groups) > 1 else segment.end,
            text="".join(w.word for w in group).strip() if len(groups) > 1 else segment.text,
            tokens=segment.tokens if len(groups) == 1 else (),  # whisper's tokens are the whole segment's
            logprobs=segment.logprobs if len(groups) == 1 else None,
            words=tuple(group),
        )
        if speaker is not None:
            piece = labelled(piece, speaker_label(speaker))
        pieces.append(piece if words else dataclasses.replace(piece, words=None))
    return pieces


def by_channel(chunks: list[Chunk], per_chunk: list[list[Segment]]) -> tuple[Segment, ...]:
    """Every channel's segments labelled with its speaker (A = the first channel), merged in time order."""
    merged = [
        (segment.start, chunk.source, labelled(segment, speaker_label(chunk.source)))
        for chunk, segments in zip(chunks, per_chunk, strict=True)
        for segment in segments
    ]
    return tuple(segment for _, _, segment in sorted(merged, key=lambda item: item[:2]))
