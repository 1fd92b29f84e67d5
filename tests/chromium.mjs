// Headless Debian Chromium for the browser tests, through playwright-core (no browser download): the flags this
// closed-network machine needs, and with `webgpu` a SwiftShader WebGPU adapter.
import { chromium } from "playwright-core";

const QUIET = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const WEBGPU = ["--headless=new", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader"];

export function launchChromium(userDataDir, { webgpu = false } = {}) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.EDGEKIT_CHROMIUM || "/usr/bin/chromium", headless: true,
    args: webgpu ? [...QUIET, ...WEBGPU] : [...QUIET, "--disable-gpu"],
  });
}

// A new page of `context` whose console lines and page errors are appended to `messages`.
export async function openPage(context, messages) {
  const page = await context.newPage();
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  return page;
}

// On a loaded demo page: generate PROMPT at SEED and wait until the page says done (or error).
export async function generateOn(page, prompt, seed, timeout) {
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.status), null, { timeout });
  await page.fill("#prompt", prompt);
  await page.fill("#seed", seed);
  await page.click("#generate");
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.status), null, { timeout });
}
