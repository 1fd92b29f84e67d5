// Runtime policy twin of edgekit/policy.py: device state -> (steps, width) from the manifest's measured
// table, with hysteresis. Same rule, same parameters (manifest "policy"), same vectors
// (edgekit/twin_vectors/policy.json). No browser APIs here, so Node runs the vectors too.

export const THERMAL_STATES = ["nominal", "fair", "serious", "critical"];
const POLICY_KEYS = ["format", "thermal_budget", "battery_tiers", "low_power_factor", "headroom_thresholds",
  "dwell_s", "reference_latency_ms", "min_prompt_accuracy"];
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
  unknownKeys(data, POLICY_KEYS, where);
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
  return {
    thermalBudget: thermal,
    batteryTiers: tiers,
    lowPowerFactor: num(data.low_power_factor ?? 0.5, `${where}.low_power_factor`, 0, 1, true),
    headroomThresholds: headroom,
    dwellS: num(data.dwell_s ?? 10, `${where}.dwell_s`, 0),
    referenceLatencyMs: ref === null ? null : num(ref, `${where}.reference_latency_ms`, 0, null, true),
    minPromptAccuracy: num(data.min_prompt_accuracy ?? 0, `${where}.min_prompt_accuracy`, 0, 1),
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

export function parseTable(rows, where = "table") {
  if (!Array.isArray(rows) || rows.length === 0) throw new PolicyError(`${where}: expected a non-empty list of measured rows`);
  const seen = new Set();
  return rows.map((r, i) => {
    const w = `${where}[${i}]`;
    if (!isObject(r)) throw new PolicyError(`${w}: expected an object`);
    for (const k of ["width", "steps", "latency_ms", "prompt_accuracy"]) if (!(k in r)) throw new PolicyError(`${w}: missing '${k}'`);
    if (!Number.isInteger(r.steps) || r.steps <= 0) throw new PolicyError(`${w}.steps: expected a positive whole number`);
    const row = {
      width: num(r.width, `${w}.width`, 0, 1, true), steps: r.steps,
      latencyMs: num(r.latency_ms, `${w}.latency_ms`, 0, null, true),
      promptAccuracy: num(r.prompt_accuracy, `${w}.prompt_accuracy`, 0, 1),
      frechetDistance: r.frechet_distance == null ? null : num(r.frechet_distance, `${w}.frechet_distance`, 0),
    };
    const key = `${row.width}/${row.steps}`;
    if (seen.has(key)) throw new PolicyError(`${w}: a second row for width ${row.width} and ${row.steps} steps`);
    seen.add(key);
    return row;
  });
}

// Smaller is better: accuracy, then Frechet distance, then the cheaper, then the wider, then more steps.
function qualityKey(r) {
  return [-r.promptAccuracy, r.frechetDistance ?? Infinity, r.latencyMs, -r.width, -r.steps];
}
function compareRows(a, b) {
  const ka = qualityKey(a), kb = qualityKey(b);
  for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i] < kb[i] ? -1 : 1;
  return 0;
}

export class Policy {
  constructor(config, rows) {
    this.config = config;
    this.rows = rows;
    // Rows below the accuracy floor are never chosen (e.g. a slimmed width not yet recovered).
    const eligible = rows.filter((r) => r.promptAccuracy >= config.minPromptAccuracy);
    if (!eligible.length) throw new PolicyError(`policy.min_prompt_accuracy ${config.minPromptAccuracy}: no table row reaches it`);
    this.referenceMs = config.referenceLatencyMs ?? Math.max(...eligible.map((r) => r.latencyMs));
    this.ranked = [...eligible].sort(compareRows);
    this.cheapest = [...eligible].sort((a, b) => (a.latencyMs - b.latencyMs) || compareRows(a, b))[0];
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
    });
    return new Policy(parsePolicy(manifest.policy, "manifest: policy"), rows);
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

  bestFitting(budget) { return this.ranked.find((r) => r.latencyMs <= budget) ?? null; }

  decide(t, state) {
    num(t, "t");
    if (this.lastT !== null && t < this.lastT) throw new PolicyError(`t: samples must come in time order (${t} after ${this.lastT})`);
    this.lastT = t;
    const { budget, why } = this.budgetMs(state);
    const best = this.bestFitting(budget);
    const target = best ?? this.cheapest;
    const cur = this.current;
    let reason, chosen;
    if (cur === null) { reason = "initial"; chosen = target; this.pendingSince = null; }
    else if (cur.latencyMs > budget && target !== cur) { reason = "step_down"; chosen = target; this.pendingSince = null; }
    else if (best !== null && compareRows(best, cur) < 0) {
      if (this.pendingSince === null) { this.pendingSince = t; this.windowBudget = budget; }
      else this.windowBudget = Math.min(this.windowBudget, budget);
      const candidate = this.bestFitting(this.windowBudget);
      if (t - this.pendingSince >= this.config.dwellS && candidate !== null && compareRows(candidate, cur) < 0) {
        reason = "step_up"; chosen = candidate; this.pendingSince = null;
      } else { reason = "dwell"; chosen = cur; }
    } else { reason = "hold"; chosen = cur; this.pendingSince = null; }
    this.current = chosen;
    const over = chosen.latencyMs > budget;
    return { t, steps: chosen.steps, width: chosen.width, latencyMs: chosen.latencyMs, budgetMs: budget, reason,
      overBudget: over, detail: `${why}: budget ${budget.toFixed(1)} ms${over ? "; no row fits, cheapest taken" : ""}` };
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
      return { t, steps: r.steps, width: r.width, latencyMs: r.latencyMs, budgetMs: 0, reason: "fallback",
        overBudget: false, detail: `unreadable state: ${err.message}` };
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
  return { t, steps: Math.min(...steps), width: Math.min(...widths), latencyMs: 0, budgetMs: 0, reason: "fallback",
    overBudget: false, detail: `no usable policy: ${why}` };
}
