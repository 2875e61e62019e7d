"""What a job asks of the pipeline, in the pipeline's terms: its speech detection, its diarization,
and the transcript as the job's result carries it."""

import dataclasses

from worker.messages import Job, VadRequest
from worker.pipeline import Diarization, KnownVoice, Processor, Transcript, VadChoice


def vad_choice(job: Job, processor: Processor) -> VadChoice:
    """The pipeline's speech-detection choice for a job: its `vad` object over the worker's options."""
    if not isinstance(job.vad, VadRequest):
        return job.vad
    return dataclasses.replace(processor.options.vad, **job.vad.model_dump(exclude_none=True))


def diarization_of(job: Job, known: tuple[KnownVoice, ...] = ()) -> Diarization | None:
    if job.diarize == "off":
        return None
    counts = (job.num_speakers, job.min_speakers, job.max_speakers)
    return Diarization(job.diarize, *counts, words=job.word_timestamps or job.subtitle_words, known=known)


def as_asked(job: Job, transcript: Transcript) -> Transcript:
    """The transcript as the result and the json format carry it: without the words that only timed the
    job's srt or vtt cues (it did not ask for word_timestamps)."""
    if job.word_timestamps or not job.subtitle_words:
        return transcript
    segments = tuple(dataclasses.replace(s, words=None) for s in transcript.segments)
    return dataclasses.replace(transcript, segments=segments)
