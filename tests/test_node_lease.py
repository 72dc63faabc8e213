"""The node's lease book: one holder at a time; others refused or queued."""

from __future__ import annotations

from wemixvisor.messages.node import NodeLease
from wemixvisor.node.lease import LeaseBook


def test_an_upgrade_holding_the_node_refuses_a_restore_and_the_operator() -> None:
    book = LeaseBook()
    assert book.acquire("upgrade v2", "upgrade at 100") == NodeLease(
        True, "upgrade v2", "upgrade at 100"
    )
    assert book.allows("upgrade v2")
    assert not book.allows(None)  # the operator's start/stop
    assert book.acquire("restore x", "restore") == NodeLease(False, "upgrade v2", "upgrade at 100")
    assert book.acquire("upgrade v2", "resumed").granted  # asking again is fine


def test_a_waiting_request_gets_the_node_when_it_is_given_back() -> None:
    book = LeaseBook()
    book.acquire("restore x", "restore")
    book.enqueue("upgrade v2", "upgrade at 100", "reply")
    assert book.release("someone else") is None
    granted = book.release("restore x")
    assert granted == (NodeLease(True, "upgrade v2", "upgrade at 100"), "reply")
    assert book.current == NodeLease(True, "upgrade v2", "upgrade at 100")
    assert book.release("upgrade v2") is None
    assert book.current is None
    assert book.allows(None)
