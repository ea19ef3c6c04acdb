"""The engine as a library: it imports no saga; a SagaType is checked when built; a saga
finishes on the definition version it started on while new sagas start on the latest,
and a row on a version the deploy dropped is refused."""

from __future__ import annotations

import ast
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from orchestrator.engine import (
    DefinitionError,
    DefinitionMissing,
    SagaType,
    decide,
)
from orchestrator.engine.runner import SagaRunner
from orchestrator.sagas import SAGAS, create_order, saga_named
from orchestrator.sagas.create_order import (
    APPROVING_ORDER,
    AUTHORIZING_PAYMENT,
    DEFINITION,
    ORDER_APPROVED,
)
from schemas import codec
from schemas.messages import (
    ApproveOrder,
    CancelOrderRequested,
    OrderApproved,
    OrderCreated,
    PaymentAuthorized,
    ProductsReserved,
    SagaState,
    StepTimedOut,
)
from schemas.state import StateRefused
from tests.fixtures.deploy_v2 import RECHECK, RECHECKING_ORDER, V2
from tests.unit.saga_factories import T0, reply, requested, saga_in

ENGINE = Path(__file__).resolve().parents[2] / "orchestrator" / "engine"
# What the engine may take from schemas.messages: its own messages, none of a saga's.
ENGINE_MESSAGES = {
    "AbortSaga",
    "ExpireSaga",
    "Money",
    "Outcome",
    "RetrySaga",
    "SagaActionAnswered",
    "SagaEvent",
    "StepTimedOut",
}


def imports_of(path: Path) -> list[tuple[str, set[str]]]:
    """(module, names) of every import in a file."""
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, {alias.name for alias in node.names}))
    return found


@pytest.mark.parametrize("path", sorted(ENGINE.glob("*.py")), ids=lambda p: p.name)
def test_the_engine_imports_no_saga(path: Path) -> None:
    for module, names in imports_of(path):
        assert not module.startswith(("orchestrator.sagas", "participants", "cli", "bench")), (
            f"{path.name} imports {module}"
        )
        assert module not in ("orchestrator.app", "orchestrator.diagram"), path.name
        if module == "schemas.messages":
            assert names <= ENGINE_MESSAGES, f"{path.name} imports saga messages {names}"
        if module == "schemas":
            assert "messages" not in names or path.name == "views.py", path.name


def test_the_engine_package_is_only_the_engine() -> None:
    # views.py reads money and events through `schemas.messages as m`: check its uses.
    source = (ENGINE / "views.py").read_text()
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "m"
    }
    assert used <= ENGINE_MESSAGES, used


# ---- a SagaType is checked when it is built ----


def remade(**changes: Any) -> SagaType:
    fields = {f.name: getattr(create_order.SAGA, f.name) for f in dataclasses.fields(SagaType)}
    return SagaType(**(fields | changes))


def test_a_saga_type_without_a_builder_or_a_route_is_refused() -> None:
    builders = {k: v for k, v in create_order.BUILDERS.items() if k is not ApproveOrder}
    with pytest.raises(DefinitionError, match="no builder for ApproveOrder"):
        remade(commands=builders)
    routes = {k: v for k, v in create_order.ROUTES.items() if k != "payment"}
    with pytest.raises(DefinitionError, match="no route for participant payment"):
        remade(routes=routes)


def test_a_saga_type_whose_row_lacks_the_engines_fields_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"row OrderCreated lacks the engine's fields"):
        remade(row=OrderCreated)


def test_versions_must_increase_and_each_definition_is_validated() -> None:
    v2 = dataclasses.replace(DEFINITION, version=2)
    with pytest.raises(DefinitionError, match=r"versions must increase, oldest first: \[2, 1\]"):
        remade(definitions=(v2, DEFINITION))
    broken = dataclasses.replace(v2, initial="NOWHERE")
    with pytest.raises(DefinitionError, match="initial state NOWHERE is unknown"):
        remade(definitions=(DEFINITION, broken))


def test_the_orchestrators_sagas_are_found_by_name() -> None:
    assert [saga.name for saga in SAGAS] == ["CreateOrderSaga", "CancelOrderSaga"]
    assert saga_named(None) is create_order.SAGA  # events from before there were two
    assert saga_named("CancelOrderSaga") is SAGAS[1]
    assert saga_named("NoSuchSaga") is None


# ---- versions: a deploy that changes a saga ----

# Version 2 (tests/fixtures/deploy_v2.py) adds a step after the payment and gives the
# payment longer to answer.
DEPLOYED = remade(definitions=(DEFINITION, V2))
ONLY_V2 = remade(definitions=(V2,))


def test_a_new_saga_starts_on_the_latest_version() -> None:
    started = decide(DEPLOYED, None, requested(), T0).state
    assert started is not None and started.version == 2
    event = decide(DEPLOYED, None, requested(), T0).events[0]
    assert (event.saga, event.version) == ("CreateOrderSaga", 2)


def test_a_saga_in_flight_finishes_on_the_version_it_started_on() -> None:
    old = saga_in(AUTHORIZING_PAYMENT)  # a version-1 row
    assert old.version == 1
    paid = decide(DEPLOYED, old, reply(PaymentAuthorized), T0)
    assert paid.state is not None and paid.state.state == APPROVING_ORDER  # v1: no recheck
    assert paid.events[0].version == 1
    paid_v2 = decide(DEPLOYED, dataclasses.replace(old, version=2), reply(PaymentAuthorized), T0)
    assert paid_v2.state is not None and paid_v2.state.state == RECHECKING_ORDER
    assert paid_v2.state.deadline == T0 + timedelta(seconds=5)
    (recheck,) = paid_v2.commands
    assert isinstance(recheck, ApproveOrder) and recheck.command_id == f"{old.saga_id}:{RECHECK}"


def test_deadlines_follow_the_version_of_the_row() -> None:
    at_products = saga_in("VERIFYING_PRODUCTS")
    reserved = reply(ProductsReserved)
    v1 = decide(DEPLOYED, at_products, reserved, T0).state
    v2 = decide(DEPLOYED, dataclasses.replace(at_products, version=2), reserved, T0).state
    assert v1 is not None and v1.deadline == T0 + timedelta(seconds=10)
    assert v2 is not None and v2.deadline == T0 + timedelta(seconds=20)


def test_a_row_on_a_dropped_version_is_refused_with_what_to_do() -> None:
    old = saga_in(AUTHORIZING_PAYMENT)
    with pytest.raises(DefinitionMissing) as refused:
        decide(ONLY_V2, old, reply(OrderCreated), T0)
    assert isinstance(refused.value, StateRefused)  # the worker stops, exit 78
    assert str(refused.value) == (
        "a CreateOrderSaga saga runs on definition version 1, which this deploy dropped"
        " (it has 2): deploy it again, with version 1 kept in CreateOrderSaga's definitions,"
        " until every saga on it has ended"
    )
    timeout = StepTimedOut(old.saga_id, old.step or "", old.attempt, T0, T0)
    with pytest.raises(DefinitionMissing):
        decide(ONLY_V2, old, timeout, T0)


def test_a_terminal_saga_on_a_dropped_version_needs_no_definition() -> None:
    done = saga_in(ORDER_APPROVED)  # ended on version 1
    assert decide(ONLY_V2, done, reply(OrderApproved), T0).state is done
    timeout = StepTimedOut(done.saga_id, "approve_order", 1, T0, T0)
    assert decide(ONLY_V2, done, timeout, T0).state is done


def test_a_request_for_an_existing_saga_of_another_type_changes_nothing() -> None:
    cancel_row = decide(SAGAS[1], None, _cancel_request("ord-1"), T0).state
    assert cancel_row is not None
    again = decide(create_order.SAGA, cancel_row, requested("ord-1"), T0)
    assert again.state is cancel_row and again.commands == () and again.events == ()
    reply_to_other = decide(create_order.SAGA, cancel_row, reply(OrderCreated), T0)
    assert reply_to_other.state is cancel_row


def _cancel_request(cancel_id: str) -> CancelOrderRequested:
    return CancelOrderRequested(cancel_id, "some-order", T0)


def test_the_first_version_is_still_what_saga_state_rows_default_to() -> None:
    assert SagaState.__dataclass_fields__["version"].default == 1


async def test_a_runner_refuses_a_store_holding_a_saga_on_a_dropped_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = SagaRunner(
        [ONLY_V2], app_id="saga-orchestrator", web_port=6984, store="rocksdb://",
        datadir=str(tmp_path),
    )  # fmt: skip
    store: Any = runner.sagas.data
    store._db_for_partition(1)[b"ord-1"] = codec.encode(saga_in(AUTHORIZING_PAYMENT))
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    monkeypatch.setattr(runner.app, "crash", crash)
    changelog = runner.sagas.changelog_topic.get_topic_name()
    await runner.sagas.on_recovery_completed({TP(changelog, 1)}, set())
    assert [type(e) for e in crashed] == [DefinitionMissing]
    with pytest.raises(DefinitionMissing):
        runner.check_version(b"ord-1", saga_in(AUTHORIZING_PAYMENT))
    runner.check_version(b"ord-2", dataclasses.replace(saga_in(AUTHORIZING_PAYMENT), version=2))
    runner.check_version(b"ord-3", saga_in(ORDER_APPROVED))  # ended: it needs no definition
