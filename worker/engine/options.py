"""How each whisper call runs: the decoding options and the encoder-context arithmetic (plain data)."""

from dataclasses import dataclass
from typing import Literal

Task = Literal["transcribe", "translate"]

SAMPLE_RATE = 16000  # what whisper.cpp takes: 16 kHz mono float32
# The encoder's context, in frames of 20 ms (whisper's 30 s window is 1500 of them).
FRAMES_PER_SECOND = 50
FULL_AUDIO_CTX = 1500
# With flash attention whisper.cpp pads the encoder's and the cross-attention's K/V to a multiple
# of 256 frames and masks none of the padding, so a context that is not such a multiple reads rows
# that earlier calls on the same state left there (whisper.cpp 1.8.5, whisper_build_graph_encoder /
# _cross / _decoder): the text would depend on what the state did before. A multiple of 256 reads
# only rows it wrote itself. 1536 is over the model's 1500, so fitted contexts stop at 1280.
AUDIO_CTX_STEP = 256
MAX_FITTED_AUDIO_CTX = 1280


@dataclass(frozen=True)
class DecodingOptions:
    """How each whisper.cpp call runs (the levers measured in cmd/bench).

    `fit_audio_ctx`: encode only as many frames as the call's audio needs (plus `audio_ctx_margin`
    frames, rounded up to 256) instead of always 30 s; audio too long for 1280 frames gets the full
    context on states that never see a fitted one. `temperature_fallback`: re-decode at rising
    temperatures when a decode looks bad (whisper.cpp's default); sampling then draws from a
    generator whisper.cpp seeds once per state, so the text would depend on the state's history.
    """

    fit_audio_ctx: bool = True
    audio_ctx_margin: int = 64
    temperature_fallback: bool = False
    # No timestamp tokens: a call's text comes back as one segment spanning its audio (a chunk's
    # subtitles would be one cue). Measured as a lever, off by default.
    no_timestamps: bool = False
    # Forbid the tokens whisper writes sound annotations with ("[", "(", "♪", ...). Off, whisper may write
    # "[BLANK_AUDIO]" or "[MUSIC]" where it hears no speech (the guard then strips them); on, it must
    # write words there instead ("Thank you.").
    suppress_nonspeech: bool = True

    def audio_ctx(self, n_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
        """The encoder context for this much audio: a multiple of 256, or 0 for the full 1500."""
        if not self.fit_audio_ctx:
            return 0
        frames = -(-n_samples * FRAMES_PER_SECOND // sample_rate) + self.audio_ctx_margin
        fitted = -(-frames // AUDIO_CTX_STEP) * AUDIO_CTX_STEP
        return fitted if fitted <= MAX_FITTED_AUDIO_CTX else 0
