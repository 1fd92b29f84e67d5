// Run edgekit ONNX graphs in onnxruntime-web (wasm) under Node, the runtime a browser tab uses.
//
// EDGEKIT_ORT_WEB names the onnxruntime-web package directory to load (edgekit.resources finds it: the
// checkout's node_modules, EDGEKIT_NODE_MODULES, or edgekit's own copy); edgekit.runtime.runners sets it.
//
//   node ort_web.mjs check BUNDLE [LABEL...]
//       For every ONNX component of BUNDLE/manifest.json (or only LABELs such as "unet@1.00"), load
//       the graph the way the web demo does (external-data chunks joined through the externalData
//       option), feed the stored verification inputs and compare with the stored torch outputs.
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
  const started = performance.now();
  const outputs = await session.run(inputs);
  const ms = performance.now() - started;
  await session.release();
  return { outputs, ms };
}

function entries(manifest) {
  const out = [];
  for (const name of ['text_encoder', 'unet', 'vae_decoder']) {
    const comp = manifest.components[name];
    const ver = manifest.verification[name] || {};
    if (!comp) continue;
    if (comp.widths) {
      for (const [w, entry] of Object.entries(comp.widths)) out.push([`${name}@${w}`, entry, (ver.widths || {})[w]]);
    } else out.push([name, comp, ver]);
  }
  return out;
}

async function check(bundle, labels) {
  const manifest = JSON.parse(readFileSync(join(bundle, 'manifest.json'), 'utf8'));
  const results = [];
  for (const [label, entry, record] of entries(manifest)) {
    if (labels.length && !labels.includes(label)) continue;
    if (entry.format !== 'onnx') throw new Error(`${label}: format ${entry.format}, this script runs ONNX only`);
    if (!record || !record.data) throw new Error(`${label}: no verification data in the manifest`);
    const inputs = {};
    for (const [name, rec] of Object.entries(record.data.inputs)) inputs[name] = readTensor(bundle, rec);
    const expected = readTensor(bundle, record.data.expected);
    const external = (entry.external_data || []).map((c) => c.file);
    const { outputs, ms } = await runOnce(join(bundle, entry.file), inputs, external);
    const actual = outputs[entry.outputs[0].name];
    const err = relativeError(actual.data, expected.data);
    results.push({ component: label, runtime: `onnxruntime-web ${ORT_VERSION} (node, wasm)`, ...err,
                   tolerance: record.tolerance, ms: Math.round(ms), passed: err.rel_err <= record.tolerance });
  }
  if (labels.length && results.length !== labels.length) throw new Error(`unknown component label(s): ${labels}`);
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
  if (mode === 'check' && rest.length >= 1) result = await check(rest[0], rest.slice(1));
  else if (mode === 'run' && rest.length === 3) result = await run(rest[0], rest[1], rest[2]);
  else throw new Error('usage: ort_web.mjs check BUNDLE [LABEL...] | run MODEL.onnx REQUEST.json OUT_DIR');
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.passed === false ? 1 : 0);
} catch (err) {
  process.stderr.write(`ort_web.mjs: ${err.message}\n`);
  process.exit(1);
}
