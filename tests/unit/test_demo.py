"""The demo's decisions: what to seed, what to top up, which quantities fail as labelled."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from cli import demo
from cli.demo import Product
from messaging import catalog
from schemas import messages as m

EXAMPLE = catalog.load(catalog.EXAMPLE_CATALOG)


def eur(amount: str) -> m.Money:
    return m.Money(Decimal(amount), "EUR")


def fresh_state() -> tuple[demo.Stock, demo.Balances]:
    """The example catalog just seeded."""
    return demo.after_seeding(EXAMPLE, {}, {})


def sample(plan: demo.SamplePlan, label: str) -> demo.Sample:
    return next(s for s in plan.samples if s.label == label)


def test_seed_plan_takes_only_what_does_not_exist() -> None:
    stock = {"widget": Product(0, eur("1.00")), "other": Product(5, eur("2.00"))}
    balances = {"alice": eur("0.00")}
    missing = demo.seed_plan(EXAMPLE, stock, balances)
    assert {r.product_id for r in missing.restocks} == {"gadget", "gizmo", "rare-gem"}
    assert {t.customer_id for t in missing.top_ups} == {"bob", "carol"}
    # The catalog's own ids: seeding again is a no-op for the services.
    assert all(r in EXAMPLE.restocks for r in missing.restocks)
    after_stock, after_balances = demo.after_seeding(missing, stock, balances)
    assert after_stock["widget"] == Product(0, eur("1.00"))  # left as the user made it
    assert after_stock["gizmo"] == Product(200, eur("4.25"))
    assert after_balances["carol"] == eur("5.00")


def test_nothing_to_seed_or_top_up_on_the_fresh_catalog() -> None:
    stock, balances = fresh_state()
    assert demo.seed_plan(EXAMPLE, stock, balances) == catalog.Catalog([], [])
    plan = demo.plan_samples(EXAMPLE, stock, balances)
    assert (plan.restocks, plan.top_ups, plan.notes) == ([], [], [])
    assert [(s.label, s.customer, s.items) for s in plan.samples] == [
        ("approved", "alice", (("widget", 1), ("gizmo", 2))),
        ("out of stock", "bob", (("rare-gem", 2),)),
        ("insufficient funds", "carol", (("widget", 1),)),
    ]


def test_the_approved_sample_gets_stock_and_money_when_used_up() -> None:
    stock, balances = fresh_state()
    stock = {**stock, "gizmo": Product(1, eur("7.00")), "widget": Product(1, eur("9.99"))}
    balances = {**balances, "alice": eur("3.00")}
    plan = demo.plan_samples(EXAMPLE, stock, balances)
    refills = {r.product_id: r for r in plan.restocks}
    # gizmo: 2 needed, 1 left; widget: the approved and insufficient-funds samples hold
    # one each at the same time, 1 left. Added at the catalog's quantity and the
    # product's current price (a Restock sets the price).
    assert set(refills) == {"gizmo", "widget"}
    assert refills["gizmo"].quantity == 200 and refills["gizmo"].unit_price == eur("7.00")
    assert refills["widget"].quantity == 1000
    assert len({r.restock_id for r in plan.restocks}) == 2  # new ids: applied, not ignored
    assert [(t.customer_id, t.amount) for t in plan.top_ups] == [("alice", eur("100000.00"))]
    assert plan.notes


def test_no_top_ups_when_seeding_is_off() -> None:
    stock, balances = fresh_state()
    stock = {**stock, "gizmo": Product(0, eur("4.25"))}
    plan = demo.plan_samples(EXAMPLE, stock, balances, top_up=False)
    assert (plan.restocks, plan.top_ups) == ([], [])


def test_failing_samples_adapt_to_a_users_restock_and_top_up() -> None:
    stock, balances = fresh_state()
    stock = {**stock, "rare-gem": Product(6, eur("999.00"))}
    balances = {**balances, "carol": eur("105.00")}
    plan = demo.plan_samples(EXAMPLE, stock, balances)
    assert sample(plan, "out of stock").items == (("rare-gem", 7),)
    # 105.00 pays for 10 widgets at 9.99: the sample orders 11.
    assert sample(plan, "insufficient funds").items == (("widget", 11),)
    assert plan.restocks == []  # 1000 widgets cover 1 + 11


def test_outcome_problem_says_what_differs() -> None:
    stock, balances = fresh_state()
    samples = {s.label: s for s in demo.plan_samples(EXAMPLE, stock, balances).samples}

    def final(state: str, reason: str | None = None) -> m.SagaEvent:
        return m.SagaEvent(
            saga_id="s", sequence=5, at=datetime(2026, 1, 1, tzinfo=UTC), trigger="T",
            from_state="X", to_state=state, step=None, attempt=1, reason=reason, commands=[],
            terminal=True,
        )  # fmt: skip

    assert demo.outcome_problem(samples["approved"], final("ORDER_APPROVED")) is None
    unavailable = final("ORDER_REJECTED", "products unavailable: rare-gem (requested 2)")
    assert demo.outcome_problem(samples["out of stock"], unavailable) is None
    funds = final("ORDER_REJECTED", "payment failed: insufficient funds: balance 5.00 EUR")
    assert demo.outcome_problem(samples["insufficient funds"], funds) is None

    problem = demo.outcome_problem(
        samples["approved"], final("ORDER_REJECTED", "products unavailable: gizmo")
    )
    assert problem == (
        "the 'approved' sample ended ORDER_REJECTED (products unavailable: gizmo), "
        "expected ORDER_APPROVED"
    )
    assert "expected ORDER_REJECTED (payment failed" in str(
        demo.outcome_problem(samples["insufficient funds"], unavailable)
    )
    assert demo.outcome_problem(samples["out of stock"], None) == (
        "the 'out of stock' sample did not finish"
    )
