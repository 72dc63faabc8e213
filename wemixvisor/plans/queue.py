"""Upgrade plans (SPEC §4): parsing and validation, and the persistent plan queue's rules.

Everything here is pure: bytes or plain data in, plans or `PlanError` out. Files, events and
actors live elsewhere.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import msgspec

MAX_PLAN_BYTES = 1024 * 1024
MAX_HEIGHT = 2**63 - 1
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_URL_PREFIXES = ("http://", "https://", "file://")
MAX_NODE_ARGS = 1000
"""More node arguments than this (in a plan or a node-args file) is refused."""
MAX_NODE_ARGS_BYTES = 1024 * 1024
"""A node-args file (or a plan's node_args, all arguments together) larger than this is refused."""
MODES = ("at", "window")
"""`at`: switch when the old binary holds H-1; `window`: anywhere in the rolling window (§19)."""
MAX_WINDOW = 100_000
"""The widest rolling window in blocks (about a day of 1 s blocks)."""


class PlanError(ValueError):
    """A plan that must not be acted on; the message is the reason given to the operator."""


class PlanStatus(enum.StrEnum):
    """Where a plan is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"  # completed, then rolled back by the operator


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One validated upgrade plan.

    `info` is the plan's info object (binaries etc.) when given inline or as a JSON string;
    `info_url` when it was given as an URL to fetch (the downloader resolves it).
    """

    name: str
    height: int
    info: dict[str, Any] | None = None
    info_url: str | None = None
    source: str = "file"
    rehearse: bool = False  # rehearse the new binary on a copy of the data hours before H
    mode: str = "at"  # "at" H-1, or "window": a slot in [H-window, H-margin] (SPEC §19)
    window: int | None = None  # blocks; set exactly when mode is "window"


def validate_name(name: object) -> str:
    """`name`: 1-64 chars of [A-Za-z0-9._-], not `.` or `..`; used as-is."""
    if not isinstance(name, str):
        raise PlanError(f"name must be a string, got {type(name).__name__}")
    if name in (".", "..") or not _NAME_RE.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "…"
        raise PlanError(f"invalid name {shown!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def validate_height(height: object) -> int:
    """`height`: an integer > 0, or a decimal string of one."""
    if isinstance(height, bool):
        raise PlanError("height must be an integer, got a boolean")
    if isinstance(height, str):
        text = height.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            shown = height if len(height) <= 40 else height[:40] + "…"
            raise PlanError(f"height {shown!r} is not a decimal integer")
        height = int(text)
    if not isinstance(height, int):
        raise PlanError(f"height must be an integer, got {type(height).__name__}")
    if height <= 0:
        raise PlanError(f"height must be > 0, got {_shown_int(height)}")
    if height > MAX_HEIGHT:
        raise PlanError(f"height {_shown_int(height)} is out of range")
    return height


def _shown_int(number: int) -> str:
    # JSON integers of thousands of digits decode fine; the reason given must stay one line.
    text = str(number)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} digits)"


def _validate_info(info: object) -> tuple[dict[str, Any] | None, str | None]:
    if info is None:
        return None, None
    if isinstance(info, dict):
        return _check_info_object(info), None
    if isinstance(info, str):
        text = info.strip()
        if not text:
            return None, None
        if text.startswith(_URL_PREFIXES):
            return None, text
        try:
            decoded = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError):
            raise PlanError("info is neither a JSON object nor an http(s)/file URL") from None
        if not isinstance(decoded, dict):
            raise PlanError("info must hold a JSON object")
        return _check_info_object(decoded), None
    raise PlanError(f"info must be an object, a JSON string or an URL, got {type(info).__name__}")


def validate_node_args(value: object, where: str = "info.node_args") -> list[str]:
    """The node's arguments from a plan (`info.node_args`) or a node-args file: a list of at
    most MAX_NODE_ARGS strings without NUL bytes, MAX_NODE_ARGS_BYTES in all."""
    if not isinstance(value, list):
        raise PlanError(f"{where} must be a list of strings, got {type(value).__name__}")
    if len(value) > MAX_NODE_ARGS:
        raise PlanError(f"{where} has {len(value)} arguments, over the limit of {MAX_NODE_ARGS}")
    total = 0
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PlanError(f"{where}[{index}] must be a string, got {type(item).__name__}")
        if "\0" in item:
            raise PlanError(f"{where}[{index}] contains a NUL byte")
        total += len(item.encode(errors="surrogatepass")) + 1
    if total > MAX_NODE_ARGS_BYTES:
        raise PlanError(f"{where} is {total} bytes, over the {MAX_NODE_ARGS_BYTES}-byte limit")
    return list(value)


def parse_node_args_file(raw: bytes, where: str = "node-args") -> list[str]:
    """`upgrades/<name>/node-args`: one argument per line; blank lines and lines starting with
    `#` are skipped, surrounding whitespace is dropped."""
    if len(raw) > MAX_NODE_ARGS_BYTES:
        raise PlanError(f"{where} is over the {MAX_NODE_ARGS_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{where} is not UTF-8 text (bad byte at offset {exc.start})") from None
    lines = (line.strip() for line in text.splitlines())
    return validate_node_args([line for line in lines if line and not line.startswith("#")], where)


def _check_info_object(info: dict[str, Any]) -> dict[str, Any]:
    if "node_args" in info:
        validate_node_args(info["node_args"])
    binaries = info.get("binaries")
    if binaries is None:
        return info
    if not isinstance(binaries, dict):
        raise PlanError("info.binaries must be an object of platform → URL")
    for platform, url in binaries.items():
        if not isinstance(url, str) or not url.strip():
            raise PlanError(f"info.binaries[{platform!r}] must be an URL string")
    return info


def validate_mode(mode: object, window: object, height: int) -> tuple[str, int | None]:
    """`mode` ("at" by default, or "window") and `window` (blocks, required with "window",
    1 ≤ W ≤ MAX_WINDOW and W < H: the window cannot open before block 1)."""
    if mode is None:
        mode = "window" if window is not None else "at"
    if not isinstance(mode, str) or mode not in MODES:
        shown = repr(mode) if not isinstance(mode, str) or len(mode) <= 40 else repr(mode[:40])
        raise PlanError(f"mode must be one of {', '.join(MODES)}, got {shown}")
    if mode == "at":
        if window is not None:
            raise PlanError('window is only meaningful with mode "window"')
        return mode, None
    if window is None:
        raise PlanError('mode "window" needs "window": the window\'s length in blocks')
    if isinstance(window, bool) or not isinstance(window, int):
        raise PlanError(f"window must be an integer number of blocks, got {type(window).__name__}")
    if not 1 <= window <= MAX_WINDOW:
        raise PlanError(f"window must be 1-{MAX_WINDOW} blocks, got {_shown_int(window)}")
    if window >= height:
        raise PlanError(f"window {window} reaches before block 1 (height {height})")
    return mode, window


def plan_from_object(obj: object, source: str) -> Plan:
    """Validate one decoded plan object (`name`, `height`, optional `info`; `time` ignored).

    `mode`/`window` are top-level keys (SPEC §4); a plan whose info is an object may carry them
    as `info.mode`/`info.window` instead (governance proposals have only `info`), top level wins.
    """
    if not isinstance(obj, dict):
        raise PlanError(f"a plan must be a JSON object, got {type(obj).__name__}")
    if "name" not in obj:
        raise PlanError("plan has no name")
    if "height" not in obj:
        raise PlanError("plan has no height")
    name = validate_name(obj["name"])
    height = validate_height(obj["height"])
    info, info_url = _validate_info(obj.get("info"))
    rehearse = obj.get("rehearse", False)
    if not isinstance(rehearse, bool):
        raise PlanError(f"rehearse must be true or false, got {type(rehearse).__name__}")
    carrier: dict[str, Any] = obj if "mode" in obj or "window" in obj else (info or {})
    mode, window = validate_mode(carrier.get("mode"), carrier.get("window"), height)
    return Plan(
        name=name,
        height=height,
        info=info,
        info_url=info_url,
        source=source,
        rehearse=rehearse,
        mode=mode,
        window=window,
    )


def _decode(raw: bytes) -> Any:
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"file is {len(raw)} bytes, over the {MAX_PLAN_BYTES}-byte limit")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise PlanError(f"not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec raises this (not DecodeError) for arrays/objects nested thousands deep.
        raise PlanError("not valid JSON: nested too deeply") from None


def parse_plan(raw: bytes, source: str = "file") -> Plan:
    """`upgrade-info.json`: one plan object."""
    return plan_from_object(_decode(raw), source)


def parse_batch(raw: bytes, source: str = "batch") -> tuple[list[Plan], list[PlanError]]:
    """`upgrade-info.json.batch`: an array of plans; each element stands or falls alone."""
    decoded = _decode(raw)
    if not isinstance(decoded, list):
        raise PlanError(f"a batch must be a JSON array, got {type(decoded).__name__}")
    plans: list[Plan] = []
    errors: list[PlanError] = []
    for index, obj in enumerate(decoded):
        try:
            plans.append(plan_from_object(obj, source))
        except PlanError as exc:
            errors.append(PlanError(f"batch entry {index}: {exc}"))
    return plans, errors


def plan_to_object(plan: Plan) -> dict[str, Any]:
    """The cosmovisor-style JSON object of a plan (what upgrade-info.json holds)."""
    obj: dict[str, Any] = {"name": plan.name, "height": plan.height}
    if plan.info is not None:
        obj["info"] = plan.info
    elif plan.info_url is not None:
        obj["info"] = plan.info_url
    if plan.rehearse:
        obj["rehearse"] = True
    if plan.mode != "at" or (plan.info is not None and {"mode", "window"} & plan.info.keys()):
        # Top level, so that an info object holding others cannot override the plan's mode.
        obj["mode"] = plan.mode
        if plan.window is not None:
            obj["window"] = plan.window
    return obj


class RehearsalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The last rehearsal of a plan's new binary (SPEC §19): passed or not, when, and why."""

    ok: bool
    at: float
    seconds: float
    head: int | None = None
    reason: str = ""


class QueuedPlan(msgspec.Struct, kw_only=True):
    """A plan in the persistent queue, with its life so far."""

    plan: Plan
    status: PlanStatus = PlanStatus.PENDING
    late: bool = False
    registered_at: float = 0.0
    finished_at: float | None = None
    result: str | None = None  # why it failed / was cancelled, or "ok"
    # What a completed upgrade replaced and saved: an operator's rollback needs both.
    from_target: str | None = None
    backup: str | None = None
    rehearsal: RehearsalRecord | None = None


class QueueState(msgspec.Struct, kw_only=True):
    """The whole queue as stored in state/plans.json."""

    version: int = 1
    plans: list[QueuedPlan] = msgspec.field(default_factory=list)


class RegisterOutcome(enum.Enum):
    """What `register` did."""

    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"  # the same pending plan again, or a plan that already ran


def _find(state: QueueState, name: str) -> QueuedPlan | None:
    return next((entry for entry in state.plans if entry.plan.name == name), None)


def register(
    state: QueueState, plan: Plan, *, head: int | None, now: bool, at: float
) -> tuple[RegisterOutcome, QueuedPlan | None]:
    """Add `plan` to the queue (mutates `state`); raise PlanError when it is refused.

    Rules (SPEC §4): keyed by name; a plan that completed or is running is never run again
    (UNCHANGED; a completed plan shown with another height is refused), nor a failed one unless
    re-scheduled through the control protocol; two pending plans at one height conflict and the
    later is refused; a plan already due (head ≥ H-1) is refused from the control protocol unless
    `now`, and from files/governance runs at once, marked late.
    """
    existing = _find(state, plan.name)
    if existing is not None and existing.status is not PlanStatus.PENDING:
        # A cancelled plan may be scheduled again; a failed one only by an operator's explicit
        # request (files keep showing it after a restart, which must not retry it).
        rescheduled = (
            existing.status in (PlanStatus.FAILED, PlanStatus.ROLLED_BACK)
            and plan.source == "control"
        )
        if existing.status is PlanStatus.CANCELLED or rescheduled:
            state.plans.remove(existing)
            existing = None
        elif existing.status is PlanStatus.COMPLETED and existing.plan.height != plan.height:
            # Shown again with another height: the source is wrong, and is told so.
            raise PlanError(
                f"plan {plan.name!r} already completed at height {existing.plan.height}; "
                "a completed plan never runs again (choose a new name)"
            )
        else:
            return RegisterOutcome.UNCHANGED, existing
    for other in state.plans:
        if (
            other.status is PlanStatus.PENDING
            and other.plan.height == plan.height
            and other.plan.name != plan.name
        ):
            raise PlanError(
                f"conflict: plan {other.plan.name!r} is already scheduled at height {plan.height}"
            )
    late = starts_now(plan.height, head)
    if late and plan.source == "control" and not now:
        raise PlanError(
            f"height {plan.height} is due: the head ({head}) has passed or reached block "
            f"{last_old_block(plan.height)}, the old binary's last; send it with now=true to "
            "upgrade at once"
        )
    if existing is not None:
        if _same_plan(existing.plan, plan):
            return RegisterOutcome.UNCHANGED, existing
        existing.plan = plan
        existing.late = late
        existing.registered_at = at
        existing.rehearsal = None  # it rehearsed another plan
        return RegisterOutcome.UPDATED, existing
    entry = QueuedPlan(plan=plan, late=late, registered_at=at)
    state.plans.append(entry)
    return RegisterOutcome.ADDED, entry


def _same_plan(a: Plan, b: Plan) -> bool:
    """Equal for the upgrade it describes, whichever source showed it."""
    return (a.name, a.height, a.info, a.info_url, a.rehearse, a.mode, a.window) == (
        b.name,
        b.height,
        b.info,
        b.info_url,
        b.rehearse,
        b.mode,
        b.window,
    )


def cancel(state: QueueState, name: str, *, at: float, reason: str = "cancelled") -> QueuedPlan:
    """Cancel a pending plan; KeyError if unknown, PlanError if it is not pending."""
    entry = _find(state, name)
    if entry is None:
        raise KeyError(name)
    if entry.status is not PlanStatus.PENDING:
        raise PlanError(f"plan {name!r} is {entry.status.value}, not pending")
    entry.status = PlanStatus.CANCELLED
    entry.finished_at = at
    entry.result = reason
    return entry


def settle_unjournaled(
    state: QueueState, journaled: str | None, current_target: str | None, *, at: float
) -> list[QueuedPlan]:
    """Plans left `running` with no journal by a daemon killed in the few milliseconds
    between the queue and the journal (its start, or its end): settled by where `current`
    points. On the plan's own target the switch happened and only a finished upgrade
    clears its journal: completed. Otherwise it runs again: pending, since a plan wrongly
    taken for failed would leave the node on a binary that cannot follow the fork, while
    one run again at worst fails again. The plans settled."""
    settled = []
    for entry in state.plans:
        if entry.status is not PlanStatus.RUNNING or entry.plan.name == journaled:
            continue
        if current_target == f"upgrades/{entry.plan.name}":
            entry.status = PlanStatus.COMPLETED
            entry.finished_at = at
            entry.result = "completed (found switched, its journal already cleared)"
        else:
            entry.status = PlanStatus.PENDING
        settled.append(entry)
    return settled


def pending(state: QueueState) -> list[QueuedPlan]:
    """Pending plans, lowest height first."""
    return sorted(
        (entry for entry in state.plans if entry.status is PlanStatus.PENDING),
        key=lambda entry: entry.plan.height,
    )


def last_old_block(height: int) -> int:
    """H-1: the old binary's last block. H is the first block of the new binary — the fork
    block of geth-family chains, the plan height of cosmovisor (SPEC §5)."""
    return height - 1


def starts_now(height: int, head: int | None) -> bool:
    """Whether a node at `head` starts the upgrade at `height`: head ≥ H-1 (never on an
    unknown head). Waiting for head ≥ H would wait forever on a real fork: an old binary
    cannot import the fork block H."""
    return head is not None and head >= last_old_block(height)


def overshoot(height: int, head: int) -> int:
    """How many blocks at or beyond H an old binary at `head` imported: head - H + 1, or 0."""
    return max(head - height + 1, 0)


def due(state: QueueState, head: int | None) -> QueuedPlan | None:
    """The plan to run now: the lowest pending plan that `head` starts (`starts_now`).

    A late plan is due whatever the head, since it was accepted as already due.
    """
    for entry in pending(state):
        if entry.late or starts_now(entry.plan.height, head):
            return entry
    return None


def rehearsal_pending(entry: QueuedPlan) -> str | None:
    """Why a plan that requires a rehearsal may not start yet, or None when it may."""
    if not entry.plan.rehearse:
        return None
    record = entry.rehearsal
    if record is None:
        return "its rehearsal has not passed yet"
    if not record.ok:
        return f"its rehearsal failed: {record.reason}"
    return None


def get(state: QueueState, name: str) -> QueuedPlan | None:
    """The queued plan named `name`, if any."""
    return _find(state, name)


def encode_state(state: QueueState) -> bytes:
    """state/plans.json contents."""
    return msgspec.json.format(msgspec.json.encode(state), indent=2)


def decode_state(raw: bytes) -> QueueState:
    """Parse state/plans.json; PlanError when it is not a queue."""
    try:
        state = msgspec.json.decode(raw, type=QueueState)
    except msgspec.DecodeError as exc:
        raise PlanError(f"plan queue is unreadable: {exc}") from None
    except RecursionError:
        raise PlanError("plan queue is unreadable: nested too deeply") from None
    # Names become paths (upgrades/<name>): a queue edited by hand must not smuggle one in.
    for index, entry in enumerate(state.plans):
        try:
            validate_name(entry.plan.name)
            validate_height(entry.plan.height)
            validate_mode(entry.plan.mode, entry.plan.window, entry.plan.height)
        except PlanError as exc:
            raise PlanError(f"plan queue is unreadable: plans[{index}]: {exc}") from None
    return state
