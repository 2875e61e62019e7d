"""The log-mel spectrogram whisper's encoder reads, in numpy (what whisper.cpp's log_mel_spectrogram computes).

Why here and not in libwhisper: whisper.cpp computes it with a hand-written FFT of 400 points (a
radix-2 recursion that ends in 25-point DFTs), about 3 ms per second of audio on one thread, 6% of a
call on tiny.en (docs/performance.md, the profile); numpy's FFT takes a few hundredths of that. The
batched engine (worker.engine.batching) hands the result to the state with whisper_set_mel_with_state.

Same steps as whisper.cpp (and openai-whisper's `log_mel_spectrogram`): 200 samples reflected at the
start, zeros after the audio, a periodic Hann window of 400 samples every 160, the power spectrum
through the model's mel filters (Slaney, the ones our converter writes into every model file),
log10 of at least 1e-10, everything under the maximum - 8 raised to it, then (x + 4) / 4.
"""

import functools

import numpy as np

from worker.engine.ggml_convert import mel_filterbank

N_FFT = 400
HOP = 160  # samples per mel frame: 10 ms at 16 kHz
FRAMES_PER_POSITION = 2  # the encoder's convolution halves the frames: one position per 20 ms


@functools.cache
def _window() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float64)


@functools.cache
def _filters(n_mels: int) -> np.ndarray:
    return mel_filterbank(n_mels).astype(np.float64)


def log_mel(samples: np.ndarray, n_frames: int, *, n_mels: int = 80) -> np.ndarray:
    """The first `n_frames` frames of `samples`' log-mel spectrogram, shape [n_mels, n_frames], float32
    (frames past the audio are those of silence, as after whisper.cpp's 30 s of zero padding)."""
    half = N_FFT // 2
    needed = (n_frames - 1) * HOP + N_FFT
    padded = np.zeros(max(needed, half + samples.size + half), dtype=np.float64)
    padded[half : half + samples.size] = samples
    head = samples[1 : half + 1][::-1]  # reflected, as whisper.cpp and torch.stft do
    padded[half - head.size : half] = head
    frames = np.lib.stride_tricks.sliding_window_view(padded[:needed], N_FFT)[::HOP]
    spectrum = np.abs(np.fft.rfft(frames * _window(), axis=1)) ** 2
    mel = np.log10(np.maximum(_filters(n_mels) @ spectrum.T, 1e-10))
    mel = np.maximum(mel, max(mel.max(), np.log10(1e-10)) - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)
