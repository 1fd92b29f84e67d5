// Drives the browser demo in headless Debian Chromium with a WebGPU adapter (SwiftShader) through playwright-core:
//   node tests/web_webgpu_e2e.mjs URL USER_DATA_DIR SCREENSHOT_DIR PROMPT SEED STEPS WIDTH[,WIDTH...] [EP_QUERY...]
// For each width: one page load per execution provider (?ep=wasm, ?ep=webgpu), the same prompt, seed and
// pinned row (?steps=&width=), one image each; the WebGPU canvas is saved as SCREENSHOT_DIR/webgpu_w<width>.png.
// Each further EP_QUERY (e.g. "ep=cuda") is loaded once more with no generation: what the page says about it.
// Prints one JSON line: {runs: [{ep, width, status, error, providers, notes, drawnOn, image, timing, text}],
// queries: [{query, status, providers, notes, text}], console}.
import { generateOn, launchChromium, openPage } from "./chromium.mjs";

const [url, userDataDir, shotDir, prompt, seed, steps, widths, ...queries] = process.argv.slice(2);
const context = await launchChromium(userDataDir, { webgpu: true });
const messages = [];
const state = (page) => page.evaluate(() => ({
  status: document.body.dataset.status, error: document.getElementById("error").textContent,
  providers: window.edgekitDemo.providers, notes: window.edgekitDemo.providerNotes, askedEp: window.edgekitDemo.askedEp,
  adapter: window.edgekitDemo.adapter, selfCheck: window.edgekitDemo.selfCheck,
  text: document.getElementById("providers").textContent }));
try {
  const page = await openPage(context, messages);
  const runs = [];
  for (const width of widths.split(",").filter(Boolean)) {
    for (const ep of ["wasm", "webgpu"]) {
      await page.goto(`${url}?ep=${ep}&steps=${steps}&width=${width}`);
      await generateOn(page, prompt, seed, 600000);
      const got = await state(page);
      const drawn = await page.evaluate(() => ({ image: window.edgekitDemo.image, drawnOn: window.edgekitDemo.drawnOn,
        timing: window.edgekitDemo.timing, shown: document.getElementById("timing").textContent, decision: window.edgekitDemo.decision,
        latency: { ep: window.edgekitDemo.provider, ratio: window.edgekitDemo.latency.ratio, runs: window.edgekitDemo.latency.runs.length,
          text: document.getElementById("latency-ratio").textContent } }));
      if (ep === "webgpu") await page.locator("#image").screenshot({ path: `${shotDir}/webgpu_w${width}.png` });
      runs.push({ ep, width, ...got, ...drawn });
    }
  }
  const answers = [];
  for (const query of queries) {
    await page.goto(`${url}?${query}`);
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.status), null, { timeout: 600000 });
    answers.push({ query, ...(await state(page)) });
  }
  console.log(JSON.stringify({ runs, queries: answers, console: messages }));
} finally {
  await context.close();
}
