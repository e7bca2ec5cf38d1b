// bench/ui browser side (playwright-core from tests/ui, Debian's chromium):
//   paint URL TOKEN RUNS   first meaningful paint of the VMs screen: a new
//                          browser (empty profile: cold cache) per run; the
//                          time from navigation start to the frame after the
//                          VM table is in the document
//   echo URL TOKEN VM KEYS keystroke echo latency in a terminal tab: from the
//                          keydown in the page to xterm.js having parsed the
//                          echo (and to the next frame)
// Prints one JSON line.
import { createRequire } from 'node:module';
const require = createRequire(process.env.NB_UI_TESTS + '/package.json');
const { chromium } = require('playwright-core');

const [mode, url, token, a3, a4] = process.argv.slice(2);
const launch = () => chromium.launch({
  executablePath: process.env.NB_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run'],
});

async function paint(runs) {
  const out = [];
  for (let i = 0; i < runs; i++) {
    const browser = await launch();
    try {
      const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
      // Installed before the page's own scripts (through DevTools, not inline: the CSP allows none).
      await page.addInitScript(() => {
        const done = () => requestAnimationFrame(() => { window.__fmp = performance.now(); });
        const mo = new MutationObserver(() => {
          if (document.querySelector('table.vms tbody tr')) { mo.disconnect(); done(); }
        });
        mo.observe(document, { childList: true, subtree: true });
      });
      await page.goto(`${url}#token=${token}`);
      await page.waitForFunction(() => window.__fmp !== undefined, null, { timeout: 30000 });
      out.push(await page.evaluate(() => ({
        fmp: window.__fmp,
        fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null,
        transfer: performance.getEntriesByType('resource').reduce((n, r) => n + (r.transferSize || 0), 0),
        cached: performance.getEntriesByType('resource').filter((r) => r.transferSize === 0).length,
      })));
    } finally {
      await browser.close();
    }
  }
  return out;
}

async function echo(vm, keys) {
  const browser = await launch();
  try {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    await page.goto(`${url}#token=${token}`);
    await page.getByRole('button', { name: `open a terminal in ${vm}` }).click();
    await page.locator('.term-tab:not([hidden]) .term-status').filter({ hasText: 'connected' }).waitFor({ timeout: 60000 });
    const ta = page.locator('.term-tab:not([hidden]) .xterm-helper-textarea');
    await page.waitForTimeout(2000);
    await page.evaluate(() => {
      const t = document.querySelector('.term-tab:not([hidden]) .term-box').nbTerm;
      const ta = document.querySelector('.term-tab:not([hidden]) .xterm-helper-textarea');
      ta.addEventListener('keydown', () => { window.__t0 = performance.now(); }, true);
      t.onWriteParsed(() => {
        const w = window.__wait;
        if (!w || window.__t0 === undefined) return;
        window.__wait = null;
        const parsed = performance.now() - window.__t0;
        requestAnimationFrame(() => w({ parsed, frame: performance.now() - window.__t0 }));
      });
    });
    await ta.focus();
    const res = [];
    for (let i = 0; i < keys; i++) {
      if (i % 20 === 0) { // an empty line every 20 keys (Ctrl-U), not measured
        await page.keyboard.press('Control+U');
        await page.waitForTimeout(300);
      }
      // The waiter is in place before the key goes out (one round trip
      // first), and a lost echo fails instead of hanging.
      await page.evaluate(() => {
        window.__t0 = undefined;
        window.__res = new Promise((r) => { window.__wait = r; });
      });
      await page.keyboard.press('x');
      res.push(await page.evaluate(() => Promise.race([window.__res, new Promise((_, no) =>
        setTimeout(() => no(new Error(`no echo within 10 s (keydown seen: ${window.__t0 !== undefined})`)), 10000))])));
    }
    await page.keyboard.press('Control+U');
    return res;
  } finally {
    await browser.close();
  }
}

const r = mode === 'paint' ? await paint(Number(a3 || 5)) : await echo(a3, Number(a4 || 100));
console.log(JSON.stringify(r));
