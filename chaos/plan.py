"""What a chaos run does, decided up front from a seed: catalog, orders, bad records, faults.

Pure: no I/O, no clock. `chaos.run` executes the plan; `chaos.invariants` checks the
outcome against it. Every id carries the run id, so a run's records can be told apart
from anything else on the cluster.

Order intents (what the catalog makes each order do when nothing goes wrong):
  APPROVE       rich customer, plentiful products                   -> approved
  OUT_OF_STOCK  rich customer, includes a product with no stock     -> rejected
  NO_FUNDS      customer whose balance is below any price           -> rejected
  CONTENDED     scarce products and/or a customer with a tight budget -> either
Deadlines (30 s) may still reject an APPROVE order when a crash stalls its saga; an
OUT_OF_STOCK or NO_FUNDS order must never be approved.

Cancel intents (a CancelOrderSaga each, for a share of the orders):
  APPROVED     an APPROVE order, 5-25 s after it was placed and once its saga ended
               -> cancelled, unless a deadline rejected the order
  IN_FLIGHT    any order, right after it (< 0.5 s)  -> refused until approved (not
               approved yet, unknown order), cancelled if the cancel waits longer
  REJECTED     an OUT_OF_STOCK or NO_FUNDS order, 5-25 s after and once it ended -> refused
  UNKNOWN      an order id nobody placed  -> refused: unknown order
  AGAIN        a second cancel of an APPROVED cancel's order, 1-10 s after that one and
               once it ended -> refused (already cancelled)

Requests are placed at planned moments: orders and their duplicates at the run's rate,
each cancel at its order's moment plus its delay. A request may also wait for a saga to
end (`Send.after`, seen on saga.events by the run), at most WAIT_FOR_END seconds: a
cancel placed while a crash holds its order up would only test the refusal again.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from schemas import codec
from schemas import messages as m

CURRENCY = "EUR"
RICH_BALANCE = Decimal("1000000.00")
POOR_BALANCE = Decimal("1.00")  # below the cheapest price: always insufficient funds
TIGHT_BALANCE = Decimal("60.00")  # a few orders each, then the money runs out
MIN_PRICE, MAX_PRICE = 200, 2000  # cents
DUPLICATE_SHARE = 0.05
DEFAULT_CANCEL_SHARE = 0.2  # cancel requests per unique order
CANCEL_DELAY = (5.0, 25.0)  # seconds from an order to its planned cancel (APPROVED, REJECTED)
IN_FLIGHT_DELAY = 0.5  # at most, from an order to an IN_FLIGHT cancel
AGAIN_DELAY = (1.0, 10.0)  # from a cancel to the second cancel of its order
# At most, past its moment, for the saga a request waits for: a run falling behind (a
# busy machine, a broker node down) may take minutes to end an order; one whose order
# never ends fails anyway (not terminal).
WAIT_FOR_END = 300.0
FIXED_TIME = datetime(2024, 1, 1, tzinfo=UTC)  # times inside bad records do not matter


class Intent(enum.StrEnum):
    APPROVE = "approve"
    OUT_OF_STOCK = "out-of-stock"
    NO_FUNDS = "no-funds"
    CONTENDED = "contended"


INTENT_SHARES = {
    Intent.APPROVE: 0.60,
    Intent.OUT_OF_STOCK: 0.12,
    Intent.NO_FUNDS: 0.12,
    Intent.CONTENDED: 0.16,
}
MUST_REJECT = frozenset({Intent.OUT_OF_STOCK, Intent.NO_FUNDS})


class CancelIntent(enum.StrEnum):
    APPROVED = "approved order"
    IN_FLIGHT = "in flight"
    REJECTED = "rejected order"
    UNKNOWN = "unknown order"
    AGAIN = "second cancel"


CANCEL_SHARES = {
    CancelIntent.APPROVED: 0.50,
    CancelIntent.IN_FLIGHT: 0.20,
    CancelIntent.REJECTED: 0.10,
    CancelIntent.UNKNOWN: 0.10,
    CancelIntent.AGAIN: 0.10,
}


@dataclass(frozen=True)
class PlannedOrder:
    request: m.OrderRequested
    intent: Intent
    total: Decimal  # price of all its items: what an approval must capture


@dataclass(frozen=True)
class PlannedCancel:
    request: m.CancelOrderRequested
    intent: CancelIntent


Request = m.OrderRequested | m.CancelOrderRequested


@dataclass(frozen=True)
class Send:
    """A request and the moment of the run (seconds from its start) it is placed at."""

    at: float
    request: Request
    after: str | None = None  # the saga whose end it waits for (at most WAIT_FOR_END s)

    @property
    def saga_id(self) -> str:
        """Its key on orders.requested: the order id, or the cancel id."""
        if isinstance(self.request, m.CancelOrderRequested):
            return self.request.cancel_id
        return self.request.order_id


class BrokerTarget(enum.StrEnum):
    BUSIEST_LEADER = "leader of most saga.replies partitions"
    CONTROLLER = "active controller"


@dataclass(frozen=True)
class NodeKill:
    """SIGKILL one node of a three-broker cluster at `at`, restart it `down` s later."""

    at: float
    target: BrokerTarget
    down: float


@dataclass(frozen=True)
class Catalog:
    restocks: list[m.Restock]
    top_ups: list[m.TopUp]

    def prices(self) -> dict[str, Decimal]:
        return {r.product_id: r.unit_price.amount for r in self.restocks}


class BadKind(enum.StrEnum):
    GARBAGE = "garbage bytes"
    TRUNCATED = "truncated encoding"
    UNKNOWN_SCHEMA = "unknown fingerprint"
    TRAILING = "trailing bytes"
    INVALID_BODY = "schema-invalid body"
    WRONG_TYPE = "wrong message type"
    KEY_MISMATCH = "key/message mismatch"


@dataclass(frozen=True)
class BadRecord:
    """An undecodable or invalid record to inject; it must come back as a dead letter."""

    kind: BadKind
    topic: str
    key: bytes  # unique per run: how the dead letter is matched (with the value)
    value: bytes
    reason: str  # the error.reason header the dead letter must carry


# Topics read by an agent, with a message valid there and what each agent accepts.
INPUT_TOPICS = (
    "orders.requested",
    "saga.replies",
    "order.commands",
    "product.commands",
    "payment.commands",
)


@dataclass
class Plan:
    run: str
    catalog: Catalog
    orders: list[PlannedOrder]  # one per CreateOrderSaga, in placing order
    duplicates: list[m.OrderRequested]  # requests re-using an order id (same or other content)
    sends: list[Send]  # every request to produce, in time order
    bad_records: list[BadRecord]
    kill_times: dict[str, list[float]] = field(default_factory=dict)  # worker -> seconds
    broker_restart_at: float | None = None  # the single broker stopped and started
    cancels: list[PlannedCancel] = field(default_factory=list)  # one per CancelOrderSaga
    node_kills: list[NodeKill] = field(default_factory=list)  # three-broker cluster

    def by_id(self) -> dict[str, PlannedOrder]:
        return {o.request.order_id: o for o in self.orders}

    def saga_ids(self) -> list[str]:
        """Every saga the run starts: the orders', then the cancels'."""
        return [o.request.order_id for o in self.orders] + [
            c.request.cancel_id for c in self.cancels
        ]


# ---- catalog ----


def _price(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(MIN_PRICE, MAX_PRICE)).scaleb(-2)


@dataclass(frozen=True)
class _Ids:
    plenty: list[str]
    scarce: list[str]
    soldout: list[str]
    rich: list[str]
    poor: list[str]
    tight: list[str]


def _ids(run: str, orders: int) -> _Ids:
    def names(prefix: str, count: int) -> list[str]:
        return [f"chaos-{run}-{prefix}{i}" for i in range(count)]

    return _Ids(
        plenty=names("plenty", max(4, orders // 100)),
        scarce=names("scarce", max(2, orders // 200)),
        soldout=names("soldout", 2),
        rich=names("rich", max(4, orders // 50)),
        poor=names("poor", max(2, orders // 200)),
        tight=names("tight", max(2, orders // 100)),
    )


def _catalog(run: str, ids: _Ids, orders: int, rng: random.Random) -> Catalog:
    def restock(product: str, quantity: int) -> m.Restock:
        money = m.Money(_price(rng), CURRENCY)
        return m.Restock(f"chaos-{run}:{product}", product, quantity, money)

    def top_up(customer: str, amount: Decimal) -> m.TopUp:
        return m.TopUp(f"chaos-{run}:{customer}", customer, m.Money(amount, CURRENCY))

    plenty_stock = orders * 10  # more than every order could ask for
    scarce_stock = max(3, orders // 40)
    restocks = [restock(p, plenty_stock) for p in ids.plenty]
    restocks += [restock(p, scarce_stock) for p in ids.scarce]
    restocks += [restock(p, 0) for p in ids.soldout]  # exists, priced, never available
    top_ups = [top_up(c, RICH_BALANCE) for c in ids.rich]
    top_ups += [top_up(c, POOR_BALANCE) for c in ids.poor]
    top_ups += [top_up(c, TIGHT_BALANCE) for c in ids.tight]
    return Catalog(restocks, top_ups)


# ---- orders ----


def _items(rng: random.Random, products: list[str], most: int = 3) -> list[tuple[str, int]]:
    chosen = rng.sample(products, k=rng.randint(1, min(most, len(products))))
    return [(p, rng.randint(1, 3)) for p in chosen]


def _order_items(
    intent: Intent, ids: _Ids, rng: random.Random
) -> tuple[str, list[tuple[str, int]]]:
    """(customer, items) of an order with this intent."""
    if intent is Intent.APPROVE:
        return rng.choice(ids.rich), _items(rng, ids.plenty)
    if intent is Intent.OUT_OF_STOCK:
        return rng.choice(ids.rich), [*_items(rng, ids.plenty, 2), (rng.choice(ids.soldout), 1)]
    if intent is Intent.NO_FUNDS:
        return rng.choice(ids.poor), _items(rng, ids.plenty)
    customer = rng.choice(ids.tight + ids.rich)
    products = ids.scarce if customer in ids.rich else ids.scarce + ids.plenty
    return customer, _items(rng, products, 2)


def _request(order_id: str, customer: str, items: list[tuple[str, int]]) -> m.OrderRequested:
    return m.OrderRequested(
        order_id=order_id,
        customer_id=customer,
        items=[m.OrderItem(p, q) for p, q in items],
        requested_at=FIXED_TIME,
    )


def _total(items: list[m.OrderItem], prices: dict[str, Decimal]) -> Decimal:
    return sum((prices[i.product_id] * i.quantity for i in items), Decimal("0.00"))


def _intents(count: int, rng: random.Random) -> list[Intent]:
    intents = [i for i, share in INTENT_SHARES.items() for _ in range(round(share * count))]
    intents = (intents + [Intent.APPROVE] * count)[:count]
    rng.shuffle(intents)
    return intents


def _duplicates(
    orders: list[PlannedOrder], count: int, ids: _Ids, rng: random.Random
) -> list[m.OrderRequested]:
    """Re-sent order ids: half identical, half with other content (a rich customer and
    other items: were the second request to win, the outcome or total would change)."""
    duplicates = []
    for original in rng.sample(orders, k=min(count, len(orders))):
        request = original.request
        if rng.random() < 0.5:
            duplicates.append(request)
        else:
            other = _request(request.order_id, rng.choice(ids.rich), _items(rng, ids.plenty))
            duplicates.append(other)
    return duplicates


def _interleave(
    orders: list[PlannedOrder], duplicates: list[m.OrderRequested], rng: random.Random
) -> list[m.OrderRequested]:
    """Every order request in a sending order where a duplicate always follows its original."""
    sends = [o.request for o in orders]
    position = {r.order_id: i for i, r in enumerate(sends)}
    placed: list[tuple[float, int, m.OrderRequested]] = [
        (float(i), 0, r) for i, r in enumerate(sends)
    ]
    for n, duplicate in enumerate(duplicates):
        after = position[duplicate.order_id] + rng.uniform(0.5, 60)
        placed.append((after, n + 1, duplicate))
    return [request for _at, _n, request in sorted(placed, key=lambda p: (p[0], p[1]))]


# ---- cancels ----


def _cancel_intents(count: int, rng: random.Random) -> list[CancelIntent]:
    intents = [i for i, share in CANCEL_SHARES.items() for _ in range(round(share * count))]
    intents = (intents + [CancelIntent.APPROVED] * count)[:count]
    rng.shuffle(intents)
    return intents


def _cancels(
    run: str,
    orders: list[PlannedOrder],
    placed_at: dict[str, float],
    count: int,
    rng: random.Random,
) -> list[tuple[float, str | None, PlannedCancel]]:
    """`count` cancels with the moment each is placed at and the saga whose end it waits
    for (see the module's intents).

    APPROVED cancels target distinct orders; an AGAIN cancel follows an APPROVED one of the
    same order (or becomes APPROVED when none is planned yet); an intent without orders
    to target (no rejectable order, say) becomes UNKNOWN."""
    approvable = [o for o in orders if o.intent is Intent.APPROVE]
    rng.shuffle(approvable)
    rejectable = [o for o in orders if o.intent in MUST_REJECT]
    firsts: list[tuple[float, str, str]] = []  # (moment, order, cancel) of APPROVED cancels
    planned: list[tuple[float, str | None, PlannedCancel]] = []
    for n, intent in enumerate(_cancel_intents(count, rng)):
        if intent is CancelIntent.AGAIN and not firsts:
            intent = CancelIntent.APPROVED
        if intent is CancelIntent.APPROVED and not approvable:
            intent = CancelIntent.UNKNOWN
        if intent is CancelIntent.REJECTED and not rejectable:
            intent = CancelIntent.UNKNOWN
        cancel_id = f"chaos-{run}-c{n:05d}"
        after: str | None = None
        if intent is CancelIntent.APPROVED:
            order_id = after = approvable.pop().request.order_id
            at = placed_at[order_id] + rng.uniform(*CANCEL_DELAY)
            firsts.append((at, order_id, cancel_id))
        elif intent is CancelIntent.AGAIN:
            first_at, order_id, after = rng.choice(firsts)
            at = first_at + rng.uniform(*AGAIN_DELAY)
        elif intent is CancelIntent.IN_FLIGHT:
            order_id = rng.choice(orders).request.order_id
            at = placed_at[order_id] + rng.uniform(0.0, IN_FLIGHT_DELAY)
        elif intent is CancelIntent.REJECTED:
            order_id = after = rng.choice(rejectable).request.order_id
            at = placed_at[order_id] + rng.uniform(*CANCEL_DELAY)
        else:  # UNKNOWN: an id of the run that no order has
            order_id = f"chaos-{run}-nosuch{n}"
            at = rng.uniform(0.0, max(placed_at.values(), default=0.0))
        request = m.CancelOrderRequested(cancel_id, order_id, FIXED_TIME)
        planned.append((at, after, PlannedCancel(request, intent)))
    return planned


def _schedule(
    orders: list[PlannedOrder],
    duplicates: list[m.OrderRequested],
    run: str,
    rate: float,
    cancel_share: float,
    rng: random.Random,
) -> tuple[list[Send], list[PlannedCancel]]:
    """Every request with its moment, in time order; and the cancels planned."""
    sends = [Send(i / rate, r) for i, r in enumerate(_interleave(orders, duplicates, rng))]
    placed_at: dict[str, float] = {}
    for send in sends:
        placed_at.setdefault(send.saga_id, send.at)
    cancels = _cancels(run, orders, placed_at, round(cancel_share * len(orders)), rng)
    sends += [Send(at, cancel.request, after) for at, after, cancel in cancels]
    sends.sort(key=lambda send: send.at)  # stable: an order before a cancel of one moment
    return sends, [cancel for _at, _after, cancel in cancels]


# ---- bad records ----


def _valid_sample(topic: str, marker: str) -> tuple[bytes, object]:
    """(key, message) of a message valid on `topic`, with ids that name no real saga."""
    money = m.Money(Decimal("1.00"), CURRENCY)
    t = FIXED_TIME
    ok, create, pay = m.Outcome.SUCCESS, f"{marker}:create_order", f"{marker}:pay"
    samples: dict[str, object] = {
        "orders.requested": _request(marker, marker, [(marker, 1)]),
        "saga.replies": m.OrderCreated(marker, create, 1, ok, t, marker),
        "order.commands": m.CreateOrder(marker, create, 1, t, marker, marker, []),
        "product.commands": m.ReserveProducts(
            marker, f"{marker}:verify", 1, t, marker, [m.OrderItem(marker, 1)]
        ),
        "payment.commands": m.AuthorizePayment(marker, pay, 1, t, marker, marker, money),
    }
    return marker.encode(), samples[topic]


def _wrong_type(topic: str, marker: str) -> object:
    """A valid message of a type the topic's agent does not accept."""
    if topic == "payment.commands":
        return m.SellItem(marker, marker)
    return m.TopUp(marker, marker, m.Money(Decimal("1.00"), CURRENCY))


def _decode_reason(value: bytes) -> str | None:
    try:
        codec.decode(value)
    except codec.MessageDecodeError as exc:
        return exc.reason
    return None


def _bad_value(kind: BadKind, topic: str, marker: str, rng: random.Random) -> tuple[bytes, str]:
    """(value, expected error.reason) of one bad record; the value never decodes where
    the kind says it must not."""
    _key, sample = _valid_sample(topic, marker)
    valid = codec.encode(sample)
    while True:
        if kind is BadKind.GARBAGE:
            value = b"chaos!" + rng.randbytes(rng.randint(4, 40))
        elif kind is BadKind.TRUNCATED:
            value = valid[: rng.randint(codec.HEADER_SIZE - 3, len(valid) - 1)]
        elif kind is BadKind.UNKNOWN_SCHEMA:
            value = codec.MAGIC + rng.randbytes(8) + valid[codec.HEADER_SIZE :]
        elif kind is BadKind.TRAILING:
            value = valid + rng.randbytes(rng.randint(1, 8))
        elif kind is BadKind.INVALID_BODY:  # a string field that is not UTF-8
            at = valid.index(marker.encode(), codec.HEADER_SIZE)
            value = valid[:at] + b"\xff" + valid[at + 1 :]
        elif kind is BadKind.WRONG_TYPE:
            return codec.encode(_wrong_type(topic, marker)), "unexpected-type"
        else:  # KEY_MISMATCH: valid, but the key is not the message's
            return valid, "key-mismatch"
        reason = _decode_reason(value)
        if reason is not None:
            return value, reason


def bad_records(run: str, count: int, rng: random.Random) -> list[BadRecord]:
    """`count` bad records: the kinds in turn, each kind on the topics in a shuffled
    rotation, so a run of len(BadKind) * len(INPUT_TOPICS) covers every pair."""
    kinds = list(BadKind)
    topics = list(INPUT_TOPICS)
    rng.shuffle(topics)
    records = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        topic = topics[(i // len(kinds) + kinds.index(kind)) % len(topics)]
        marker = f"chaos-{run}-bad{i}"
        value, reason = _bad_value(kind, topic, marker, rng)
        key = f"{marker}-key".encode() if kind is BadKind.KEY_MISMATCH else marker.encode()
        records.append(BadRecord(kind, topic, key, value, reason))
    return records


# ---- faults ----


def kill_times(
    workers: list[str], kills: int, start: float, end: float, rng: random.Random
) -> dict[str, list[float]]:
    """`kills` moments per worker in [start, end]: one in each equal slice, so a worker is
    killed early, midway and late rather than several times in a row."""
    width = (end - start) / max(kills, 1)
    return {
        name: [start + width * (k + rng.uniform(0.1, 0.9)) for k in range(kills)]
        for name in workers
    }


def node_kills(chaos_seconds: float, rng: random.Random) -> list[NodeKill]:
    """The cluster's broker faults: the node leading most saga.replies partitions killed
    in the first third of the run, the active controller in the second half; each
    restarted after 3-8 s."""
    down = (3.0, 8.0)
    leader = NodeKill(
        rng.uniform(0.2, 0.35) * chaos_seconds, BrokerTarget.BUSIEST_LEADER, rng.uniform(*down)
    )
    controller = NodeKill(
        rng.uniform(0.55, 0.7) * chaos_seconds, BrokerTarget.CONTROLLER, rng.uniform(*down)
    )
    return [leader, controller]


# ---- the plan ----


def make_plan(
    run: str,
    orders: int,
    *,
    seed: int,
    workers: list[str],
    kills: int,
    chaos_seconds: float,
    broker_restart: bool,
    bad: int | None = None,
    rate: float = 40.0,
    cancel_share: float = DEFAULT_CANCEL_SHARE,
    brokers: int = 1,
) -> Plan:
    """The whole run: `orders` order requests in all, about 5% of them duplicates, placed
    at `rate` a second; cancels for `cancel_share` of the unique orders. The broker faults
    (`broker_restart`): one broker is stopped and started; a cluster (`brokers` 3) loses
    a node twice instead."""
    rng = random.Random(seed)
    ids = _ids(run, orders)
    catalog = _catalog(run, ids, orders, rng)
    prices = catalog.prices()
    duplicate_count = round(orders * DUPLICATE_SHARE)
    unique = max(1, orders - duplicate_count)
    planned = []
    for n, intent in enumerate(_intents(unique, rng)):
        customer, items = _order_items(intent, ids, rng)
        request = _request(f"chaos-{run}-o{n:05d}", customer, items)
        planned.append(PlannedOrder(request, intent, _total(request.items, prices)))
    duplicates = _duplicates(planned, duplicate_count, ids, rng)
    bad_count = bad if bad is not None else max(len(BadKind) * 2, orders // 40)
    sends, cancels = _schedule(planned, duplicates, run, rate, cancel_share, rng)
    restart = broker_restart and brokers == 1
    return Plan(
        run=run,
        catalog=catalog,
        orders=planned,
        duplicates=duplicates,
        sends=sends,
        bad_records=bad_records(run, bad_count, rng),
        kill_times=kill_times(workers, kills, 0.1 * chaos_seconds, 0.9 * chaos_seconds, rng),
        broker_restart_at=rng.uniform(0.3, 0.6) * chaos_seconds if restart else None,
        cancels=cancels,
        node_kills=node_kills(chaos_seconds, rng) if broker_restart and brokers > 1 else [],
    )
