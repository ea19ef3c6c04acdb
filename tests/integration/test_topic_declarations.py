"""A worker declaring its tables' changelogs at start, against the real broker: each topic is
looked up in metadata, from any broker that answers, and never sent to the one node Faust
would ask for the controller (messaging.faust_workarounds.declare_topics_through_metadata).
That node may be a dead cluster node, and the worker then exited (NodeNotReadyError)."""

from __future__ import annotations

import uuid
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import Transport

from messaging.faust_workarounds import declare_topics_through_metadata

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("worked_around", [True, False], ids=["ours", "fausts-own"])
async def test_declaring_an_existing_topic_asks_no_node_for_the_controller(
    kafka: str, monkeypatch: pytest.MonkeyPatch, worked_around: bool
) -> None:
    async def no_controller(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("asked a node for the controller")

    monkeypatch.setattr(Transport, "_get_controller_node", no_controller)
    app = faust.App(f"test-declare-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka}")
    if worked_around:
        declare_topics_through_metadata(app)
    producer: Any = await app.maybe_start_producer()
    try:
        client = producer._ensure_producer().client
        await client.set_topics(["saga.replies"])  # as once it has sent: the rest not cached
        assert "saga.events" not in client.cluster.topics()
        declaring = app.topic("saga.events", partitions=4).declare()
        if worked_around:
            await declaring
            assert "saga.events" in client.cluster.topics()
        else:  # the request this test forbids is really Faust's own path
            with pytest.raises(AssertionError, match="controller"):
                await declaring
    finally:
        await producer.stop()
