// bench/ui browser side (playwright-core from tests/ui, Debian's chromium):
//   paint URL TOKEN RUNS   first meaningful paint of the VMs screen: a new
//                          browser (empty profile: cold cache) per run; the
//                          time from navigation start to the frame after the
//                          VM table is in the document
//   echo URL TOKEN VM KEYS keystroke echo latency in a terminal tab: from the
//                          keydown in the page to xterm.js having parsed the
//                          echo (and to the next frame), with the legs:
//                          keydown -> ws.send, ws.send -> the echo's message
//                          event, message -> parsed
//   bare URL TOKEN VM KEYS the same on the browser's floor: a page of the
//                          daemon's origin with no React and no xterm.js, a
//                          textarea whose keydown sends the key on the same
//                          pty WebSocket; "parsed" is the echo's message
// Prints one JSON line. NB_BENCH_CHROMIUM_ARGS adds chromium switches
// (space-separated), e.g. --disable-features=DeferRendererTasksAfterInput
// to see what chromium's deferral of tasks after input costs.
import { createRequire } from 'node:module';
const require = createRequire(process.env.NB_UI_TESTS + '/package.json');
const { chromium } = require('playwright-core');

const [mode, url, token, a3, a4] = process.argv.slice(2);
const launch = () => chromium.launch({
  executablePath: process.env.NB_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run',
         ...(process.env.NB_BENCH_CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
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
        document.addEventListener('DOMContentLoaded', () => { window.__dcl = performance.now(); });
        const mo = new MutationObserver(() => {
          if (document.querySelector('table.vms tbody tr')) { mo.disconnect(); done(); }
        });
        mo.observe(document, { childList: true, subtree: true });
      });
      await page.goto(`${url}#token=${token}`);
      await page.waitForFunction(() => window.__fmp !== undefined, null, { timeout: 30000 });
      out.push(await page.evaluate(() => ({
        fmp: window.__fmp,
        dcl: window.__dcl,
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

// The pty socket's binary sends and the first binary message after each
// send (the echo), timed before the page's own handler runs.
function hookSocket() {
  const W = window.WebSocket;
  const send = W.prototype.send;
  W.prototype.send = function (d) {
    if (typeof d !== 'string') { window.__ts = performance.now(); window.__tm = undefined; }
    return send.call(this, d);
  };
  window.WebSocket = class extends W {
    constructor(u, p) {
      super(u, p);
      if (String(u).includes('/pty'))
        this.addEventListener('message', (m) => {
          if (typeof m.data !== 'string' && window.__tm === undefined) window.__tm = performance.now();
        });
    }
  };
}

// The web UI: a terminal tab of VM, xterm.js parsing the echo.
async function uiPage(page, url, token, vm) {
  await page.addInitScript(hookSocket);
  await page.goto(`${url}#token=${token}`);
  await page.getByRole('button', { name: `open a terminal in ${vm}` }).click();
  await page.locator('.term-tab:not([hidden]) .term-status').filter({ hasText: 'connected' }).waitFor({ timeout: 60000 });
  await page.waitForTimeout(2000);
  await page.evaluate(() => {
    const t = document.querySelector('.term-tab:not([hidden]) .term-box').nbTerm;
    const ta = document.querySelector('.term-tab:not([hidden]) .xterm-helper-textarea');
    ta.addEventListener('keydown', () => { window.__t0 = performance.now(); }, true);
    t.onWriteParsed(() => window.__echoed?.());
  });
  return page.locator('.term-tab:not([hidden]) .xterm-helper-textarea');
}

// The browser's floor: a page of the daemon's origin (one of its error pages,
// same CSP, rewritten through DevTools: no React, no xterm.js) with a bare
// textarea whose keydown handler sends the key on the same pty WebSocket
// (the daemon's Origin, Host and token checks as for the UI) and whose
// message handler takes the first binary message after it as the echo.
async function barePage(page, url, token, vm) {
  await page.goto(new URL('/ui/bench-bare-page', url).href);
  await page.setContent('<!doctype html><title>bare</title><textarea aria-label="bare"></textarea>');
  await page.evaluate(([vm, token]) => new Promise((resolve, reject) => {
    const u = new URL(`/v1/vms/${encodeURIComponent(vm)}/pty?rows=40&cols=120&term=xterm-256color`, location.href);
    u.protocol = 'ws:';
    const ws = new WebSocket(u, ['nilbox.v1', `nilbox.token.${token}`]);
    ws.binaryType = 'arraybuffer';
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('the pty WebSocket failed'));
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') return;
      if (window.__tm === undefined) window.__tm = performance.now();
      window.__echoed?.();
      ws.send(JSON.stringify({ ack: m.data.byteLength - 1 })); // the UI acknowledges output too
    };
    document.querySelector('textarea').addEventListener('keydown', (e) => {
      window.__t0 = performance.now();
      const b = e.ctrlKey ? (e.key === 'u' ? 0x15 : -1) : e.key.length === 1 ? e.key.charCodeAt(0) : -1;
      if (b < 0) return;
      e.preventDefault();
      window.__ts = performance.now();
      window.__tm = undefined;
      ws.send(new Uint8Array([0, b]));
    });
  }), [vm, token]);
  await page.waitForTimeout(2000);
  return page.locator('textarea');
}

async function echo(kind, url, token, vm, keys) {
  const browser = await launch();
  try {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    const ta = await (kind === 'bare' ? barePage : uiPage)(page, url, token, vm);
    // The echo: the first output parsed (ui) or received (bare) after a
    // keydown; stamped, then stamped again at the next animation frame.
    await page.evaluate(() => {
      window.__echoed = () => {
        const w = window.__wait;
        if (!w || window.__t0 === undefined) return;
        window.__wait = null;
        const now = performance.now();
        const r = { parsed: now - window.__t0, send: window.__ts - window.__t0,
                    net: window.__tm - window.__ts, parse: now - window.__tm };
        requestAnimationFrame(() => w({ ...r, frame: performance.now() - window.__t0 }));
      };
    });
    await ta.focus();
    const res = [];
    for (let i = 0; i < keys; i++) {
      if (i % 20 === 0) { // an empty line every 20 keys (Ctrl-U), not measured
        await page.keyboard.press('Control+U');
        await page.waitForTimeout(300);
      }
      await page.evaluate(() => {
        window.__t0 = undefined;
        window.__res = new Promise((r) => { window.__wait = r; });
      });
      // The wait is sent first and the key's release only after the echo:
      // no DevTools traffic crosses the measured interval but the key's own
      // (a person's key is released ~100 ms later, not 1 ms as press() does),
      // and a lost echo fails instead of hanging.
      const echoed = page.evaluate(() => Promise.race([window.__res, new Promise((_, no) =>
        setTimeout(() => no(new Error(`no echo within 10 s (keydown seen: ${window.__t0 !== undefined})`)), 10000))]));
      await page.keyboard.down('x');
      res.push(await echoed);
      await page.keyboard.up('x');
    }
    await page.keyboard.press('Control+U');
    return res;
  } finally {
    await browser.close();
  }
}

const r = mode === 'paint' ? await paint(Number(a3 || 5))
  : await echo(mode === 'bare' ? 'bare' : 'ui', url, token, a3, Number(a4 || 100));
console.log(JSON.stringify(r));
