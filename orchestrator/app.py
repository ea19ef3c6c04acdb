"""The orchestrator worker: the saga engine running every saga of orchestrator/sagas."""

from __future__ import annotations

import importlib
import os
from typing import Any

from messaging import settings
from orchestrator.engine import SagaType
from orchestrator.engine.runner import SagaRunner
from orchestrator.engine.views import register_views
from orchestrator.sagas import SAGAS
from schemas.messages import StepTimedOut

APP_ID = settings.APP_IDS["orchestrator"]
DEFAULT_WEB_PORT = 6066
# Every message type the orchestrator takes: the sagas' requests and replies (and the
# answers of their forget gates), deadlines.
INPUTS: tuple[type, ...] = (
    *(saga.request for saga in SAGAS),
    *{reply for saga in SAGAS for reply in saga.replies},
    *{saga.forget.answer for saga in SAGAS if saga.forget.answer is not None},
    StepTimedOut,
)


def deployed_sagas() -> tuple[SagaType, ...]:
    """The sagas this worker runs: orchestrator.sagas.SAGAS, or the tuple that
    SAGA_SAGAS names as `module:attribute` (a deploy's own list of sagas and versions)."""
    spec = os.environ.get("SAGA_SAGAS")
    if not spec:
        return SAGAS
    module_name, _, attribute = spec.partition(":")
    try:
        sagas = getattr(importlib.import_module(module_name), attribute or "SAGAS")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"SAGA_SAGAS={spec!r}: {exc}") from exc
    if not sagas or not all(isinstance(saga, SagaType) for saga in sagas):
        raise ValueError(f"SAGA_SAGAS={spec!r} does not name a tuple of SagaType")
    return tuple(sagas)


class OrchestratorService(SagaRunner):
    """The engine with the deployed sagas and the orchestrator's web views."""

    def __init__(self, *, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        super().__init__(deployed_sagas(), app_id=APP_ID, web_port=web_port, **app_options)
        register_views(self.app, self.sagas, self.saga_types)


def build(web_port: int | None = None, **app_options: Any) -> OrchestratorService:
    port = web_port or int(os.environ.get("SAGA_ORCHESTRATOR_PORT", DEFAULT_WEB_PORT))
    return OrchestratorService(web_port=port, **app_options)
