"""What the runtime policy reads, validated: its config (``PolicyConfig`` with its battery tiers), a device's
state (``DeviceState``) and a bundle's measured table (``Row``, ``parse_table``), with the on-device rescaling
of that table (``latency_ratio``, ``rescale_table``). The rule that decides from them is edgekit.policy."""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgekit.errors import InputError

POLICY_FORMAT = "edgekit-policy/2"  # /1 ranked rows by digit prompt accuracy
THERMAL_STATES = ("nominal", "fair", "serious", "critical")
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


def finite_number(value, where: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
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
        return cls(finite_number(data["below"], f"{where}.below", 0.0, 1.0),
                   finite_number(data["factor"], f"{where}.factor", 0.0, 1.0, low_open=True))

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
        thermal = {s: finite_number(budget[s], f"{where}.thermal_budget.{s}", 0.0, low_open=True) for s in THERMAL_STATES}
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
        heads = {s: finite_number(v, f"{where}.headroom_thresholds.{s}", 0.0) for s, v in heads.items()}
        ref = data.get("reference_latency_ms")
        floor = data.get("min_quality")
        return cls(
            thermal_budget=thermal,
            battery_tiers=tiers,
            low_power_factor=finite_number(data.get("low_power_factor", 0.5), f"{where}.low_power_factor", 0.0, 1.0,
                                     low_open=True),
            headroom_thresholds=heads,
            dwell_s=finite_number(data.get("dwell_s", 10.0), f"{where}.dwell_s", 0.0),
            reference_latency_ms=None if ref is None else finite_number(ref, f"{where}.reference_latency_ms", 0.0,
                                                                  low_open=True),
            min_quality=None if floor is None else finite_number(floor, f"{where}.min_quality"),
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
            battery_level=finite_number(data["battery_level"], f"{where}.battery_level (0..1)", 0.0, 1.0),
            charging=_flag(data["charging"], f"{where}.charging"),
            low_power=_flag(data["low_power"], f"{where}.low_power"),
            thermal=_thermal(data["thermal"], f"{where}.thermal"),
            headroom=None if data.get("headroom") is None else finite_number(data["headroom"], f"{where}.headroom", 0.0),
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

_OLD_ROW_HINT = "re-run `edgekit bench BUNDLE` to measure rows with a quality value and interval"


def _interval(value, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{where}: expected [low, high], got {value!r}")
    low, high = finite_number(value[0], f"{where}[0]"), finite_number(value[1], f"{where}[1]")
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
        row = Row(width=finite_number(r["width"], f"{w}.width", 0.0, 1.0, low_open=True), steps=steps,
                  latency_ms=finite_number(r["latency_ms"], f"{w}.latency_ms", 0.0, low_open=True),
                  quality=finite_number(q["value"], f"{w}.quality.value"),
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
        measured = finite_number(run["measured_ms"], f"{w}.measured_ms", 0.0, low_open=True)
        key = (finite_number(run["width"], f"{w}.width"), run["steps"], run.get("cache", 1))
        if key not in by_key:
            raise InputError(f"{w}: width {key[0]} and {key[1]} steps" + (f" at cache interval {key[2]}" if key[2] != 1
                                                                          else "") + " is not a row of the table")
        ratios.append(measured / by_key[key].latency_ms)
    ratios.sort()
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2.0


def rescale_table(rows, ratio: float) -> tuple[Row, ...]:
    """Every row's latency multiplied by ``ratio`` (a device's measured / table latency)."""
    ratio = finite_number(ratio, "latency ratio", 0.0, low_open=True)
    return tuple(replace(r, latency_ms=r.latency_ms * ratio) for r in rows)
