// Loads the browser demo at URL (its query pins the row, e.g. ?steps=8&width=1.00&cache=2) in headless Debian
// Chromium (wasm, no adapter) through playwright-core, generates PROMPT at SEED, and prints one JSON line
// {status, error, decision, cache, drawnOn, shown, image, console}:
//   node tests/web_page_image.mjs URL USER_DATA_DIR PROMPT SEED
import { generateOn, launchChromium, openPage } from "./chromium.mjs";

const [url, userDataDir, prompt, seed] = process.argv.slice(2);
const context = await launchChromium(userDataDir);
const messages = [];
try {
  const page = await openPage(context, messages);
  await page.goto(url);
  await generateOn(page, prompt, seed, 300000);
  const got = await page.evaluate(() => ({ status: document.body.dataset.status, error: document.getElementById("error").textContent,
    decision: window.edgekitDemo.decision, cache: window.edgekitDemo.cache, drawnOn: window.edgekitDemo.drawnOn,
    shown: document.getElementById("timing").textContent, image: window.edgekitDemo.image }));
  console.log(JSON.stringify({ ...got, console: messages }));
} finally {
  await context.close();
}
