"""Where a worker listens, what it advertises, and how several workers of a service are
named, addressed and given data folders (messaging.faust_app, messaging.local_workers).
No broker."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import worker_cmd
from messaging.faust_app import WebAddress, create_app, web_address, worker_datadir
from messaging.local_workers import Workers


@pytest.fixture(autouse=True)
def no_address_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAGA_WEB_BIND", raising=False)
    monkeypatch.delenv("SAGA_WEB_HOST", raising=False)
    monkeypatch.setenv("SAGA_HOME", str(tmp_path))


def test_a_worker_listens_on_loopback_and_advertises_it_by_default() -> None:
    assert web_address() == WebAddress("127.0.0.1", "127.0.0.1")


def test_a_worker_bound_to_one_address_advertises_that_address() -> None:
    assert web_address("127.0.0.2") == WebAddress("127.0.0.2", "127.0.0.2")


def test_a_worker_bound_to_every_interface_advertises_its_host_name() -> None:
    assert web_address("0.0.0.0") == WebAddress("0.0.0.0", socket.gethostname())


def test_an_advertised_host_wins_over_the_bind_address() -> None:
    assert web_address("0.0.0.0", "node-7.internal") == WebAddress("0.0.0.0", "node-7.internal")


def test_the_environment_gives_the_defaults_and_arguments_override_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGA_WEB_BIND", "0.0.0.0")
    monkeypatch.setenv("SAGA_WEB_HOST", "node-1.internal")
    assert web_address() == WebAddress("0.0.0.0", "node-1.internal")
    assert web_address("127.0.0.3", "127.0.0.3") == WebAddress("127.0.0.3", "127.0.0.3")


def test_a_wildcard_is_refused_as_the_advertised_host() -> None:
    with pytest.raises(ValueError, match="no host other workers can reach"):
        web_address("127.0.0.1", "0.0.0.0")


def test_the_router_and_the_list_views_use_the_advertised_url() -> None:
    app = create_app("saga-product", web_port=7001, web_bind="127.0.0.2", store="memory://")
    assert app.conf.web_bind == "127.0.0.2"
    assert str(app.conf.canonical_url) == "http://127.0.0.2:7001"
    # What the worker publishes to its group, for the others to route its keys to.
    assignor: Any = app.assignor
    assert str(assignor._metadata.url) == "http://127.0.0.2:7001"


def test_workers_on_one_machine_get_data_folders_of_their_own(tmp_path: Path) -> None:
    def folder(bind: str, port: int) -> str:
        return worker_datadir("saga-product", WebAddress(bind, bind), port).name

    assert folder("127.0.0.1", 6068) == "saga-product-6068"  # as before this release
    assert folder("0.0.0.0", 6068) == "saga-product-6068"
    assert folder("127.0.0.2", 6068) == "saga-product-127.0.0.2-6068"
    assert folder("127.0.0.3", 6068) == "saga-product-127.0.0.3-6068"
    assert worker_datadir("saga-product", WebAddress("127.0.0.1", "h"), 1).parent == (
        tmp_path / "workers"
    )


def test_saga_worker_refuses_a_wildcard_as_its_advertised_host() -> None:
    result = CliRunner().invoke(worker_cmd.worker, ["product", "--web-host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "no host other workers can reach" in result.output


def test_more_workers_of_a_service_are_numbered_and_take_the_next_block_of_ports() -> None:
    workers = Workers(counts={"product": 3, "order": 2})
    assert {name: w.web_port for name, w in workers.workers.items()} == {
        "orchestrator": 6066,
        "order": 6067,
        "order-2": 6071,
        "product": 6068,
        "product-2": 6072,
        "product-3": 6076,
        "payment": 6069,
    }
    assert [w.name for w in workers.of("product")] == ["product", "product-2", "product-3"]
    assert {w.service for w in workers.of("product")} == {"product"}
    assert workers.workers["product-3"].url == "http://127.0.0.1:6076"


def test_a_worker_added_later_takes_the_lowest_free_number() -> None:
    workers = Workers(["payment"], counts={"payment": 3}, ports={"payment": 7000})
    workers.remove("payment-2")
    again = workers.add("payment")
    assert (again.name, again.web_port) == ("payment-2", 7004)


def test_workers_on_other_hosts_may_share_a_port_but_not_an_address() -> None:
    workers = Workers([])
    first = workers.add("product", web_host="127.0.0.2", web_port=7100)
    second = workers.add("product", web_host="127.0.0.3", web_port=7100)
    assert (first.url, second.url) == ("http://127.0.0.2:7100", "http://127.0.0.3:7100")
    with pytest.raises(ValueError, match="already the address of worker product"):
        workers.add("orchestrator", web_host="127.0.0.2", web_port=7100)


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown service 'shipping'"):
        Workers([]).add("shipping")
