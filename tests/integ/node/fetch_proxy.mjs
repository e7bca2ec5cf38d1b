// Node fetch through an explicit proxy with undici's ProxyAgent.
// usage: node fetch_proxy.mjs PROXY_URL CA_FILE URL [HEADER_NAME HEADER_VALUE]
// PROXY_URL may carry the proxy's token as userinfo (http://nilbox:TOKEN@HOST:PORT,
// what `nilbox proxy` prints); it is passed with ProxyAgent's `token` option.
// Prints {"status", "body"} as JSON; exits 1 on errors.
import { readFileSync } from 'node:fs';
import { fetch, ProxyAgent } from 'undici';

const [proxy, caFile, url, hname, hvalue] = process.argv.slice(2);
const pu = new URL(proxy);
const opts = { uri: pu.origin, requestTls: { ca: readFileSync(caFile) } };
if (pu.username || pu.password) {
  const cred = `${decodeURIComponent(pu.username)}:${decodeURIComponent(pu.password)}`;
  opts.token = `Basic ${Buffer.from(cred).toString('base64')}`;
}
const agent = new ProxyAgent(opts);
const headers = {};
if (hname) headers[hname] = hvalue;
try {
  const out = [];
  // Two requests on the same agent: the second reuses the tunnel (keep-alive).
  for (let i = 0; i < 2; i++) {
    const r = await fetch(url, { dispatcher: agent, headers });
    out.push({ status: r.status, body: await r.text() });
  }
  console.log(JSON.stringify(out));
  await agent.close();
} catch (e) {
  console.error('fetch failed:', e && e.cause ? e.cause : e);
  process.exit(1);
}
