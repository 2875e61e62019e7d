"""One audio input to one transcript: decode, split into WAV chunks, transcribe, merge.

The chunks of a job run in a ThreadPoolExecutor over the ONE WhisperTranscriber the entry point
created for the process (parallel mode), or one after another with every CPU thread (sequential
mode). Results are merged in chunk order, whatever order threads finish in, with each chunk's true
start offset added to its segment times. The stages: processor.py composes preparing.py (decode,
split, language; over splitting.py, where the speech is), chunks.py (the transcriber) and assembling.py
(the transcript; over speakers.py, who said it), all over model.py's data.
"""

from worker.pipeline.lanes import Lane, Lanes
from worker.pipeline.model import (
    Chunking,
    Diarization,
    KnownVoice,
    PipelineOptions,
    Prepared,
    Progress,
    ProgressCallback,
    Transcript,
    VadChoice,
    VoiceEmbedder,
    chunk_samples,
    joined,
    segment_document,
    segment_in,
    segment_out,
    token_logprobs,
)
from worker.pipeline.processor import Processor
from worker.pipeline.speakers import known_voice

__all__ = [
    "Chunking",
    "Diarization",
    "KnownVoice",
    "Lane",
    "Lanes",
    "PipelineOptions",
    "Prepared",
    "Processor",
    "Progress",
    "ProgressCallback",
    "Transcript",
    "VadChoice",
    "VoiceEmbedder",
    "chunk_samples",
    "joined",
    "known_voice",
    "segment_document",
    "segment_in",
    "segment_out",
    "token_logprobs",
]
