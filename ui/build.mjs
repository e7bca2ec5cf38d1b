// Bundles the web UI with esbuild into OUTDIR (default ui/dist):
// index.html, boot.js, app.js, app.css and chunk-*.js. boot.js (a few
// hundred bytes) runs first and starts the VMs screen's API requests while
// app.js (React and the screens) is still being fetched and compiled. The
// terminal (xterm.js, about half the code) and the screens other than VMs
// are split off and loaded when first shown, so the VMs screen paints
// sooner (bench/ui); the chunks boot.js and app.js import are preloaded
// from index.html. No source maps, no inline script (the daemon's
// CSP allows only 'self'). Run at build time by scripts/ui-embed.py;
// nothing is fetched here (node_modules comes from `npm ci` at setup).
import * as esbuild from 'esbuild';
import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, 'dist');
mkdirSync(out, { recursive: true });
const res = await esbuild.build({
  entryPoints: { boot: join(here, 'src/boot.ts'), app: join(here, 'src/main.tsx') },
  bundle: true,
  splitting: true,
  chunkNames: 'chunk-[hash]',
  metafile: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  outdir: out,
  define: { 'process.env.NODE_ENV': '"production"' },
  legalComments: 'none',
  logLevel: 'warning',
  jsx: 'automatic',
});
const entries = Object.values(res.metafile.outputs).filter((o) => o.entryPoint);
const entry = (name) => entries.find((o) => o.entryPoint.endsWith(name));
const preload = [...new Set([entry('src/boot.ts'), entry('src/main.tsx')]
  .flatMap((o) => o.imports.filter((i) => i.kind === 'import-statement').map((i) => basename(i.path))))]
  .map((f) => `<link rel="modulepreload" href="/ui/${f}">\n`).join('');
writeFileSync(join(out, 'index.html'), `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nilbox</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/app.css">
${preload}<script type="module" src="/ui/boot.js"></script>
<script type="module" src="/ui/app.js"></script>
</head>
<body>
<div id="root"><main><h1>nilbox</h1><p>Loading…</p></main></div>
</body>
</html>
`);
