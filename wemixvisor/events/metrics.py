"""Prometheus exposition of the daemon (SPEC §14), off unless WEMIXVISOR_METRICS_ADDRESS is set.

Two feeds, one registry of the exporter's own (never the process-global one):

- at scrape time, the actors are asked (briefly, concurrently) for what they know now: node state,
  pid uptime, restarts, CPU and RSS; the head height and RPC availability; each pending plan's
  height, preflight verdict and time to its height; the latest complete backup; the events
  publisher's published and dropped counters; actor restarts. A scrape therefore shows what
  `wemixvisor status` shows at that moment.
- a subscriber to the daemon's own events socket counts what happens between scrapes: upgrades
  by result with their duration and downtime, overshoots, backups with their duration, preflight
  failures, RPC errors, node exits, validator signing and quorum warnings, and the pace of new
  heads (the measured block time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import pykka
from loguru import logger
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from wemixvisor import __version__
from wemixvisor.bus import Bus
from wemixvisor.events.metrics_feed import EventMetrics
from wemixvisor.events.subscriber import ReceivedEvent
from wemixvisor.messages.backup import BackupInfo, ListBackups
from wemixvisor.messages.events import Event
from wemixvisor.messages.height import GetHeight, HeightStatus
from wemixvisor.messages.node import GetNodeStatus, NodeState, NodeStatus
from wemixvisor.messages.plans import ListPlans
from wemixvisor.plans.queue import PlanStatus, QueuedPlan

__all__ = ["MetricsExporter", "plan_eta", "split_address"]

_SCRAPE_ASK_TIMEOUT = 1.0


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.removeprefix(":"))
    host, _, port = address.rpartition(":")
    return host, int(port)


class _StatusCollector:
    """Asks the actors at scrape time; an actor that does not answer leaves its metrics out."""

    def __init__(
        self, bus: Bus, actor_restarts: Callable[[], dict[str, int]], feed: EventMetrics
    ) -> None:
        self._bus = bus
        self._actor_restarts = actor_restarts
        self._feed = feed
        self._events_proxy: tuple[Any, Any] | None = None

    def describe(self) -> Iterable[Metric]:
        # Registration must not ask the actors: names are not checked for this collector.
        return []

    def collect(self) -> Iterator[Metric]:
        deadline = time.monotonic() + _SCRAPE_ASK_TIMEOUT
        node_f = self._ask("node", GetNodeStatus())
        head_f = self._ask("height", GetHeight())
        plans_f = self._ask("orchestrator", ListPlans())
        backups_f = self._ask("backup", ListBackups())
        stats_f = self._events_stats()
        info = GaugeMetricFamily("wemixvisor_info", "wemixvisor's version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        node: NodeStatus | None = _get(node_f, deadline)
        if node is not None:
            yield from self._node_metrics(node)
        head: HeightStatus | None = _get(head_f, deadline)
        if head is not None:
            yield _gauge(
                "wemixvisor_rpc_available", "1 when the node's RPC answers", head.rpc_available
            )
            yield _gauge(
                "wemixvisor_head_stalled", "1 when the head stopped advancing", head.stalled
            )
            if head.height is not None:
                yield _gauge("wemixvisor_head_height", "the chain head seen on RPC", head.height)
        pace = self._feed.block_time()
        snapshot = _get(plans_f, deadline)
        if snapshot is not None:
            pending = [e for e in snapshot.queue.plans if e.status is PlanStatus.PENDING]
            yield _gauge(
                "wemixvisor_plans_pending", "upgrade plans waiting for their height", len(pending)
            )
            yield from self._plan_metrics(pending, snapshot.preflight_ok, head, pace)
        if pace is not None:
            yield _gauge("wemixvisor_block_time_seconds", "the chain's block time, measured", pace)
        backups: list[BackupInfo] | None = _get(backups_f, deadline)
        if backups is not None:
            yield from _backup_metrics(backups)
        stats = _get(stats_f, deadline)
        if stats is not None:
            published, dropped = stats
            yield _counter(
                "wemixvisor_events_published", "events sent on the PUB socket", published
            )
            yield _counter("wemixvisor_events_dropped", "events the PUB socket refused", dropped)
        restarts = CounterMetricFamily(
            "wemixvisor_actor_restarts", "restarts of each daemon actor", labels=["actor"]
        )
        for role, count in sorted(self._actor_restarts().items()):
            restarts.add_metric([role], float(count))
        yield restarts

    def _plan_metrics(
        self,
        pending: list[QueuedPlan],
        preflight_ok: dict[str, bool],
        head: HeightStatus | None,
        pace: float | None,
    ) -> Iterator[Metric]:
        labels = ["plan"]
        height = GaugeMetricFamily(
            "wemixvisor_plan_height", "a pending plan's height", labels=labels
        )
        ready = GaugeMetricFamily(
            "wemixvisor_plan_ready",
            "1 when a pending plan's latest preflight passed; 0 failed or not checked yet",
            labels=labels,
        )
        eta = GaugeMetricFamily(
            "wemixvisor_plan_eta_seconds",
            "seconds until a pending plan's height at the measured block time",
            labels=labels,
        )
        risk = GaugeMetricFamily(
            "wemixvisor_validator_quorum_at_risk",
            "1 when this validator's downtime at the plan's height would break the quorum",
            labels=labels,
        )
        now = head.height if head is not None else None
        risks = self._feed.quorum_risks({entry.plan.name for entry in pending})
        for entry in pending:
            name, target = entry.plan.name, entry.plan.height
            height.add_metric([name], float(target))
            ready.add_metric([name], 1.0 if preflight_ok.get(name) else 0.0)
            if pace is not None and now is not None:
                eta.add_metric([name], plan_eta(target, now, pace))
            if (warning := risks.get(name)) is not None and warning.height == target:
                risk.add_metric([name], 1.0)
        yield from (height, ready, eta, risk)

    def _node_metrics(self, node: NodeStatus) -> Iterator[Metric]:
        yield _gauge(
            "wemixvisor_node_up", "1 when the node is RUNNING", node.state is NodeState.RUNNING
        )
        state = GaugeMetricFamily(
            "wemixvisor_node_state", "1 for the node's current state", labels=["state"]
        )
        for candidate in NodeState:
            state.add_metric([candidate.value], 1.0 if candidate is node.state else 0.0)
        yield state
        yield _counter(
            "wemixvisor_node_restarts", "restarts of the node by the daemon", node.restarts
        )
        yield _gauge(
            "wemixvisor_node_restarts_in_window",
            "restarts counted against DAEMON_MAX_RESTARTS",
            node.restarts_in_window,
        )
        yield _gauge(
            "wemixvisor_node_cpu_percent",
            "CPU of the node's process tree, % of one core",
            node.cpu_percent,
        )
        yield _gauge("wemixvisor_node_rss_bytes", "RSS of the node's process tree", node.rss_bytes)
        if node.uptime is not None:
            yield _gauge("wemixvisor_node_uptime_seconds", "age of the node process", node.uptime)

    def _ask(self, role: str, message: Any) -> pykka.Future[Any] | None:
        ref = self._bus.ref(role)
        if ref is None:
            return None
        try:
            return ref.ask(message, block=False)
        except pykka.ActorDeadError:
            return None

    def _events_stats(self) -> pykka.Future[Any] | None:
        ref = self._bus.ref("events")
        if ref is None:
            return None
        try:
            if self._events_proxy is None or self._events_proxy[0] is not ref:
                self._events_proxy = (ref, ref.proxy())
            future: pykka.Future[Any] = self._events_proxy[1].stats()
        except pykka.ActorDeadError:
            self._events_proxy = None
            return None
        return future


def _get(future: pykka.Future[Any] | None, deadline: float) -> Any:
    if future is None:
        return None
    try:
        return future.get(timeout=max(deadline - time.monotonic(), 0.0))
    except (pykka.Timeout, pykka.ActorDeadError):
        return None


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))


def plan_eta(height: int, head: int, block_time: float) -> float:
    """Seconds until `height` from `head` at `block_time` a block; 0 once reached."""
    return max(height - head, 0) * block_time


def _backup_metrics(backups: list[BackupInfo]) -> Iterator[Metric]:
    complete = [b for b in backups if b.complete]
    yield _gauge("wemixvisor_backups_complete", "complete backups on disk", len(complete))
    if complete:
        latest = max(complete, key=lambda b: b.created_at)
        yield _gauge(
            "wemixvisor_backup_last_timestamp_seconds",
            "when the latest complete backup was made (unix time)",
            latest.created_at,
        )
        yield _gauge(
            "wemixvisor_backup_bytes", "size of the latest complete backup", latest.total_bytes
        )


class MetricsExporter:
    """/metrics on `address` (host:port) for the daemon whose actors are on `bus`; the events
    publisher tells it every event it publishes (`observe_published`), so none is missed."""

    def __init__(
        self,
        address: str,
        bus: Bus,
        *,
        actor_restarts: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self._events = EventMetrics(self.registry)
        self.registry.register(_StatusCollector(bus, actor_restarts, self._events))
        self._server: Any = None
        self._http_thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> None:
        """Listen on the address; OSError if it cannot listen."""
        host, port = split_address(self.address)
        self._server, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_address[1])
        logger.info("Prometheus metrics on http://{}/metrics", self.address)

    def stop(self) -> None:
        """Stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def observe_published(self, event: Event, payload: bytes) -> None:
        """Account for one event as it is published (called on the publisher's thread)."""
        decoded = msgspec.json.decode(payload)
        self._events.observe(
            ReceivedEvent(event.topic, decoded, payload, event.seq, event.run_id, event.ts, 0)
        )
