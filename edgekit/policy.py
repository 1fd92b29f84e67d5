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

import difflib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgekit.errors import InputError

LOG = logging.getLogger("edgekit.policy")

POLICY_FORMAT = "edgekit-policy/2"  # /1 ranked rows by digit prompt accuracy
THERMAL_STATES = ("nominal", "fair", "serious", "critical")
REASONS = ("initial", "hold", "dwell", "step_down", "step_up", "fallback")
DEFAULT_POLICY_FILE = Path(__file__).resolve().parent / "policy_default.json"


def _unknown_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (expected one of {', '.join(allowed)})"
            raise InputError(f"{where}: unknown key '{key}'{hint}")


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past the float range (a 400-digit number)
        return False


def _shown(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value, where: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise InputError(f"{where}: expected a finite number, got {_shown(value)}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise InputError(f"{where}: expected a number {bound}" + (f" and <= {high}" if high is not None else "")
                         + f", got {value}")
    if high is not None and value > high:
        raise InputError(f"{where}: expected a number <= {high}, got {value}")
    return float(value)


def _flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class BatteryTier:
    """Below this battery level (and not charging), multiply the budget by ``factor``."""

    below: float
    factor: float

    @classmethod
    def from_dict(cls, data: dict, where: str = "battery tier") -> "BatteryTier":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object with 'below' and 'factor'")
        _unknown_keys(data, ("below", "factor"), where)
        for key in ("below", "factor"):
            if key not in data:
                raise InputError(f"{where}: missing '{key}'")
        return cls(_number(data["below"], f"{where}.below", 0.0, 1.0),
                   _number(data["factor"], f"{where}.factor", 0.0, 1.0, low_open=True))

    def to_dict(self) -> dict:
        return {"below": self.below, "factor": self.factor}


@dataclass(frozen=True)
class PolicyConfig:
    thermal_budget: dict = field(default_factory=dict)  # thermal state -> fraction of reference_ms
    battery_tiers: tuple = ()
    low_power_factor: float = 0.5
    headroom_thresholds: dict = field(default_factory=dict)  # thermal state -> headroom at which it applies
    dwell_s: float = 10.0
    reference_latency_ms: float | None = None
    # rows whose quality.value is below it are never chosen (units of the table's quality.metric; None: no floor)
    min_quality: float | None = None

    KEYS = ("format", "thermal_budget", "battery_tiers", "low_power_factor", "headroom_thresholds", "dwell_s",
            "reference_latency_ms", "min_quality")

    @classmethod
    def from_dict(cls, data, where: str = "policy") -> "PolicyConfig":
        if not isinstance(data, dict) or not data:
            raise InputError(f"{where}: expected a non-empty policy object (run `edgekit bench` to write one)")
        if "min_prompt_accuracy" in data:
            raise InputError(f"{where}.min_prompt_accuracy: replaced by 'min_quality' (a floor on the table's "
                             "quality.value, null for none); re-run `edgekit bench BUNDLE` to write the new policy")
        _unknown_keys(data, cls.KEYS, where)
        if data.get("format", POLICY_FORMAT) != POLICY_FORMAT:
            raise InputError(f"{where}.format: expected '{POLICY_FORMAT}', got {data.get('format')!r} "
                             "(re-run `edgekit bench BUNDLE` to write the current policy)")
        budget = data.get("thermal_budget")
        if not isinstance(budget, dict):
            raise InputError(f"{where}.thermal_budget: expected an object with a fraction per thermal state")
        _unknown_keys(budget, THERMAL_STATES, f"{where}.thermal_budget")
        missing = [s for s in THERMAL_STATES if s not in budget]
        if missing:
            raise InputError(f"{where}.thermal_budget: missing {', '.join(missing)}")
        thermal = {s: _number(budget[s], f"{where}.thermal_budget.{s}", 0.0, low_open=True) for s in THERMAL_STATES}
        for worse, better in zip(THERMAL_STATES[1:], THERMAL_STATES):
            if thermal[worse] > thermal[better]:
                raise InputError(f"{where}.thermal_budget: '{worse}' ({thermal[worse]}) must not exceed "
                                 f"'{better}' ({thermal[better]})")
        tiers = data.get("battery_tiers", [])
        if not isinstance(tiers, list):
            raise InputError(f"{where}.battery_tiers: expected a list of {{'below', 'factor'}} objects")
        tiers = tuple(BatteryTier.from_dict(t, f"{where}.battery_tiers[{i}]") for i, t in enumerate(tiers))
        heads = data.get("headroom_thresholds", {})
        if not isinstance(heads, dict):
            raise InputError(f"{where}.headroom_thresholds: expected an object thermal state -> headroom")
        _unknown_keys(heads, THERMAL_STATES[1:], f"{where}.headroom_thresholds")
        heads = {s: _number(v, f"{where}.headroom_thresholds.{s}", 0.0) for s, v in heads.items()}
        ref = data.get("reference_latency_ms")
        floor = data.get("min_quality")
        return cls(
            thermal_budget=thermal,
            battery_tiers=tiers,
            low_power_factor=_number(data.get("low_power_factor", 0.5), f"{where}.low_power_factor", 0.0, 1.0,
                                     low_open=True),
            headroom_thresholds=heads,
            dwell_s=_number(data.get("dwell_s", 10.0), f"{where}.dwell_s", 0.0),
            reference_latency_ms=None if ref is None else _number(ref, f"{where}.reference_latency_ms", 0.0,
                                                                  low_open=True),
            min_quality=None if floor is None else _number(floor, f"{where}.min_quality"),
        )

    @classmethod
    def default(cls) -> "PolicyConfig":
        return cls.from_dict(json.loads(DEFAULT_POLICY_FILE.read_text()), where=str(DEFAULT_POLICY_FILE))

    def to_dict(self) -> dict:
        return {
            "format": POLICY_FORMAT,
            "thermal_budget": dict(self.thermal_budget),
            "battery_tiers": [t.to_dict() for t in self.battery_tiers],
            "low_power_factor": self.low_power_factor,
            "headroom_thresholds": dict(self.headroom_thresholds),
            "dwell_s": self.dwell_s,
            "reference_latency_ms": self.reference_latency_ms,
            "min_quality": self.min_quality,
        }


@dataclass(frozen=True)
class DeviceState:
    battery_level: float
    charging: bool
    low_power: bool
    thermal: str
    headroom: float | None = None

    KEYS = ("battery_level", "charging", "low_power", "thermal", "headroom")

    @classmethod
    def from_dict(cls, data, where: str = "state") -> "DeviceState":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object with battery_level, charging, low_power, thermal")
        _unknown_keys(data, cls.KEYS + ("t",), where)
        for key in cls.KEYS[:4]:
            if key not in data:
                raise InputError(f"{where}: missing '{key}'")
        return cls(
            battery_level=_number(data["battery_level"], f"{where}.battery_level (0..1)", 0.0, 1.0),
            charging=_flag(data["charging"], f"{where}.charging"),
            low_power=_flag(data["low_power"], f"{where}.low_power"),
            thermal=_thermal(data["thermal"], f"{where}.thermal"),
            headroom=None if data.get("headroom") is None else _number(data["headroom"], f"{where}.headroom", 0.0),
        )

    def to_dict(self) -> dict:
        out = {"battery_level": self.battery_level, "charging": self.charging, "low_power": self.low_power,
               "thermal": self.thermal}
        if self.headroom is not None:
            out["headroom"] = self.headroom
        return out


def _thermal(value, where: str) -> str:
    if value not in THERMAL_STATES:
        raise InputError(f"{where}: unknown thermal state {value!r} (expected one of {', '.join(THERMAL_STATES)})")
    return value


@dataclass(frozen=True)
class Row:
    """One measured table row, as the policy reads it (the manifest row itself is kept in ``measured``)."""

    width: float
    steps: int
    latency_ms: float
    quality: float  # quality.value: higher is better, in the units of ``metric``
    quality_ci95: tuple[float, float]
    metric: str = ""
    device: str = ""
    measured: dict = field(default_factory=dict, compare=False, hash=False)  # extras: ssim, prompt accuracy, ...
    cache: int = 1  # step-cache interval (edgekit.step_cache; 1 = the plain loop; a row without "cache" is 1)

    @property
    def key(self) -> tuple[float, int, int]:
        return (self.width, self.steps, self.cache)

    @property
    def half_interval(self) -> float:
        return (self.quality_ci95[1] - self.quality_ci95[0]) / 2.0

    def cost_key(self) -> tuple:
        """Smaller is cheaper: latency, then (at equal latency) the better, the wider, the fewer steps, the
        smaller cache interval."""
        return (self.latency_ms, -self.quality, -self.width, self.steps, self.cache)

    def best_key(self) -> tuple:
        """Smaller is better: the highest quality value, ties to the cheaper row."""
        return (-self.quality,) + self.cost_key()


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


_OLD_ROW_HINT = "re-run `edgekit bench BUNDLE` to measure rows with a quality value and interval"


def _interval(value, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{where}: expected [low, high], got {value!r}")
    low, high = _number(value[0], f"{where}[0]"), _number(value[1], f"{where}[1]")
    if low > high:
        raise InputError(f"{where}: low {low} is above high {high}")
    return low, high


def parse_table(rows, where: str = "table") -> tuple[Row, ...]:
    """The manifest's measured rows: {width, steps, latency_ms, quality: {value, ci95, metric, ...}, ...}.
    Rows of the old accuracy-ranked format are refused with the command that re-measures them."""
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{where}: expected a non-empty list of measured rows (run `edgekit bench` to fill it)")
    out, seen = [], set()
    for i, r in enumerate(rows):
        w = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise InputError(f"{w}: expected an object with width, steps, latency_ms, quality")
        if "quality" not in r and "prompt_accuracy" in r:
            raise InputError(f"{w}: a row of the old format (prompt_accuracy, no 'quality'); {_OLD_ROW_HINT}")
        for key in ("width", "steps", "latency_ms", "quality"):
            if key not in r:
                raise InputError(f"{w}: missing '{key}'")
        steps = r["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise InputError(f"{w}.steps: expected a positive whole number, got {steps!r}")
        cache = r.get("cache", 1)
        if isinstance(cache, bool) or not isinstance(cache, int) or not 1 <= cache <= steps:
            raise InputError(f"{w}.cache: expected a step-cache interval, a whole number from 1 to the row's "
                             f"{steps} steps, got {_shown(cache)}")
        q = r["quality"]
        if not isinstance(q, dict) or "value" not in q or "ci95" not in q:
            raise InputError(f"{w}.quality: expected an object with 'value' and 'ci95' [low, high]; {_OLD_ROW_HINT}")
        from edgekit.safe_read import MAX_LABEL_CHARS

        for key, value in (("device", r.get("device", "")), ("quality.metric", q.get("metric", ""))):
            if not isinstance(value, str) or len(value) > MAX_LABEL_CHARS:
                got = f"a string of {len(value):,} characters" if isinstance(value, str) else _shown(value)
                raise InputError(f"{w}.{key}: expected a name of at most {MAX_LABEL_CHARS} characters, got {got}")
        row = Row(width=_number(r["width"], f"{w}.width", 0.0, 1.0, low_open=True), steps=steps,
                  latency_ms=_number(r["latency_ms"], f"{w}.latency_ms", 0.0, low_open=True),
                  quality=_number(q["value"], f"{w}.quality.value"),
                  quality_ci95=_interval(q["ci95"], f"{w}.quality.ci95"),
                  metric=str(q.get("metric", "")), device=str(r.get("device", "")), measured=dict(r), cache=cache)
        if row.key in seen:
            raise InputError(f"{w}: a second row for width {row.width} and {row.steps} steps"
                             + (f" at cache interval {row.cache}" if row.cache != 1 else ""))
        seen.add(row.key)
        out.append(row)
    return tuple(out)


def latency_ratio(runs, rows) -> float:
    """How much slower (> 1) or faster (< 1) this device is than the table: the median over timed runs of
    measured_ms / the table's latency_ms for the row the run used. ``runs``: [{width, steps, measured_ms}]
    (and "cache", the step-cache interval, where not 1)."""
    if not isinstance(runs, list) or not runs:
        raise InputError("latency runs: expected at least one timed run {width, steps, measured_ms}")
    by_key = {r.key: r for r in rows}
    ratios = []
    for i, run in enumerate(runs):
        w = f"latency runs[{i}]"
        if not isinstance(run, dict) or not {"width", "steps", "measured_ms"} <= set(run):
            raise InputError(f"{w}: expected an object with width, steps, measured_ms")
        measured = _number(run["measured_ms"], f"{w}.measured_ms", 0.0, low_open=True)
        key = (_number(run["width"], f"{w}.width"), run["steps"], run.get("cache", 1))
        if key not in by_key:
            raise InputError(f"{w}: width {key[0]} and {key[1]} steps" + (f" at cache interval {key[2]}" if key[2] != 1
                                                                          else "") + " is not a row of the table")
        ratios.append(measured / by_key[key].latency_ms)
    ratios.sort()
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2.0


def rescale_table(rows, ratio: float) -> tuple[Row, ...]:
    """Every row's latency multiplied by ``ratio`` (a device's measured / table latency)."""
    ratio = _number(ratio, "latency ratio", 0.0, low_open=True)
    return tuple(replace(r, latency_ms=r.latency_ms * ratio) for r in rows)


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
        self.latency_ratio = _number(latency_ratio, "latency ratio", 0.0, low_open=True)
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
        t = _number(t, "t")
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
        t = _number(s["t"], f"{where}.t")
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
