"""docker-compose.yml, the Dockerfile and deploy/k8s, checked by reading and offline validation (no Docker engine
or cluster runs here)."""

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

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


WORKER, GATEWAY = "Deployment/transcription-worker", "Deployment/transcription-gateway"


def k8s_documents() -> dict[str, dict]:
    """Every manifest in deploy/k8s, by "Kind/name", and also by kind alone when only one is of its kind."""
    documents = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_name = {f"{doc['kind']}/{doc.get('metadata', {}).get('name', '')}": doc for doc in documents}
    assert len(by_name) == len(documents)
    kinds = [doc["kind"] for doc in documents]
    return by_name | {doc["kind"]: doc for doc in documents if kinds.count(doc["kind"]) == 1}


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
            str(ROOT / "deploy" / "compose.cluster.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout


def test_k8s_core_manifests_are_valid_kubernetes_objects():
    docs = k8s_documents()
    core = [name for name, doc in docs.items() if "/" in name and doc["apiVersion"] in ("v1", "apps/v1", "policy/v1")]
    # 2 Deployments, a Service, a PersistentVolumeClaim, a ConfigMap, a Secret, a PodDisruptionBudget
    assert len(core) == 7, core
    for name in core:
        kubernetes_validate.validate(docs[name], KUBERNETES_VERSION, strict=True)  # raises on a bad field


def test_k8s_config_names_real_settings_and_the_probes_use_the_metrics_port():
    docs = k8s_documents()
    config = docs["ConfigMap"]["data"]
    fields = {name.upper() for name in Settings.model_fields}
    assert set(config) <= fields, set(config) - fields
    assert set(docs["Secret"]["stringData"]) - {"RABBITMQ_MANAGEMENT_URL"} <= fields
    settings = Settings(**{k.lower(): v for k, v in config.items()}, _env_file=None)
    assert settings.fanout_min_seconds > 0  # fan-out on: a long job uses the whole fleet

    pod = docs[WORKER]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "cmd/consumer/main.py"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(settings.work_dir), str(settings.whisper_models_dir)} <= mounts
    # A chunk task is seconds; the grace covers it (and a short job) on scale-in.
    assert pod["terminationGracePeriodSeconds"] >= 300


def test_keda_scales_on_jobs_interactive_jobs_and_chunks_counting_unacked_messages():
    docs = k8s_documents()
    config, scaled = docs["ConfigMap"]["data"], docs["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == docs[WORKER]["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength"
    # amqp counts ready messages only: busy workers would look idle and be scaled in.
    assert meta["protocol"] == "http" and meta["excludeUnacknowledged"] == "false"
    assert meta["useRegex"] == "true" and meta["operation"] == "sum"
    pattern = re.compile(meta["queueName"])
    queues = {config["JOBS_QUEUE"], config["INTERACTIVE_QUEUE"], config["CHUNKS_QUEUE"]}
    assert all(pattern.fullmatch(q) for q in queues)
    assert not pattern.fullmatch(config["RESULTS_QUEUE"]) and not pattern.fullmatch(config["CHUNKS_DEAD_LETTER_QUEUE"])
    assert not pattern.fullmatch(f"{config['CHUNKS_QUEUE']}.gathered.some-job")
    secret_ref = docs["TriggerAuthentication"]["spec"]["secretTargetRef"][0]
    assert secret_ref["key"] in docs["Secret"]["stringData"] and secret_ref["parameter"] == "host"
    assert docs["Secret"]["stringData"][secret_ref["key"]].startswith("http://")
    assert trigger["authenticationRef"]["name"] == docs["TriggerAuthentication"]["metadata"]["name"]


def test_compose_fans_out_over_scaled_workers():
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    assert "FANOUT_MIN_SECONDS" in worker["environment"]


def test_compose_runs_the_gateway_where_workers_can_fetch_uploads():
    compose = compose_config()  # ports and URLs with their defaults
    gateway, worker = compose["services"]["gateway"], compose["services"]["worker"]
    env = gateway["environment"]
    assert gateway["command"] == ["python", "cmd/gateway/main.py"] and gateway["build"] == "."
    assert env["GATEWAY_HOST"] == "0.0.0.0"  # inside its container; the host port is published on loopback
    assert {(port.target, port.published) for port in published_ports(gateway)} == {(int(env["GATEWAY_PORT"]),) * 2}
    assert env["GATEWAY_PUBLIC_URL"] == f"http://gateway:{env['GATEWAY_PORT']}"  # the service name, on the network
    hosts = worker["environment"]["ALLOWED_URL_HOSTS"]
    assert hosts == ""  # any host by default (ALLOWED_URL_HOSTS unset), so the gateway's URLs are allowed
    # ... and the workers know the gateway's origin: the one private origin they allow by default
    assert worker["environment"]["GATEWAY_PUBLIC_URL"] == env["GATEWAY_PUBLIC_URL"]
    database = env["GATEWAY_DATABASE_URL"].removeprefix("sqlite:///")
    assert any(database.startswith(v.split(":", 1)[1]) for v in gateway["volumes"])  # the records outlive a container
    assert any(env["GATEWAY_UPLOAD_DIR"].startswith(v.split(":", 1)[1]) for v in gateway["volumes"])


# --- safe by default (issue 17): secrets from .env, nothing published beyond loopback unless asked ---

COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
REFERENCE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    """A `${NAME:?message}` reference with NAME unset or empty: `docker compose` refuses to start."""


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution (`${X}`, `${X:-default}`, `${X-default}`, `${X:?err}`, `${X?err}`) in
    every string of `value`, with `env` standing for the shell and .env."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        unset = name not in env or (op is not None and op.startswith(":") and not env[name])
        if not unset:
            return env[name]
        if op is not None and op.endswith("?"):
            raise MissingVariable(name)
        return arg if op is not None else ""

    return REFERENCE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def compose_config(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as `docker compose config` sees it with `env`; by default, only the required
    variables set (to placeholders), so every default applies."""
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, {name: "set-by-test" for name in required_compose_variables()} if env is None else env)


def required_compose_variables() -> set[str]:
    return {m["name"] for m in REFERENCE.finditer(COMPOSE.read_text()) if m["op"] in (":?", "?")}


class Port(NamedTuple):
    host_ip: str  # "" = every address of the host
    published: int | None  # None: a random host port
    target: int


def published_ports(service: dict) -> list[Port]:
    """A service's host ports, from the short (`[IP:]HOST:CONTAINER[/proto]`) or the long syntax."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            ports.append(Port(entry.get("host_ip", ""), int(published) if published else None, int(entry["target"])))
            continue
        *host, target = str(entry).split("/")[0].rsplit(":", 2)
        ip = host[0].strip("[]") if len(host) == 2 else ""
        ports.append(Port(ip, int(host[-1]) if host else None, int(target)))
    return ports


def is_loopback(host_ip: str) -> bool:
    return host_ip == "localhost" or (host_ip != "" and ipaddress.ip_address(host_ip).is_loopback)


def test_no_default_broker_credentials_anywhere_in_the_deployment():
    files = [COMPOSE, COMPOSE_ENV_EXAMPLE, *sorted(K8S.glob("*.yaml"))]
    for path in files:
        assert not re.search(r"guest", path.read_text(), re.IGNORECASE), path
    rabbitmq = compose_config()["services"]["rabbitmq"]["environment"]
    assert rabbitmq["RABBITMQ_DEFAULT_USER"] and rabbitmq["RABBITMQ_DEFAULT_PASS"] == "set-by-test"  # from .env


def test_compose_workers_and_gateway_log_in_as_the_broker_user_from_the_env_file():
    env = {name: "set-by-test" for name in required_compose_variables()}
    env |= {"RABBITMQ_DEFAULT_USER": "someone", "RABBITMQ_DEFAULT_PASS": "0123abcd"}
    services = compose_config(env)["services"]
    broker = services["rabbitmq"]["environment"]
    for name in ("worker", "gateway"):
        url = urlsplit(services[name]["environment"]["AMQP_URL"])
        assert (url.username, url.password, url.hostname) == ("someone", "0123abcd", "rabbitmq"), name
        assert (url.username, url.password) == (broker["RABBITMQ_DEFAULT_USER"], broker["RABBITMQ_DEFAULT_PASS"])


def test_compose_publishes_the_broker_on_loopback_only():
    rabbitmq = compose_config()["services"]["rabbitmq"]
    ports = published_ports(rabbitmq)
    assert ports and all(is_loopback(port.host_ip) for port in ports), ports
    # The management UI stays on loopback whatever .env says (an ssh tunnel reaches it): its address is
    # no variable (its host port may be, MANAGEMENT_PORT).
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["rabbitmq"]
    management = [entry for entry, port in zip(raw["ports"], ports, strict=True) if port.target == 15672]
    assert management and all(str(entry).startswith("127.0.0.1:") for entry in management), management
    opened = compose_config({name: "x" for name in required_compose_variables()} | {"AMQP_BIND": "0.0.0.0"})
    assert [p.host_ip for p in published_ports(opened["services"]["rabbitmq"]) if p.target == 15672] == ["127.0.0.1"]


def test_compose_publishes_no_metrics_port_and_serves_metrics_on_the_container_network():
    services = compose_config()["services"]
    for name, service in services.items():
        for port in published_ports(service):
            assert is_loopback(port.host_ip), (name, port)  # the gateway too, unless GATEWAY_BIND opens it
    assert "ports" not in services["worker"]  # /metrics is scraped inside the network
    worker = services["worker"]["environment"]
    assert not ipaddress.ip_address(worker["METRICS_HOST"]).is_loopback  # reachable from the network


def test_compose_refuses_to_start_without_the_broker_password_and_a_gateway_key():
    raw = yaml.safe_load(COMPOSE.read_text())
    assert REFERENCE.fullmatch(raw["services"]["gateway"]["environment"]["GATEWAY_API_KEYS"])["op"] == ":?"
    assert REFERENCE.fullmatch(raw["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"])["op"] == ":?"
    assert {"RABBITMQ_DEFAULT_PASS", "GATEWAY_API_KEYS"} <= required_compose_variables()
    for missing in ("RABBITMQ_DEFAULT_PASS", "GATEWAY_API_KEYS"):
        env = {name: "set-by-test" for name in required_compose_variables()} | {missing: ""}
        try:
            compose_config(env)
        except MissingVariable as exc:
            assert str(exc) == missing
        else:
            raise AssertionError(f"compose starts with an empty {missing}")


def test_compose_gateway_is_on_loopback_unless_gateway_bind_opens_it():
    ports = published_ports(compose_config()["services"]["gateway"])
    assert [port.host_ip for port in ports] == ["127.0.0.1"]
    env = {name: "set-by-test" for name in required_compose_variables()} | {"GATEWAY_BIND": "0.0.0.0"}
    assert [port.host_ip for port in published_ports(compose_config(env)["services"]["gateway"])] == ["0.0.0.0"]


def test_compose_workers_and_gateway_agree_on_the_gateway_url():
    services = compose_config()["services"]
    gateway, worker = services["gateway"]["environment"], services["worker"]["environment"]
    # The workers allow exactly this origin among private addresses: it must be the gateway's own.
    assert worker["GATEWAY_PUBLIC_URL"] == gateway["GATEWAY_PUBLIC_URL"] == "http://gateway:8000"
    assert urlsplit(gateway["GATEWAY_PUBLIC_URL"]).port == int(gateway["GATEWAY_PORT"])
    assert worker["AMQP_URL"] == gateway["AMQP_URL"]


def test_the_env_example_names_every_variable_compose_reads():
    lines = COMPOSE_ENV_EXAMPLE.read_text().splitlines()
    set_here = {line.split("=", 1)[0] for line in lines if re.match(r"\w+=", line)}
    documented = {m[1] for line in lines if (m := re.match(r"#? ?(\w+)=", line))}
    files = (COMPOSE, ROOT / "deploy" / "compose.cluster.yml")
    referenced = {m["name"] for path in files for m in REFERENCE.finditer(path.read_text())}
    assert required_compose_variables() <= set_here  # the ones to fill in, not commented out
    assert referenced <= documented, referenced - documented
    # Copied as it is, the example still stops compose: its secrets are empty.
    example = dict(line.split("=", 1) for line in lines if re.match(r"\w+=", line))
    assert all(example[name] == "" for name in required_compose_variables())


def test_k8s_takes_broker_and_gateway_secrets_from_the_secret_and_probes_reach_the_metrics_port():
    docs = k8s_documents()
    config, secret = docs["ConfigMap"]["data"], docs["Secret"]["stringData"]
    assert "GATEWAY_API_KEYS" in secret and "GATEWAY_API_KEYS" not in config
    assert "AMQP_URL" not in config and "AMQP_URL" in secret
    for url in (*secret["AMQP_URL"].split(";"), secret["RABBITMQ_MANAGEMENT_URL"]):
        assert urlsplit(url).username and urlsplit(url).password
    # The kubelet probes the pod's IP: metrics on loopback would fail every probe.
    settings = Settings(**{k.lower(): v for k, v in config.items()})
    assert not ipaddress.ip_address(settings.metrics_host).is_loopback
    (container,) = docs[WORKER]["spec"]["template"]["spec"]["containers"]
    overridden = {e["name"] for e in container.get("env", [])}
    assert not overridden & {"METRICS_HOST", "GATEWAY_PUBLIC_URL"}  # the ConfigMap's values hold
    # Shared by workers and a gateway through the ConfigMap: the workers' one allowed private origin.
    assert urlsplit(config["GATEWAY_PUBLIC_URL"]).scheme == "http" and urlsplit(config["GATEWAY_PUBLIC_URL"]).port


def test_compose_gateway_healthcheck_asks_for_the_health_page_that_needs_no_key():
    test = " ".join(compose_config()["services"]["gateway"]["healthcheck"]["test"])
    (url,) = re.findall(r"http://[^'\"\s]+", test)
    assert urlsplit(url).hostname == "127.0.0.1" and urlsplit(url).path == "/healthz"  # /v1/*: 401 without a key


def test_k8s_gateway_is_served_where_the_workers_fetch_uploads_and_keeps_its_state_on_a_volume():
    docs = k8s_documents()
    config, gateway, service = docs["ConfigMap"]["data"], docs[GATEWAY], docs["Service/transcription-gateway"]
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "cmd/gateway/main.py"]
    assert container["image"] == docs[WORKER]["spec"]["template"]["spec"]["containers"][0]["image"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= {name.upper() for name in Settings.model_fields}
    secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"AMQP_URL", "GATEWAY_API_KEYS"}  # refuses to start on 0.0.0.0 without keys
    settings = Settings(**{k.lower(): v for k, v in (config | env).items() if v is not None}, _env_file=None)
    # The workers' one allowed private origin is this Service.
    public = urlsplit(settings.gateway_public_url)
    assert public.hostname == service["metadata"]["name"] and public.port == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.gateway_port, "metrics": settings.gateway_metrics_port}
    assert not ipaddress.ip_address(settings.gateway_host).is_loopback
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Records and uploads on the claim, which one pod at a time mounts.
    (mount,) = container["volumeMounts"]
    database = Path(settings.gateway_database_url.removeprefix("sqlite:///"))
    assert Path(mount["mountPath"]) in (*database.parents, *settings.gateway_upload_dir.parents)
    assert set(database.parents) & set(settings.gateway_upload_dir.parents) >= {Path(mount["mountPath"])}
    claim = docs[f"PersistentVolumeClaim/{pod['volumes'][0]['persistentVolumeClaim']['claimName']}"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and gateway["spec"]["strategy"]["type"] == "Recreate"
    assert gateway["spec"]["replicas"] == 1  # SQLite and local uploads (the manifest says how to scale)


def test_k8s_broker_is_a_three_node_cluster_and_every_client_is_given_all_three():
    docs = k8s_documents()
    cluster = docs["RabbitmqCluster"]
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1" and cluster["spec"]["replicas"] == 3
    conf = dict(line.split(" = ") for line in cluster["spec"]["rabbitmq"]["additionalConfig"].splitlines() if line)
    assert conf["consumer_timeout"] == local_broker.DEFAULT_CONFIG["consumer_timeout"]
    # autoheal: a node that was cut off and came back rejoins (tests/reliability/test_cluster.py)
    assert conf["cluster_partition_handling"] == "autoheal"
    name = cluster["metadata"]["name"]
    url = docs["Secret"]["stringData"]["AMQP_URL"]
    hosts = [urlsplit(part).hostname for part in url.split(";")]
    assert hosts == [f"{name}-server-{i}.{name}-nodes" for i in range(3)]  # the operator's pod names
    assert Settings(amqp_url=url, _env_file=None).amqp_url.get_secret_value() == url  # valid as AMQP_URL
    management = urlsplit(docs["Secret"]["stringData"]["RABBITMQ_MANAGEMENT_URL"])
    assert management.hostname == name  # the cluster's Service, for KEDA


def test_k8s_drains_evict_one_worker_at_a_time_and_never_wait_on_the_single_gateway():
    docs = k8s_documents()
    budgets = [doc for name, doc in docs.items() if name.startswith("PodDisruptionBudget/")]
    (budget,) = budgets
    assert budget["spec"]["selector"]["matchLabels"] == docs[WORKER]["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    # None keeps the one gateway pod (ReadWriteOnce claim): it would block every drain of its node.
    gateway = docs[GATEWAY]["spec"]["template"]["metadata"]["labels"]
    assert not any(set(b["spec"]["selector"]["matchLabels"].items()) <= set(gateway.items()) for b in budgets)


def compose_cluster_config(env_file: Path) -> subprocess.CompletedProcess:
    """`docker-compose config` of docker-compose.yml with deploy/compose.cluster.yml on top (no engine needed)."""
    files = ["-f", str(COMPOSE), "-f", str(ROOT / "deploy" / "compose.cluster.yml")]
    return subprocess.run(["docker-compose", "--env-file", str(env_file), *files, "config"], capture_output=True,
                          text=True, cwd=ROOT, env={"PATH": os.environ["PATH"]})  # fmt: skip


def test_compose_cluster_gives_every_client_all_three_nodes_and_every_node_one_cookie(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("RABBITMQ_DEFAULT_PASS=0123abcd\nGATEWAY_API_KEYS=k\nRABBITMQ_ERLANG_COOKIE=c0ffee\n")
    services = yaml.safe_load(compose_cluster_config(env_file).stdout)["services"]
    nodes = sorted(name for name in services if name.startswith("rabbitmq"))
    assert nodes == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    for name in nodes:
        node = services[name]
        assert node["hostname"] == name  # rabbit@<name>, which 30-cluster.conf names
        for variable in ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "RABBITMQ_CTL_ERL_ARGS"):
            assert node["environment"][variable] == "-setcookie c0ffee", (name, variable)
        assert any(str(v).endswith("/etc/rabbitmq/conf.d/30-cluster.conf:ro") for v in node["volumes"]), name
        assert all(is_loopback(port.host_ip) for port in published_ports(node)), name
    conf = dict(line.split(" = ") for line in (ROOT / "deploy/rabbitmq/30-cluster.conf").read_text().splitlines()
                if line and not line.startswith("#"))  # fmt: skip
    assert conf["cluster_formation.classic_config.nodes.1"] == "rabbit@rabbitmq"
    assert conf["cluster_partition_handling"] == "autoheal"
    for name in ("worker", "gateway"):
        url = services[name]["environment"]["AMQP_URL"]
        assert [urlsplit(part).hostname for part in url.split(";")] == nodes, name
        assert Settings(amqp_url=url, _env_file=None).amqp_url.get_secret_value() == url
        assert {n: d["condition"] for n, d in services[name]["depends_on"].items()} == dict.fromkeys(
            nodes, "service_healthy"
        )  # every node runs first: quorum queues declared then get all three as members
    env_file.write_text("RABBITMQ_DEFAULT_PASS=0123abcd\nGATEWAY_API_KEYS=k\n")
    refused = compose_cluster_config(env_file)
    assert refused.returncode != 0 and "RABBITMQ_ERLANG_COOKIE" in refused.stderr
