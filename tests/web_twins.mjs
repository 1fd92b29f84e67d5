// Runs the shared twin vectors through the browser modules under Node: node tests/web_twins.mjs
// Prints one JSON line {"passed": n, "failures": [...]}; exit 1 on any failure.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { Policy, fallbackDecision, latencyRatio, parsePolicy, parseState, parseTable, rescaleTable } from "../edgekit/targets/web/policy.js";
import { ClipTokenizer } from "../edgekit/targets/web/tokenizer.js";
import { runTable, guide, guidanceMode, normals, noiseWords, philox4x32 } from "../edgekit/targets/web/scheduler.js";
import { cacheGraphs, cachePlan, cachedUNet, StepCacheError } from "../edgekit/targets/web/step_cache.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "edgekit", "twin_vectors");
const load = (name) => JSON.parse(readFileSync(join(root, name), "utf8"));
let passed = 0;
const failures = [];
const check = (ok, what) => { if (ok) passed++; else failures.push(what); };
const close = (a, b, rel) => Math.abs(a - b) <= rel * Math.max(1, Math.abs(b));

const pv = load("policy.json");
const expectError = (fn, needle, what) => {
  try { fn(); check(false, `${what}: no error`); } catch (err) { check(err.message.includes(needle), `${what}: ${err.message}`); }
};
for (const c of pv.cases) {
  const rows = parseTable(pv.tables[c.table]);
  let ratio = 1;
  if (c.rescale) {
    ratio = latencyRatio(c.rescale.runs, rows);
    check(close(ratio, c.rescale.ratio, 1e-12), `${c.name}: ratio ${ratio}`);
  }
  let policy = new Policy(parsePolicy({ ...pv.policy, ...c.policy_overrides }), rows, ratio);
  for (const s of c.samples) {
    if ("latency_ratio" in s) policy = policy.rescaled(s.latency_ratio);
    const d = policy.decideOrFallback(s.t, s.state, () => {});
    const e = s.expect;
    check(d.steps === e.steps && d.width === e.width && d.reason === e.reason && d.overBudget === e.over_budget
      && close(d.budgetMs, e.budget_ms, 1e-6) && close(d.latencyMs, e.latency_ms, 1e-6), `${c.name} t=${s.t}: got ${JSON.stringify(d)}`);
  }
}
// Step-cache rows: two rows may share width and steps and differ in their cache interval (policy_cache.json)
const pc = load("policy_cache.json");
for (const c of pc.cases) {
  const policy = new Policy(parsePolicy(pv.policy), parseTable(pc.tables[c.table]));
  for (const s of c.samples) {
    const d = policy.decideOrFallback(s.t, s.state, () => {});
    const e = s.expect;
    check(d.steps === e.steps && d.width === e.width && d.cache === (e.cache ?? 1) && d.reason === e.reason
      && d.overBudget === e.over_budget && close(d.budgetMs, e.budget_ms, 1e-6) && close(d.latencyMs, e.latency_ms, 1e-6),
    `${c.name} t=${s.t}: got ${JSON.stringify(d)}`);
  }
}
for (const r of pc.latency_ratios) {
  const got = latencyRatio(r.runs, parseTable(pc.tables[r.table]));
  check(close(got, r.ratio, 1e-12), `${r.name}: ${got}`);
}
for (const b of pc.bad_tables) expectError(() => parseTable(b.rows), b.error_contains, b.name);
for (const r of pv.latency_ratios) {
  const got = latencyRatio(r.runs, parseTable(pv.tables[r.table]));
  check(close(got, r.ratio, 1e-12), `${r.name}: ${got}`);
}
for (const b of pv.bad_rescales) {
  const rows = parseTable(pv.tables[b.table]);
  expectError(() => ("runs" in b ? latencyRatio(b.runs, rows) : rescaleTable(rows, b.ratio)), b.error_contains, b.name);
}
for (const b of pv.bad_policies) expectError(() => parsePolicy(b.policy), b.error_contains, b.name);
for (const b of pv.bad_states) expectError(() => parseState(b.state), b.error_contains, b.name);
for (const b of pv.bad_tables) expectError(() => parseTable(b.table), b.error_contains, b.name);
for (const b of pv.bad_manifests) {
  expectError(() => Policy.fromManifest(b.manifest), b.error_contains, b.name);
  const d = fallbackDecision(b.manifest, "test", 0, () => {});
  check(d.steps === b.fallback.steps && d.width === b.fallback.width && d.reason === "fallback", `${b.name}: ${JSON.stringify(d)}`);
}

const tv = load("tokenizer_cases.json");
const tok = ClipTokenizer.fromTokenizerJson(load(tv.tokenizer));
for (const c of tv.cases) {
  const ids = tok.encode(c.text, tv.max_length);
  check(JSON.stringify(ids) === JSON.stringify(c.ids), `tokenizer ${JSON.stringify(c.text)}: ${ids}`);
}

const pad = load("tokenizer_pad_cases.json");
const padTok = ClipTokenizer.fromTokenizerJson(load(pad.tokenizer), { padId: pad.pad_id });
for (const c of pad.cases) {
  const ids = padTok.encode(c.text, pad.max_length);
  check(JSON.stringify(ids) === JSON.stringify(c.ids), `tokenizer padded with ${pad.pad} ${JSON.stringify(c.text)}: ${ids}`);
}

const nv = load("noise.json");
for (const k of nv.philox4x32_10) {
  const w = philox4x32(k.counter, k.key);
  check(JSON.stringify(w) === JSON.stringify(k.words), `philox ${k.counter} ${k.key}: ${w}`);
}
for (const s of nv.streams) {
  const w = noiseWords(s.seed, s.stream, s.words.length);
  const z = normals(s.seed, s.stream, s.normals.length);
  check(JSON.stringify(w) === JSON.stringify(s.words) && s.normals.every((v, i) => Math.abs(z[i] - v) <= 1e-12),
    `noise seed ${s.seed} stream ${s.stream}: ${w} ${Array.from(z)}`);
}

const sv = load("scheduler.json");
for (const c of sv.cases) {
  const mode = guidanceMode(c.sampling);
  const calls = { cond: 0, uncond: 0 };
  const g = c.sampling.guidance_scale;
  const cond = (x, t) => { calls.cond++; return Float64Array.from(x, (v, i) => 0.3 * v + 0.001 * t + 0.01 * i); };
  const uncond = (x, t) => { calls.uncond++; return Float64Array.from(x, (v) => 0.2 * v - 0.0005 * t); };
  const model = (x, t) => (mode === "classifier-free" ? guide(uncond(x, t), cond(x, t), g, Float64Array) : cond(x, t));
  const n = c.x0.length;
  const x0 = normals(c.seed, 0, n);
  let steps = 0;
  const out = await runTable(c.table, x0, model, { ArrayType: Float64Array, onStep: () => { steps++; },
    noise: (j) => normals(c.seed, j + 1, n) });
  check(mode === c.guidance_mode && calls.cond === c.cond_calls && calls.uncond === c.uncond_calls
    && steps === c.table.timesteps.length && c.x0.every((v, i) => close(x0[i], v, 1e-12))
    && c.expected.every((v, i) => close(out[i], v, 1e-9)),
  `scheduler ${c.name}: mode ${mode} calls ${JSON.stringify(calls)} ${Array.from(out)}`);
}
// Step caching: the vectors' fake graphs (step_cache.json "model"), every row of a guidance batch in one call
const cv = load("step_cache.json");
const cg = cacheGraphs(cv.sampling);
check(cg.full === "unet_full" && cg.shallow === "unet_shallow", `step cache graphs ${JSON.stringify(cg)}`);
const fullRow = (x, t, h) => [...Array.from({ length: 6 }, (_, i) => 0.3 * x[i] + 0.001 * t + 0.01 * i + 0.05 * h),
  ...Array.from({ length: 3 }, (_, k) => Math.tanh(0.5 * x[k] + 0.4 * x[3 + k]) + 0.002 * t + 0.1 * h)];
const shallowRow = (x, t, h, f) => Array.from({ length: 6 }, (_, i) => 0.25 * x[i] + 0.001 * t + 0.01 * i + 0.05 * h + 0.2 * f[i % 3]);
for (const c of cv.cases) {
  const plan = cachePlan(cv.sampling, c.interval, c.steps);
  check(JSON.stringify(plan) === JSON.stringify(c.plan), `step cache plan ${c.interval}/${c.steps}: ${JSON.stringify(plan)}`);
  const cfg = c.guidance_mode === "classifier-free";
  const heads = cfg ? [0, 1] : [1];
  const batch = (f) => Float64Array.from(heads.flatMap((h, r) => f(h, r)));
  const calls = { plain: 0, full: 0, shallow: 0 };
  const unet = cachedUNet(plan, cg.noiseChannels, 3, heads.length, { ArrayType: Float64Array,
    plain: (x, t) => { calls.plain++; return batch((h) => fullRow(x, t, h).slice(0, 6)); },
    full: (x, t) => { calls.full++; return batch((h) => fullRow(x, t, h)); },
    shallow: (x, t, feature) => { calls.shallow++; return batch((h, r) => shallowRow(x, t, h, feature.subarray(3 * r, 3 * r + 3))); } });
  const model = async (x, t, i) => {
    const eps = await unet(x, t, i);
    return cfg ? guide(eps.subarray(0, 6), eps.subarray(6, 12), c.guidance_scale, Float64Array) : eps;
  };
  const table = cv.sampling.schedules[String(c.steps)];
  const out = await runTable(table, normals(c.seed, 0, 6), model, { ArrayType: Float64Array });
  const roles = plan ?? [];
  // one role per UNet call of the table (a PNDM table makes steps + 1 calls)
  check(c.expected.every((v, i) => close(out[i], v, 1e-9)) && calls.full === roles.filter((r) => r === "full").length
    && calls.shallow === roles.filter((r) => r === "shallow").length
    && calls.plain === (plan ? 0 : table.timesteps.length) && (!plan || plan.length === table.timesteps.length),
  `step cache ${c.interval}/${c.steps} ${c.guidance_mode}: ${Array.from(out)} ${JSON.stringify(calls)}`);
}
for (const b of cv.bad_plans) {
  try { cachePlan(cv.sampling, b.interval, b.steps); check(false, `${JSON.stringify(b)}: no error`); } catch (err) {
    check(err instanceof StepCacheError && err.message.includes(b.error_contains), `${JSON.stringify(b)}: ${err.message}`);
  }
}
console.log(JSON.stringify({ passed, failures }));
process.exit(failures.length ? 1 : 0);
