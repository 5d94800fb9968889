// Loads the coordinator's status page (no token) in headless Chromium (Debian's, driven by
// playwright-core) and watches its learning curves: prints `ready {...}` once the running
// trials' curves are drawn (how many lines, the longest curve's points, the configurations'
// curves and bands, the page's own drawing time), then waits until a running trial's curve
// grows and prints what it saw as one JSON line.
//
// Usage: node curves.cjs URL SCREENSHOT_PATH [TIMEOUT_MS]
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, screenshot, timeout = "60000"] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 1400 } });
    const errors = [];
    page.on("pageerror", e => errors.push(String(e)));
    page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url);
    const longest = () => page.$$eval("#running-curves g[data-points]",
      gs => Math.max(0, ...gs.map(g => Number(g.dataset.points))));
    await page.waitForFunction(() => document.querySelectorAll("#running-curves g[data-points]").length > 0,
      null, { timeout: Number(timeout) });
    const seen = async () => ({
      running: await page.$$eval("#running-curves polyline.curve", ls => ls.length),
      longest: await longest(),
      configs: await page.$$eval("#config-curves polyline.curve", ls => ls.length),
      bands: await page.$$eval("#config-curves polygon", ps => ps.length),
      drawMs: Number(await page.$eval("#running-curves", s => s.dataset.drawMs)),
    });
    const first = await seen();
    // The test reports more epochs only after this line, so the curves must grow from here.
    console.log(`ready ${JSON.stringify(first)}`);
    await page.waitForFunction(n => Math.max(0, ...[...document.querySelectorAll("#running-curves g[data-points]")]
      .map(g => Number(g.dataset.points))) > n, first.longest, { timeout: Number(timeout), polling: 100 });
    const later = await seen();
    const maxDrawMs = Number(await page.$eval("#running-curves", s => s.dataset.maxDrawMs));
    const note = await page.$eval("#curves-note", e => e.textContent);
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ first, later, maxDrawMs, note, errors }));
  } finally {
    await browser.close();
  }
}

main().catch(e => { console.error(String(e && e.stack || e)); process.exit(1); });
