"""What the metrics exporter learns from the daemon's events (SPEC §10, §14): counters and
histograms of what happened between scrapes, and the few facts that only events carry — the
pace of new heads, the validator's signing after an upgrade, quorum warnings per plan.

Topics are matched by name, not by event class, so that a subscriber built against an older
daemon still counts what it knows and ignores the rest.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple, TypeGuard

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from wemixvisor.chain.pace import HeadPace, block_time
from wemixvisor.events.subscriber import ReceivedEvent

__all__ = ["EventMetrics", "QuorumRisk", "block_time"]

_UPGRADE_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_DOWNTIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BACKUP_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
# Field names a backup event may carry its figures under.
_DURATION_FIELDS = ("seconds", "duration_seconds", "duration")
_OPERATION_FIELDS = ("operation", "id", "backup_id", "backup")


class QuorumRisk(NamedTuple):
    """A `validator.quorum_at_risk` warning for one plan: its height and the figures."""

    height: int
    quorum: int
    active_without_me: int


class EventMetrics:
    """Counters and histograms fed by the daemon's events, plus the event-only facts the
    scrape-time collector reads (under a lock: the feed thread writes, scrapes read)."""

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
        self.overshoots = Counter(
            "wemixvisor_upgrade_overshoots",
            "upgrade.overshoot: the old binary imported blocks at or beyond a plan's height",
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
        self.preflight_failures = Counter(
            "wemixvisor_plan_preflight_failures",
            "plan.preflight_failed: a plan's preflight found problems (re-checked every minute)",
            registry=registry,
        )
        self.rpc_errors = Counter(
            "wemixvisor_rpc_errors", "times the node's RPC became unavailable", registry=registry
        )
        self.node_exits = Counter(
            "wemixvisor_node_exits", "node process exits", ["expected"], registry=registry
        )
        self.signing = Gauge(
            "wemixvisor_validator_signing",
            "after the latest upgrade: 1 validator.signing, 0 validator.not_signing",
            ["address"],
            registry=registry,
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
        self._lock = threading.Lock()
        self._pace = HeadPace()
        self._quorum_risks: dict[str, QuorumRisk] = {}

    def block_time(self) -> float | None:
        """The measured block time (seconds), None until known."""
        with self._lock:
            return self._pace.block_time()

    def quorum_risks(self, pending: set[str]) -> dict[str, QuorumRisk]:
        """The latest quorum warning of each `pending` plan that had one, by plan name; the
        warnings of plans no longer pending are forgotten."""
        with self._lock:
            for name in set(self._quorum_risks) - pending:
                del self._quorum_risks[name]
            return dict(self._quorum_risks)

    def observe(self, event: ReceivedEvent) -> None:
        """Account for one event."""
        payload = event.payload
        if event.gap:
            self.missed.inc(event.gap)
        match event.topic:
            case "height.observed":
                self._on_head(payload, event.ts)
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
            case "upgrade.overshoot":
                self.overshoots.inc()
            case "plan.preflight_failed":
                self.preflight_failures.inc()
            case "backup.started":
                self._backup_started[_operation_of(payload)] = event.ts
            case "backup.completed" | "backup.failed":
                result = event.topic.removeprefix("backup.")
                self.backups.labels(result=result).inc()
                began = self._backup_started.pop(_operation_of(payload), None)
                seconds = _first_number(payload, _DURATION_FIELDS)
                if seconds is None and began is not None:
                    seconds = max(event.ts - began, 0.0)
                if result == "completed" and seconds is not None:
                    self.backup_duration.observe(seconds)
            case "rpc.unavailable":
                self.rpc_errors.inc()
            case "node.exited":
                expected = "true" if payload.get("expected") else "false"
                self.node_exits.labels(expected=expected).inc()
            case "validator.signing" | "validator.not_signing":
                self._on_signing(payload, signing=event.topic == "validator.signing")
            case "validator.quorum_at_risk":
                self._on_quorum_risk(payload)
            case _:
                pass

    def _on_head(self, payload: dict[str, Any], ts: float) -> None:
        height = payload.get("height")
        if not _is_int(height):
            return
        with self._lock:
            self._pace.note(height, ts)

    def _on_signing(self, payload: dict[str, Any], *, signing: bool) -> None:
        address = payload.get("address")
        if isinstance(address, str) and 0 < len(address) <= 66:
            self.signing.clear()  # one validator per daemon; a changed key replaces the old
            self.signing.labels(address=address).set(1.0 if signing else 0.0)

    def _on_quorum_risk(self, payload: dict[str, Any]) -> None:
        plan = payload.get("plan")
        figures = [payload.get(name) for name in ("height", "quorum", "active_without_me")]
        ints = [figure for figure in figures if _is_int(figure)]
        if not isinstance(plan, str) or len(ints) != len(figures):
            return
        height, quorum, left = ints
        with self._lock:
            self._quorum_risks[plan] = QuorumRisk(height, quorum, left)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


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
