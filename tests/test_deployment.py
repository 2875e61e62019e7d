"""docker-compose.yml, the Dockerfile and deploy/k8s, checked by reading and offline validation (no Docker engine
or cluster runs here)."""

import re
import subprocess
import sys

import kubernetes_validate
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
    assert int(conf["consumer_timeout"]) >= 1000 * Settings(_env_file=None).max_audio_seconds
    assert local_broker.DEFAULT_CONFIG == conf  # `make run`'s private broker gets the same


def test_dockerfile_has_ffmpeg_and_execs_the_consumer():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert "ffmpeg" in dockerfile
    assert 'CMD ["python", "cmd/consumer/main.py"]' in dockerfile  # exec form: SIGTERM reaches the worker
    assert "WHISPER_MODELS_DIR=/app/whisper/models" in dockerfile


# --- deploy/k8s: validated offline (schemas from kubernetes-validate, yamllint), checked against the code ---

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"


def k8s_documents() -> dict[str, dict]:
    """Every manifest in deploy/k8s by kind (each kind appears once)."""
    documents = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in documents}
    assert len(by_kind) == len(documents)
    return by_kind


def test_k8s_manifests_pass_yamllint():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-c",
            str(ROOT / ".yamllint"),
            str(K8S),
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout


def test_k8s_core_manifests_are_valid_kubernetes_objects():
    docs = k8s_documents()
    for kind in ("Deployment", "ConfigMap", "Secret"):
        kubernetes_validate.validate(docs[kind], KUBERNETES_VERSION, strict=True)  # raises on a bad field


def test_k8s_config_names_real_settings_and_the_probes_use_the_metrics_port():
    docs = k8s_documents()
    config = docs["ConfigMap"]["data"]
    fields = {name.upper() for name in Settings.model_fields}
    assert set(config) <= fields, set(config) - fields
    assert set(docs["Secret"]["stringData"]) - {"RABBITMQ_MANAGEMENT_URL"} <= fields
    settings = Settings(**{k.lower(): v for k, v in config.items()}, _env_file=None)
    assert settings.fanout_min_seconds > 0  # fan-out on: a long job uses the whole fleet

    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "cmd/consumer/main.py"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(settings.work_dir), str(settings.whisper_models_dir)} <= mounts
    # A chunk task is seconds; the grace covers it (and a short job) on scale-in.
    assert pod["terminationGracePeriodSeconds"] >= 300


def test_keda_scales_on_jobs_plus_chunks_counting_unacked_messages():
    docs = k8s_documents()
    config, scaled = docs["ConfigMap"]["data"], docs["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength"
    # amqp counts ready messages only: busy workers would look idle and be scaled in.
    assert meta["protocol"] == "http" and meta["excludeUnacknowledged"] == "false"
    assert meta["useRegex"] == "true" and meta["operation"] == "sum"
    pattern = re.compile(meta["queueName"])
    queues = {config["JOBS_QUEUE"], config["CHUNKS_QUEUE"]}
    assert all(pattern.fullmatch(q) for q in queues)
    assert not pattern.fullmatch(config["RESULTS_QUEUE"]) and not pattern.fullmatch(config["CHUNKS_DEAD_LETTER_QUEUE"])
    assert not pattern.fullmatch(f"{config['CHUNKS_QUEUE']}.gather.some-job")
    secret_ref = docs["TriggerAuthentication"]["spec"]["secretTargetRef"][0]
    assert secret_ref["key"] in docs["Secret"]["stringData"] and secret_ref["parameter"] == "host"
    assert docs["Secret"]["stringData"][secret_ref["key"]].startswith("http://")
    assert trigger["authenticationRef"]["name"] == docs["TriggerAuthentication"]["metadata"]["name"]


def test_compose_fans_out_over_scaled_workers():
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    assert "FANOUT_MIN_SECONDS" in worker["environment"]


def test_compose_runs_the_gateway_where_workers_can_fetch_uploads():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway, worker = compose["services"]["gateway"], compose["services"]["worker"]
    env = gateway["environment"]
    assert gateway["command"] == ["python", "cmd/gateway/main.py"] and gateway["build"] == "."
    assert env["GATEWAY_HOST"] == "0.0.0.0" and f"{env['GATEWAY_PORT']}:{env['GATEWAY_PORT']}" in gateway["ports"]
    assert env["GATEWAY_PUBLIC_URL"] == f"http://gateway:{env['GATEWAY_PORT']}"  # the service name, on the network
    hosts = worker["environment"]["ALLOWED_URL_HOSTS"]
    assert hosts == "${ALLOWED_URL_HOSTS:-}"  # any host by default, so the gateway's URLs are allowed
    database = env["GATEWAY_DATABASE_URL"].removeprefix("sqlite:///")
    assert any(database.startswith(v.split(":", 1)[1]) for v in gateway["volumes"])  # the records outlive a container
    assert any(env["GATEWAY_UPLOAD_DIR"].startswith(v.split(":", 1)[1]) for v in gateway["volumes"])
