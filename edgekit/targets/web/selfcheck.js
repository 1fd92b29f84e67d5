// One component's stored verification input, run on one onnxruntime-web execution provider (EP) and compared
// with the stored torch output. The page runs it on the user's own adapter at first load (a user's GPU is not
// the one the bundle was verified on); `edgekit verify --browser` runs the same code in headless Chromium.
//
// A manifest entry may carry `providers: {webgpu: {file, files, precision, external_data?}}`: the graph to
// load on that EP instead of the entry's own (e.g. a 4-bit or fp32 graph where the INT8 QDQ one is wrong on
// WebGPU). The verification record's `providers: {wasm: {...}, webgpu: {...}}` says which EPs passed.

export const PROVIDERS = ["wasm", "webgpu"];

const TYPED = {
  float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array,
};

// The graph to load on `ep`: the entry's own file unless the entry names another for that EP.
export function providerEntry(entry, ep) {
  const own = entry.providers?.[ep];
  return own ? { ...entry, ...own } : entry;
}

// What the export (or verify --browser) recorded for `ep`: {passed, rel_err, tolerance, ...} or undefined.
export function providerRecord(record, ep) {
  return record?.providers?.[ep];
}

export function sessionOptions(entry, ep, base) {
  // logSeverityLevel 3: errors only, not the WebGPU EP's node-placement warnings (printed as console errors)
  const options = { executionProviders: [ep], graphOptimizationLevel: "all", logSeverityLevel: 3 };
  if (entry.external_data?.length) {
    options.externalData = entry.external_data.map((c) => ({ path: c.file.split("/").pop(), data: `${base}${c.file}` }));
  }
  return options;
}

export async function loadTensor(ort, base, record) {
  const Typed = TYPED[record.dtype];
  if (!Typed) throw new Error(`${record.file}: dtype ${record.dtype} unsupported`);
  const response = await fetch(`${base}${record.file}`);
  if (!response.ok) throw new Error(`${record.file}: HTTP ${response.status}`);
  return new ort.Tensor(record.dtype, new Typed(await response.arrayBuffer()), record.shape);
}

export function relativeError(actual, expected) {
  if (actual.length !== expected.length) throw new Error(`output has ${actual.length} values, expected ${expected.length}`);
  let num = 0, den = 0, maxAbs = 0, finite = true;
  for (let i = 0; i < actual.length; i++) {
    const a = Number(actual[i]), b = Number(expected[i]);
    if (!Number.isFinite(a)) finite = false;
    const d = a - b;
    num += d * d; den += b * b;
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  const rel = finite ? Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30) : Infinity;
  return { rel_err: rel, max_abs_err: finite ? maxAbs : Infinity };
}

// Rows per call on `ep`: the wasm heap (4 GB) may have forced one row per call at export (rows_per_call);
// WebGPU keeps its buffers outside that heap, so it takes every row in one call.
export function rowsPerCall(entry, ep, rows) {
  const first = entry.inputs[0].shape[0];
  if (typeof first === "number") return first;
  return ep === "wasm" ? Math.min(rows, entry.rows_per_call ?? rows) : rows;
}

export async function runRows(ort, session, entry, feeds, rows, perCall) {
  const outName = entry.outputs[0].name;
  const parts = [];
  for (let start = 0; start < rows; start += perCall) {
    const slice = {};
    for (const inp of entry.inputs) {
      const t = feeds[inp.name];
      const per = t.data.length / rows;
      slice[inp.name] = new ort.Tensor(t.type, t.data.slice(start * per, (start + perCall) * per), [perCall, ...t.dims.slice(1)]);
    }
    parts.push((await session.run(slice))[outName]);
  }
  const per = parts[0].data.length;
  const all = new Float32Array(per * parts.length);
  parts.forEach((p, i) => all.set(p.data, i * per));
  return { data: all, dims: [rows, ...parts[0].dims.slice(1)] };
}

// Run `record`'s stored inputs through `entry` on `ep`; {rel_err, max_abs_err, tolerance, passed, ms, file}.
// `base` is the URL prefix of the bundle's files. Errors (an op the EP lacks, a lost device) are answered as
// {error, passed: false}, never thrown: a check that cannot run has not passed.
export async function checkOnProvider(ort, base, entry, record, ep) {
  const chosen = providerEntry(entry, ep);
  const out = { provider: ep, file: chosen.file, precision: chosen.precision, tolerance: record.tolerance };
  let session = null;
  try {
    const inputs = {};
    for (const [name, rec] of Object.entries(record.data.inputs)) inputs[name] = await loadTensor(ort, base, rec);
    const expected = await loadTensor(ort, base, record.data.expected);
    const t0 = performance.now();
    session = await ort.InferenceSession.create(`${base}${chosen.file}`, sessionOptions(chosen, ep, base));
    const t1 = performance.now();
    const rows = Object.values(inputs)[0].dims[0];
    const perCall = rowsPerCall(chosen, ep, rows);
    const { data } = await runRows(ort, session, chosen, inputs, rows, perCall);
    const t2 = performance.now();
    const err = relativeError(data, expected.data);
    return { ...out, ...err, passed: err.rel_err <= record.tolerance, load_ms: Math.round(t1 - t0),
      run_ms: Math.round(t2 - t1), rows, rows_per_call: perCall };
  } catch (error) {
    return { ...out, error: String(error?.message ?? error).split("\n")[0], passed: false };
  } finally {
    if (session) await session.release();
  }
}

// The adapter as a short stable string (the page caches its self-check answer per adapter).
export async function adapterKey(adapter) {
  if (!adapter) return null;
  const info = adapter.info ?? (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  const f16 = adapter.features?.has("shader-f16") ? "f16" : "no-f16";
  return [info.vendor, info.architecture, info.device, info.description, f16].map((v) => v || "-").join("|");
}
