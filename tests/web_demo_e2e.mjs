// Drives the browser demo in real headless Debian Chromium through playwright-core (no browser download):
//   node tests/web_demo_e2e.mjs URL USER_DATA_DIR PROMPT SEED
// Generates PROMPT at the policy's choice for a cool, charging device, then forces "critical" thermal and
// generates again; records the page's own latency rescale (runs timed, ratio shown, rows the policy reads)
// before and after each run; then loads ?ep=webgpu in this adapter-less browser. Prints one JSON line:
// {apis, initial, before, forced, after, noAdapter, console}.
import { launchChromium, openPage } from "./chromium.mjs";

const [url, userDataDir, prompt, seed] = process.argv.slice(2);
const context = await launchChromium(userDataDir);
const messages = [];
try {
  const page = await openPage(context, messages);
  await page.goto(url);
  await page.waitForSelector("body[data-status=ready]", { timeout: 60000 });
  const apis = await page.evaluate(() => ({ battery: typeof navigator.getBattery === "function",
    computePressure: "PressureObserver" in self, webgpu: !!navigator.gpu, crossOriginIsolated: self.crossOriginIsolated,
    provider: window.edgekitDemo.provider }));
  await page.check("#battery-override");
  await page.check("#charging");
  await page.fill("#battery-level", "100");
  await page.selectOption("#thermal", "nominal");
  await page.fill("#prompt", prompt);
  await page.fill("#seed", seed);
  // What the page shows about this tab's speed versus the table, and the latencies the policy reads.
  const latency = () => page.evaluate(() => ({ text: document.getElementById("latency-ratio").textContent,
    ratio: window.edgekitDemo.latency.ratio, runs: window.edgekitDemo.latency.runs,
    rows: window.edgekitDemo.policy.rows.map((r) => ({ width: r.width, steps: r.steps, latencyMs: r.latencyMs })),
    tableRows: window.edgekitDemo.policy.tableRows.map((r) => ({ width: r.width, steps: r.steps, latencyMs: r.latencyMs })) }));
  const initial = await latency();

  async function run() {
    const steps = [];
    const decision = await page.evaluate(() => window.edgekitDemo.decision);
    await page.click("#generate");
    // record the per-step progress the page shows while it works
    for (;;) {
      const s = await page.evaluate(() => [document.body.dataset.status, document.getElementById("step").textContent]);
      if (steps.at(-1) !== s[1]) steps.push(s[1]);
      if (s[0] === "done" || s[0] === "error") break;
      await page.waitForTimeout(20);
    }
    const result = await page.evaluate(() => ({ status: document.body.dataset.status, error: document.getElementById("error").textContent,
      used: window.edgekitDemo.decision, progress: window.edgekitDemo.progress, image: window.edgekitDemo.image, timing: window.edgekitDemo.timing,
      shown: document.getElementById("decision").textContent }));
    return { decision, steps, ...result, latency: await latency() };
  }
  const before = await run();
  await page.selectOption("#thermal", "critical");
  const forced = await page.evaluate(() => ({ decision: window.edgekitDemo.decision, shown: document.getElementById("decision").textContent }));
  const after = await run();
  // This Chromium has no WebGPU adapter (--disable-gpu, no --enable-unsafe-webgpu): ask for WebGPU anyway.
  await page.goto(`${url}?ep=webgpu`);
  await page.waitForSelector("body[data-status=ready]", { timeout: 60000 });
  const noAdapter = await page.evaluate(() => ({ providers: window.edgekitDemo.providers, notes: window.edgekitDemo.providerNotes,
    text: document.getElementById("providers").textContent, adapter: window.edgekitDemo.adapter }));
  console.log(JSON.stringify({ apis, initial, before, forced, after, noAdapter, console: messages }));
} finally {
  await context.close();
}
