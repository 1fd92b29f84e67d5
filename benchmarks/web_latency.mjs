// Times the browser demo in headless Debian Chromium: node benchmarks/web_latency.mjs URL PROFILE_DIR STEPS WIDTH REPEATS
// Pins the row through the page address, generates REPEATS+1 times (the first warms the sessions up) and
// prints {"provider", "total_ms": [...], "unet_ms": [...]} for the timed runs.
import { chromium } from "playwright-core";

const [url, profile, steps, width, repeats, threads = "0"] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await context.newPage();
  await page.goto(`${url}?steps=${steps}&width=${width}&threads=${threads}`);
  await page.waitForSelector("body[data-status=ready]", { timeout: 60000 });
  const total = [], unet = [];
  for (let i = 0; i <= Number(repeats); i++) {
    await page.click("#generate");
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.status) && !document.getElementById("generate").disabled, null, { timeout: 600000 });
    const r = await page.evaluate(() => ({ status: document.body.dataset.status, timing: window.edgekitDemo.timing, error: document.getElementById("error").textContent }));
    if (r.status !== "done") throw new Error(r.error);
    if (i > 0) { total.push(r.timing.total_ms); unet.push(r.timing.unet_ms); }
  }
  const provider = await page.evaluate(() => `${window.edgekitDemo.provider}, ${window.edgekitDemo.threads} thread(s)`);
  console.log(JSON.stringify({ provider, total_ms: total, unet_ms: unet }));
} finally {
  await context.close();
}
