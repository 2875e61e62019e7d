"""Speaker embeddings without torch: resemblyzer's GE2E voice encoder, run in numpy.

The model (`VOICE_MODEL` in worker.engine.models) is the `pretrained.pt` that the resemblyzer 0.1.4 wheel
carries (Apache-2.0): a 3-layer LSTM (hidden 256) over 40-channel mel frames (power, not log; 25 ms
windows every 10 ms at 16 kHz), then linear 256 + ReLU + L2 normalisation. An utterance is cut into
partial windows of 160 frames (1.6 s), 1.3 per second; its embedding is the normalised mean of theirs.
Everything here reproduces resemblyzer's `VoiceEncoder.embed_utterance` and `wav_to_mel_spectrogram`
(librosa's mel filterbank, computed here; librosa is not needed) to float precision:
tests/engine/test_voices.py compares with embeddings resemblyzer itself made (tests/fixtures/voices/).

resemblyzer's `preprocess_wav` also trims silences longer than 0.2 s (webrtcvad); our audio comes cut
into speech regions by the Silero VAD, so only its volume normalisation is kept (`normalize_volume`),
for each window: the model was trained on utterances raised to -30 dBFS, and its mel frames are power,
not log, so quieter speech would be out of what it has seen.

The weights are read from torch's legacy file format with a restricted unpickler (`read_weights`): a
pickle may call any global it names, and this one may only build tensors and ordered dicts.

One `SpeakerEncoder` per process. Thread-safe: it holds read-only arrays and nothing else; every call
works on its own buffers. Windows are embedded in batches: each LSTM step is one matrix product over
the whole batch. Creating the encoder limits numpy's BLAS to one thread for the whole process: its
products are small (64 x 256 by 256 x 1024), and OpenBLAS's extra threads spin between them, which
made the embedding tests 4-10x slower on this 2-core host while other work ran (and would take the CPU
from whisper's threads). About 0.47 s of one CPU per audio minute of 1.6 s windows 0.8 s apart
(docs/performance.md).
"""

import collections
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loguru import logger
from threadpoolctl import threadpool_limits

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms: one mel frame
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s: one partial window
WINDOW_SAMPLES = PARTIAL_FRAMES * HOP
EMBEDDING_SIZE = 256
PARTIALS_PER_SECOND = 1.3  # embed_utterance's rate
MIN_COVERAGE = 0.75  # how much of a last, padded partial window must be audio
TARGET_DBFS = -30.0  # preprocess_wav's volume (raised to it, never lowered)

_HIDDEN = 256
_LAYERS = 3
_BATCH = 64  # windows per LSTM pass: 64 x 160 frames x 1024 gates of float32 is 42 MB
_STFT_BLOCK = 8192  # frames transformed at once (13 MB of float32 frames)


class VoiceModelError(ValueError):
    """The weights file is not the GE2E encoder's torch checkpoint (or holds what we refuse to load)."""


# --- features --------------------------------------------------------------------------------


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters on Slaney's mel scale, Slaney-normalised (area 1):
    librosa.filters.mel's defaults (htk=False, norm="slaney", 0 Hz to Nyquist)."""
    fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


# Slaney's scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4).
_LINEAR_HZ_PER_MEL = 200.0 / 3
_LOG_FROM_HZ = 1000.0
_LOG_FROM_MEL = _LOG_FROM_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz < _LOG_FROM_HZ:
        return hz / _LINEAR_HZ_PER_MEL
    return _LOG_FROM_MEL + float(np.log(hz / _LOG_FROM_HZ)) / _LOG_STEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    linear = mels * _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_FROM_HZ * np.exp(_LOG_STEP * (mels - _LOG_FROM_MEL))
    return np.where(mels >= _LOG_FROM_MEL, logarithmic, linear)


_FILTERS_T = np.ascontiguousarray(mel_filterbank().T.astype(np.float64))
_FILTERS_T.flags.writeable = False
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic, as librosa's "hann"
_HANN.flags.writeable = False


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """(1 + len // HOP, N_MELS) float32 mel power frames of 16 kHz samples, as resemblyzer's
    `wav_to_mel_spectrogram` (librosa: centred frames, zero padding, periodic Hann window)."""
    samples = _mono(samples)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(samples, N_FFT // 2), N_FFT)[::HOP]
    mel = np.empty((frames.shape[0], N_MELS), dtype=np.float32)
    for start in range(0, frames.shape[0], _STFT_BLOCK):  # float64 a block at a time, not the whole recording
        spectrum = np.fft.rfft(frames[start : start + _STFT_BLOCK] * _HANN, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        mel[start : start + _STFT_BLOCK] = power @ _FILTERS_T
    return mel


def normalize_volume(samples: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Samples scaled up to `target_dbfs` RMS when quieter (never down), as resemblyzer's
    `normalize_volume(wav, -30, increase_only=True)`; silence is returned as it is."""
    samples = _mono(samples)
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms == 0.0:
        return samples
    gain_db = target_dbfs - 20 * np.log10(rms)
    return samples if gain_db <= 0 else (samples * 10 ** (gain_db / 20)).astype(np.float32)


def partial_starts(n_samples: int) -> np.ndarray:
    """Sample offsets of the partial windows `embed` averages over a clip of `n_samples`, as
    resemblyzer's `compute_partial_slices` (rate 1.3 per second, last window kept when 75% audio)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP))
    frames = np.arange(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    last = frames[-1] * HOP
    if frames.size > 1 and (n_samples - last) / WINDOW_SAMPLES < MIN_COVERAGE:
        frames = frames[:-1]
    return frames * HOP


def _partial_mels(samples: np.ndarray) -> list[np.ndarray]:
    """The mel frames (160, 40) of each partial window of a clip: the clip's spectrogram sliced, as
    `embed_utterance` slices it (the clip zero-padded to its last window's end)."""
    starts = partial_starts(samples.size)
    end = int(starts[-1]) + WINDOW_SAMPLES
    mel = mel_spectrogram(np.pad(samples, (0, max(0, end - samples.size))))
    return [mel[f : f + PARTIAL_FRAMES] for f in starts // HOP]


def _mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (a 1-D array), got shape {samples.shape}")
    return samples


# --- the encoder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """One LSTM layer, gates reordered to (input, forget, output, cell) and the three sigmoid gates'
    rows halved, so that one tanh gives all four: sigmoid(z) = (1 + tanh(z / 2)) / 2."""

    w_input_t: np.ndarray  # (in, 4H)
    w_hidden_t: np.ndarray  # (H, 4H)
    bias: np.ndarray  # (4H,): torch's two biases summed

    @classmethod
    def from_torch(cls, weights: dict[str, np.ndarray], index: int) -> "_Layer":
        order = np.concatenate(
            [np.arange(0, 2 * _HIDDEN), np.arange(3 * _HIDDEN, 4 * _HIDDEN), np.arange(2 * _HIDDEN, 3 * _HIDDEN)]
        )
        scale = np.where(np.arange(4 * _HIDDEN) < 3 * _HIDDEN, 0.5, 1.0).astype(np.float32)
        w_ih, w_hh = (weights[f"lstm.weight_{k}_l{index}"][order] * scale[:, None] for k in ("ih", "hh"))
        bias = (weights[f"lstm.bias_ih_l{index}"] + weights[f"lstm.bias_hh_l{index}"])[order] * scale
        return cls(*(_frozen(a) for a in (w_ih.T, w_hh.T, bias)))

    def run(self, x: np.ndarray, *, sequence: bool) -> np.ndarray:
        """Time-major input (T, n, in) -> every step's hidden state (T, n, H), or the last one (n, H)."""
        steps, n = x.shape[:2]
        projected = (x.reshape(steps * n, -1) @ self.w_input_t).reshape(steps, n, -1)
        projected += self.bias
        h = np.zeros((n, _HIDDEN), dtype=np.float32)
        c = np.zeros((n, _HIDDEN), dtype=np.float32)
        out = np.empty((steps, n, _HIDDEN), dtype=np.float32) if sequence else None
        gates = np.empty((n, 4 * _HIDDEN), dtype=np.float32)
        sigmoids = gates[:, : 3 * _HIDDEN]
        i, f, o, g = (gates[:, k * _HIDDEN : (k + 1) * _HIDDEN] for k in range(4))
        for t in range(steps):
            np.matmul(h, self.w_hidden_t, out=gates)
            gates += projected[t]
            np.tanh(gates, out=gates)
            sigmoids *= 0.5
            sigmoids += 0.5
            c *= f
            c += i * g
            h = o * np.tanh(c)
            if out is not None:
                out[t] = h
        return out if out is not None else h


class SpeakerEncoder:
    """The GE2E speaker encoder: 16 kHz mono speech in, unit-norm 256-d voice embeddings out.

    Create one per process from the weights file (`ModelDownloader.ensure_model_exists(VOICE_MODEL.name)`);
    thread-safe. It is the pipeline's `VoiceEmbedder` (worker/pipeline/model.py).
    """

    def __init__(self, model_path: Path) -> None:
        self.model_path = Path(model_path)
        threadpool_limits(limits=1, user_api="blas")  # process-wide, kept (see the module docstring)
        weights = read_weights(self.model_path)
        self._layers = tuple(_Layer.from_torch(weights, k) for k in range(_LAYERS))
        self._linear_t = _frozen(weights["linear.weight"].T)
        self._linear_bias = _frozen(weights["linear.bias"])
        logger.info("Speaker encoder ready: {}", self.model_path.name)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """The voice embedding of one utterance: its volume normalised (`normalize_volume`), then
        resemblyzer's `embed_utterance` (the normalised mean of its partial windows' embeddings)."""
        return self.embed_windows([samples])[0]

    def embed_windows(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        """(n, 256): each window's `embed`, computed in batches. A window of up to 1.6 s (what
        worker.media.turns cuts) is one partial window, zero-padded to 1.6 s as `embed_utterance` pads;
        a longer one is the mean of its partial windows. The windows are read as they are needed."""
        owners: list[int] = []
        pending: list[np.ndarray] = []
        partials: list[np.ndarray] = []
        count = 0
        for count, window in enumerate(windows, start=1):
            for mel in _partial_mels(normalize_volume(window)):
                owners.append(count - 1)
                pending.append(mel)
                if len(pending) == _BATCH:  # a long window is split across batches too
                    partials.append(self.embed_mels(np.stack(pending, axis=1)))
                    pending.clear()
        if pending:
            partials.append(self.embed_mels(np.stack(pending, axis=1)))
        sums = np.zeros((count, EMBEDDING_SIZE), dtype=np.float32)
        if partials:
            np.add.at(sums, np.array(owners), np.concatenate(partials))
        return _unit(sums, axis=1)

    def embed_mels(self, mels: np.ndarray) -> np.ndarray:
        """The model itself: time-major mel frames (T, n, 40) -> (n, 256) unit-norm embeddings."""
        x = np.ascontiguousarray(mels, dtype=np.float32)
        for layer in self._layers[:-1]:
            x = layer.run(x, sequence=True)
        hidden = self._layers[-1].run(x, sequence=False)
        raw = np.maximum(hidden @ self._linear_t + self._linear_bias, 0.0)
        return _unit(raw, axis=1)


def _unit(v: np.ndarray, axis: int | None = None) -> np.ndarray:
    norm = np.linalg.norm(v, axis=axis, keepdims=axis is not None)
    return (v / np.maximum(norm, np.finfo(np.float32).tiny)).astype(np.float32)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a


# --- the weights file ------------------------------------------------------------------------

# torch.save's format before 1.6: five pickles in a row (magic number, protocol, system info, the
# object with its tensors' storages as persistent ids, the storages' keys), then each storage's
# element count (int64) and its raw little-endian bytes.
_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}
_MODEL_SHAPES = {
    **{f"lstm.weight_ih_l{k}": (4 * _HIDDEN, 40 if k == 0 else _HIDDEN) for k in range(_LAYERS)},
    **{f"lstm.weight_hh_l{k}": (4 * _HIDDEN, _HIDDEN) for k in range(_LAYERS)},
    **{f"lstm.bias_{g}_l{k}": (4 * _HIDDEN,) for g in ("ih", "hh") for k in range(_LAYERS)},
    "linear.weight": (EMBEDDING_SIZE, _HIDDEN),
    "linear.bias": (EMBEDDING_SIZE,),
}


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """The encoder's tensors (`model_state` of resemblyzer's checkpoint) as float32 arrays, read without
    torch. VoiceModelError for anything else, including a pickle naming any global but torch's tensor
    rebuild, its storage types and OrderedDict."""
    with open(path, "rb") as f:
        try:
            header = [_Unpickler(f).load() for _ in range(3)]
            if header[0] != _MAGIC or header[1] != _PROTOCOL or not header[2].get("little_endian"):
                raise VoiceModelError(f"{path}: not a torch checkpoint in the legacy format")
            storages: dict[str, _Storage] = {}
            checkpoint = _Unpickler(f, storages).load()
            keys = _Unpickler(f).load()
            for key in keys:
                storages[key].read_from(f)
        except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError) as exc:
            raise VoiceModelError(f"{path}: unreadable checkpoint ({exc})") from exc
    try:
        state = checkpoint["model_state"]
        weights = {name: state[name].array() for name in _MODEL_SHAPES}
    except (KeyError, TypeError, AttributeError) as exc:
        raise VoiceModelError(f"{path}: not the GE2E encoder's checkpoint (no {exc})") from exc
    for name, shape in _MODEL_SHAPES.items():
        if weights[name].shape != shape:
            raise VoiceModelError(f"{path}: {name} has shape {weights[name].shape}, expected {shape}")
    return weights


class _Storage:
    """A tensor storage of the checkpoint: its size from the pickle, its bytes from after it."""

    def __init__(self, dtype: type, numel: int) -> None:
        self.dtype, self.numel = np.dtype(dtype).newbyteorder("<"), int(numel)
        self.data: np.ndarray | None = None

    def read_from(self, f) -> None:
        count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
        raw = f.read(count * self.dtype.itemsize)
        if count != self.numel or len(raw) != count * self.dtype.itemsize:
            raise VoiceModelError(f"storage of {self.numel} elements: found {count}, {len(raw)} bytes")
        self.data = np.frombuffer(raw, dtype=self.dtype)


@dataclass(frozen=True)
class _Tensor:
    """What torch._utils._rebuild_tensor_v2 would build, made an array once the storages are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise VoiceModelError("a tensor's storage is missing from the file")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if self.offset < 0 or min(self.stride, default=0) < 0 or (all(self.shape) and last >= data.size):
            raise VoiceModelError(f"a tensor {self.shape} reaches past its storage of {data.size}")
        strides = tuple(s * data.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(data[self.offset :], self.shape, strides, writeable=False)
        return np.array(view, dtype=np.float32)


def _rebuild_tensor(storage, offset, shape, stride, *_grad_and_hooks) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise VoiceModelError("a tensor without a storage")
    return _Tensor(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


class _Unpickler(pickle.Unpickler):
    """Builds only tensors (as `_Tensor`), storages and ordered dicts; refuses every other global."""

    _ALLOWED: dict[tuple[str, str], Callable] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        **{("torch", name): dtype for name, dtype in _STORAGE_DTYPES.items()},
    }

    def __init__(self, f, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(f)
        self._storages = storages

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} refused") from None

    def persistent_load(self, pid):
        if self._storages is None or not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"persistent id {pid!r:.80} refused")
        _, dtype, key, _location, numel, view = pid
        if view is not None or dtype not in _STORAGE_DTYPES.values():
            raise pickle.UnpicklingError("storage views and unknown storage types are not supported")
        return self._storages.setdefault(key, _Storage(dtype, numel))
