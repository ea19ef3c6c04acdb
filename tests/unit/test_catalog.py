"""Seed files: `saga seed` accepts only what the workers then apply.

A Restock or TopUp the Product or Payment Service refuses is dead-lettered, which the
CLI cannot see: it would print "seeded" and exit 0. So the catalog refuses the whole
file, before anything is published, naming the entry and the problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import cli
from messaging import catalog
from messaging.catalog import CatalogError
from participants.payment.logic import top_up_problem
from participants.product.logic import restock_problem
from schemas.limits import MAX_ID_LENGTH

SEEDED_ID_PREFIX = len("seed:0123456789abcdef:")  # what a seeded id adds to the entry's id
LONGEST_SEEDABLE_ID = MAX_ID_LENGTH - SEEDED_ID_PREFIX  # 106


Entries = Sequence[Mapping[str, object]]


def seed_file(products: Entries, customers: Entries) -> str:
    return yaml.safe_dump({"currency": "EUR", "products": products, "customers": customers})


def test_seeded_ids_stay_seed_batch_entry_so_reseeding_stays_idempotent() -> None:
    # Ids already applied must stay the same after an upgrade, else seeding the same
    # file again would add its stock and money a second time.
    text = catalog.EXAMPLE_CATALOG.read_text()
    batch = hashlib.sha256(text.encode()).hexdigest()[:16]
    parsed = catalog.parse(text)
    assert [r.restock_id for r in parsed.restocks] == [
        f"seed:{batch}:{p}" for p in ("widget", "gadget", "gizmo", "rare-gem")
    ]
    assert [t.top_up_id for t in parsed.top_ups] == [
        f"seed:{batch}:{c}" for c in ("alice", "bob", "carol")
    ]


def test_the_longest_seedable_ids_are_accepted() -> None:
    longest = "x" * LONGEST_SEEDABLE_ID
    parsed = catalog.parse(
        seed_file([{"id": longest, "stock": 1, "price": "1.00"}], [{"id": longest, "balance": 1}])
    )
    assert len(parsed.restocks[0].restock_id) == MAX_ID_LENGTH
    assert len(parsed.top_ups[0].top_up_id) == MAX_ID_LENGTH


@pytest.mark.parametrize("length", [LONGEST_SEEDABLE_ID + 1, MAX_ID_LENGTH])
def test_a_product_id_too_long_for_its_restock_id_is_refused(length: int) -> None:
    # A valid product id, but its Restock's id `seed:<batch>:<id>` would be too long.
    too_long = "p" * length
    text = seed_file([{"id": too_long, "stock": 1, "price": "1.00"}], [])
    with pytest.raises(CatalogError) as refused:
        catalog.parse(text)
    message = str(refused.value)
    assert f"product {too_long!r}" in message
    assert f"restock id has {length + SEEDED_ID_PREFIX} characters, at most {MAX_ID_LENGTH}" in (
        message
    )
    assert f"at most {LONGEST_SEEDABLE_ID} characters" in message  # what the user can do


def test_a_customer_id_too_long_for_its_top_up_id_is_refused() -> None:
    too_long = "c" * (LONGEST_SEEDABLE_ID + 1)
    with pytest.raises(CatalogError, match=f"at most {LONGEST_SEEDABLE_ID} characters") as refused:
        catalog.parse(seed_file([], [{"id": too_long, "balance": "5.00"}]))
    assert f"customer {too_long!r}" in str(refused.value)
    assert "top-up id has 129 characters" in str(refused.value)


@pytest.mark.parametrize("balance", [0, "0.00"])
def test_a_zero_balance_is_refused(balance: object) -> None:
    # The Payment Service refuses a top-up of nothing, and a customer who never received
    # money is unknown to it anyway: no way to seed one with an empty account.
    with pytest.raises(CatalogError, match="customer 'carol': 'balance' must be more than 0"):
        catalog.parse(seed_file([], [{"id": "carol", "balance": balance}]))


def test_an_empty_stock_is_a_product_out_of_stock() -> None:
    (restock,) = catalog.parse(seed_file([{"id": "p", "stock": 0, "price": "1.00"}], [])).restocks
    assert restock.quantity == 0 and restock_problem(None, restock) is None


def test_a_product_listed_twice_is_refused_naming_both_entries() -> None:
    # Both would get the same restock id: the Product Service would apply the first only.
    products = [
        {"id": "widget", "stock": 5, "price": "1.00"},
        {"id": "gadget", "stock": 5, "price": "2.00"},
        {"id": "widget", "stock": 7, "price": "1.50"},
    ]
    with pytest.raises(CatalogError) as refused:
        catalog.parse(seed_file(products, []))
    assert "product 'widget' is listed twice: products[0] and products[2]" in str(refused.value)


def test_a_customer_listed_twice_is_refused_naming_both_entries() -> None:
    customers = [{"id": "alice", "balance": "10.00"}, {"id": "alice", "balance": "20.00"}]
    with pytest.raises(CatalogError) as refused:
        catalog.parse(seed_file([], customers))
    assert "customer 'alice' is listed twice: customers[0] and customers[1]" in str(refused.value)


def test_a_product_and_a_customer_may_have_the_same_id() -> None:
    # Different topics, different services: their seeded ids never meet.
    parsed = catalog.parse(
        seed_file([{"id": "x", "stock": 1, "price": "1.00"}], [{"id": "x", "balance": "1.00"}])
    )
    assert (len(parsed.restocks), len(parsed.top_ups)) == (1, 1)


_ids = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=MAX_ID_LENGTH)


@settings(max_examples=200, deadline=None)
@given(
    products=st.lists(
        st.fixed_dictionaries(
            {
                "id": _ids,
                "stock": st.integers(-1, 10**15 + 1),
                "price": st.decimals("-1", "10000000.01", places=2).map(str),
            }
        ),
        max_size=3,
    ),
    customers=st.lists(
        st.fixed_dictionaries(
            {"id": _ids, "balance": st.decimals("-1", "1000000000000.01", places=2).map(str)}
        ),
        max_size=3,
    ),
)
def test_what_the_catalog_accepts_the_workers_apply(
    products: list[dict[str, object]], customers: list[dict[str, object]]
) -> None:
    try:
        parsed = catalog.parse(seed_file(products, customers))
    except CatalogError:
        return
    assert [restock_problem(None, r) for r in parsed.restocks] == [None] * len(products)
    assert [top_up_problem(None, t) for t in parsed.top_ups] == [None] * len(customers)


# ---- saga seed ----


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if `saga seed` gets as far as the broker: a bad file is refused first."""

    def contacted(*_args: object) -> None:
        pytest.fail("saga seed contacted the broker with a file it should refuse")

    monkeypatch.setattr("messaging.client.require_broker", contacted)
    monkeypatch.setattr("messaging.catalog.publish", contacted)


@pytest.mark.usefixtures("no_broker")
@pytest.mark.parametrize(
    ("products", "customers", "expected"),
    [
        ([{"id": "p" * MAX_ID_LENGTH, "stock": 1, "price": "1.00"}], [], "at most 106 characters"),
        ([], [{"id": "carol", "balance": "0.00"}], "'balance' must be more than 0"),
        (
            [],
            [{"id": "bob", "balance": "1.00"}, {"id": "bob", "balance": "2.00"}],
            "customer 'bob' is listed twice",
        ),
    ],
    ids=["id-too-long-for-its-seeded-id", "zero-balance", "customer-twice"],
)
def test_seed_refuses_the_whole_file_before_contacting_the_broker(
    tmp_path: Path,
    products: list[dict[str, object]],
    customers: list[dict[str, object]],
    expected: str,
) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(seed_file(products, customers))
    result = CliRunner().invoke(cli, ["seed", str(path)])
    assert result.exit_code == 1, result.output
    assert f"Error: {path}: " in result.output and expected in result.output, result.output
    assert result.output.startswith("Error: ")  # and nothing reported seeded
