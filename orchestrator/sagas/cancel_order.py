"""CancelOrderSaga: cancel an approved order across the Order, Payment and Product services.

Read top to bottom as the business process: the Order Service holds the order for this
cancel (APPROVED -> CANCEL_PENDING; refused for an order that is not approved, being or
already cancelled); that is the pivot: from there the cancel only goes forward. The
Payment Service refunds what the order's CreateOrderSaga captured, the Product Service
returns the units it bought to `available`, and the Order Service marks the order
CANCELLED. If the Order Service does not answer in time, the hold is undone
(CANCEL_PENDING -> APPROVED) and the cancel rejected.

A cancel racing its order's CreateOrderSaga is refused, not queued: until the order is
APPROVED, BeginCancelOrder is refused ("not approved yet"), and the client may ask again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any

from orchestrator.engine import (
    DEADLINE,
    Forget,
    Route,
    SagaDefinition,
    SagaType,
    Start,
    State,
    Step,
    StepKind,
    Transition,
    backoff,
    command_id,
    single_deadline,
)
from schemas.limits import id_problem, merged_items
from schemas.messages import (
    BeginCancelOrder,
    CancelOrderRequested,
    CancelSagaState,
    ConfirmCancelOrder,
    ForgetCancel,
    OrderCancelBegun,
    OrderCancelled,
    OrderCancelRefused,
    OrderCancelUndone,
    PaymentRefunded,
    ProductsReturned,
    RefundPayment,
    ReturnProducts,
    UndoBeginCancelOrder,
)

NAME = "CancelOrderSaga"
REQUEST_TOPIC = "orders.requested"  # with the orders: co-partitioned with replies and rows

# ---- participants ----

ORDER, PRODUCT, PAYMENT = "order", "product", "payment"

# ---- states and steps ----

BEGINNING_CANCEL = "BEGINNING_CANCEL"
REFUNDING_PAYMENT = "REFUNDING_PAYMENT"
RETURNING_PRODUCTS = "RETURNING_PRODUCTS"
CONFIRMING_CANCEL = "CONFIRMING_CANCEL"
UNDOING_CANCEL = "UNDOING_CANCEL"
ORDER_CANCELLED = "ORDER_CANCELLED"
CANCEL_REJECTED = "CANCEL_REJECTED"

BEGIN_CANCEL = "begin_cancel"
REFUND_PAYMENT = "refund_payment"
RETURN_PRODUCTS = "return_products"
CONFIRM_CANCEL = "confirm_cancel"
UNDO_CANCEL = "undo_cancel"

RETRY = backoff(base_seconds=5, cap_seconds=60)
RESEND = single_deadline(seconds=10)  # x3 attempts: 30 s before undoing

DEFINITION = SagaDefinition(
    name=NAME,
    version=1,
    steps=(
        # forward steps, in order
        Step(
            name=BEGIN_CANCEL,
            participant=ORDER,
            command=BeginCancelOrder,
            success=OrderCancelBegun,
            failure=OrderCancelRefused,
            kind=StepKind.PIVOT,
            timeout=RESEND,
            attempts=3,
            compensation=UNDO_CANCEL,  # only when its reply does not come in time
        ),
        Step(
            name=REFUND_PAYMENT,
            participant=PAYMENT,
            command=RefundPayment,
            success=PaymentRefunded,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
        Step(
            name=RETURN_PRODUCTS,
            participant=PRODUCT,
            command=ReturnProducts,
            success=ProductsReturned,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
        Step(
            name=CONFIRM_CANCEL,
            participant=ORDER,
            command=ConfirmCancelOrder,
            success=OrderCancelled,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
        # compensation
        Step(
            name=UNDO_CANCEL,
            participant=ORDER,
            command=UndoBeginCancelOrder,
            success=OrderCancelUndone,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
    ),
    states=(
        State(BEGINNING_CANCEL, BEGIN_CANCEL),
        State(REFUNDING_PAYMENT, REFUND_PAYMENT),
        State(RETURNING_PRODUCTS, RETURN_PRODUCTS),
        State(CONFIRMING_CANCEL, CONFIRM_CANCEL),
        State(UNDOING_CANCEL, UNDO_CANCEL),
        State(ORDER_CANCELLED, None),
        State(CANCEL_REJECTED, None),
    ),
    transitions=(
        Transition(BEGINNING_CANCEL, OrderCancelBegun, REFUNDING_PAYMENT),
        Transition(BEGINNING_CANCEL, OrderCancelRefused, CANCEL_REJECTED),
        # a late OrderCancelBegun is undone by the UndoBeginCancelOrder queued behind it
        Transition(
            BEGINNING_CANCEL, DEADLINE, UNDOING_CANCEL, reason="order not held for cancel in time"
        ),
        Transition(UNDOING_CANCEL, OrderCancelUndone, CANCEL_REJECTED),
        Transition(REFUNDING_PAYMENT, PaymentRefunded, RETURNING_PRODUCTS),
        Transition(RETURNING_PRODUCTS, ProductsReturned, CONFIRMING_CANCEL),
        Transition(CONFIRMING_CANCEL, OrderCancelled, ORDER_CANCELLED),
    ),
    initial=BEGINNING_CANCEL,
    terminal=frozenset({ORDER_CANCELLED, CANCEL_REJECTED}),
    invalid_request=CANCEL_REJECTED,
)


# ---- where commands go ----


def first_product(command: Any) -> str:
    """The product ReturnProducts goes to first: the order's first product (repeated lines
    merged); it travels on from there, product by product."""
    return merged_items(command.items)[0].product_id


ROUTES: Mapping[str, Route] = {
    ORDER: Route("order.commands", attrgetter("order_id")),
    PRODUCT: Route("product.commands", first_product),
    PAYMENT: Route("payment.commands", attrgetter("customer_id")),
}


# ---- how each command is built from the saga's row ----


def _head(row: CancelSagaState, cid: str, now: datetime) -> dict[str, Any]:
    return {"saga_id": row.saga_id, "command_id": cid, "attempt": row.attempt, "sent_at": now}


def _order_command(
    command_type: type[BeginCancelOrder | UndoBeginCancelOrder | ConfirmCancelOrder],
) -> Callable[[CancelSagaState, str, datetime], Any]:
    """Builder of an Order Service command: the order is all it needs."""

    def build(row: CancelSagaState, cid: str, now: datetime) -> Any:
        return command_type(**_head(row, cid, now), order_id=row.order_id)

    return build


def _refund_payment(row: CancelSagaState, cid: str, now: datetime) -> RefundPayment:
    return RefundPayment(**_head(row, cid, now), order_id=row.order_id, customer_id=row.customer_id)


def _return_products(row: CancelSagaState, cid: str, now: datetime) -> ReturnProducts:
    return ReturnProducts(**_head(row, cid, now), order_id=row.order_id, items=list(row.items))


BUILDERS: Mapping[type, Callable[[CancelSagaState, str, datetime], Any]] = {
    BeginCancelOrder: _order_command(BeginCancelOrder),
    RefundPayment: _refund_payment,
    ReturnProducts: _return_products,
    ConfirmCancelOrder: _order_command(ConfirmCancelOrder),
    UndoBeginCancelOrder: _order_command(UndoBeginCancelOrder),
}


# ---- what the participants forget once the saga expired (retention) ----
#
# A cancel's effects are changes of its order's rows: the order CANCELLED, its
# CreateOrderSaga's payment REFUNDED and holds RETURNED; those go when the CreateOrderSaga
# expires (which ended earlier). Its own row is the Order Service's OrderCancel (what the
# cancel did, so its duplicates get the same answer): that goes now, unless the order
# still names this cancel (it cancelled it): then it goes with the order. A request with
# an invalid order id reached no participant.


def _forget_cancel(row: CancelSagaState, _ended_by: datetime, now: datetime) -> ForgetCancel | None:
    if id_problem("order id", row.order_id) is not None:
        return None
    cid = command_id(row.saga_id, "forget_cancel")
    return ForgetCancel(row.saga_id, cid, 1, now, row.order_id)


FORGET = Forget(commands=((ORDER, ForgetCancel, _forget_cancel),))


# ---- what a request and the replies put in the row ----


def start(request: CancelOrderRequested) -> Start:
    """The order to cancel; its customer and items come with OrderCancelBegun. A request
    whose order id cannot be one is rejected at once."""
    data: dict[str, Any] = {
        "order_id": request.order_id,
        "customer_id": "",
        "items": [],
        "refunded": None,
    }
    problem = id_problem("order id", request.order_id)
    return Start(data, [] if problem is None else [problem])


def absorb(_row: CancelSagaState, reply: object) -> Mapping[str, Any]:
    """What the Order Service held for the cancel, and what the Payment Service gave back."""
    if isinstance(reply, OrderCancelBegun):
        return {"customer_id": reply.customer_id, "items": list(reply.items)}
    if isinstance(reply, PaymentRefunded):
        return {"refunded": reply.refunded}
    return {}


def failure_reason(reply: object) -> str | None:
    if isinstance(reply, OrderCancelRefused):
        return f"cancel refused: {reply.reason}"
    return None


def summary(row: CancelSagaState) -> Mapping[str, Any]:
    return {"order_id": row.order_id, "customer_id": row.customer_id, "refunded": row.refunded}


def describe(row: CancelSagaState) -> Mapping[str, Any]:
    order = {"order_id": row.order_id, "customer_id": row.customer_id, "items": row.items}
    return {"cancel": {**order, "refunded": row.refunded}}


SAGA = SagaType(
    name=NAME,
    definitions=(DEFINITION,),
    request=CancelOrderRequested,
    request_topic=REQUEST_TOPIC,
    row=CancelSagaState,
    saga_id=attrgetter("cancel_id"),
    start=start,
    commands=BUILDERS,
    routes=ROUTES,
    absorb=absorb,
    failure_reason=failure_reason,
    summary=summary,
    describe=describe,
    forget=FORGET,
)
