// Runtime policy twin of edgekit/policy.py: device state -> (steps, width, cache) from the manifest's measured
// table, with hysteresis. Same rule, same parameters (manifest "policy"), same vectors
// (edgekit/twin_vectors/policy.json). No browser APIs here, so Node runs the vectors too.
//
// The rule: among the rows that fit the budget, best = the highest quality.value (ties: the cheaper);
// candidates = rows with best.value - r.value <= sqrt(half(best)^2 + half(r)^2), half = (ci95[1] - ci95[0]) / 2;
// choice = the cheapest candidate (latency, then higher value, wider, fewer steps). A cheaper choice (or a
// current row that no longer fits) is taken at once; a choice costing at least as much only after dwell_s.

export const POLICY_FORMAT = "edgekit-policy/2";
export const THERMAL_STATES = ["nominal", "fair", "serious", "critical"];
const POLICY_KEYS = ["format", "thermal_budget", "battery_tiers", "low_power_factor", "headroom_thresholds",
  "dwell_s", "reference_latency_ms", "min_quality"];
const STATE_KEYS = ["battery_level", "charging", "low_power", "thermal", "headroom", "t"];

export class PolicyError extends Error {}

function isNumber(v) { return typeof v === "number" && Number.isFinite(v); }

function num(v, where, low = null, high = null, lowOpen = false) {
  if (!isNumber(v)) throw new PolicyError(`${where}: expected a number, got ${JSON.stringify(v)}`);
  if (low !== null && (v < low || (lowOpen && v === low))) throw new PolicyError(`${where}: expected a number ${lowOpen ? ">" : ">="} ${low}, got ${v}`);
  if (high !== null && v > high) throw new PolicyError(`${where}: expected a number <= ${high}, got ${v}`);
  return v;
}

function unknownKeys(obj, allowed, where) {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw new PolicyError(`${where}: unknown key '${k}' (expected one of ${allowed.join(", ")})`);
  }
}

function isObject(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }

export function parsePolicy(data, where = "policy") {
  if (!isObject(data) || Object.keys(data).length === 0) throw new PolicyError(`${where}: expected a non-empty policy object`);
  if ("min_prompt_accuracy" in data) {
    throw new PolicyError(`${where}.min_prompt_accuracy: replaced by 'min_quality' (a floor on the table's quality.value, null for none); re-run \`edgekit bench BUNDLE\``);
  }
  unknownKeys(data, POLICY_KEYS, where);
  if ((data.format ?? POLICY_FORMAT) !== POLICY_FORMAT) {
    throw new PolicyError(`${where}.format: expected '${POLICY_FORMAT}', got ${JSON.stringify(data.format)} (re-run \`edgekit bench BUNDLE\`)`);
  }
  const budget = data.thermal_budget;
  if (!isObject(budget)) throw new PolicyError(`${where}.thermal_budget: expected an object with a fraction per thermal state`);
  unknownKeys(budget, THERMAL_STATES, `${where}.thermal_budget`);
  const thermal = {};
  for (const s of THERMAL_STATES) {
    if (!(s in budget)) throw new PolicyError(`${where}.thermal_budget: missing ${s}`);
    thermal[s] = num(budget[s], `${where}.thermal_budget.${s}`, 0, null, true);
  }
  for (let i = 1; i < THERMAL_STATES.length; i++) {
    const worse = THERMAL_STATES[i], better = THERMAL_STATES[i - 1];
    if (thermal[worse] > thermal[better]) throw new PolicyError(`${where}.thermal_budget: '${worse}' must not exceed '${better}'`);
  }
  const tiers = (data.battery_tiers ?? []).map((t, i) => {
    const w = `${where}.battery_tiers[${i}]`;
    if (!isObject(t)) throw new PolicyError(`${w}: expected an object with 'below' and 'factor'`);
    unknownKeys(t, ["below", "factor"], w);
    return { below: num(t.below, `${w}.below`, 0, 1), factor: num(t.factor, `${w}.factor`, 0, 1, true) };
  });
  const heads = data.headroom_thresholds ?? {};
  if (!isObject(heads)) throw new PolicyError(`${where}.headroom_thresholds: expected an object`);
  unknownKeys(heads, THERMAL_STATES.slice(1), `${where}.headroom_thresholds`);
  const headroom = {};
  for (const [k, v] of Object.entries(heads)) headroom[k] = num(v, `${where}.headroom_thresholds.${k}`, 0);
  const ref = data.reference_latency_ms ?? null;
  const floor = data.min_quality ?? null;
  return {
    thermalBudget: thermal,
    batteryTiers: tiers,
    lowPowerFactor: num(data.low_power_factor ?? 0.5, `${where}.low_power_factor`, 0, 1, true),
    headroomThresholds: headroom,
    dwellS: num(data.dwell_s ?? 10, `${where}.dwell_s`, 0),
    referenceLatencyMs: ref === null ? null : num(ref, `${where}.reference_latency_ms`, 0, null, true),
    minQuality: floor === null ? null : num(floor, `${where}.min_quality`),
  };
}

export function parseState(data, where = "state") {
  if (!isObject(data)) throw new PolicyError(`${where}: expected an object with battery_level, charging, low_power, thermal`);
  unknownKeys(data, STATE_KEYS, where);
  for (const k of ["battery_level", "charging", "low_power", "thermal"]) {
    if (!(k in data)) throw new PolicyError(`${where}: missing '${k}'`);
  }
  const flag = (v, w) => { if (typeof v !== "boolean") throw new PolicyError(`${w}: expected true or false`); return v; };
  if (!THERMAL_STATES.includes(data.thermal)) throw new PolicyError(`${where}.thermal: unknown thermal state ${JSON.stringify(data.thermal)}`);
  return {
    batteryLevel: num(data.battery_level, `${where}.battery_level (0..1)`, 0, 1),
    charging: flag(data.charging, `${where}.charging`),
    lowPower: flag(data.low_power, `${where}.low_power`),
    thermal: data.thermal,
    headroom: data.headroom == null ? null : num(data.headroom, `${where}.headroom`, 0),
  };
}

const OLD_ROW_HINT = "re-run `edgekit bench BUNDLE` to measure rows with a quality value and interval";

function interval(v, where) {
  if (!Array.isArray(v) || v.length !== 2) throw new PolicyError(`${where}: expected [low, high], got ${JSON.stringify(v)}`);
  const low = num(v[0], `${where}[0]`), high = num(v[1], `${where}[1]`);
  if (low > high) throw new PolicyError(`${where}: low ${low} is above high ${high}`);
  return [low, high];
}

export function parseTable(rows, where = "table") {
  if (!Array.isArray(rows) || rows.length === 0) throw new PolicyError(`${where}: expected a non-empty list of measured rows`);
  const seen = new Set();
  return rows.map((r, i) => {
    const w = `${where}[${i}]`;
    if (!isObject(r)) throw new PolicyError(`${w}: expected an object`);
    if (!("quality" in r) && "prompt_accuracy" in r) throw new PolicyError(`${w}: a row of the old format (prompt_accuracy, no 'quality'); ${OLD_ROW_HINT}`);
    for (const k of ["width", "steps", "latency_ms", "quality"]) if (!(k in r)) throw new PolicyError(`${w}: missing '${k}'`);
    if (!Number.isInteger(r.steps) || r.steps <= 0) throw new PolicyError(`${w}.steps: expected a positive whole number`);
    const cache = r.cache ?? 1;  // the step-cache interval (edgekit/step_cache.py; absent = 1, the plain loop)
    if (!Number.isInteger(cache) || cache < 1 || cache > r.steps) {
      throw new PolicyError(`${w}.cache: expected a step-cache interval, a whole number from 1 to the row's ${r.steps} steps, got ${JSON.stringify(cache)}`);
    }
    const q = r.quality;
    if (!isObject(q) || !("value" in q) || !("ci95" in q)) throw new PolicyError(`${w}.quality: expected an object with 'value' and 'ci95' [low, high]; ${OLD_ROW_HINT}`);
    const row = {
      width: num(r.width, `${w}.width`, 0, 1, true), steps: r.steps, cache,
      latencyMs: num(r.latency_ms, `${w}.latency_ms`, 0, null, true),
      quality: num(q.value, `${w}.quality.value`),
      qualityCi95: interval(q.ci95, `${w}.quality.ci95`),
      metric: typeof q.metric === "string" ? q.metric : "",
      device: typeof r.device === "string" ? r.device : "",
    };
    const key = `${row.width}/${row.steps}/${row.cache}`;
    if (seen.has(key)) {
      throw new PolicyError(`${w}: a second row for width ${row.width} and ${row.steps} steps`
        + (row.cache !== 1 ? ` at cache interval ${row.cache}` : ""));
    }
    seen.add(key);
    return row;
  });
}

const halfInterval = (r) => (r.qualityCi95[1] - r.qualityCi95[0]) / 2;
const sameRow = (a, b) => a.width === b.width && a.steps === b.steps && a.cache === b.cache;

// Smaller is cheaper: latency, then (at equal latency) the better, the wider, the fewer steps, the smaller
// cache interval.
export function compareCost(a, b) {
  return (a.latencyMs - b.latencyMs) || (b.quality - a.quality) || (b.width - a.width) || (a.steps - b.steps)
    || (a.cache - b.cache);
}
// Smaller is better: the highest quality value, ties to the cheaper row.
function compareBest(a, b) { return (b.quality - a.quality) || compareCost(a, b); }

export function notSignificantlyWorse(row, best) {
  const hb = halfInterval(best), hr = halfInterval(row);
  return best.quality - row.quality <= Math.sqrt(hb * hb + hr * hr);
}

// The rule's row for a budget (null when none fits).
export function choose(rows, budgetMs) {
  const fitting = rows.filter((r) => r.latencyMs <= budgetMs);
  if (!fitting.length) return null;
  const best = [...fitting].sort(compareBest)[0];
  return fitting.filter((r) => notSignificantlyWorse(r, best)).sort(compareCost)[0];
}

// This device's measured / table latency: the median over timed runs [{width, steps, measured_ms}] (and
// "cache", the step-cache interval, where not 1).
export function latencyRatio(runs, rows) {
  if (!Array.isArray(runs) || runs.length === 0) throw new PolicyError("latency runs: expected at least one timed run {width, steps, measured_ms}");
  const ratios = runs.map((run, i) => {
    const w = `latency runs[${i}]`;
    if (!isObject(run) || !("width" in run) || !("steps" in run) || !("measured_ms" in run)) {
      throw new PolicyError(`${w}: expected an object with width, steps, measured_ms`);
    }
    const measured = num(run.measured_ms, `${w}.measured_ms`, 0, null, true);
    const cache = run.cache ?? 1;
    const row = rows.find((r) => r.width === run.width && r.steps === run.steps && r.cache === cache);
    if (!row) {
      throw new PolicyError(`${w}: width ${run.width} and ${run.steps} steps`
        + (cache !== 1 ? ` at cache interval ${cache}` : "") + " is not a row of the table");
    }
    return measured / row.latencyMs;
  }).sort((a, b) => a - b);
  const mid = Math.floor(ratios.length / 2);
  return ratios.length % 2 ? ratios[mid] : (ratios[mid - 1] + ratios[mid]) / 2;
}

// Every row's latency multiplied by ratio (a device's measured / table latency).
export function rescaleTable(rows, ratio) {
  num(ratio, "latency ratio", 0, null, true);
  return rows.map((r) => ({ ...r, latencyMs: r.latencyMs * ratio }));
}

export class Policy {
  // rows: parseTable's rows as measured; latencyRatio rescales them (1 = the table as measured).
  constructor(config, rows, latencyRatio = 1) {
    this.config = config;
    this.tableRows = rows;
    this.latencyRatio = num(latencyRatio, "latency ratio", 0, null, true);
    this.rows = latencyRatio === 1 ? rows : rescaleTable(rows, latencyRatio);
    // Rows below the quality floor are never chosen (e.g. a slimmed width not yet recovered).
    const floor = config.minQuality;
    const eligible = this.rows.filter((r) => floor === null || r.quality >= floor);
    if (!eligible.length) throw new PolicyError(`policy.min_quality ${floor}: no table row reaches it`);
    this.eligible = eligible;
    this.referenceMs = config.referenceLatencyMs ?? Math.max(...eligible.map((r) => r.latencyMs));
    this.cheapest = [...eligible].sort(compareCost)[0];
    this.current = null;
    this.lastT = null;
    this.pendingSince = null;
    this.windowBudget = Infinity;
  }

  static fromManifest(manifest) {
    if (!isObject(manifest.policy) || Object.keys(manifest.policy).length === 0) throw new PolicyError("manifest: no 'policy' parameters");
    if (!Array.isArray(manifest.table) || manifest.table.length === 0) throw new PolicyError("manifest: no measured 'table' rows");
    const rows = parseTable(manifest.table, "manifest: table");
    const widths = new Set((manifest.widths ?? []).map(Number));
    const schedules = new Set(Object.keys(manifest.sampling?.schedules ?? {}).map(Number));
    rows.forEach((r, i) => {
      if (widths.size && !widths.has(r.width)) throw new PolicyError(`manifest: table[${i}] names width ${r.width}, which the bundle lacks`);
      if (schedules.size && !schedules.has(r.steps)) throw new PolicyError(`manifest: table[${i}] names ${r.steps} steps, which the bundle has no schedule for`);
      const plans = manifest.sampling?.step_cache?.plans ?? {};
      if (r.cache !== 1 && !plans[String(r.cache)]?.[String(r.steps)]) {
        throw new PolicyError(`manifest: table[${i}] names cache interval ${r.cache} at ${r.steps} steps, which the bundle has no step-cache plan for (sampling.step_cache)`);
      }
    });
    return new Policy(parsePolicy(manifest.policy, "manifest: policy"), rows);
  }

  // This policy over the table rescaled by ratio (relative to the table as measured), keeping the
  // current row and the clock; a pending step up starts over.
  rescaled(ratio) {
    const other = new Policy(this.config, this.tableRows, ratio);
    if (this.current !== null) other.current = other.eligible.find((r) => sameRow(r, this.current));
    other.lastT = this.lastT;
    return other;
  }

  budgetMs(state) {
    const c = this.config;
    let thermal = state.thermal;
    if (state.headroom !== null) {
      for (const level of THERMAL_STATES.slice(1)) {
        const limit = c.headroomThresholds[level];
        if (limit !== undefined && state.headroom >= limit && THERMAL_STATES.indexOf(level) > THERMAL_STATES.indexOf(thermal)) thermal = level;
      }
    }
    let factor = c.thermalBudget[thermal];
    const why = [`thermal ${thermal}`];
    if (!state.charging) {
      const tier = c.batteryTiers.filter((t) => state.batteryLevel < t.below).map((t) => t.factor);
      if (tier.length) { factor *= Math.min(...tier); why.push(`battery ${Math.round(state.batteryLevel * 100)}%`); }
    } else why.push("charging");
    if (state.lowPower) { factor *= c.lowPowerFactor; why.push("low-power mode"); }
    return { budget: this.referenceMs * factor, why: why.join(", ") };
  }

  choose(budget) { return choose(this.eligible, budget); }

  decide(t, state) {
    num(t, "t");
    if (this.lastT !== null && t < this.lastT) throw new PolicyError(`t: samples must come in time order (${t} after ${this.lastT})`);
    this.lastT = t;
    const { budget, why } = this.budgetMs(state);
    const target = this.choose(budget) ?? this.cheapest;
    const cur = this.current;
    let reason, chosen;
    if (cur === null) { reason = "initial"; chosen = target; this.pendingSince = null; }
    else if (sameRow(target, cur)) { reason = "hold"; chosen = cur; this.pendingSince = null; }
    else if (target.latencyMs < cur.latencyMs || cur.latencyMs > budget) { reason = "step_down"; chosen = target; this.pendingSince = null; }
    else {  // the rule now chooses a row costing at least as much, and the current row fits: dwell first
      if (this.pendingSince === null) { this.pendingSince = t; this.windowBudget = budget; }
      else this.windowBudget = Math.min(this.windowBudget, budget);
      const up = this.choose(this.windowBudget);
      if (t - this.pendingSince >= this.config.dwellS && up !== null && !sameRow(up, cur) && up.latencyMs >= cur.latencyMs) {
        reason = "step_up"; chosen = up; this.pendingSince = null;
      } else { reason = "dwell"; chosen = cur; }
    }
    this.current = chosen;
    const over = chosen.latencyMs > budget;
    return { t, steps: chosen.steps, width: chosen.width, cache: chosen.cache, latencyMs: chosen.latencyMs, budgetMs: budget, reason,
      overBudget: over, quality: chosen.quality, qualityCi95: chosen.qualityCi95, metric: chosen.metric,
      detail: `${why}: budget ${budget.toFixed(1)} ms${over ? "; no row fits, cheapest taken" : ""}` };
  }

  // What a device does with a state it cannot read: the cheapest row and a logged warning.
  decideOrFallback(t, stateDict, warn = console.warn) {
    try {
      return this.decide(t, parseState(stateDict));
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      warn(`policy fallback to the cheapest row: ${err.message}`);
      this.current = this.cheapest;
      this.pendingSince = null;
      const r = this.cheapest;
      return { t, steps: r.steps, width: r.width, cache: r.cache, latencyMs: r.latencyMs, budgetMs: 0, reason: "fallback",
        overBudget: false, quality: r.quality, qualityCi95: r.qualityCi95, metric: r.metric, detail: `unreadable state: ${err.message}` };
    }
  }
}

// What a device runs when the bundle's table or policy is unusable: the narrowest width and the fewest
// steps the bundle has (never a row it lacks), with a logged warning.
export function fallbackDecision(manifest, why, t = 0, warn = console.warn) {
  const widths = (manifest.widths ?? Object.keys(manifest.components?.unet?.widths ?? {})).map(Number);
  const steps = Object.keys(manifest.sampling?.schedules ?? {}).map(Number);
  if (!widths.length || !steps.length) throw new PolicyError(`manifest: no widths or schedules to fall back to (${why})`);
  warn(`policy fallback to the cheapest configuration: ${why}`);
  return { t, steps: Math.min(...steps), width: Math.min(...widths), cache: 1, latencyMs: 0, budgetMs: 0, reason: "fallback",
    overBudget: false, detail: `no usable policy: ${why}` };
}
