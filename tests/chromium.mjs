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
