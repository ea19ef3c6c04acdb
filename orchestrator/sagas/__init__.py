"""The sagas the orchestrator runs, one module each, on the engine (orchestrator/engine)."""

from orchestrator.engine import SagaType
from orchestrator.sagas import cancel_order, create_order

SAGAS: tuple[SagaType, ...] = (create_order.SAGA, cancel_order.SAGA)


def saga_named(name: str | None) -> SagaType | None:
    """The saga type of a SagaEvent's `saga` (None: events written before there were
    several were all CreateOrderSaga's)."""
    name = name or create_order.NAME
    return next((saga for saga in SAGAS if saga.name == name), None)
