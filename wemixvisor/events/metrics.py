"""Prometheus exposition of the daemon (SPEC §14), off unless WEMIXVISOR_METRICS_ADDRESS is set.

Two feeds, one registry of the exporter's own (never the process-global one):

- at scrape time, the actors are asked (briefly, concurrently) for what they know now: node state,
  pid uptime, restarts, CPU and RSS; the head height and RPC availability; pending plans; the
  events publisher's published and dropped counters; actor restarts. A scrape therefore shows
  what `wemixvisor status` shows at that moment.
- a subscriber to the daemon's own events socket counts what happens between scrapes: upgrades
  by result with their duration and downtime, backups with their duration and size, RPC errors,
  node exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import pykka
from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from wemixvisor import __version__
from wemixvisor.bus import Bus
from wemixvisor.events.subscriber import ReceivedEvent
from wemixvisor.messages.events import Event
from wemixvisor.messages.height import GetHeight, HeightStatus
from wemixvisor.messages.node import GetNodeStatus, NodeState, NodeStatus
from wemixvisor.messages.plans import ListPlans
from wemixvisor.plans.queue import PlanStatus

__all__ = ["MetricsExporter", "split_address"]

_SCRAPE_ASK_TIMEOUT = 1.0
_UPGRADE_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_DOWNTIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BACKUP_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
# Field names a backup event may carry its figures under.
_DURATION_FIELDS = ("seconds", "duration_seconds", "duration")
_BYTES_FIELDS = ("bytes", "total_bytes", "bytes_copied", "size_bytes", "size")
_OPERATION_FIELDS = ("operation", "id", "backup_id", "backup")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.removeprefix(":"))
    host, _, port = address.rpartition(":")
    return host, int(port)


class _StatusCollector:
    """Asks the actors at scrape time; an actor that does not answer leaves its metrics out."""

    def __init__(self, bus: Bus, actor_restarts: Callable[[], dict[str, int]]) -> None:
        self._bus = bus
        self._actor_restarts = actor_restarts
        self._events_proxy: tuple[Any, Any] | None = None

    def describe(self) -> Iterable[Metric]:
        # Registration must not ask the actors: names are not checked for this collector.
        return []

    def collect(self) -> Iterator[Metric]:
        deadline = time.monotonic() + _SCRAPE_ASK_TIMEOUT
        node_f = self._ask("node", GetNodeStatus())
        head_f = self._ask("height", GetHeight())
        plans_f = self._ask("orchestrator", ListPlans())
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
        snapshot = _get(plans_f, deadline)
        if snapshot is not None:
            waiting = sum(1 for e in snapshot.queue.plans if e.status is PlanStatus.PENDING)
            yield _gauge(
                "wemixvisor_plans_pending", "upgrade plans waiting for their height", waiting
            )
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


class _EventMetrics:
    """Counters and histograms fed by the daemon's events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.upgrades = Counter(
            "wemixvisor_upgrades", "upgrades by result", ["result"], registry=registry
        )
        self.upgrade_duration = Histogram(
            "wemixvisor_upgrade_duration_seconds",
            "upgrade.started to its end",
            buckets=_UPGRADE_BUCKETS,
            registry=registry,
        )
        self.upgrade_downtime = Histogram(
            "wemixvisor_upgrade_downtime_seconds",
            "node down during a completed upgrade",
            buckets=_DOWNTIME_BUCKETS,
            registry=registry,
        )
        self.backups = Counter(
            "wemixvisor_backups", "backups by result", ["result"], registry=registry
        )
        self.backup_duration = Histogram(
            "wemixvisor_backup_duration_seconds",
            "backup.started to backup.completed",
            buckets=_BACKUP_BUCKETS,
            registry=registry,
        )
        self.backup_bytes = Gauge(
            "wemixvisor_backup_bytes", "size of the latest complete backup", registry=registry
        )
        self.rpc_errors = Counter(
            "wemixvisor_rpc_errors", "times the node's RPC became unavailable", registry=registry
        )
        self.node_exits = Counter(
            "wemixvisor_node_exits", "node process exits", ["expected"], registry=registry
        )
        self.missed = Counter(
            "wemixvisor_metrics_events_missed",
            "events the metrics subscriber lost (gaps in seq)",
            registry=registry,
        )
        for result in ("completed", "failed", "rolled_back"):
            self.upgrades.labels(result=result)
        for result in ("completed", "failed"):
            self.backups.labels(result=result)
        for expected in ("true", "false"):
            self.node_exits.labels(expected=expected)
        self._upgrade_started: dict[str, float] = {}
        self._backup_started: dict[str, float] = {}

    def observe(self, event: ReceivedEvent) -> None:
        """Account for one event."""
        payload = event.payload
        if event.gap:
            self.missed.inc(event.gap)
        match event.topic:
            case "upgrade.started":
                self._upgrade_started[str(payload.get("name"))] = event.ts
            case "upgrade.completed" | "upgrade.failed":
                result = event.topic.removeprefix("upgrade.")
                self.upgrades.labels(result=result).inc()
                began = self._upgrade_started.pop(str(payload.get("name")), None)
                if began is not None:
                    self.upgrade_duration.observe(max(event.ts - began, 0.0))
                downtime = _number(payload.get("downtime_seconds"))
                if result == "completed" and downtime is not None:
                    self.upgrade_downtime.observe(downtime)
            case "upgrade.rolled_back":
                self.upgrades.labels(result="rolled_back").inc()
            case "backup.started":
                self._backup_started[_operation_of(payload)] = event.ts
            case "backup.completed" | "backup.failed":
                result = event.topic.removeprefix("backup.")
                self.backups.labels(result=result).inc()
                began = self._backup_started.pop(_operation_of(payload), None)
                seconds = _first_number(payload, _DURATION_FIELDS)
                if seconds is None and began is not None:
                    seconds = max(event.ts - began, 0.0)
                if result == "completed":
                    if seconds is not None:
                        self.backup_duration.observe(seconds)
                    size = _first_number(payload, _BYTES_FIELDS)
                    if size is not None:
                        self.backup_bytes.set(size)
            case "rpc.unavailable":
                self.rpc_errors.inc()
            case "node.exited":
                expected = "true" if payload.get("expected") else "false"
                self.node_exits.labels(expected=expected).inc()
            case _:
                pass


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _first_number(payload: dict[str, Any], fields: tuple[str, ...]) -> float | None:
    for name in fields:
        value = _number(payload.get(name))
        if value is not None:
            return value
    return None


def _operation_of(payload: dict[str, Any]) -> str:
    for name in _OPERATION_FIELDS:
        value = payload.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


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
        self.registry.register(_StatusCollector(bus, actor_restarts))
        self._events = _EventMetrics(self.registry)
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
