// Run edgekit ONNX graphs in onnxruntime-web inside headless Chromium (driven by playwright-core, no browser
// download), on the wasm and the WebGPU execution providers: what a browser tab runs, not a Node stand-in.
// edgekit.runtime.browser starts it and sets:
//   EDGEKIT_CHROMIUM    the Chromium executable          EDGEKIT_PLAYWRIGHT  the playwright-core package directory
//   EDGEKIT_ORT_DIST    onnxruntime-web's dist directory EDGEKIT_WEB_DIR     edgekit's web page directory (selfcheck.js)
//
//   node browser.mjs check BUNDLE [--providers wasm,webgpu] [--labels unet@1.00,...] [--adapter swiftshader|gpu]
//       Every ONNX component of BUNDLE/manifest.json (or the labels given) on every provider: the stored
//       verification inputs against the stored torch outputs, through the page's own selfcheck.js.
//   node browser.mjs graph DIR MODEL.onnx REQUEST.json OUT_DIR [--providers ...] [--adapter ...]
//       REQUEST: {"inputs": {name: {file, dtype, shape}}} relative to DIR; every graph output of every
//       provider is written to OUT_DIR/<provider>/<output>.bin (float32) with OUT_DIR/<provider>/outputs.json.
// The files are served from an intercepted http://localhost/ origin (a secure context, so WebGPU exists) with
// no server. Prints one JSON object on stdout; exit code 1 on a failure to run (message on stderr).
import { mkdirSync, readFileSync, writeFileSync, existsSync, statSync } from "node:fs";
import { join, normalize, extname } from "node:path";
import { pathToFileURL } from "node:url";

const need = (name) => {
  if (!process.env[name]) { process.stderr.write(`browser.mjs: ${name} is not set\n`); process.exit(1); }
  return process.env[name];
};
const { chromium } = await import(pathToFileURL(join(need("EDGEKIT_PLAYWRIGHT"), "index.mjs")).href);
const CHROMIUM = need("EDGEKIT_CHROMIUM"), ORT_DIST = need("EDGEKIT_ORT_DIST"), WEB_DIR = need("EDGEKIT_WEB_DIR");
const ORIGIN = "http://localhost";

// Headless Chromium with a WebGPU adapter: SwiftShader (Vulkan on the CPU) where the machine has no GPU, so
// the check runs the same everywhere; `--adapter gpu` lets Chromium pick the machine's own GPU instead.
export function chromiumArgs(adapter) {
  const base = ["--no-sandbox", "--headless=new", "--enable-unsafe-webgpu", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-quic"];
  return adapter === "gpu" ? base
    : [...base, "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader"];
}

const TYPES = { ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
  ".html": "text/html" };
const HOST_PAGE = `<!doctype html><meta charset="utf-8"><title>edgekit check</title><script type="module">
import * as ort from "/ort/ort.all.min.mjs";
import * as selfcheck from "/web/selfcheck.js";
ort.env.wasm.wasmPaths = "/ort/";
ort.env.wasm.numThreads = 1;
ort.env.logLevel = "error";
window.ort = ort; window.selfcheck = selfcheck; window.ready = true;
</script>`;

function serveFrom(roots) {
  return async (route) => {
    const url = new URL(route.request().url());
    if (url.pathname === "/check.html") return route.fulfill({ status: 200, contentType: "text/html", body: HOST_PAGE });
    for (const [prefix, dir] of Object.entries(roots)) {
      if (!url.pathname.startsWith(prefix)) continue;
      const rel = normalize(decodeURIComponent(url.pathname.slice(prefix.length)));
      if (rel.startsWith("..")) break;
      const path = join(dir, rel);
      if (!existsSync(path) || !statSync(path).isFile()) break;
      return route.fulfill({ status: 200, body: readFileSync(path), contentType: TYPES[extname(path)] ?? "application/octet-stream" });
    }
    return route.fulfill({ status: 404, body: "not found" });
  };
}

async function openPage(roots, adapter) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: chromiumArgs(adapter) });
  const page = await browser.newPage();
  const messages = [];
  page.on("console", (m) => { if (m.type() === "error") messages.push(m.text()); });
  page.on("pageerror", (e) => messages.push(e.message));
  await page.route(`${ORIGIN}/**`, serveFrom(roots));
  await page.goto(`${ORIGIN}/check.html`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 60000 });
  const info = await page.evaluate(async () => {
    const a = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
    return { key: await window.selfcheck.adapterKey(a), version: navigator.userAgent.match(/Chrome\/([\d.]+)/)?.[1] ?? null,
      f16: !!a?.features?.has("shader-f16") };
  });
  return { browser, page, info, messages };
}

function labelsOf(manifest) {
  const out = [];
  for (const [name, comp] of Object.entries(manifest.components)) {
    const ver = manifest.verification[name] || {};
    if (comp.widths) for (const [w, entry] of Object.entries(comp.widths)) out.push([`${name}@${w}`, entry, (ver.widths || {})[w]]);
    else out.push([name, comp, ver]);
  }
  return out;
}

async function check(bundle, providers, labels, adapter) {
  const manifest = JSON.parse(readFileSync(join(bundle, "manifest.json"), "utf8")
    .replace(/([:\[,]\s*)-?(?:Infinity|NaN)(?=\s*[,\]}])/g, "$1null"));
  const todo = labelsOf(manifest).filter(([label, entry]) => entry.format === "onnx" && (!labels.length || labels.includes(label)));
  const unknown = labels.filter((l) => !todo.some(([label]) => label === l));
  if (unknown.length) throw new Error(`unknown component label(s): ${unknown.join(", ")}`);
  const { browser, page, info, messages } = await openPage({ "/bundle/": bundle, "/ort/": ORT_DIST, "/web/": WEB_DIR }, adapter);
  try {
    const results = [];
    for (const [label, entry, record] of todo) {
      if (!record?.data) { results.push({ component: label, skipped: "no verification data in the manifest" }); continue; }
      for (const ep of providers) {
        if (ep === "webgpu" && !info.key) { results.push({ component: label, provider: ep, passed: false, error: "no WebGPU adapter in this browser" }); continue; }
        const r = await page.evaluate(([e, rec, p]) => window.selfcheck.checkOnProvider(window.ort, "/bundle/", e, rec, p), [entry, record, ep]);
        results.push({ component: label, ...r });
      }
    }
    return { adapter: info.key, chromium: info.version, shader_f16: info.f16, results, console_errors: messages.slice(0, 20) };
  } finally {
    await browser.close();
  }
}

async function graph(dir, model, requestPath, outDir, providers, adapter) {
  const request = JSON.parse(readFileSync(requestPath, "utf8"));
  const { browser, page, info } = await openPage({ "/graph/": dir, "/ort/": ORT_DIST, "/web/": WEB_DIR }, adapter);
  try {
    const answer = {};
    for (const ep of providers) {
      const got = await page.evaluate(async ([m, inputs, p]) => {
        const ort = window.ort, sc = window.selfcheck;
        const feeds = {};
        for (const [name, rec] of Object.entries(inputs)) feeds[name] = await sc.loadTensor(ort, "/graph/", rec);
        try {
          const session = await ort.InferenceSession.create(`/graph/${m}`, { executionProviders: [p] });
          const t0 = performance.now();
          const out = await session.run(feeds);
          const ms = performance.now() - t0;
          const outputs = {};
          for (const [name, t] of Object.entries(out)) outputs[name] = { dims: t.dims, type: t.type, data: Array.from(t.data, Number) };
          await session.release();
          return { ms, outputs };
        } catch (err) { return { error: String(err?.message ?? err).split("\n")[0] }; }
      }, [model, request.inputs, ep]);
      if (got.error) { answer[ep] = { error: got.error }; continue; }
      const epDir = join(outDir, ep);
      mkdirSync(epDir, { recursive: true });
      const listed = {};
      for (const [name, t] of Object.entries(got.outputs)) {
        const file = `${name.replace(/[^A-Za-z0-9_.-]/g, "_")}.bin`;
        writeFileSync(join(epDir, file), Buffer.from(Float32Array.from(t.data).buffer));
        listed[name] = { file: `${ep}/${file}`, dtype: "float32", shape: t.dims, type: t.type };
      }
      writeFileSync(join(epDir, "outputs.json"), JSON.stringify(listed));
      answer[ep] = { ms: got.ms, outputs: Object.keys(listed).length };
    }
    return { adapter: info.key, chromium: info.version, providers: answer };
  } finally {
    await browser.close();
  }
}

function option(args, name, fallback) {
  const at = args.indexOf(name);
  return at >= 0 ? args.splice(at, 2)[1] : fallback;
}

const [mode, ...rest] = process.argv.slice(2);
try {
  const providers = option(rest, "--providers", "wasm,webgpu").split(",").filter(Boolean);
  const labels = option(rest, "--labels", "").split(",").filter(Boolean);
  const adapter = option(rest, "--adapter", "swiftshader");
  let result;
  if (mode === "check" && rest.length === 1) result = await check(rest[0], providers, labels, adapter);
  else if (mode === "graph" && rest.length === 4) result = await graph(...rest, providers, adapter);
  else throw new Error("usage: browser.mjs check BUNDLE [--providers ..] [--labels ..] | graph DIR MODEL REQUEST OUT_DIR [--providers ..]");
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (err) {
  process.stderr.write(`browser.mjs: ${err.message}\n`);
  process.exit(1);
}
