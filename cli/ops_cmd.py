"""`saga abort`, `saga retry`, `saga list`: operator actions on sagas, as messages.

An action is an AbortSaga or RetrySaga on saga.operations, keyed by the saga id; the
orchestrator's agent that owns the saga decides it (orchestrator/engine/machine.py `act`)
and answers on saga.operations.answers. A selection (--state, --saga, --stuck-for) is
listed by the orchestrators' `/sagas` view, over every worker's partitions.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import click

from cli import selection as sel
from cli.selection import Selection
from messaging import client, settings
from messaging.durations import DurationError, parse_duration
from schemas import limits
from schemas import messages as m

START_WORKERS = "start the workers with `saga up`"
VIEW_TIMEOUT = 30.0  # seconds to get /sagas from a worker, 503s (rebalancing) retried
DEFAULT_TIMEOUT = 30.0

F = TypeVar("F", bound=Callable[..., Any])


# ---- options ----


STATE_HELP = "Sagas in this state (e.g. VERIFYING_PRODUCTS)."
SAGA_HELP = "Sagas of this type (e.g. CreateOrderSaga)."
STUCK_HELP = "Sagas waiting in their state at least this long (10m, 2h, 1d); re-sends do not count."
URL_HELP = "An orchestrator worker's URL (default: found in the orchestrator's consumer group)."
OPERATOR_HELP = "Who acts, recorded in saga.events (default: cli:$USER)."
ALL_HELP = "Act on every saga of the selection (a selection acts only with it)."


def selection_options(func: F) -> F:
    """--state, --saga, --stuck-for, --limit, --url: a selection of sagas."""
    limit = click.IntRange(1, sel.MAX_LIMIT)
    options = [
        click.option("--state", default=None, help=STATE_HELP),
        click.option("--saga", "saga_type", default=None, help=SAGA_HELP),
        click.option("--stuck-for", default=None, help=STUCK_HELP),
        click.option("--limit", default=sel.MAX_LIMIT, show_default=True, type=limit),
        click.option("--url", default=None, help=URL_HELP),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def action_options(func: F) -> F:
    """--operator, --timeout, --dry-run, --all-selected."""
    seconds = click.FloatRange(min=0, min_open=True)
    options = [
        click.option("--operator", default=None, help=OPERATOR_HELP),
        click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=seconds),
        click.option("--dry-run", is_flag=True, help="List the selected sagas; send nothing."),
        click.option("--all-selected", is_flag=True, help=ALL_HELP),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def checked_selection(state: str | None, saga_type: str | None, stuck_for: str | None) -> Selection:
    """The selection, each part checked against the deployed sagas (SAGA_SAGAS, else
    orchestrator.sagas): a bad one is a usage error before anything is contacted."""
    from orchestrator.app import deployed_sagas
    from orchestrator.engine.views import states_of

    try:
        sagas = deployed_sagas()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    states, names = states_of(sagas), [saga.name for saga in sagas]
    if state is not None and state not in states:
        raise click.BadParameter(
            f"{state!r} is not a state of any saga; one of: {', '.join(states)}",
            param_hint="--state",
        )
    if saga_type is not None and saga_type not in names:
        raise click.BadParameter(
            f"{saga_type!r} is not a saga type; one of: {', '.join(names)}", param_hint="--saga"
        )
    if stuck_for is not None:
        try:
            parse_duration(stuck_for, "")
        except DurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--stuck-for") from None
    return Selection(state, saga_type, stuck_for)


# ---- the /sagas view ----


def orchestrator_urls(url: str | None) -> list[str]:
    """Where to ask /sagas: --url, else every orchestrator worker the group knows; exit 5
    when none runs."""
    if url is not None:
        return [url.rstrip("/")]
    urls = client.worker_urls("orchestrator")
    if not urls:
        click.echo(f"no orchestrator is running: {START_WORKERS} (or give --url)", err=True)
        sys.exit(sel.EXIT_NO_ORCHESTRATOR)
    return urls


def _get(url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=VIEW_TIMEOUT) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.load(error)
        except ValueError:
            return error.code, None


def list_sagas(urls: Sequence[str], query: dict[str, str]) -> dict[str, Any]:
    """The /sagas answer for `query` from the first worker that gives it; 503s (the group
    rebalancing, a worker not answering) are retried for VIEW_TIMEOUT seconds."""
    deadline = time.monotonic() + VIEW_TIMEOUT
    while True:
        reasons = []
        for url in urls:
            address = f"{url}/sagas?{urlencode(query)}"
            try:
                status, body = _get(address)
            except (OSError, ValueError) as exc:
                reasons.append(f"{url} did not answer: {getattr(exc, 'reason', exc)}")
                continue
            error = body.get("error") if isinstance(body, dict) else None
            if status == 200 and isinstance(body, dict):
                return body
            if status == 400:
                raise click.UsageError(f"the orchestrator refused the selection: {error}")
            if status != 503:
                raise click.ClickException(f"{address} answered {status}: {error}")
            reasons.append(f"{url}: {error}")
        if time.monotonic() > deadline or all("did not answer" in r for r in reasons):
            raise click.ClickException(
                f"no orchestrator worker listed the sagas: {'; '.join(reasons)}"
            )
        time.sleep(1.0)


def print_list(sagas: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for summary in sagas:
            click.echo(json.dumps(summary))
        return
    if not sagas:
        click.echo("no saga matches", err=True)
        return
    rows = sel.list_rows(sagas, datetime.now(UTC))
    for line in sel.columns([sel.LIST_HEADERS, *rows]):
        click.echo(line)


# ---- acting ----


def act(
    kind: type[m.AbortSaga] | type[m.RetrySaga],
    saga_id: str | None,
    reason: str,
    operator: str | None,
    timeout: float,
    chosen: Selection,
    limit: int,
    url: str | None,
    dry_run: bool,
    all_selected: bool,
) -> None:
    verb = "abort" if kind is m.AbortSaga else "retry"
    problem = sel.target_problem(saga_id, chosen, dry_run, all_selected)
    if problem is not None:
        raise click.UsageError(problem)
    who = sel.default_operator() if operator is None else operator
    if (why := limits.id_problem("the operator", who)) is not None:
        raise click.BadParameter(why, param_hint="--operator")
    if (why := sel.reason_problem(reason)) is not None:
        raise click.BadParameter(why, param_hint="--reason")
    try:
        client.require_broker()
        if saga_id is not None:
            if client.group_members(settings.APP_IDS["orchestrator"]) == 0:
                click.echo(f"no orchestrator is running: nothing sent ({START_WORKERS})", err=True)
                sys.exit(sel.EXIT_NO_ORCHESTRATOR)
            targets = [saga_id]
        else:
            payload = list_sagas(orchestrator_urls(url), chosen.query(limit))
            sagas = payload["sagas"]
            if not sagas:
                click.echo(f"no saga in flight matches: {chosen.describe()}")
                return
            if dry_run:
                click.echo(f"would {verb} these {len(sagas)} saga(s) (--dry-run: nothing sent):")
                print_list(sagas, as_json=False)
                if (why := sel.listing_problem(payload)) is not None:
                    click.echo(f"and then refuse to act: {why}", err=True)
                return
            if (why := sel.listing_problem(payload)) is not None:
                raise click.ClickException(f"nothing sent: {why}")
            targets = [s["saga_id"] for s in sagas]
        sys.exit(send_actions(kind, targets, who, reason, timeout))
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc


def send_actions(
    kind: type[m.AbortSaga] | type[m.RetrySaga],
    saga_ids: Sequence[str],
    operator: str,
    reason: str,
    timeout: float,
) -> int:
    """Send the action to each saga, print each answer as it comes; the exit code."""
    actions = [client.operator_action(kind, saga_id, operator, reason) for saga_id in saga_ids]
    answered: list[m.SagaActionAnswered] = []
    with client.ActionAnswers(saga_ids) as answers:  # from the end as of now: before sending
        producer = client.producer()
        for action in actions:
            client.send(producer, client.OPERATIONS_TOPIC, action.saga_id, action)
        client.flush(producer)
        for answer in answers.wait({a.action_id for a in actions}, timeout):
            click.echo(sel.result_line(answer), err=not answer.accepted)
            answered.append(answer)
    got = {answer.action_id for answer in answered}
    missing = [action for action in actions if action.action_id not in got]
    for action in missing:
        click.echo(
            f"{action.saga_id}: no answer within {timeout:g}s: the {kind.__name__} waits in "
            f"{client.OPERATIONS_TOPIC} and is decided when the orchestrator gets to it "
            f"(`saga tail {client.ANSWERS_TOPIC} --key {action.saga_id}` shows its answer)",
            err=True,
        )
    if len(actions) > 1:
        refused = sum(1 for answer in answered if not answer.accepted)
        click.echo(
            f"{len(actions)} saga(s): {len(answered) - refused} done, {refused} refused, "
            f"{len(missing)} not answered",
            err=True,
        )
    return sel.exit_code(answered, len(missing))


@click.command()
@click.argument("saga_id", required=False)
@click.option("--reason", required=True, help="Why (recorded in saga.events).")
@action_options
@selection_options
def abort(
    saga_id: str | None,
    reason: str,
    operator: str | None,
    timeout: float,
    dry_run: bool,
    all_selected: bool,
    state: str | None,
    saga_type: str | None,
    stuck_for: str | None,
    limit: int,
    url: str | None,
) -> None:
    """Abort a saga before its pivot: it compensates now and ends rejected. At or after the
    pivot the orchestrator refuses (the saga can only go forward).

    SAGA_ID, or a selection of sagas in flight (--state, --saga, --stuck-for) with
    --dry-run to list them or --all-selected to abort each. Exit 0 when every abort was
    done, 3 when one was refused (unknown saga, at or after the pivot, ended), 4 when one
    got no answer within --timeout, 5 at once when no orchestrator runs.
    """
    chosen = checked_selection(state, saga_type, stuck_for)
    act(m.AbortSaga, saga_id, reason, operator, timeout, chosen, limit, url, dry_run, all_selected)


@click.command()
@click.argument("saga_id", required=False)
@click.option(
    "--reason", default="re-send now", show_default=True, help="Why (recorded in saga.events)."
)
@action_options
@selection_options
def retry(
    saga_id: str | None,
    reason: str,
    operator: str | None,
    timeout: float,
    dry_run: bool,
    all_selected: bool,
    state: str | None,
    saga_type: str | None,
    stuck_for: str | None,
    limit: int,
    url: str | None,
) -> None:
    """Re-send the command of the step a saga waits for, now: the same command id, the
    next attempt, its backoff started again. An ended saga is refused.

    SAGA_ID, or a selection as for `saga abort`. Exit codes as `saga abort`'s.
    """
    chosen = checked_selection(state, saga_type, stuck_for)
    act(m.RetrySaga, saga_id, reason, operator, timeout, chosen, limit, url, dry_run, all_selected)


@click.command("list")
@selection_options
@click.option("--waiting", is_flag=True, help="Only sagas in flight (waiting for a step).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per saga.")
def list_(
    state: str | None,
    saga_type: str | None,
    stuck_for: str | None,
    limit: int,
    url: str | None,
    waiting: bool,
    as_json: bool,
) -> None:
    """List sagas across every orchestrator worker, longest in its state first: all of
    them (the latest --limit), or those of a state, a type, or waiting in their state at
    least --stuck-for (10m, 2h, 1d). Exit 5 when no orchestrator runs."""
    chosen = checked_selection(state, saga_type, stuck_for)
    in_flight = True if waiting or stuck_for is not None else None
    try:
        client.require_broker()
        payload = list_sagas(orchestrator_urls(url), chosen.query(limit, waiting=in_flight))
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    print_list(payload["sagas"], as_json)
    listed, matched = len(payload["sagas"]), payload["matched"]
    if matched > listed:
        click.echo(f"{listed} of {matched} matching sagas listed (--limit {limit})", err=True)
    if not payload.get("complete", True):
        click.echo("a worker's scan stopped at its cap: sagas may be missing", err=True)
