"""docker-compose.yml and the Dockerfile, checked by reading them (no Docker engine runs here)."""

import yaml
from conftest import ROOT

from worker.config import Settings
from worker.devtools import local_broker


def test_compose_runs_a_healthy_broker_and_a_scalable_worker():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    rabbitmq, worker = compose["services"]["rabbitmq"], compose["services"]["worker"]

    assert "management" in rabbitmq["image"] and "healthcheck" in rabbitmq
    assert any(v.endswith(":/var/lib/rabbitmq") for v in rabbitmq["volumes"])
    assert worker["build"] == "." and worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "ports" not in worker  # fixed host ports would break --scale worker=N
    assert "models:/app/whisper/models" in worker["volumes"]
    assert worker["environment"]["AMQP_URL"].startswith("amqp://") and "@rabbitmq:" in worker["environment"]["AMQP_URL"]
    assert set(compose["volumes"]) >= {"models", "rabbitmq-data"}


def test_the_broker_gets_a_consumer_timeout_above_the_longest_job():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["services"]["rabbitmq"]["volumes"] if v.startswith("./"))
    source = next(src for src, dst in mounts.items() if dst == "/etc/rabbitmq/conf.d/20-transcription.conf")
    conf = dict(
        line.split(" = ") for line in (ROOT / source).read_text().splitlines() if line and not line.startswith("#")
    )
    assert int(conf["consumer_timeout"]) >= 1000 * Settings().max_audio_seconds
    assert local_broker.DEFAULT_CONFIG == conf  # `make run`'s private broker gets the same


def test_dockerfile_has_ffmpeg_and_execs_the_consumer():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert "ffmpeg" in dockerfile
    assert 'CMD ["python", "cmd/consumer/main.py"]' in dockerfile  # exec form: SIGTERM reaches the worker
    assert "WHISPER_MODELS_DIR=/app/whisper/models" in dockerfile
