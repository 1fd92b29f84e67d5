// Run edgekit ONNX graphs in onnxruntime-web (wasm) under Node, the runtime a browser tab uses.
//
// EDGEKIT_ORT_WEB names the onnxruntime-web package directory to load (edgekit.resources finds it: the
// checkout's node_modules, EDGEKIT_NODE_MODULES, or edgekit's own copy); edgekit.runtime.runners sets it.
//
//   node ort_web.mjs check BUNDLE [--rows-per-call N] [LABEL...]
//       For every ONNX component of BUNDLE/manifest.json (or only LABELs such as "unet@1.00"), load
//       the graph the way the web demo does (external-data chunks joined through the externalData
//       option), feed the stored verification inputs and compare with the stored torch outputs.
//       An all-rows call that runs out of the wasm heap stops the check: see check() below.
//   node ort_web.mjs run MODEL.onnx REQUEST.json OUT_DIR
//       REQUEST: {"inputs": {name: {file, dtype, shape}}, "external_data": [relative paths]}; writes
//       OUT_DIR/<output name>.bin (raw little-endian) and prints the outputs' {file, dtype, shape}.
// Prints one JSON object on stdout; exit code 1 on any failure (message on stderr).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const ORT_DIR = process.env.EDGEKIT_ORT_WEB;
if (!ORT_DIR) {
  process.stderr.write('ort_web.mjs: EDGEKIT_ORT_WEB is not set (the onnxruntime-web package directory)\n');
  process.exit(1);
}
// The Node build, imported by path: it resolves onnxruntime-common from the node_modules it sits in.
const ort = await import(pathToFileURL(join(ORT_DIR, 'dist', 'ort.node.min.mjs')).href);
const ORT_VERSION = JSON.parse(readFileSync(join(ORT_DIR, 'package.json'), 'utf8')).version;
ort.env.wasm.numThreads = 1;  // the shared CI machine has 2 cores; threads add workers, not accuracy
ort.env.logLevel = 'error';

const TYPED = {
  float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array,
  int8: Int8Array, uint8: Uint8Array,
};

function readTensor(root, record) {
  const Typed = TYPED[record.dtype];
  if (!Typed) throw new Error(`${record.file}: dtype ${record.dtype} unsupported here`);
  const bytes = readFileSync(join(root, record.file));
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new ort.Tensor(record.dtype, new Typed(copy.buffer), record.shape);
}

function toNumbers(data) {
  if (data instanceof BigInt64Array) return Float64Array.from(data, Number);
  return data;
}

function relativeError(actual, expected) {
  const a = toNumbers(actual), b = toNumbers(expected);
  if (a.length !== b.length) throw new Error(`output has ${a.length} values, expected ${b.length}`);
  let num = 0, den = 0, maxAbs = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d; den += b[i] * b[i];
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  return { rel_err: Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30), max_abs_err: maxAbs };
}

async function openSession(modelPath, externalData) {
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  if (externalData && externalData.length) {
    // The browser fetches each chunk (each below 2 GB) and hands it over by the name the graph uses.
    options.externalData = externalData.map((rel) => ({ path: rel.split('/').pop(), data: readFileSync(join(dirname(modelPath), rel.split('/').pop())) }));
  }
  return ort.InferenceSession.create(readFileSync(modelPath), options);
}

async function runOnce(modelPath, inputs, externalData) {
  const session = await openSession(modelPath, externalData);
  try {
    const started = performance.now();
    const outputs = await session.run(inputs);
    return { outputs, ms: performance.now() - started };
  } finally {
    await session.release();
  }
}

// The wasm32 heap holds at most 4 GB: a large graph (an SD-1.5 UNet) can run one row per call where its
// two-row call asks for more. The page does the same when the manifest entry says rows_per_call.
const OUT_OF_MEMORY = /bad_alloc|out of memory|Aborted\(OOM\)/i;

function rowSlice(tensor, start, count) {
  const per = tensor.data.length / tensor.dims[0];
  return new ort.Tensor(tensor.type, tensor.data.slice(start * per, (start + count) * per), [count, ...tensor.dims.slice(1)]);
}

async function runInRows(modelPath, inputs, externalData, outputName, perCall) {
  const rows = Object.values(inputs)[0].dims[0];
  const session = await openSession(modelPath, externalData);
  try {
    const parts = [];
    const started = performance.now();
    for (let start = 0; start < rows; start += perCall) {
      const slice = {};
      for (const [name, t] of Object.entries(inputs)) slice[name] = rowSlice(t, start, Math.min(perCall, rows - start));
      parts.push((await session.run(slice))[outputName].data);
    }
    const ms = performance.now() - started;
    const all = new parts[0].constructor(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    return { data: all, ms };
  } finally {
    await session.release();
  }
}

function entries(manifest) {
  const out = [];
  // unet_full / unet_shallow: the step-cache graphs (edgekit.step_cache), where the bundle offers caching
  for (const name of ['text_encoder', 'unet', 'vae_decoder', 'unet_full', 'unet_shallow']) {
    const comp = manifest.components[name];
    const ver = manifest.verification[name] || {};
    if (!comp) continue;
    if (comp.widths) {
      for (const [w, entry] of Object.entries(comp.widths)) out.push([`${name}@${w}`, entry, (ver.widths || {})[w]]);
    } else out.push([name, comp, ver]);
  }
  return out;
}

// rowsPerCall: feed every checked graph that many rows per call (the caller's retry after an out-of-memory
// answer). Without it a graph runs all its rows in one call, or entry.rows_per_call per call where the entry
// says so; an all-rows call that runs out of the wasm heap ends the check there with `out_of_memory` (the
// heap is not trusted after that) and the labels not yet checked, for the caller to re-run in fresh processes.
async function check(bundle, labels, rowsPerCall) {
  const manifest = JSON.parse(readFileSync(join(bundle, 'manifest.json'), 'utf8'));
  const todo = entries(manifest).filter(([label]) => !labels.length || labels.includes(label));
  if (labels.length && todo.length !== labels.length) throw new Error(`unknown component label(s): ${labels}`);
  const results = [];
  for (const [i, [label, entry, record]] of todo.entries()) {
    if (entry.format !== 'onnx') throw new Error(`${label}: format ${entry.format}, this script runs ONNX only`);
    if (!record || !record.data) throw new Error(`${label}: no verification data in the manifest`);
    const inputs = {};
    for (const [name, rec] of Object.entries(record.data.inputs)) inputs[name] = readTensor(bundle, rec);
    const expected = readTensor(bundle, record.data.expected);
    const external = (entry.external_data || []).map((c) => c.file);
    const outputName = entry.outputs[0].name;
    const rows = Object.values(inputs)[0].dims[0];
    const perCall = Math.min(rows, rowsPerCall || entry.rows_per_call || rows);
    let data, ms;
    try {
      ({ data, ms } = await runInRows(join(bundle, entry.file), inputs, external, outputName, perCall));
    } catch (err) {
      if (perCall < 2 || !OUT_OF_MEMORY.test(err.message)) throw new Error(`${label}: ${err.message}`);
      return { bundle, ort_version: ORT_VERSION, results, passed: results.every((r) => r.passed),
               out_of_memory: { component: label, rows: perCall, error: err.message },
               remaining: todo.slice(i + 1).map(([l]) => l) };
    }
    const err = relativeError(data, expected.data);
    results.push({ component: label, runtime: `onnxruntime-web ${ORT_VERSION} (node, wasm)`, ...err,
                   tolerance: record.tolerance, ms: Math.round(ms), passed: err.rel_err <= record.tolerance,
                   ...(perCall < rows ? { rows_per_call: perCall } : {}) });
  }
  return { bundle, ort_version: ORT_VERSION, results, passed: results.every((r) => r.passed) };
}

async function run(modelPath, requestPath, outDir) {
  const request = JSON.parse(readFileSync(requestPath, 'utf8'));
  const root = dirname(requestPath);
  const inputs = {};
  for (const [name, rec] of Object.entries(request.inputs)) inputs[name] = readTensor(root, rec);
  const { outputs, ms } = await runOnce(modelPath, inputs, request.external_data || []);
  const written = {};
  for (const [name, tensor] of Object.entries(outputs)) {
    const file = join(outDir, `${name}.bin`);
    writeFileSync(file, Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
    written[name] = { file, dtype: tensor.type, shape: tensor.dims };
  }
  return { ort_version: ORT_VERSION, outputs: written, ms };
}

const [mode, ...rest] = process.argv.slice(2);
try {
  let result;
  if (mode === 'check' && rest.length >= 1) {
    const at = rest.indexOf('--rows-per-call');
    const perCall = at >= 0 ? Number(rest.splice(at, 2)[1]) : undefined;
    if (perCall !== undefined && !(perCall >= 1)) throw new Error('--rows-per-call takes a whole number >= 1');
    result = await check(rest[0], rest.slice(1), perCall);
  }
  else if (mode === 'run' && rest.length === 3) result = await run(rest[0], rest[1], rest[2]);
  else throw new Error('usage: ort_web.mjs check BUNDLE [--rows-per-call N] [LABEL...] | run MODEL.onnx REQUEST.json OUT_DIR');
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.passed === false ? 1 : 0);
} catch (err) {
  process.stderr.write(`ort_web.mjs: ${err.message}\n`);
  process.exit(1);
}
