"""Where a worker listens, what it advertises, and how several workers of a service are
named, addressed and given data folders (messaging.faust_app, cli.processes). No broker."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import worker_cmd
from messaging.faust_app import WebAddress, create_app, web_address, worker_datadir


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
