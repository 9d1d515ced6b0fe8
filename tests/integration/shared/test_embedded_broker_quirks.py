"""The embedded broker's quirks that docs/architecture.md (Brokers) lists, asserted on the broker itself.

Each test pins one quirk at the protocol level. If one fails, the broker changed: the docs row (and any
workaround it names) is due for review.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import for_code
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest

from tests.conftest import KafkaUnderTest

SESSION_TIMEOUT_MS = 6000  # the dev and test setting: the broker holds each join for half of it


async def _join(client: AIOKafkaClient, node: int, group: str, member_id: str) -> Any:
    """JoinGroup as a consumer, answering the broker's MemberIdRequired with the id it gave."""
    request = JoinGroupRequest(
        group, SESSION_TIMEOUT_MS, SESSION_TIMEOUT_MS, member_id, None, "consumer", [("range", b"")]
    )
    response = await client.send(node, request)
    if for_code(response.error_code).__name__ == "MemberIdRequired":
        retry = JoinGroupRequest(
            group, SESSION_TIMEOUT_MS, SESSION_TIMEOUT_MS, response.member_id, None, "consumer", [("range", b"")]
        )
        response = await client.send(node, retry)
    assert response.error_code == 0, for_code(response.error_code)
    return response


async def _leader_leaves_before_its_sync(bootstrap: str) -> list[tuple[int, str, str, str]]:
    """A's join elects it leader; A leaves before its SyncGroup; B then joins and syncs, twice: once at
    once, once after a session timeout (when the broker evicts members it has not heard from).

    Returns B's attempts as (generation, leader id, B's member id, B's sync error name), after A's
    (generation, A's member id, A's member id, "") first.
    """
    group = f"quirk-{uuid.uuid4().hex[:8]}"
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node = await client.coordinator_lookup(CoordinationType.GROUP, group)
        a = await _join(client, node, group, "")
        assert a.leader_id == a.member_id  # the only member: elected leader
        left = await client.send(node, LeaveGroupRequest(group, a.member_id))
        assert left.error_code == 0
        attempts = [(a.generation_id, a.leader_id, a.member_id, "")]
        member_id = ""
        for pause_s in (0.0, SESSION_TIMEOUT_MS / 1000 + 1):
            await asyncio.sleep(pause_s)
            b = await _join(client, node, group, member_id)
            member_id = b.member_id
            sync = await client.send(node, SyncGroupRequest(group, b.generation_id, member_id, None, []))
            attempts.append((b.generation_id, b.leader_id, member_id, for_code(sync.error_code).__name__))
        return attempts
    finally:
        await client.close()


@pytest.mark.timeout(120)
def test_a_leader_that_leaves_before_its_sync_leaves_the_group_without_a_leader(
    embedded_kafka: KafkaUnderTest,
) -> None:
    """The embedded broker keeps a forming group's leader after that leader's LeaveGroup.

    Every later member is answered as a follower of the member that left, and its SyncGroup is refused with
    RebalanceInProgress, so the group never forms again while the broker runs: neither rejoining nor a
    session timeout helps (the leader is no member any more, so no eviction clears it). Apache Kafka elects
    one of the remaining members.
    """
    attempts = asyncio.run(_leader_leaves_before_its_sync(embedded_kafka.bootstrap))
    (_, a_id, _, _), *b_attempts = attempts
    for _, leader, b_id, sync_error in b_attempts:
        assert (leader, sync_error) == (a_id, "RebalanceInProgressError"), attempts
        assert b_id != a_id
    generations = {generation for generation, *_ in b_attempts}
    assert len(generations) == 1, attempts  # the same generation, again and again
