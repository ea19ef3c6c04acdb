"""A worker logs at the level it was given: nothing raises the root logger to DEBUG."""

from __future__ import annotations

import logging

import faust

from messaging.faust_workarounds import quiet_worker


def test_root_logger_keeps_the_worker_level() -> None:
    app = faust.App("test-worker-logging", store="memory://")
    runner = quiet_worker(app, "warning")
    logger = logging.getLogger("test-worker-logging")
    logger.setLevel(logging.WARNING)
    logger.addHandler(logging.NullHandler())
    runner.on_setup_root_logger(logger, logging.WARNING)
    assert logger.level == logging.WARNING
