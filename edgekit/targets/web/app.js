// The browser demo: prompt -> image with onnxruntime-web, steps and width chosen by the bundle's policy from
// Battery Status / Compute Pressure (CPU load, not heat) or the manual overrides.
// Execution provider (EP) per component: WebGPU only where the manifest records that the component's WebGPU
// graph passed its check in a browser (edgekit verify --browser / the export's verify_in_browser) AND the same
// check passes on this tab's own adapter at first load (cached per adapter); wasm otherwise, and the page says
// why. `?ep=wasm|webgpu` overrides (a component whose WebGPU check failed still runs on wasm).
// The tab times its own first runs per EP and rescales the table's latencies by the measured ratio before the
// policy reads them (a table measured on the packaging host does not set this tab's budget).
// Served by `edgekit serve BUNDLE`: the bundle's files under bundle/, onnxruntime-web under ort/.
import * as ort from "./ort/ort.all.min.mjs";
import { Policy, PolicyError, fallbackDecision, latencyRatio } from "./policy.js";
import { ClipTokenizer } from "./tokenizer.js";
import { runTable, guide, guidanceMode, normals } from "./scheduler.js";
import { cacheGraphs, cachePlan, cachedUNet } from "./step_cache.js";
import { PROVIDERS, adapterKey, checkOnProvider, providerEntry, providerRecord, rowsPerCall, sessionOptions } from "./selfcheck.js";

const $ = (id) => document.getElementById(id);
// The first TIMED_RUNS generations are timed (sessions created beforehand) to rescale the table.
const TIMED_RUNS = 3;
const newLatency = () => ({ runs: [], ratio: 1, timedRuns: TIMED_RUNS });
// providers: component key ("text_encoder", "unet/0.50", "vae_decoder") -> the EP it runs on; notes: why.
// latency: the record of the EP the current UNet runs on (latencyByEp holds one per EP).
const demo = { threads: 1, manifest: null, policy: null, basePolicy: null, decision: null, state: null, image: null, timing: null,
  provider: null, providers: {}, providerNotes: [], adapter: null, selfCheck: {}, latencyByEp: { wasm: newLatency(), webgpu: newLatency() } };
demo.latency = demo.latencyByEp.wasm;
window.edgekitDemo = demo;  // read by the end-to-end test and handy in the console
const readings = { battery: null, pressure: null };
const sessions = new Map();
const started = performance.now();

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.logLevel = "error";  // not the WebGPU EP's node-placement warnings, which it prints as console errors
// wasm threads need cross-origin isolation (edgekit serve sends the headers); ?threads=N overrides.
const threadParam = Number(new URLSearchParams(location.search).get("threads"));
ort.env.wasm.numThreads = threadParam > 0 ? threadParam
  : self.crossOriginIsolated ? Math.max(1, Math.min(4, Math.floor((navigator.hardwareConcurrency || 1) / 2))) : 1;
demo.threads = ort.env.wasm.numThreads;

function deviceState() {
  const thermalChoice = $("thermal").value;
  const overrideBattery = $("battery-override").checked || readings.battery === null;
  const fromPressure = thermalChoice === "auto" && readings.pressure != null;
  const state = {
    battery_level: overrideBattery ? Number($("battery-level").value) / 100 : readings.battery.level,
    charging: overrideBattery ? $("charging").checked : readings.battery.charging,
    low_power: $("low-power").checked,
    thermal: thermalChoice === "auto" ? (readings.pressure ?? "nominal") : thermalChoice,
  };
  // not a policy input (the policy refuses unknown keys): how the page labels the state it read
  Object.defineProperty(state, "thermalSource", { value: fromPressure ? "compute pressure" : "thermal", enumerable: false });
  return state;
}

function decide() {
  const state = deviceState();
  demo.state = state;
  const t = (performance.now() - started) / 1000;
  let d = demo.policy ? demo.policy.decideOrFallback(t, state) : fallbackDecision(demo.manifest, demo.policyError, t);
  // ?steps=8&width=1.00&cache=2 pins a row (benchmarks, debugging)
  const forced = new URLSearchParams(location.search);
  if (forced.has("steps") || forced.has("width") || forced.has("cache")) {
    d = { ...d, steps: Number(forced.get("steps") ?? d.steps), width: Number(forced.get("width") ?? d.width),
      cache: Number(forced.get("cache") ?? d.cache ?? 1),
      reason: "manual", detail: `pinned by the page address; the policy chose ${d.steps} steps at width ${d.width}` };
  }
  if (state.thermalSource === "compute pressure" && typeof d.detail === "string") {
    // Compute Pressure is CPU load, not heat: say what was read (the policy treats it as the thermal state)
    d = { ...d, detail: d.detail.replace(/^thermal (\w+)/, "compute pressure $1 (CPU load, not heat)") };
  }
  demo.decision = d;
  $("decision").textContent = `policy: ${d.steps} steps, width ${d.width.toFixed(2)}`
    + `${(d.cache ?? 1) > 1 ? `, step cache every ${d.cache}` : ""} (${d.reason})`;
  const ratio = demo.latency.ratio;
  const quality = d.quality == null ? ""
    : `; quality ${d.quality.toFixed(2)} ± ${((d.qualityCi95[1] - d.qualityCi95[0]) / 2).toFixed(2)} ${d.metric}`;
  $("detail").textContent = `${d.detail}; predicted ${d.latencyMs > 0 ? d.latencyMs.toFixed(0) + " ms" : "unknown"}`
    + ` (table measured on ${demo.manifest.table?.[0]?.device ?? "nothing"}${ratio !== 1 ? `, times ${ratio.toFixed(2)} here` : ""})${quality}`;
  document.body.dataset.steps = d.steps;
  document.body.dataset.width = d.width;
  document.body.dataset.reason = d.reason;
  return d;
}

async function watchDevice() {
  const sources = [];
  if (navigator.getBattery) {
    const b = await navigator.getBattery();
    const update = () => { readings.battery = { level: b.level, charging: b.charging }; decide(); };
    b.addEventListener("levelchange", update);
    b.addEventListener("chargingchange", update);
    readings.battery = { level: b.level, charging: b.charging };
    sources.push(`battery ${Math.round(b.level * 100)}%${b.charging ? " charging" : ""} (Battery Status API)`);
  } else sources.push("no Battery Status API: battery from the override");
  if ("PressureObserver" in self) {
    try {
      const observer = new PressureObserver((records) => { readings.pressure = records.at(-1).state; decide(); });
      await observer.observe("cpu");
      sources.push("compute pressure (CPU load, not heat) from the Compute Pressure API stands in for the thermal state");
    } catch (err) { sources.push(`Compute Pressure refused: ${err.message}`); }
  } else sources.push("no Compute Pressure API: thermal from the override");
  $("sources").textContent = sources.join("; ");
  for (const id of ["thermal", "battery-override", "battery-level", "charging", "low-power"]) {
    $(id).addEventListener("input", () => { $("battery-value").textContent = `${$("battery-level").value}%`; decide(); });
  }
}

// The EP component `key` runs on (decided by providerFor on its first use).
const epOf = (key) => demo.providers[key] ?? "wasm";

async function session(key, entry) {
  const ep = epOf(key);
  const id = `${key}@${ep}`;
  if (!sessions.has(id)) {
    const chosen = providerEntry(entry, ep);
    sessions.set(id, ort.InferenceSession.create(`bundle/${chosen.file}`, sessionOptions(chosen, ep, "bundle/")));
  }
  return sessions.get(id);
}

// Run a graph on `rows` rows; a graph with a fixed batch axis gets them in slices of its size, and one whose
// all-rows call did not fit the wasm heap at export (entry.rows_per_call) in slices of that many rows on wasm
// (WebGPU keeps its buffers outside that heap: every row in one call).
async function runRows(entry, key, feeds, rows) {
  const sess = await session(key, entry);
  const fixed = rowsPerCall(entry, epOf(key), rows);
  const outName = entry.outputs[0].name;
  const parts = [];
  for (let start = 0; start < rows; start += fixed) {
    const slice = {};
    for (const inp of entry.inputs) {
      const { data, dims } = feeds[inp.name];
      const per = data.length / rows;
      slice[inp.name] = new ort.Tensor(inp.dtype, data.slice(start * per, (start + fixed) * per), [fixed, ...dims.slice(1)]);
    }
    const out = await sess.run(slice);
    parts.push(out[outName]);
  }
  const per = parts[0].data.length;
  const all = new Float32Array(per * parts.length);
  parts.forEach((p, i) => all.set(p.data, i * per));
  return { data: all, dims: [rows, ...parts[0].dims.slice(1)] };
}

// This tab's measured / table latency from its first TIMED_RUNS runs (median), applied to every row the
// policy reads; shown on the page. A run on a row the table lacks (pinned by the address) is not counted.
function recordRun(d, totalMs) {
  const lat = demo.latency;
  if (!demo.policy || lat.runs.length >= TIMED_RUNS) return;
  const run = { width: d.width, steps: d.steps, ...((d.cache ?? 1) > 1 ? { cache: d.cache } : {}), measured_ms: totalMs };
  let ratio;
  try { ratio = latencyRatio([...lat.runs, run], demo.policy.tableRows); }
  catch (err) { if (err instanceof PolicyError) return; throw err; }
  lat.runs.push(run);
  lat.ratio = ratio;
  demo.policy = demo.policy.rescaled(ratio);
  showLatencyRatio();
}

// The latency record (and rescaled policy) of the EP the UNet of `width` runs on: a WebGPU tab and a wasm tab
// differ by orders of magnitude, so each EP keeps its own measured ratio.
function useLatencyOf(width) {
  const ep = epOf(`unet/${width.toFixed(2)}`);
  if (demo.latency === demo.latencyByEp[ep]) return false;
  demo.latency = demo.latencyByEp[ep];
  demo.provider = ep;
  if (demo.policy) demo.policy = demo.policy.rescaled(demo.latency.ratio);
  showLatencyRatio();
  return true;
}

function showLatencyRatio() {
  const { runs, ratio } = demo.latency;
  $("latency-ratio").textContent = runs.length === 0
    ? `latency: not measured in this tab yet (the first ${TIMED_RUNS} runs are timed; until then the table's own times)`
    : `measured ${ratio.toFixed(2)} of the table's latency (${runs.length} run${runs.length === 1 ? "" : "s"}); `
      + `the policy reads every row's latency times ${ratio.toFixed(2)} (${demo.provider})`;
  document.body.dataset.latencyRatio = ratio;
}

async function generate(prompt, seed) {
  const m = demo.manifest;
  let d = decide();
  await providerFor(`unet/${d.width.toFixed(2)}`);
  if (useLatencyOf(d.width)) d = decide();  // this EP's own latency ratio may move the choice
  // Step caching (the row's cache interval): the manifest's plan says which graph each step runs; a row of the
  // plain loop (cache 1) runs the plain UNet every step.
  const key = d.width.toFixed(2);
  const plan = (d.cache ?? 1) > 1 ? cachePlan(m.sampling, d.cache, d.steps) : null;
  const graphs = plan ? cacheGraphs(m.sampling) : null;
  const unetKeys = plan ? [`${graphs.full}/${key}`, `${graphs.shallow}/${key}`] : [`unet/${key}`];
  for (const k of unetKeys) await providerFor(k);
  // Sessions first, so a timed run is generation only, as the table's rows are.
  await Promise.all([session("text_encoder", m.components.text_encoder), session("vae_decoder", m.components.vae_decoder),
    ...unetKeys.map((k) => session(k, componentOf(m, k)[0]))]);
  const t0 = performance.now();
  document.body.dataset.status = "generating";
  $("generate").disabled = true;
  const L = m.tokenizer.max_length;
  // int32 token ids, as every edgekit text encoder graph takes them (and diffusers and optimum feed)
  // Guidance as diffusers applies it (scheduler.js guidanceMode): only classifier-free guidance needs the
  // empty prompt's pass; rows are [uncond, cond] then, [cond] otherwise.
  const mode = guidanceMode(m.sampling);
  const rows = mode === "classifier-free" ? 2 : 1;
  const ids = Int32Array.from([...(rows === 2 ? demo.tokenizer.encode("", L) : []), ...demo.tokenizer.encode(prompt, L)]);
  const te = m.components.text_encoder;
  const hidden = await runRows(te, "text_encoder", { [te.inputs[0].name]: { data: ids, dims: [rows, L] } }, rows);
  const tText = performance.now();
  const widthKey = d.width.toFixed(2);
  const unetEntry = m.components.unet.widths[widthKey];
  const table = m.sampling.schedules[String(d.steps)];
  const latentShape = m.geometry.latent_shape;
  const n = latentShape.reduce((a, b) => a * b, 1);
  const guidance = m.sampling.guidance_scale;
  const embedding = m.sampling.guidance_embedding;  // an LCM-style UNet's timestep_cond, one row per sample
  $("progress").max = table.timesteps.length;
  demo.progress = [];
  // One UNet graph's call on the batch (every graph takes sample, timestep, text states first; the shallow
  // step-cache graph also the cached feature, `extra`).
  const callGraph = async (graphKey, batch, t, extra = {}) => {
    const entry = componentOf(m, graphKey)[0];
    const [sampleName, timestepName, hiddenName] = entry.inputs.map((i) => i.name);
    const feeds = {
      [sampleName]: { data: batch, dims: [rows, ...latentShape] },
      [timestepName]: { data: new Float32Array(rows).fill(t), dims: [rows] },
      [hiddenName]: { data: hidden.data, dims: hidden.dims },
      ...extra,
    };
    if (embedding) {
      const cond = new Float32Array(rows * embedding.dim);
      for (let r = 0; r < rows; r++) cond.set(embedding.values, r * embedding.dim);
      feeds[embedding.input] = { data: cond, dims: [rows, embedding.dim] };
    }
    return (await runRows(entry, graphKey, feeds, rows)).data;
  };
  const featureShape = plan ? componentOf(m, unetKeys[1])[0].inputs.find((i) => i.name === graphs.featureInput).shape.slice(1) : null;
  const unet = cachedUNet(plan, plan ? graphs.noiseChannels : 0, n / latentShape[0], rows, {
    plain: (x, t) => callGraph(`unet/${widthKey}`, x, t),
    full: (x, t) => callGraph(unetKeys[0], x, t),
    shallow: (x, t, feature) => callGraph(unetKeys[1], x, t, { [graphs.featureInput]: { data: feature, dims: [rows, ...featureShape] } }),
  });
  // Initial and per-step noise from the shared counter-based generator: the same image as Python, Kotlin, Swift.
  const latents = await runTable(table, normals(seed, 0, n, Float32Array), async (x, t, i) => {
    const batch = new Float32Array(rows * n);
    for (let r = 0; r < rows; r++) batch.set(x, r * n);
    const out = await unet(batch, t, i);
    return rows === 2 ? guide(out.subarray(0, n), out.subarray(n), guidance) : out.subarray(0, n);
  }, {
    noise: (j) => normals(seed, j + 1, n, Float32Array),
    onStep: async (done, total) => {
      $("progress").value = done;
      $("step").textContent = `step ${done} / ${total}`;
      document.body.dataset.step = done;
      demo.progress.push(`${done}/${total}`);
      await new Promise((r) => setTimeout(r, 0));  // let the page paint the progress
    },
  });
  const tUnet = performance.now();
  const vae = m.components.vae_decoder;
  const scaled = Float32Array.from(latents, (v) => v / m.geometry.vae_scaling_factor);
  const img = await runRows(vae, "vae_decoder", { [vae.inputs[0].name]: { data: scaled, dims: [1, ...latentShape] } }, 1);
  const tEnd = performance.now();
  const size = m.geometry.image_size, plane = size * size;
  const rgb = new Float32Array(plane * 3);
  const pixels = new ImageData(size, size);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.min(1, Math.max(0, img.data[c * plane + p] / 2 + 0.5));
      rgb[p * 3 + c] = v;
      pixels.data[p * 4 + c] = Math.round(v * 255);
    }
    pixels.data[p * 4 + 3] = 255;
  }
  const canvas = $("image");
  canvas.width = size; canvas.height = size;
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  demo.image = { size, rgb: Array.from(rgb) };
  demo.timing = { text_encoder_ms: tText - t0, unet_ms: tUnet - tText, vae_ms: tEnd - tUnet, total_ms: tEnd - t0 };
  const drawnOn = { text_encoder: epOf("text_encoder"), unet: [...new Set(unetKeys.map(epOf))].join("+"),
    vae_decoder: epOf("vae_decoder") };
  demo.drawnOn = drawnOn;
  document.body.dataset.drawnOn = [...new Set(Object.values(drawnOn))].join("+");
  demo.cache = { interval: d.cache ?? 1, plan };
  $("timing").textContent = `${d.steps} steps at width ${widthKey}${plan ? ` (step cache every ${d.cache})` : ""} in `
    + `${demo.timing.total_ms.toFixed(0)} ms `
    + `(text ${demo.timing.text_encoder_ms.toFixed(0)} on ${drawnOn.text_encoder}, UNet ${demo.timing.unet_ms.toFixed(0)} on `
    + `${drawnOn.unet}, VAE ${demo.timing.vae_ms.toFixed(0)} on ${drawnOn.vae_decoder}) with onnxruntime-web`;
  recordRun(d, demo.timing.total_ms);
  decide();  // the rescaled table may already move the choice
  $("generate").disabled = false;
  document.body.dataset.status = "done";
}

// Python's json writes bare Infinity/NaN (e.g. diffusers' lambda_min_clipped = -inf in the scheduler
// config); JSON.parse refuses them, so they are read as null where they stand as values.
function parseManifest(text) {
  return JSON.parse(text.replace(/([:\[,]\s*)-?(?:Infinity|NaN)(?=\s*[,\]}])/g, "$1null"));
}

// The (manifest entry, verification record) of component key "text_encoder", "vae_decoder" or "<per-width
// component>/<width>" ("unet/0.50", the step-cache graphs "unet_full/1.00", "unet_shallow/1.00").
function componentOf(m, name) {
  const [component, width] = name.split("/");
  if (width !== undefined) return [m.components[component]?.widths?.[width], m.verification[component]?.widths?.[width]];
  return [m.components[name], m.verification[name]];
}

// What the address asks for (?ep=) and the adapter: read once; an unknown value or a missing adapter is said.
const epChoice = { asked: "auto", adapter: null, cacheKey: null, cached: {} };

async function readAskedProvider(m, adapter) {
  const params = new URLSearchParams(location.search);
  let asked = params.has("ep") ? params.get("ep") : "auto";
  if (!["auto", ...PROVIDERS].includes(asked)) {
    note(`?ep=${asked}: unknown execution provider (expected ${PROVIDERS.join(" or ")}); using the bundle's verified choice`);
    asked = "auto";
  }
  demo.askedEp = epChoice.asked = asked;
  epChoice.adapter = adapter;
  demo.adapter = await adapterKey(adapter);
  if (asked === "webgpu" && !adapter) note("?ep=webgpu: this browser offers no WebGPU adapter; every component runs on wasm");
  epChoice.cacheKey = `edgekit-webgpu-check|${m.integrity?.sha256 ?? "?"}|${demo.adapter}`;
  try { epChoice.cached = JSON.parse(localStorage.getItem(epChoice.cacheKey) ?? "{}"); } catch { epChoice.cached = {}; }
}

function note(text) {
  if (!demo.providerNotes.includes(text)) demo.providerNotes.push(text);
}

function showProviders() {
  const used = Object.entries(demo.providers).map(([name, ep]) => `${name} ${ep}`).join(", ");
  const notes = demo.providerNotes;
  $("providers").textContent = `execution providers: ${used}${notes.length ? ` — ${notes.join("; ")}` : ""}`;
  document.body.dataset.providers = JSON.stringify(demo.providers);
}

// The EP of one component, decided on its first use: WebGPU where it is asked for (auto: where the manifest
// records a WebGPU pass; ?ep=webgpu: wherever no WebGPU failure is recorded) and the component's own
// verification input passes on this adapter too (cached per adapter and bundle); wasm otherwise, said on the
// page (#providers, demo.providerNotes). A UNet width is checked when the policy first picks it.
async function providerFor(name) {
  if (name in demo.providers) return demo.providers[name];
  const [entry, record] = componentOf(demo.manifest, name);
  const { asked, adapter, cached } = epChoice;
  const recorded = providerRecord(record, "webgpu");
  let ep = "wasm";
  if (asked !== "wasm" && adapter) {
    if (recorded && recorded.passed === false) {
      if (asked === "webgpu") note(`${name}: failed its WebGPU check at export (${recorded.error ?? `rel-err ${Number(recorded.rel_err).toPrecision(3)}`}); runs on wasm`);
    } else if (recorded?.passed === true || asked === "webgpu") {
      ep = "webgpu";
      if (!recorded) note(`${name}: no WebGPU check recorded in the bundle; checked on this adapter only`);
    } else note("no WebGPU check recorded in the bundle (edgekit verify --browser, or export with verify_in_browser): "
      + "such components run on wasm unless ?ep=webgpu");
  }
  if (ep === "webgpu" && !record?.data) {
    ep = "wasm";
    note(`${name}: no verification input in the bundle to check this adapter with; runs on wasm`);
  }
  if (ep === "webgpu") {
    // the component's own verification input on this adapter (a user's GPU is not the export's SwiftShader)
    let result = cached[name];
    if (!result) {
      $("timing").textContent = `checking ${name} on this WebGPU adapter…`;
      const r = await checkOnProvider(ort, "bundle/", entry, record, "webgpu");
      result = { passed: r.passed, rel_err: r.rel_err ?? null, tolerance: r.tolerance, error: r.error ?? null };
      cached[name] = result;
      try { localStorage.setItem(epChoice.cacheKey, JSON.stringify(cached)); } catch { /* private mode: checked again next time */ }
    }
    demo.selfCheck[name] = result;
    if (!result.passed) {
      ep = "wasm";
      note(`${name}: off on this WebGPU adapter (${result.error ?? `rel-err ${Number(result.rel_err).toPrecision(3)} > ${result.tolerance}`}); runs on wasm`);
    }
  }
  demo.providers[name] = ep;
  showProviders();
  return ep;
}

async function main() {
  // navigator.gpu can exist without an adapter (headless, blocklisted GPU): ask for one before choosing webgpu.
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  const m = parseManifest(await (await fetch("bundle/manifest.json")).text());
  demo.manifest = m;
  await readAskedProvider(m, adapter);
  await providerFor("text_encoder");
  await providerFor("vae_decoder");
  try { demo.policy = Policy.fromManifest(m); }
  catch (err) { if (!(err instanceof PolicyError)) throw err; demo.policyError = err.message; }
  demo.tokenizer = ClipTokenizer.fromTokenizerJson(await (await fetch(`bundle/${m.tokenizer.tokenizer_json}`)).json(),
    { padId: m.tokenizer.pad_id });
  $("bundle-info").textContent = `${m.target} bundle, ${m.precision}, widths ${Object.keys(m.components.unet.widths).join(", ")}, `
    + `steps ${Object.keys(m.sampling.schedules).join(", ")}; onnxruntime-web${adapter ? ` (WebGPU adapter ${demo.adapter})` : ", no WebGPU adapter"}`;
  await watchDevice();
  const first = decide();
  if (m.components.unet.widths[first.width.toFixed(2)]) await providerFor(`unet/${first.width.toFixed(2)}`);
  useLatencyOf(first.width);
  demo.provider = epOf(`unet/${first.width.toFixed(2)}`);
  showLatencyRatio();
  // Compile the graphs before the first click, so generation times exclude session creation.
  const t0 = performance.now();
  const unets = m.components.unet.widths;
  const key = first.width.toFixed(2);
  await Promise.all([session("text_encoder", m.components.text_encoder), session("vae_decoder", m.components.vae_decoder),
    ...(unets[key] ? [session(`unet/${key}`, unets[key])] : [])]);
  demo.loadMs = performance.now() - t0;
  $("timing").textContent = `sessions ready in ${demo.loadMs.toFixed(0)} ms`;
  $("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    generate($("prompt").value, Number($("seed").value)).catch(fail);
  });
  $("generate").disabled = false;
  document.body.dataset.status = "ready";
}

function fail(err) {
  console.error(err);
  $("error").textContent = `error: ${err.message ?? err}`;
  $("generate").disabled = false;
  document.body.dataset.status = "error";
}

main().catch(fail);
