"""The node's lease book: one holder at a time; others refused or queued."""

from __future__ import annotations

import pykka

from wemixvisor.messages.node import NodeLease
from wemixvisor.node.lease import LeaseBook

UPGRADE = NodeLease(True, "upgrade v2", "upgrade at 100")


def test_an_upgrade_holding_the_node_refuses_a_restore_and_the_operator() -> None:
    book = LeaseBook()
    assert book.acquire("upgrade v2", "upgrade at 100") == UPGRADE
    assert not book.refuses("upgrade v2", "stop")
    assert book.refuses(None, "stop")  # the operator's start/stop
    assert book.acquire("restore x", "restore") == NodeLease(False, "upgrade v2", "upgrade at 100")
    assert book.acquire("upgrade v2", "resumed").granted  # asking again is fine


def test_a_waiting_request_gets_the_node_when_it_is_given_back() -> None:
    book = LeaseBook()
    book.acquire("restore x", "restore")
    reply: pykka.ThreadingFuture[NodeLease] = pykka.ThreadingFuture()
    assert book.request("upgrade v2", "upgrade at 100", wait=True, reply=lambda: reply) is None
    refused = book.request("backup y", "last pass", wait=False, reply=lambda: None)
    assert refused == NodeLease(False, "restore x", "restore")
    assert book.release("someone else") is None
    assert book.release("restore x") == UPGRADE
    assert reply.get(timeout=1) == UPGRADE
    assert book.current == UPGRADE
    assert book.release("upgrade v2") is None
    assert book.current is None
    assert book.allows(None)
