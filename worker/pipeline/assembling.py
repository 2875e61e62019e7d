"""The assembling stage: every chunk's segments -> one Transcript, labelled with its speakers when
diarized (speakers.py), and one summary line in the log."""

import time

from loguru import logger

from worker.engine.transcriber import Segment, WhisperTranscriber
from worker.pipeline.model import PipelineOptions, Prepared, Transcript, joined
from worker.pipeline.speakers import VoiceLabeller, by_channel


class Assembler:
    """Assembles one job's transcript per call; safe to call from several threads."""

    def __init__(
        self, speakers: VoiceLabeller, transcriber: WhisperTranscriber, *, model_name: str, options: PipelineOptions
    ) -> None:
        self.speakers = speakers
        self.transcriber = transcriber
        self.model_name = model_name
        self.options = options

    def __call__(self, prepared: Prepared, per_chunk: list[list[Segment]]) -> Transcript:
        """One transcript from every chunk's segments (absolute times), in chunk order; diarized ones
        labelled with their speakers, in time order."""
        segments = tuple(s for chunk_segments in per_chunk for s in chunk_segments)
        diarization = prepared.diarization
        if diarization is not None and diarization.mode == "channels":
            pause = self.speakers.options.channel_pause_seconds
            segments = by_channel(prepared.chunks, per_chunk, pause, words=diarization.words)
        elif diarization is not None:
            segments = self.speakers.label(prepared, segments, diarization)
        language = prepared.language
        transcript = Transcript(
            text=joined(segments),
            segments=segments,
            language=language if prepared.chunks or language else (None if self.transcriber.multilingual else "en"),
            language_probability=prepared.language_probability,
            duration_seconds=prepared.duration_seconds,
            model=self.model_name,
            chunks=len(prepared.chunks),
            decode_seconds=prepared.decode_seconds,
            transcribe_seconds=time.perf_counter() - prepared.started - prepared.decode_seconds,
        )
        self._log_summary(transcript, prepared.threads)
        return transcript

    def _log_summary(self, t: Transcript, threads: int) -> None:
        mode = "parallel" if self.options.parallel else "sequential"
        logger.info(
            "Transcribed {:.1f} s of audio in {:.2f} s (real-time factor {:.3f}): {} chunks, mode {}, "
            "workers {}, threads per call {}",
            t.duration_seconds,
            t.transcribe_seconds,
            t.real_time_factor,
            t.chunks,
            mode,
            self.options.concurrent_calls,
            threads,
        )
