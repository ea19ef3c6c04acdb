"""Connection settings, read from the environment (never from files in the repo).

KAFKA_BOOTSTRAP_SERVERS points every command, worker and test at an existing cluster;
without it they use the local Kafka that `saga kafka start` runs on 127.0.0.1: the single
broker, or every node of the local cluster while one is started (`--brokers 3`).
Security settings for real clusters (all optional):
  KAFKA_SECURITY_PROTOCOL  PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
  KAFKA_SASL_MECHANISM     PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
  KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD
  KAFKA_SSL_CAFILE         CA bundle to verify the brokers
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Each worker's Faust app id, which is also the id of its Kafka consumer group.
APP_IDS = {
    "orchestrator": "saga-orchestrator",
    "order": "saga-order",
    "product": "saga-product",
    "payment": "saga-payment",
}
# The topics each service's agents consume: their partitions are split between its workers.
INPUT_TOPICS = {
    "orchestrator": ("orders.requested", "saga.replies"),
    "order": ("order.commands",),
    "product": ("product.commands",),
    "payment": ("payment.commands",),
}
DEFAULT_BROKER_PORT = 9092
LOCAL_BROKER_PORT = int(os.environ.get("SAGA_KAFKA_PORT", str(DEFAULT_BROKER_PORT)))


Env = Mapping[str, str]  # a process's environment; these functions read this one's by default


def local_home(env: Env | None = None) -> Path:
    """Where downloaded jars, broker data and worker state live (git-ignored)."""
    env = os.environ if env is None else env
    return Path(env.get("SAGA_HOME", PROJECT_ROOT / ".local")).resolve()


def external_bootstrap(env: Env | None = None) -> str | None:
    env = os.environ if env is None else env
    value = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    return value or None


def local_cluster_file(env: Env | None = None) -> Path:
    """Exists while a local multi-broker cluster is started (from `saga kafka start
    --brokers 3` to `saga kafka stop`) and holds its bootstrap list."""
    return local_home(env) / "kafka" / "cluster" / "started"


def local_cluster_bootstrap(env: Env | None = None) -> str | None:
    try:
        return local_cluster_file(env).read_text().strip() or None
    except FileNotFoundError:
        return None


def bootstrap_servers(env: Env | None = None) -> str:
    """Where every client connects: KAFKA_BOOTSTRAP_SERVERS, else every node of the local
    cluster while one is started, else the local single broker. Given another process's
    environment, where that process connects."""
    if env is None:
        port = LOCAL_BROKER_PORT
    else:
        port = int(env.get("SAGA_KAFKA_PORT", DEFAULT_BROKER_PORT))
    return external_bootstrap(env) or local_cluster_bootstrap(env) or f"127.0.0.1:{port}"


def _security_env() -> dict[str, str]:
    names = {
        "protocol": "KAFKA_SECURITY_PROTOCOL",
        "mechanism": "KAFKA_SASL_MECHANISM",
        "username": "KAFKA_SASL_USERNAME",
        "password": "KAFKA_SASL_PASSWORD",
        "cafile": "KAFKA_SSL_CAFILE",
    }
    return {key: os.environ[env] for key, env in names.items() if os.environ.get(env)}


ConfigValue = str | int | float | bool


def confluent_config(**extra: ConfigValue) -> dict[str, ConfigValue]:
    """Base configuration for confluent-kafka clients."""
    config: dict[str, ConfigValue] = {"bootstrap.servers": bootstrap_servers()}
    security = _security_env()
    if "protocol" in security:
        config["security.protocol"] = security["protocol"]
    if "mechanism" in security:
        config["sasl.mechanism"] = security["mechanism"]
    if "username" in security:
        config["sasl.username"] = security["username"]
        config["sasl.password"] = security.get("password", "")
    if "cafile" in security:
        config["ssl.ca.location"] = security["cafile"]
    config.update(extra)
    return config


def aiokafka_options() -> dict[str, object]:
    """Connection options for a plain aiokafka client (the CLI's admin requests that
    confluent-kafka does not expose), from the same environment."""
    import ssl

    security = _security_env()
    protocol = security.get("protocol", "PLAINTEXT").upper()
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers(),
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=security.get("cafile"))
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = security.get("mechanism", "PLAIN")
        options["sasl_plain_username"] = security.get("username")
        options["sasl_plain_password"] = security.get("password")
    return options


def faust_broker_credentials() -> object | None:
    """Faust `broker_credentials` built from the same environment, or None for PLAINTEXT."""
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials

    security = _security_env()
    protocol = security.get("protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=security.get("cafile"))
    if protocol == "SSL":
        return SSLCredentials(context)
    return SASLCredentials(
        username=security.get("username"),
        password=security.get("password"),
        mechanism=security.get("mechanism", "PLAIN"),
        ssl_context=context if protocol == "SASL_SSL" else None,
    )
