"""Key lookups on the workers' web views while partitions move (`saga chaos --watch-views`).

A thread looks up keys that exist, one after the other, each through a worker of the
key's service picked at random among those in service (started, ready once, not being
stopped), and checks the answer: 200 with the row of that key. What "exists" means is the
caller's (`chaos.run`): a product or customer once the seed is processed, a saga once
its first event is seen, an order once its saga's `OrderCreated` transition is.

While partitions move, a view answers 503 and says to retry: the worker owning the key
stopped (its lookups fail until the group notices, at most the session timeout) or the
group is rebalancing. A lookup is retried then, as a client would, and counted; it
fails only if it has no answer after RETRY_BUDGET seconds, or gets any other answer: a
404 for a key that exists, a 500, another key's row. A request to a worker that was
taken out of service meanwhile (its connection refused) is retried on another.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# service -> (path of its key lookup, the field of the answer naming the key)
VIEWS = {
    "orchestrator": ("sagas", "saga_id"),
    "order": ("orders", "order_id"),
    "product": ("stock", "product_id"),
    "payment": ("accounts", "customer_id"),
}
RETRY_BUDGET = 60.0  # above a killed worker's session timeout (10 s) plus a rebalance
RETRY_PAUSE = 0.5
REQUEST_TIMEOUT = 10.0
PAUSE = 0.05  # between two lookups: about ten a second, with each lookup's own time

Keys = Callable[[str], Sequence[str]]  # service -> the keys that exist now
Endpoints = Callable[[str], Sequence[str]]  # service -> URLs of its workers in service


@dataclass
class ViewFindings:
    lookups: Counter[str] = field(default_factory=Counter)  # answered, per service
    retried: Counter[str] = field(default_factory=Counter)  # why a request was repeated
    longest_wait: float = 0.0  # seconds from a lookup's first request to its answer
    failures: list[str] = field(default_factory=list)
    owners: dict[str, set[str]] = field(default_factory=dict)  # service -> owners that answered

    def summary(self) -> dict[str, Any]:
        return {
            "lookups": dict(self.lookups),
            "retried": dict(self.retried),
            "longest_wait_s": round(self.longest_wait, 2),
            "failures": self.failures,
            "owners": {service: sorted(urls) for service, urls in self.owners.items()},
        }


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (see `problem`)
    body: Any = None
    problem: str = ""


def get(url: str) -> Answer:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return Answer(response.status, json.load(response))
    except urllib.error.HTTPError as error:
        try:
            body = json.load(error)
        except ValueError:
            body = None
        return Answer(error.code, body)
    except TimeoutError:
        return Answer(None, problem="timeout")
    except (OSError, ValueError) as exc:
        return Answer(None, problem=f"unreachable: {exc}")


class ViewWatch(threading.Thread):
    def __init__(
        self,
        keys: Keys,
        endpoints: Endpoints,
        rng: random.Random,
        get: Callable[[str], Answer] = get,
    ) -> None:
        super().__init__(name="view-watch", daemon=True)
        self.keys = keys
        self.endpoints = endpoints
        self.rng = rng
        self.get = get
        self.findings = ViewFindings()
        self.stopping = threading.Event()
        self.began = time.monotonic()  # failures say when, for the run's log

    def run(self) -> None:
        while not self.stopping.is_set():
            service = self.rng.choice(list(VIEWS))
            keys = self.keys(service)
            if keys:
                self.look_up(service, self.rng.choice(keys))
            self.stopping.wait(PAUSE)

    def stop(self) -> ViewFindings:
        self.stopping.set()
        self.join(timeout=REQUEST_TIMEOUT + 5)
        return self.findings

    def look_up(self, service: str, key: str) -> None:
        path, key_field = VIEWS[service]
        began = time.monotonic()
        while not self.stopping.is_set():
            workers = self.endpoints(service)
            if not workers:
                outcome = "retry: no worker in service"
            else:
                worker = self.rng.choice(workers)
                answer = self.get(f"{worker}/{path}/{quote(key, safe='')}?format=json")
                outcome = self.judge(service, key, key_field, worker, answer)
            if outcome == "ok":
                self.findings.lookups[service] += 1
                self.findings.longest_wait = max(
                    self.findings.longest_wait, time.monotonic() - began
                )
                return
            if not outcome.startswith("retry: "):
                self.fail(service, key, outcome)
                return
            self.findings.retried[f"{service}: {outcome.removeprefix('retry: ')}"] += 1
            if time.monotonic() - began > RETRY_BUDGET:
                self.fail(service, key, f"no answer in {RETRY_BUDGET:.0f}s (last: {outcome})")
                return
            self.stopping.wait(RETRY_PAUSE)

    def fail(self, service: str, key: str, what: str) -> None:
        at = time.monotonic() - self.began
        self.findings.failures.append(f"{service} {key} at {at:.1f}s: {what}")

    def judge(self, service: str, key: str, key_field: str, worker: str, answer: Answer) -> str:
        """ "ok", "retry: why" or what went wrong."""
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status == 200 and body.get(key_field) == key:
            self.findings.owners.setdefault(service, set()).add(str(body.get("worker")))
            return "ok"
        if answer.status == 503:
            return f"retry: 503 {str(body.get('error'))[:60]}"
        if answer.status is None:
            if worker not in self.endpoints(service):
                return "retry: the worker left service meanwhile"
            if answer.problem == "timeout":
                return f"retry: no answer within {REQUEST_TIMEOUT:.0f}s"
            return f"{worker} {answer.problem}"
        if answer.status == 200:
            return f"{worker} answered another row: {body.get(key_field)!r}"
        return f"{worker} answered {answer.status}: {body.get('error', answer.body)}"
