"""Typed Python form of every message in schemas/*.avsc.

One frozen dataclass per Avro record; field names and order match the .avsc file of the
same name (a unit test checks this). Money is `Money` (Decimal, scale 2, plus an ISO
currency code), ids are `str`, times are timezone-aware UTC `datetime`s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


class Outcome(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class OrderItem:
    product_id: str
    quantity: int


@dataclass(frozen=True)
class MissingItem:
    product_id: str
    requested: int
    available: int


# ---- client requests (orders.requested, key = saga id) ----


@dataclass(frozen=True)
class OrderRequested:
    """Starts a CreateOrderSaga (saga id = order id)."""

    order_id: str
    customer_id: str
    items: list[OrderItem]
    requested_at: datetime


@dataclass(frozen=True)
class CancelOrderRequested:
    """Starts a CancelOrderSaga of an approved order (saga id = cancel id)."""

    cancel_id: str
    order_id: str
    requested_at: datetime


# ---- commands (orchestrator -> participants) ----
# Every command: saga_id, command_id (stable per saga step: "{saga_id}:{step}"),
# attempt (1, 2, ... on re-sends of the same command), sent_at.


@dataclass(frozen=True)
class CreateOrder:
    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    customer_id: str
    items: list[OrderItem]


@dataclass(frozen=True)
class ApproveOrder:
    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str


@dataclass(frozen=True)
class RejectOrder:
    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    reason: str


@dataclass(frozen=True)
class ReserveProducts:
    """Travels from product to product of the order (its `hop`, repeated lines merged),
    each adding its result; the last product replies (participants/product/logic.py)."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    items: list[OrderItem]
    hop: int = 0  # index of the product this record is for: 0 from the orchestrator
    results: list[ItemResult] = field(default_factory=list)  # of the products before


@dataclass(frozen=True)
class ReleaseProducts:
    """Travels from product to product like ReserveProducts; the last one replies."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    items: list[OrderItem] = field(default_factory=list)
    hop: int = 0


@dataclass(frozen=True)
class AuthorizePayment:
    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    customer_id: str
    amount: Money


@dataclass(frozen=True)
class CancelPayment:
    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    customer_id: str


@dataclass(frozen=True)
class SellProducts:
    """Notification: the saga was approved, what it holds becomes sold (no reply). Travels
    from product to product like ReserveProducts."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    items: list[OrderItem]
    hop: int = 0


# ---- CancelOrderSaga's commands ----


@dataclass(frozen=True)
class BeginCancelOrder:
    """An APPROVED order becomes CANCEL_PENDING, held by this saga; else refused."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str


@dataclass(frozen=True)
class UndoBeginCancelOrder:
    """Compensation: an order this saga made CANCEL_PENDING is APPROVED again."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str


@dataclass(frozen=True)
class ConfirmCancelOrder:
    """The order this saga holds in CANCEL_PENDING becomes CANCELLED."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str


@dataclass(frozen=True)
class RefundPayment:
    """Refund what the order's CreateOrderSaga captured."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    customer_id: str


@dataclass(frozen=True)
class ReturnProducts:
    """What the order's CreateOrderSaga bought goes back to available. Travels from product
    to product like ReserveProducts."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    items: list[OrderItem]
    hop: int = 0


# ---- forgetting an expired saga (retention: see orchestrator/engine/retention.py) ----
# The orchestrator sends these once a terminal saga's row leaves its table. None can be
# followed by a command of the same saga: it sends none once terminal.


@dataclass(frozen=True)
class ForgetOrder:
    """A CreateOrderSaga expired: forget its order, unless a cancel holds it. Answered."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    ended_by: datetime  # the ExpireSaga's cut-off, echoed by OrderForgotten


@dataclass(frozen=True)
class ForgetProducts:
    """A CreateOrderSaga expired: each product forgets its hold (no reply). Travels from
    product to product like SellProducts."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    items: list[OrderItem]
    hop: int = 0


@dataclass(frozen=True)
class ForgetPayment:
    """A CreateOrderSaga expired: the customer's account forgets its payment (no reply)."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str
    customer_id: str


@dataclass(frozen=True)
class ForgetCancel:
    """A CancelOrderSaga expired: the order forgets its OrderCancel row (no reply)."""

    saga_id: str
    command_id: str
    attempt: int
    sent_at: datetime
    order_id: str


# ---- replies (participants -> saga.replies, key = saga id) ----
# Every reply echoes saga_id, command_id, attempt and carries an outcome.


@dataclass(frozen=True)
class OrderCreated:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str


@dataclass(frozen=True)
class OrderApproved:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str


@dataclass(frozen=True)
class OrderRejected:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str


@dataclass(frozen=True)
class ProductsReserved:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    total: Money  # price of the reserved items; the amount the payment step charges


@dataclass(frozen=True)
class ProductsUnavailable:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    missing: list[MissingItem]


@dataclass(frozen=True)
class ProductsReleased:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime


@dataclass(frozen=True)
class PaymentAuthorized:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    amount: Money


@dataclass(frozen=True)
class PaymentFailed:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    reason: str


@dataclass(frozen=True)
class PaymentCancelled:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    refunded: Money  # zero when nothing had been charged


# ---- CancelOrderSaga's replies ----


@dataclass(frozen=True)
class OrderCancelBegun:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str
    customer_id: str
    items: list[OrderItem]


@dataclass(frozen=True)
class OrderCancelRefused:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str
    reason: str


@dataclass(frozen=True)
class OrderCancelUndone:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str


@dataclass(frozen=True)
class OrderCancelled:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str


@dataclass(frozen=True)
class PaymentRefunded:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    refunded: Money


@dataclass(frozen=True)
class ProductsReturned:
    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime


@dataclass(frozen=True)
class OrderForgotten:
    """Answer to ForgetOrder: SUCCESS forgotten (or never known), FAILURE kept (reason)."""

    saga_id: str
    command_id: str
    attempt: int
    outcome: Outcome
    replied_at: datetime
    order_id: str
    ended_by: datetime
    reason: str | None = None


# ---- orchestrator internal ----


@dataclass(frozen=True)
class StepTimedOut:
    """Sent by the deadline timer to saga.replies; handled by the agent like a reply."""

    saga_id: str
    step: str
    attempt: int
    deadline: datetime
    fired_at: datetime


@dataclass(frozen=True)
class SagaEvent:
    """One per saga transition, on saga.events (key = saga id)."""

    saga_id: str
    sequence: int  # 1, 2, ... per saga
    at: datetime
    trigger: str  # name of the message that caused the transition
    from_state: str | None  # None for the first event
    to_state: str
    step: str | None
    attempt: int
    reason: str | None
    commands: list[str]  # names of the commands sent by this transition
    terminal: bool
    saga: str | None = None  # the saga's type (None: CreateOrderSaga, from before others)
    version: int | None = None  # of the saga's definition (None: 1)
    operator: str | None = None  # whose action caused it (reason says why); None otherwise


# ---- operator actions (saga.operations, key saga id; answers on saga.operations.answers) ----


@dataclass(frozen=True)
class AbortSaga:
    """Before its pivot a saga compensates now and ends rejected; at or after, refused."""

    saga_id: str
    action_id: str
    operator: str
    reason: str
    requested_at: datetime


@dataclass(frozen=True)
class RetrySaga:
    """Re-send the command of the step the saga waits for, now: next attempt, backoff reset."""

    saga_id: str
    action_id: str
    operator: str
    reason: str
    requested_at: datetime


@dataclass(frozen=True)
class SagaActionAnswered:
    saga_id: str
    action_id: str
    action: str  # AbortSaga | RetrySaga
    accepted: bool
    answer: str  # what was done, or why nothing was
    state: str | None  # the saga's state after; None for an unknown saga
    operator: str
    answered_at: datetime


@dataclass(frozen=True)
class DeadLetterReplayed:
    """A dead letter put back on its source topic (or being put back: `replayed_offset`
    None). Topic saga.dead-letters.replayed, compacted, key "source_topic/partition/offset"."""

    source_topic: str
    source_partition: int
    source_offset: int
    dead_letter_partition: int
    dead_letter_offset: int
    replayed_offset: int | None  # None while the replay is under way
    operator: str
    at: datetime


@dataclass(frozen=True)
class ExpireSaga:
    """The saga ended more than the retention ago: its row leaves the table (sent by the
    orchestrator's expiry timer to saga.operations, handled by its agent)."""

    saga_id: str
    ended_by: datetime  # expire only a saga that ended at or before this
    requested_at: datetime


# ---- Product Service internal (product.commands, key product id) ----


@dataclass(frozen=True)
class ReserveItem:
    """No longer sent; kept to read older records."""

    saga_id: str
    product_id: str
    quantity: int


@dataclass(frozen=True)
class ReleaseItem:
    """Give back what the saga holds of this product (a reservation not completed)."""

    saga_id: str
    product_id: str


@dataclass(frozen=True)
class SellItem:
    """No longer sent; kept to read older records."""

    saga_id: str
    product_id: str


@dataclass(frozen=True)
class ItemResult:
    """The result of reserving one product, carried by ReserveProducts.results."""

    saga_id: str
    product_id: str
    requested: int
    reserved: bool
    available: int  # stock left (after reserving, or what there was when refused)
    unit_price: Money


# ---- admin (seeding) ----


@dataclass(frozen=True)
class Restock:
    """Adds stock (and sets the price) of a product; on product.commands, key product id."""

    restock_id: str
    product_id: str
    quantity: int
    unit_price: Money


@dataclass(frozen=True)
class TopUp:
    """Credits a customer account; on payment.commands, key customer id."""

    top_up_id: str
    customer_id: str
    amount: Money


# ---- table values ----


@dataclass(frozen=True)
class SagaState:
    """A row of the orchestrator's `sagas` table (key saga id)."""

    saga_id: str
    order_id: str
    customer_id: str
    items: list[OrderItem]
    state: str  # a state name of its saga's definition
    step: str | None  # step whose reply the saga waits for; None when terminal
    attempt: int
    deadline: datetime | None  # None only in terminal states
    total: Money | None
    reason: str | None  # why the saga is being / was rejected
    sequence: int  # number of SagaEvents emitted so far
    created_at: datetime
    updated_at: datetime
    version: int = 1  # of the saga's definition: it started and finishes on it
    traceparent: str | None = None  # W3C trace context the saga started with
    # When it entered its current state (a re-send leaves it); None: written before it was
    # recorded (then `updated_at` is the best known, a later time).
    entered_at: datetime | None = None


@dataclass(frozen=True)
class CancelSagaState:
    """A CancelOrderSaga's row of the orchestrator's `sagas` table (key saga id)."""

    saga_id: str
    order_id: str
    customer_id: str  # "" until the Order Service began the cancel
    items: list[OrderItem]  # [] until then
    refunded: Money | None
    state: str
    step: str | None
    attempt: int
    deadline: datetime | None
    reason: str | None
    sequence: int
    created_at: datetime
    updated_at: datetime
    version: int = 1
    traceparent: str | None = None
    entered_at: datetime | None = None  # as SagaState's


@dataclass(frozen=True)
class OrderRow:
    """Order Service `orders` table (key order id).

    No recorded replies: the reply to every order command follows from `status` (and,
    for a cancel, the saga's OrderCancel row), so a duplicate command is answered again
    from the rows (participants/order/logic.py).
    """

    order_id: str
    customer_id: str  # "" for an order rejected before it was ever created
    items: list[OrderItem]
    status: str  # APPROVAL_PENDING | APPROVED | REJECTED | CANCEL_PENDING | CANCELLED
    reason: str | None
    updated_at: datetime
    cancel_saga: str | None = None  # the CancelOrderSaga holding it or that cancelled it
    applied_offset: int = -1  # order.commands offset of the last change; replays skip


@dataclass(frozen=True)
class OrderCancel:
    """Order Service `orders` table (key order id, "cancel", cancel saga id): what one
    CancelOrderSaga did to the order, so that its duplicate, late or replayed commands
    are answered the same and change nothing."""

    saga_id: str
    status: str  # BEGUN | REFUSED | UNDONE | CONFIRMED
    reason: str | None  # why REFUSED
    begin_offset: int  # order.commands offset of the begin deciding it; -1: undone first
    settle_offset: int  # ... of the undo or confirm settling it; -1: not settled


@dataclass(frozen=True)
class StockRow:
    """Product Service `stock` table (key product id): the product's counters only."""

    product_id: str
    available: int
    reserved: int
    sold: int
    restocked: int  # total ever added by Restock
    unit_price: Money
    applied_offset: int = -1  # product.commands offset of the last change; replays skip
    returned: int = 0  # sold units given back by cancelled orders (sold counts them still)


@dataclass(frozen=True)
class StockHold:
    """Product Service `stock` table (key product id, "hold", saga id): what one saga
    holds of one product, or how that ended."""

    saga_id: str
    product_id: str
    quantity: int  # held, released or sold; requested if REFUSED
    status: str  # HELD | RELEASED | SOLD | REFUSED | RETURNED (sold, then given back)
    reserve_offset: int  # product.commands offset of the reserve deciding it; -1: none
    settle_offset: int  # ... of the release or sale settling it; -1: not settled
    return_offset: int = -1  # ... of the return of what was sold; -1: not returned


@dataclass(frozen=True)
class CommandApplied:
    """An admin command (Restock, TopUp) already applied; key: owner id, kind, its id."""

    command_id: str
    applied_offset: int  # offset of the message that applied it


@dataclass(frozen=True)
class Reservation:
    """No longer written (ReserveProducts travels from product to product, carrying the
    results); kept to read older records. Was: the Product Service's reservations table
    (key saga id), collecting a saga's per-item results."""

    saga_id: str
    order_id: str
    items: list[OrderItem]
    results: list[ItemResult]
    status: str  # COLLECTING | RESERVED | UNAVAILABLE | RELEASED | SOLD
    release_requested: bool
    reserve_command_id: str | None
    reserve_attempt: int
    release_command_id: str | None
    release_attempt: int
    updated_at: datetime


@dataclass(frozen=True)
class Payment:
    """Payment Service `accounts` table (key customer id, "payment", saga id): the saga's
    payment, kept so that a duplicate or late command never charges twice."""

    saga_id: str
    amount: Money  # zero for CANCELLED (nothing was ever asked for)
    status: str  # AUTHORIZED | REFUNDED | CANCELLED (cancelled before any authorize) | FAILED
    reason: str | None = None  # why a FAILED payment was refused
    decided_offset: int = -1  # payment.commands offset of the command that decided it
    refunded_offset: int = -1  # ... of the CancelPayment that refunded it; -1: not refunded


@dataclass(frozen=True)
class Account:
    """Payment Service `accounts` table (key customer id): balance and totals only.

    Money is conserved: balance + captured_archived == topped_up, where captured_archived
    is what the AUTHORIZED payments took (refunds give it back to the balance).
    """

    customer_id: str
    balance: Money
    topped_up: Money  # total ever credited by TopUp
    captured_archived: Money  # captured, refunds deducted (the name is historical)
    applied_offset: int = -1  # payment.commands offset of the last change; replays skip
