// Opens a running `tensorboard --logdir` in headless Chromium (Debian's, driven by
// playwright-core), waits until its scalars dashboard shows a chart for each given tag (its
// tag filter set to them) and its HPARAMS dashboard the given names (text inside TensorBoard's
// shadow DOM included), screenshots both, and prints how often each was seen as one JSON line.
//
// Usage: node screenshot.cjs URL OUT_DIR '{"scalars": [TAG...], "hparams": [NAME...]}' [TIMEOUT_MS]
// playwright-core is found through NODE_PATH (scripts/browser-deps.sh installs it into
// .deps/node); the browser is CHROMIUM or /usr/bin/chromium.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, out, wantJson, timeout = "90000"] = process.argv.slice(2);
  const want = JSON.parse(wantJson);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const seen = { scalars: {}, hparams: {} };
    // Scalars, the tag filter set to the tags asked for: a "Tags matching" group with a chart
    // per tag, titled by it. Locators pierce the dashboards' shadow roots.
    const filter = encodeURIComponent(`^(${want.scalars.join("|")})$`);
    await page.goto(`${url}/?darkMode=false#scalars&tagFilter=${filter}`);
    for (const t of want.scalars) {
      await page.getByText(t, { exact: true }).first().waitFor({ timeout: Number(timeout) });
    }
    await page.waitForTimeout(3000); // the charts draw their lines
    for (const t of want.scalars) seen.scalars[t] = await page.getByText(t, { exact: true }).count();
    await page.screenshot({ path: `${out}/tensorboard-scalars.png` });
    // HPARAMS: its table has a column per hyper-parameter and metric.
    await page.goto(`${url}/?darkMode=false#hparams`);
    await page.getByText(want.hparams[0], { exact: true }).first().waitFor({ timeout: Number(timeout) });
    await page.waitForTimeout(3000);
    for (const h of want.hparams) seen.hparams[h] = await page.getByText(h, { exact: true }).count();
    await page.screenshot({ path: `${out}/tensorboard-hparams.png` });
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
}

main().catch(e => { console.error(String(e && e.stack || e)); process.exit(1); });
