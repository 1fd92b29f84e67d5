"""Runtime policy: device state (battery, charging, low-power mode, thermal) -> (steps, width).

The state sets a latency budget; the policy picks the best-quality row of the bundle's measured table
that fits it. It steps down at once when the current row no longer fits, and steps up only after a
better row has fitted for ``dwell_s`` seconds in a row (hysteresis: a phone that warms and cools
around a threshold does not flip quality every frame). All numbers are data (``PolicyConfig``, kept
in the manifest's "policy"); the JS, Kotlin and Swift twins implement the same rule and run the same
JSON test vectors (edgekit/twin_vectors/policy.json).

Budget, in milliseconds per image:
    reference_ms * thermal_budget[effective thermal] * battery factor (when not charging)
                 * low_power_factor (when low-power mode is on)
where reference_ms is ``reference_latency_ms`` or, when that is null, the slowest row of the table,
so one policy serves a table measured on a laptop and one measured on a phone. The effective thermal
state is the worse of the reported one and the one the optional headroom reaches (``headroom_thresholds``,
Android's getThermalHeadroom scale: 1.0 means severe throttling is imminent).
"""
from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import InputError

LOG = logging.getLogger("edgekit.policy")

POLICY_FORMAT = "edgekit-policy/1"
THERMAL_STATES = ("nominal", "fair", "serious", "critical")
REASONS = ("initial", "hold", "dwell", "step_down", "step_up", "fallback")
DEFAULT_POLICY_FILE = Path(__file__).resolve().parent / "policy_default.json"


def _unknown_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (expected one of {', '.join(allowed)})"
            raise InputError(f"{where}: unknown key '{key}'{hint}")


def _number(value, where: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: expected a number, got {value!r}")
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
    min_prompt_accuracy: float = 0.0  # rows below it are never chosen (e.g. a slimmed width not yet recovered)

    KEYS = ("format", "thermal_budget", "battery_tiers", "low_power_factor", "headroom_thresholds", "dwell_s",
            "reference_latency_ms", "min_prompt_accuracy")

    @classmethod
    def from_dict(cls, data, where: str = "policy") -> "PolicyConfig":
        if not isinstance(data, dict) or not data:
            raise InputError(f"{where}: expected a non-empty policy object (run `edgekit bench` to write one)")
        _unknown_keys(data, cls.KEYS, where)
        if data.get("format", POLICY_FORMAT) != POLICY_FORMAT:
            raise InputError(f"{where}.format: expected '{POLICY_FORMAT}', got {data.get('format')!r}")
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
        return cls(
            thermal_budget=thermal,
            battery_tiers=tiers,
            low_power_factor=_number(data.get("low_power_factor", 0.5), f"{where}.low_power_factor", 0.0, 1.0,
                                     low_open=True),
            headroom_thresholds=heads,
            dwell_s=_number(data.get("dwell_s", 10.0), f"{where}.dwell_s", 0.0),
            reference_latency_ms=None if ref is None else _number(ref, f"{where}.reference_latency_ms", 0.0,
                                                                  low_open=True),
            min_prompt_accuracy=_number(data.get("min_prompt_accuracy", 0.0), f"{where}.min_prompt_accuracy", 0.0, 1.0),
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
            "min_prompt_accuracy": self.min_prompt_accuracy,
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
    width: float
    steps: int
    latency_ms: float
    prompt_accuracy: float
    frechet_distance: float | None
    device: str

    def quality_key(self) -> tuple:
        """Smaller is better: accuracy first, then Frechet distance, then the cheaper, then the wider."""
        fd = math.inf if self.frechet_distance is None else self.frechet_distance
        return (-self.prompt_accuracy, fd, self.latency_ms, -self.width, -self.steps)


def parse_table(rows, where: str = "table") -> tuple[Row, ...]:
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{where}: expected a non-empty list of measured rows (run `edgekit bench` to fill it)")
    out, seen = [], set()
    for i, r in enumerate(rows):
        w = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise InputError(f"{w}: expected an object with width, steps, latency_ms, prompt_accuracy")
        for key in ("width", "steps", "latency_ms", "prompt_accuracy"):
            if key not in r:
                raise InputError(f"{w}: missing '{key}'")
        steps = r["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise InputError(f"{w}.steps: expected a positive whole number, got {steps!r}")
        fd = r.get("frechet_distance")
        row = Row(width=_number(r["width"], f"{w}.width", 0.0, 1.0, low_open=True), steps=steps,
                  latency_ms=_number(r["latency_ms"], f"{w}.latency_ms", 0.0, low_open=True),
                  prompt_accuracy=_number(r["prompt_accuracy"], f"{w}.prompt_accuracy", 0.0, 1.0),
                  frechet_distance=None if fd is None else _number(fd, f"{w}.frechet_distance", 0.0),
                  device=str(r.get("device", "")))
        if (row.width, row.steps) in seen:
            raise InputError(f"{w}: a second row for width {row.width} and {row.steps} steps")
        seen.add((row.width, row.steps))
        out.append(row)
    return tuple(out)


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

    def to_dict(self) -> dict:
        return {"t": self.t, "steps": self.steps, "width": self.width, "latency_ms": self.latency_ms,
                "budget_ms": round(self.budget_ms, 3), "reason": self.reason, "over_budget": self.over_budget,
                "detail": self.detail}


class Policy:
    """Stateful chooser over one table; feed it samples in time order with ``decide``."""

    def __init__(self, config: PolicyConfig, table) -> None:
        self.config = config
        self.rows = table if isinstance(table, tuple) and all(isinstance(r, Row) for r in table) else parse_table(table)
        eligible = [r for r in self.rows if r.prompt_accuracy >= config.min_prompt_accuracy]
        if not eligible:
            raise InputError(f"policy.min_prompt_accuracy {config.min_prompt_accuracy}: no table row reaches it "
                             f"(best {max(r.prompt_accuracy for r in self.rows)})")
        self.reference_ms = config.reference_latency_ms or max(r.latency_ms for r in eligible)
        self.ranked = sorted(eligible, key=Row.quality_key)
        self.cheapest = min(eligible, key=lambda r: (r.latency_ms, r.quality_key()))
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
        config = PolicyConfig.from_dict(manifest["policy"], f"{where}: policy")
        rows = parse_table(manifest["table"], f"{where}: table")
        widths = {float(w) for w in manifest.get("widths", [])}
        schedules = {int(s) for s in manifest.get("sampling", {}).get("schedules", {})}
        for i, r in enumerate(rows):
            if widths and r.width not in widths:
                raise InputError(f"{where}: table[{i}] names width {r.width}, which the bundle lacks "
                                 f"(widths: {sorted(widths)})")
            if schedules and r.steps not in schedules:
                raise InputError(f"{where}: table[{i}] names {r.steps} steps, which the bundle has no schedule for "
                                 f"(schedules: {sorted(schedules)})")
        return cls(config, rows)

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

    def best_fitting(self, budget: float) -> Row | None:
        for row in self.ranked:
            if row.latency_ms <= budget:
                return row
        return None

    def _better(self, a: Row, b: Row) -> bool:
        return a.quality_key() < b.quality_key()

    def decide(self, t: float, state: DeviceState) -> Decision:
        """The row to use at time ``t`` (seconds, non-decreasing) for ``state``."""
        t = _number(t, "t")
        if self.last_t is not None and t < self.last_t:
            raise InputError(f"t: samples must come in time order ({t} after {self.last_t})")
        self.last_t = t
        budget, why = self.budget_ms(state)
        best = self.best_fitting(budget)
        target = best or self.cheapest
        cur = self.current
        if cur is None:
            reason, chosen = "initial", target
            self._pending_since = None
        elif cur.latency_ms > budget and target != cur:
            reason, chosen = "step_down", target
            self._pending_since = None
        elif best is not None and self._better(best, cur):
            if self._pending_since is None:
                self._pending_since, self._window_budget = t, budget
            else:
                self._window_budget = min(self._window_budget, budget)
            candidate = self.best_fitting(self._window_budget)
            if t - self._pending_since >= self.config.dwell_s and candidate is not None and self._better(candidate, cur):
                reason, chosen = "step_up", candidate
                self._pending_since = None
            else:
                reason, chosen = "dwell", cur
        else:
            reason, chosen = "hold", cur
            self._pending_since = None
        self.current = chosen
        over = chosen.latency_ms > budget
        detail = f"{why}: budget {budget:.1f} ms" + ("; no row fits, cheapest taken" if over else "")
        return Decision(t, chosen.steps, chosen.width, chosen.latency_ms, budget, reason, over, detail)

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
                            0.0, "fallback", False, f"unreadable state: {exc}")


def _worse(a: str, b: str) -> bool:
    return THERMAL_STATES.index(a) > THERMAL_STATES.index(b)


def load_trace(path: Path) -> list[tuple[float, DeviceState]]:
    """A device trace: a JSON list of {"t", "battery_level", "charging", "low_power", "thermal"[, "headroom"]}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--trace {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--trace {path}: not JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise InputError(f"--trace {path}: expected a non-empty JSON list of samples "
                         "{t, battery_level, charging, low_power, thermal}")
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
