// Loads the coordinator's status page in headless Chromium (Debian's, driven by playwright-core),
// signs in with the token in STATUS_TOKEN when the page asks for one (once: the cookie keeps it),
// and waits until the count of finished trials grows. Prints `ready N` once it has read the
// first count, then what it saw as one JSON line.
//
// Usage: node status_page.cjs URL SCREENSHOT_PATH [TIMEOUT_MS]
// playwright-core is found through NODE_PATH (scripts/browser-deps.sh installs it into
// .deps/node); the browser is CHROMIUM or /usr/bin/chromium.
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
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", e => errors.push(String(e)));
    page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url);
    if (await page.$("#sign-in")) {
      await page.fill("#token", process.env.STATUS_TOKEN || "");
      await Promise.all([page.waitForNavigation(), page.click("#sign-in")]);
      // Signed in once: a reload finds the cookie and goes straight to the status.
      await page.reload();
    }
    const finished = () => page.$eval("#finished", e => Number(e.textContent));
    await page.waitForFunction(() => /^\d+$/.test(document.getElementById("finished").textContent),
      null, { timeout: Number(timeout) });
    const first = await finished();
    // The test finishes trials only after this line, so the count must grow from here.
    console.log(`ready ${first}`);
    await page.waitForFunction(n => Number(document.getElementById("finished").textContent) > n,
      first, { timeout: Number(timeout), polling: 100 });
    const later = await finished();
    const log = await page.$$eval("#log li", lis => lis.map(li => Number(li.dataset.finished)));
    const plotted = await page.$$eval("#plot polyline", ls => ls.length);
    const sweeps = await page.$$eval("#sweeps h2", hs => hs.map(h => h.textContent));
    await page.screenshot({ path: screenshot, fullPage: true });
    const cookies = await page.context().cookies();
    const cookie = cookies.find(c => c.name === "convsweep_token");
    const signedIn = !!cookie && cookie.httpOnly && cookie.sameSite === "Strict";
    console.log(JSON.stringify({ first, later, log, plotted, sweeps, errors, signedIn }));
  } finally {
    await browser.close();
  }
}

main().catch(e => { console.error(String(e && e.stack || e)); process.exit(1); });
