"""CreateOrderSaga: create an order across the Order, Product and Payment services.

Read top to bottom as the business process: the steps (each a participant's command,
the replies it waits for, its compensation), the states and transitions between them;
then where each participant's commands go, how each command is built from the saga's
row (`SagaState`: the order, its items, the total once products are reserved), and what
a request and the replies put in the row. The engine (orchestrator/engine) runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any

from orchestrator.engine import (
    DEADLINE,
    Forget,
    Notification,
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
from schemas.limits import id_problem, merged_items, request_problems
from schemas.messages import (
    ApproveOrder,
    AuthorizePayment,
    CancelPayment,
    CreateOrder,
    ForgetOrder,
    ForgetPayment,
    ForgetProducts,
    Money,
    OrderApproved,
    OrderCreated,
    OrderForgotten,
    OrderRejected,
    OrderRequested,
    PaymentAuthorized,
    PaymentCancelled,
    PaymentFailed,
    ProductsReleased,
    ProductsReserved,
    ProductsUnavailable,
    RejectOrder,
    ReleaseProducts,
    ReserveProducts,
    SagaState,
    SellProducts,
)

NAME = "CreateOrderSaga"
REQUEST_TOPIC = "orders.requested"

# ---- participants ----

ORDER, PRODUCT, PAYMENT = "order", "product", "payment"

# ---- states and steps ----

CREATING_ORDER = "CREATING_ORDER"
VERIFYING_PRODUCTS = "VERIFYING_PRODUCTS"
AUTHORIZING_PAYMENT = "AUTHORIZING_PAYMENT"
APPROVING_ORDER = "APPROVING_ORDER"
CANCELLING_PAYMENT = "CANCELLING_PAYMENT"
RELEASING_PRODUCTS = "RELEASING_PRODUCTS"
REJECTING_ORDER = "REJECTING_ORDER"
ORDER_APPROVED = "ORDER_APPROVED"
ORDER_REJECTED = "ORDER_REJECTED"

CREATE_ORDER = "create_order"
VERIFY_PRODUCTS = "verify_products"
AUTHORIZE_PAYMENT = "authorize_payment"
APPROVE_ORDER = "approve_order"
CANCEL_PAYMENT = "cancel_payment"
RELEASE_PRODUCTS = "release_products"
REJECT_ORDER = "reject_order"
SELL_PRODUCTS = "sell_products"

RETRY = backoff(base_seconds=5, cap_seconds=60)
RESEND = single_deadline(seconds=10)  # x3 attempts: 30 s before compensating

DEFINITION = SagaDefinition(
    name=NAME,
    version=1,
    steps=(
        # forward steps, in order
        Step(
            name=CREATE_ORDER,
            participant=ORDER,
            command=CreateOrder,
            success=OrderCreated,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
            compensation=REJECT_ORDER,
        ),
        Step(
            name=VERIFY_PRODUCTS,
            participant=PRODUCT,
            command=ReserveProducts,
            success=ProductsReserved,
            failure=ProductsUnavailable,
            kind=StepKind.COMPENSATABLE,
            timeout=RESEND,
            attempts=3,
            compensation=RELEASE_PRODUCTS,
        ),
        Step(
            name=AUTHORIZE_PAYMENT,
            participant=PAYMENT,
            command=AuthorizePayment,
            success=PaymentAuthorized,
            failure=PaymentFailed,
            kind=StepKind.PIVOT,
            timeout=RESEND,
            attempts=3,
            compensation=CANCEL_PAYMENT,  # only when its reply does not come in time
        ),
        Step(
            name=APPROVE_ORDER,
            participant=ORDER,
            command=ApproveOrder,
            success=OrderApproved,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
        # compensations
        Step(
            name=CANCEL_PAYMENT,
            participant=PAYMENT,
            command=CancelPayment,
            success=PaymentCancelled,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
        Step(
            name=RELEASE_PRODUCTS,
            participant=PRODUCT,
            command=ReleaseProducts,
            success=ProductsReleased,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
        Step(
            name=REJECT_ORDER,
            participant=ORDER,
            command=RejectOrder,
            success=OrderRejected,
            failure=None,
            kind=StepKind.RETRIABLE,
            timeout=RETRY,
        ),
    ),
    states=(
        State(CREATING_ORDER, CREATE_ORDER),
        State(VERIFYING_PRODUCTS, VERIFY_PRODUCTS),
        State(AUTHORIZING_PAYMENT, AUTHORIZE_PAYMENT),
        State(APPROVING_ORDER, APPROVE_ORDER),
        State(CANCELLING_PAYMENT, CANCEL_PAYMENT),
        State(RELEASING_PRODUCTS, RELEASE_PRODUCTS),
        State(REJECTING_ORDER, REJECT_ORDER),
        State(ORDER_APPROVED, None),
        State(ORDER_REJECTED, None),
    ),
    transitions=(
        Transition(CREATING_ORDER, OrderCreated, VERIFYING_PRODUCTS),
        Transition(VERIFYING_PRODUCTS, ProductsReserved, AUTHORIZING_PAYMENT),
        # the Product Service already released whatever it had reserved
        Transition(VERIFYING_PRODUCTS, ProductsUnavailable, REJECTING_ORDER),
        Transition(
            VERIFYING_PRODUCTS, DEADLINE, RELEASING_PRODUCTS, reason="products not verified in time"
        ),
        Transition(AUTHORIZING_PAYMENT, PaymentAuthorized, APPROVING_ORDER),
        Transition(AUTHORIZING_PAYMENT, PaymentFailed, RELEASING_PRODUCTS),
        # a late PaymentAuthorized is refunded by the CancelPayment queued behind it
        Transition(
            AUTHORIZING_PAYMENT,
            DEADLINE,
            CANCELLING_PAYMENT,
            reason="payment not authorized in time",
        ),
        Transition(CANCELLING_PAYMENT, PaymentCancelled, RELEASING_PRODUCTS),
        Transition(RELEASING_PRODUCTS, ProductsReleased, REJECTING_ORDER),
        Transition(APPROVING_ORDER, OrderApproved, ORDER_APPROVED),
        Transition(REJECTING_ORDER, OrderRejected, ORDER_REJECTED),
    ),
    initial=CREATING_ORDER,
    terminal=frozenset({ORDER_APPROVED, ORDER_REJECTED}),
    notifications=(
        # the approved order's reserved stock becomes sold
        Notification(SELL_PRODUCTS, ORDER_APPROVED, PRODUCT, SellProducts),
    ),
    invalid_request=ORDER_REJECTED,
)


# ---- where commands go ----


def first_product(command: Any) -> str:
    """The product a Product Service command goes to first: the order's first product
    (repeated lines merged). The command travels on from there, product by product."""
    return merged_items(command.items)[0].product_id


ROUTES: Mapping[str, Route] = {
    ORDER: Route("order.commands", attrgetter("order_id")),
    PRODUCT: Route("product.commands", first_product),
    PAYMENT: Route("payment.commands", attrgetter("customer_id")),
}


# ---- how each command is built from the saga's row ----


def _create_order(saga: SagaState, cid: str, now: datetime) -> CreateOrder:
    return CreateOrder(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        customer_id=saga.customer_id,
        items=list(saga.items),
    )


def _products_command(
    command_type: type[ReserveProducts | ReleaseProducts | SellProducts],
) -> Callable[[SagaState, str, datetime], Any]:
    """Builder of a Product Service command: the order's items, which travel product to
    product (reserve, release and sell carry the same fields)."""

    def build(saga: SagaState, cid: str, now: datetime) -> Any:
        return command_type(
            saga_id=saga.saga_id,
            command_id=cid,
            attempt=saga.attempt,
            sent_at=now,
            order_id=saga.order_id,
            items=list(saga.items),
        )

    return build


def _authorize_payment(saga: SagaState, cid: str, now: datetime) -> AuthorizePayment:
    if saga.total is None:  # only entered from ProductsReserved, which sets it
        raise ValueError(f"saga {saga.saga_id} authorizes a payment without a total")
    return AuthorizePayment(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        customer_id=saga.customer_id,
        amount=saga.total,
    )


def _approve_order(saga: SagaState, cid: str, now: datetime) -> ApproveOrder:
    return ApproveOrder(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
    )


def _reject_order(saga: SagaState, cid: str, now: datetime) -> RejectOrder:
    return RejectOrder(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        reason=saga.reason or "rejected",
    )


def _cancel_payment(saga: SagaState, cid: str, now: datetime) -> CancelPayment:
    return CancelPayment(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        customer_id=saga.customer_id,
    )


BUILDERS: Mapping[type, Callable[[SagaState, str, datetime], Any]] = {
    CreateOrder: _create_order,
    ReserveProducts: _products_command(ReserveProducts),
    AuthorizePayment: _authorize_payment,
    ApproveOrder: _approve_order,
    RejectOrder: _reject_order,
    ReleaseProducts: _products_command(ReleaseProducts),
    CancelPayment: _cancel_payment,
    SellProducts: _products_command(SellProducts),
}


# ---- what the participants forget once the saga expired (retention) ----
#
# The saga's order, its stock holds and its payment: per-saga rows, which only guard
# against duplicate or late commands of the saga, and it sends none once it has ended
# (see orchestrator/engine/retention.py). The products' counters and the accounts stay.
# The Order Service decides first (the gate): a CancelOrderSaga in flight on the order
# (CANCEL_PENDING) still needs the payment (its refund) and the holds (its return), so
# the order is kept and the saga with it, and the expiry timer asks again later. Once the
# order is forgotten, a cancel of it is refused (unknown order), so forgetting the
# payment and the holds cannot race one. A request that broke the input limits reached
# no participant: nothing to forget.


def _forget_order(saga: SagaState, ended_by: datetime, now: datetime) -> ForgetOrder | None:
    if not saga.items:
        return None
    cid = command_id(saga.saga_id, "forget_order")
    return ForgetOrder(saga.saga_id, cid, 1, now, saga.order_id, ended_by)


def _forget_products(saga: SagaState, _ended_by: datetime, now: datetime) -> ForgetProducts | None:
    if not saga.items:
        return None
    cid = command_id(saga.saga_id, "forget_products")
    return ForgetProducts(saga.saga_id, cid, 1, now, saga.order_id, list(saga.items))


def _forget_payment(saga: SagaState, _ended_by: datetime, now: datetime) -> ForgetPayment | None:
    if saga.total is None:  # it never asked for a payment (products were not reserved)
        return None
    cid = command_id(saga.saga_id, "forget_payment")
    return ForgetPayment(saga.saga_id, cid, 1, now, saga.order_id, saga.customer_id)


FORGET = Forget(
    gate=(ORDER, ForgetOrder, _forget_order),
    answer=OrderForgotten,
    commands=(
        (PRODUCT, ForgetProducts, _forget_products),
        (PAYMENT, ForgetPayment, _forget_payment),
    ),
)


# ---- what a request and the replies put in the row ----


def start(request: OrderRequested) -> Start:
    """The order of the request; one that breaks the input limits ends its saga at once,
    and its row keeps none of its lines and no invalid customer id (a small row)."""
    problems = request_problems(request)
    if problems:
        customer = "" if id_problem("customer id", request.customer_id) else request.customer_id
        data: dict[str, Any] = {
            "order_id": request.order_id,
            "customer_id": customer,
            "items": [],
            "total": None,
        }
        return Start(data, problems)
    data = {
        "order_id": request.order_id,
        "customer_id": request.customer_id,
        "items": list(request.items),
        "total": None,
    }
    return Start(data)


def absorb(_row: SagaState, reply: object) -> Mapping[str, Money]:
    """The reserved products' price total is what the payment asks for."""
    return {"total": reply.total} if isinstance(reply, ProductsReserved) else {}


def failure_reason(reply: object) -> str | None:
    if isinstance(reply, ProductsUnavailable):
        missing = ", ".join(
            f"{item.product_id} (requested {item.requested}, available {item.available})"
            for item in reply.missing
        )
        return f"products unavailable: {missing}" if missing else "products unavailable"
    if isinstance(reply, PaymentFailed):
        return f"payment failed: {reply.reason}" if reply.reason else "payment failed"
    return None


def summary(row: SagaState) -> Mapping[str, Any]:
    return {"customer_id": row.customer_id, "total": row.total}


def describe(row: SagaState) -> Mapping[str, Any]:
    order = {"order_id": row.order_id, "customer_id": row.customer_id, "items": row.items}
    return {"order": {**order, "total": row.total}}


SAGA = SagaType(
    name=NAME,
    definitions=(DEFINITION,),
    request=OrderRequested,
    request_topic=REQUEST_TOPIC,
    row=SagaState,
    saga_id=attrgetter("order_id"),
    start=start,
    commands=BUILDERS,
    routes=ROUTES,
    absorb=absorb,
    failure_reason=failure_reason,
    summary=summary,
    describe=describe,
    forget=FORGET,
)
