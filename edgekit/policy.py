"""Runtime policy: device state (battery, charging, low-power mode, thermal) -> (steps, width).

The state sets a latency budget; the policy picks a row of the bundle's measured table that fits it.
Rows carry a quality value with a 95% interval (manifest "table", see ``parse_table``), and the choice
never prefers a costlier row on a difference the intervals cannot tell from noise:

    fitting    = the rows with latency_ms <= budget (rows below ``min_quality`` are never considered)
    best       = the fitting row with the highest quality.value (ties: the cheaper one)
    candidates = the fitting rows r with best.value - r.value <= sqrt(half(best)^2 + half(r)^2),
                 half(r) = (ci95[1] - ci95[0]) / 2
    choice     = the cheapest candidate (lowest latency_ms; ties: higher value, then wider, then fewer steps)

When nothing fits, the cheapest row is used (flagged over budget). Hysteresis: a choice cheaper than
the current row (or a current row that no longer fits) is taken at once (step down); a choice that
differs from the current row and costs at least as much is taken only after it has been the choice for
``dwell_s`` seconds in a row, at the smallest budget seen in that window (step up). When the rule's
choice is the current row, nothing moves, however the budget changed. All numbers are data
(``PolicyConfig``, the manifest's "policy"); the JS, Kotlin and Swift twins implement the same rule and
run the same JSON vectors (edgekit/twin_vectors/policy.json). ``sqrt`` of a sum of squares rather than
``hypot``: every platform rounds it the same way.

Budget, in milliseconds per image:
    reference_ms * thermal_budget[effective thermal] * battery factor (when not charging)
                 * low_power_factor (when low-power mode is on)
where reference_ms is ``reference_latency_ms`` or, when that is null, the slowest row of the table,
so one policy serves a table measured on a laptop and one measured on a phone. The effective thermal
state is the worse of the reported one and the one the optional headroom reaches (``headroom_thresholds``,
Android's getThermalHeadroom scale: 1.0 means severe throttling is imminent).

A device times its own first runs and rescales the table before the policy reads it
(``latency_ratio``, ``rescale_table``, ``Policy.rescaled``): the median of measured / table latency over
the runs multiplies every row's latency, so a table measured on the packaging host does not set a
phone's budget. With ``reference_latency_ms`` null the budget scales with the rows and only the
predicted times change; with a fixed reference the choice changes too.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import InputError
from edgekit.policy_inputs import (THERMAL_STATES, DeviceState, PolicyConfig, Row, finite_number, parse_table,
                                   rescale_table)

LOG = logging.getLogger("edgekit.policy")

REASONS = ("initial", "hold", "dwell", "step_down", "step_up", "fallback")


def not_significantly_worse(row: Row, best: Row) -> bool:
    """``row`` is within the combined 95% half-intervals of ``best`` (equality counts as a tie)."""
    hb, hr = best.half_interval, row.half_interval
    return best.quality - row.quality <= math.sqrt(hb * hb + hr * hr)


def choose(rows, budget_ms: float) -> Row | None:
    """The rule's row for a budget (None when no row fits): the cheapest row not significantly worse than
    the best fitting one."""
    fitting = [r for r in rows if r.latency_ms <= budget_ms]
    if not fitting:
        return None
    best = min(fitting, key=Row.best_key)
    return min((r for r in fitting if not_significantly_worse(r, best)), key=Row.cost_key)


@dataclass(frozen=True)
class Decision:
    t: float
    steps: int
    width: float
    latency_ms: float
    budget_ms: float
    reason: str  # one of REASONS
    over_budget: bool  # no row fits the budget; the cheapest row was taken
    detail: str
    quality: float | None = None  # the chosen row's quality.value (None: a fallback without a table)
    quality_ci95: tuple[float, float] | None = None
    cache: int = 1  # the step-cache interval the loop runs at (the manifest's sampling.step_cache plan; 1 = plain)

    def to_dict(self) -> dict:
        return {"t": self.t, "steps": self.steps, "width": self.width, "cache": self.cache, "latency_ms": self.latency_ms,
                "budget_ms": round(self.budget_ms, 3), "reason": self.reason, "over_budget": self.over_budget,
                "quality": self.quality, "quality_ci95": None if self.quality_ci95 is None else list(self.quality_ci95),
                "detail": self.detail}


class Policy:
    """Stateful chooser over one table; feed it samples in time order with ``decide``."""

    def __init__(self, config: PolicyConfig, table, latency_ratio: float = 1.0) -> None:
        self.config = config
        measured = table if isinstance(table, tuple) and all(isinstance(r, Row) for r in table) else parse_table(table)
        self.table_rows = measured  # as measured; ``rows`` are rescaled by ``latency_ratio``
        self.latency_ratio = finite_number(latency_ratio, "latency ratio", 0.0, low_open=True)
        self.rows = measured if latency_ratio == 1.0 else rescale_table(measured, latency_ratio)
        floor = config.min_quality
        eligible = [r for r in self.rows if floor is None or r.quality >= floor]
        if not eligible:
            best = max(self.rows, key=lambda r: r.quality)
            raise InputError(f"policy.min_quality {floor}: no table row reaches it "
                             f"(best {best.quality:g} {best.metric}, width {best.width:g}, {best.steps} steps)")
        self.eligible = tuple(eligible)
        self.reference_ms = config.reference_latency_ms or max(r.latency_ms for r in eligible)
        self.cheapest = min(eligible, key=Row.cost_key)
        self.current: Row | None = None
        self.last_t: float | None = None
        self._pending_since: float | None = None
        self._window_budget = math.inf

    @classmethod
    def from_manifest(cls, manifest: dict, where: str = "manifest.json") -> "Policy":
        """The policy a bundle ships; refuses a table row naming a width or step count the bundle lacks."""
        if not isinstance(manifest, dict):
            raise InputError(f"{where}: expected a JSON object")
        if "policy" not in manifest or not manifest["policy"]:
            raise InputError(f"{where}: no 'policy' parameters (run `edgekit bench BUNDLE` to write them)")
        if "table" not in manifest or not manifest["table"]:
            raise InputError(f"{where}: no measured 'table' rows (run `edgekit bench BUNDLE` to measure them)")
        rows = parse_table(manifest["table"], f"{where}: table")
        config = PolicyConfig.from_dict(manifest["policy"], f"{where}: policy")
        widths = {float(w) for w in manifest.get("widths", [])}
        schedules = {int(s) for s in manifest.get("sampling", {}).get("schedules", {})}
        plans = (manifest.get("sampling", {}).get("step_cache") or {}).get("plans", {})
        for i, r in enumerate(rows):
            if r.cache != 1 and str(r.steps) not in plans.get(str(r.cache), {}):
                raise InputError(f"{where}: table[{i}] names cache interval {r.cache} at {r.steps} steps, which the "
                                 f"bundle has no step-cache plan for (sampling.step_cache)")
            if widths and r.width not in widths:
                raise InputError(f"{where}: table[{i}] names width {r.width}, which the bundle lacks "
                                 f"(widths: {sorted(widths)})")
            if schedules and r.steps not in schedules:
                raise InputError(f"{where}: table[{i}] names {r.steps} steps, which the bundle has no schedule for "
                                 f"(schedules: {sorted(schedules)})")
        return cls(config, rows)

    def rescaled(self, ratio: float) -> "Policy":
        """This policy over the table rescaled by ``ratio`` (relative to the table as measured), keeping the
        current row and the clock; a pending step up starts over."""
        other = Policy(self.config, self.table_rows, ratio)
        if self.current is not None:
            other.current = next(r for r in other.eligible if r.key == self.current.key)
        other.last_t = self.last_t
        return other

    def budget_ms(self, state: DeviceState) -> tuple[float, str]:
        c = self.config
        thermal = state.thermal
        if state.headroom is not None:
            for level in THERMAL_STATES[1:]:
                limit = c.headroom_thresholds.get(level)
                if limit is not None and state.headroom >= limit and _worse(level, thermal):
                    thermal = level
        factor = c.thermal_budget[thermal]
        why = [f"thermal {thermal}" + (f" (headroom {state.headroom:g})" if thermal != state.thermal else "")]
        if not state.charging:
            tier = [t.factor for t in c.battery_tiers if state.battery_level < t.below]
            if tier:
                factor *= min(tier)
                why.append(f"battery {state.battery_level:.0%}")
        else:
            why.append("charging")
        if state.low_power:
            factor *= c.low_power_factor
            why.append("low-power mode")
        return self.reference_ms * factor, ", ".join(why)

    def choose(self, budget: float) -> Row | None:
        return choose(self.eligible, budget)

    def decide(self, t: float, state: DeviceState) -> Decision:
        """The row to use at time ``t`` (seconds, non-decreasing) for ``state``."""
        t = finite_number(t, "t")
        if self.last_t is not None and t < self.last_t:
            raise InputError(f"t: samples must come in time order ({t} after {self.last_t})")
        self.last_t = t
        budget, why = self.budget_ms(state)
        target = self.choose(budget) or self.cheapest
        cur = self.current
        if cur is None:
            reason, chosen = "initial", target
            self._pending_since = None
        elif target.key == cur.key:
            reason, chosen = "hold", cur
            self._pending_since = None
        elif target.latency_ms < cur.latency_ms or cur.latency_ms > budget:
            reason, chosen = "step_down", target
            self._pending_since = None
        else:  # the rule now chooses a row costing at least as much, and the current row fits: dwell first
            if self._pending_since is None:
                self._pending_since, self._window_budget = t, budget
            else:
                self._window_budget = min(self._window_budget, budget)
            up = self.choose(self._window_budget)
            if (t - self._pending_since >= self.config.dwell_s and up is not None and up.key != cur.key
                    and up.latency_ms >= cur.latency_ms):
                reason, chosen = "step_up", up
                self._pending_since = None
            else:
                reason, chosen = "dwell", cur
        self.current = chosen
        over = chosen.latency_ms > budget
        detail = f"{why}: budget {budget:.1f} ms" + ("; no row fits, cheapest taken" if over else "")
        return Decision(t, chosen.steps, chosen.width, chosen.latency_ms, budget, reason, over, detail,
                        chosen.quality, chosen.quality_ci95, chosen.cache)

    def decide_or_fallback(self, t, state_dict) -> Decision:
        """What a device does: a state it cannot read gives the cheapest row and a logged warning."""
        try:
            return self.decide(t, DeviceState.from_dict(state_dict))
        except InputError as exc:
            LOG.warning("policy fallback to the cheapest row: %s", exc)
            self.current = self.cheapest
            self._pending_since = None
            row = self.cheapest
            return Decision(float(t) if isinstance(t, (int, float)) else 0.0, row.steps, row.width, row.latency_ms,
                            0.0, "fallback", False, f"unreadable state: {exc}", row.quality, row.quality_ci95,
                            row.cache)


def _worse(a: str, b: str) -> bool:
    return THERMAL_STATES.index(a) > THERMAL_STATES.index(b)


def load_trace(path: Path) -> list[tuple[float, DeviceState]]:
    """A device trace: a JSON list of {"t", "battery_level", "charging", "low_power", "thermal"[, "headroom"]}."""
    from edgekit.safe_read import read_json

    path = Path(path)
    # bounded: a regular file (a FIFO or /dev/zero is refused, never read), its size, nesting and numbers
    data = read_json(path, "device trace (JSON)", param="trace", invalid="not JSON")
    if not isinstance(data, list) or not data:
        raise InputError("expected a non-empty JSON list of samples {t, battery_level, charging, low_power, thermal}",
                         param="trace", value=path)
    samples, last = [], -math.inf
    for i, s in enumerate(data):
        where = f"--trace {path}: sample {i}"
        if not isinstance(s, dict) or "t" not in s:
            raise InputError(f"{where}: expected an object with 't' (seconds) and the device state")
        t = finite_number(s["t"], f"{where}.t")
        if t < last:
            raise InputError(f"{where}.t: {t} comes before the previous sample's {last}; samples must be in time order")
        last = t
        samples.append((t, DeviceState.from_dict(s, where)))
    return samples


def simulate(policy: Policy, samples: list[tuple[float, DeviceState]]) -> list[Decision]:
    return [policy.decide(t, s) for t, s in samples]


def read_desktop_state() -> DeviceState:
    """This computer's state via psutil: battery when there is one, temperatures where the OS exposes them."""
    import psutil

    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    level, charging = (1.0, True) if battery is None else (min(max(battery.percent / 100.0, 0.0), 1.0),
                                                           bool(battery.power_plugged))
    thermal = "nominal"
    temps = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    for entries in (temps or {}).values():
        for e in entries:
            high, crit = e.high or 0.0, e.critical or 0.0
            level_now = ("critical" if crit and e.current >= crit else "serious" if high and e.current >= high
                         else "fair" if high and e.current >= high - 10.0 else "nominal")
            if _worse(level_now, thermal):
                thermal = level_now
    profile = Path("/sys/firmware/acpi/platform_profile")
    low_power = profile.is_file() and profile.read_text().strip() in ("low-power", "quiet")
    return DeviceState(level, charging, low_power, thermal)


def fallback_decision(manifest: dict, why: str, t: float = 0.0) -> Decision:
    """What a device runs when the bundle's table or policy is unusable: the narrowest width and the fewest
    steps the bundle has (never a row it lacks). Callers log ``why`` as a warning."""
    widths = [float(w) for w in manifest.get("widths") or manifest.get("components", {}).get("unet", {}).get("widths", {})]
    steps = [int(s) for s in manifest.get("sampling", {}).get("schedules", {})]
    if not widths or not steps:
        raise InputError(f"manifest.json: no widths or schedules to fall back to ({why})")
    LOG.warning("policy fallback to the cheapest configuration: %s", why)
    return Decision(float(t), min(steps), min(widths), 0.0, 0.0, "fallback", False, f"no usable policy: {why}")
