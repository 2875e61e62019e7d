"""Settings in, how this process reaches other machines: the broker (its topology, the session's timers,
a connection for the command-line tools) and outbound HTTP (the egress policy, with the gateway's public
URL, where workers fetch its uploads). Part of the wiring (worker/wiring.py), which re-exports these.
"""

import contextlib

from worker.config import BrokerSettings, GatewaySettings, Settings
from worker.egress import EgressPolicy, Proxies
from worker.errors import InputNotAllowed
from worker.service.publisher import Topology
from worker.service.session import BrokerSession, SessionOptions


def topology(settings: Settings) -> Topology:
    return Topology(
        jobs_queue=settings.jobs_queue,
        results_queue=settings.results_queue,
        dead_letter_exchange=settings.dead_letter_exchange,
        dead_letter_queue=settings.dead_letter_queue,
        progress_exchange=settings.progress_exchange,
        delivery_limit=settings.delivery_limit,
        chunks_queue=(settings.chunks_queue or None) if settings.fanout_min_seconds > 0 else None,
        chunks_dead_letter_queue=settings.chunks_dead_letter_queue,
        interactive_queue=settings.interactive_queue or None,
    )


def session_options(settings: BrokerSettings) -> SessionOptions:
    """The broker session's timers, for the consumer, the fan-out coordinator and the gateway alike."""
    return SessionOptions(
        heartbeat_seconds=settings.heartbeat_seconds,
        reconnect_max_seconds=settings.reconnect_max_seconds,
        blocked_connection_timeout_seconds=settings.blocked_connection_timeout_seconds,
        consumer_check_seconds=settings.consumer_check_seconds,
    )


def broker_connection(settings: BrokerSettings):
    """A pika connection to the first broker of AMQP_URL that answers (for the command-line tools)."""
    return BrokerSession(settings.amqp_url.get_secret_value(), session_options(settings)).connect()


def egress_policy(settings: Settings) -> EgressPolicy:
    """What outbound requests may reach (worker/egress): public addresses, ALLOWED_PRIVATE_ORIGINS / _NETWORKS and
    the gateway's origin (its uploads, without a proxy); the proxies (HTTPS_PROXY, ...; ValueError unless http://)."""
    policy = EgressPolicy.build(
        allowed_hosts=settings.url_hosts(),
        origins=settings.allowed_private_origins.split(","),
        networks=settings.allowed_private_networks.split(","),
        proxies=Proxies.build(**settings.proxy_urls()),
    )
    with contextlib.suppress(InputNotAllowed):  # not an http(s) URL: the gateway's uploads are refused, saying why
        policy = policy.allowing(gateway_public_url(settings), direct=True)
    return policy


def gateway_public_url(settings: GatewaySettings) -> str:
    """How workers reach the gateway (its uploads' URLs): GATEWAY_PUBLIC_URL, else http://GATEWAY_HOST:GATEWAY_PORT."""
    return (settings.gateway_public_url or f"http://{settings.gateway_host}:{settings.gateway_port}").rstrip("/")
