"""A deploy that changes a saga, with sagas in flight: those finish on the definition
version they started on, new ones start on the new version; a deploy that drops a version
a saga in flight still uses is refused (exit 78) before it processes anything.

The deploy is the orchestrator restarted with SAGA_SAGAS naming another list of sagas
(tests/fixtures/deploy_v2.py: CreateOrderSaga v1 and v2, where v2 adds a step). A broker
and workers of its own: the test stops and restarts the orchestrator, and stops the
Order Service to hold sagas in flight (CREATING_ORDER retries until it answers).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from messaging import catalog, client, exit_codes
from messaging.local_workers import Workers
from schemas import messages as m
from tests.integration.order_helpers import place_orders, poll, wait_terminal
from tests.ports import bindable, broker_port

pytestmark = pytest.mark.integration

V1_AND_V2 = "tests.fixtures.deploy_v2:SAGAS"
ONLY_V2 = "tests.fixtures.deploy_v2:ONLY_V2"
CATALOG = """
currency: EUR
products:
  - {id: deploy-widget, stock: 1000, price: "1.00"}
customers:
  - {id: deploy-rich, balance: "1000.00"}
"""
ORDER = ("deploy-rich", [("deploy-widget", 1)])


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in ports and bindable(port):
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Workers]]:
    """A broker of its own with the topics and the catalog, and the four workers, each
    service its own Workers (so one can be stopped while the others are watched)."""
    home = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "SAGA_HOME": str(home), "SAGA_KAFKA_PORT": str(broker_port())}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("SAGA_SAGAS", None)
    saga = [sys.executable, "-m", "cli.main"]
    for args in (["kafka", "start"], ["topics", "apply"]):
        run = subprocess.run([*saga, *args], env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
    patch = pytest.MonkeyPatch()
    patch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{env['SAGA_KAFKA_PORT']}")
    catalog.publish(catalog.parse(CATALOG))
    ports = dict(zip(("orchestrator", "order", "product", "payment"), free_ports(4), strict=True))
    services = {name: Workers([name], ports={name: port}, env=env) for name, port in ports.items()}
    try:
        for workers in services.values():
            workers.start()
        for workers in services.values():
            workers.wait_ready(timeout=180)
        yield services
    finally:
        for workers in services.values():
            workers.stop()
        subprocess.run([*saga, "kafka", "stop"], env=env, capture_output=True, timeout=120)
        patch.undo()


def deploy(orchestrator: Workers, sagas: str | None) -> None:
    """Restart the orchestrator with the sagas `sagas` names (None: the default ones)."""
    orchestrator.stop()
    if sagas is None:
        orchestrator.env.pop("SAGA_SAGAS", None)
    else:
        orchestrator.env["SAGA_SAGAS"] = sagas
    orchestrator.start()


def started(requests: list[m.OrderRequested]) -> list[m.SagaEvent]:
    """The first SagaEvent of each saga, once each has one."""

    def firsts() -> list[m.SagaEvent]:
        return [events[0] for r in requests if (events := client.saga_events(r.order_id))]

    return poll(firsts, lambda found: len(found) == len(requests), "every saga started")


@pytest.mark.timeout(420)
def test_sagas_in_flight_finish_on_their_version_across_a_deploy(
    system: dict[str, Workers],
) -> None:
    orchestrator, order_service = system["orchestrator"], system["order"]
    order_service.stop()  # sagas now wait in CREATING_ORDER, re-sending CreateOrder
    first_generation = place_orders(ORDER, ORDER, ORDER)
    assert {e.version for e in started(first_generation)} == {1}

    deploy(orchestrator, V1_AND_V2)
    orchestrator.wait_ready(timeout=180)
    second_generation = place_orders(ORDER, ORDER)
    assert {e.version for e in started(second_generation)} == {2}

    order_service.start()
    finals = wait_terminal(first_generation + second_generation, timeout=180)
    assert {e.to_state for e in finals.values()} == {"ORDER_APPROVED"}
    for request in first_generation:
        events = client.saga_events(request.order_id)
        assert {e.version for e in events} == {1}
        assert "RECHECKING_ORDER" not in [e.to_state for e in events]
    for request in second_generation:
        events = client.saga_events(request.order_id)
        assert {e.version for e in events} == {2}
        path = [e.to_state for e in events]
        assert path[-3:] == ["RECHECKING_ORDER", "APPROVING_ORDER", "ORDER_APPROVED"], path


@pytest.mark.timeout(420)
def test_a_deploy_dropping_a_version_in_flight_is_refused(system: dict[str, Workers]) -> None:
    orchestrator, order_service = system["orchestrator"], system["order"]
    deploy(orchestrator, None)  # version 1 only: the versions 2 of before have ended
    orchestrator.wait_ready(timeout=180)
    order_service.stop()
    (in_flight,) = place_orders(ORDER)
    assert started([in_flight])[0].version == 1

    deploy(orchestrator, ONLY_V2)
    worker = orchestrator.workers["orchestrator"]
    assert worker.process is not None
    code = worker.process.wait(timeout=180)
    output = "\n".join(worker.lines)
    assert code == exit_codes.STATE_REFUSED, output[-3000:]
    assert (
        "a CreateOrderSaga saga runs on definition version 1, which this deploy dropped" in output
    ), output[-3000:]

    deploy(orchestrator, None)  # the version is back: the saga finishes
    order_service.start()
    finals = wait_terminal([in_flight], timeout=180)
    assert finals[in_flight.order_id].to_state == "ORDER_APPROVED"
