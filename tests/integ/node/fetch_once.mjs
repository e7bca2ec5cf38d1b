// One Node fetch through an explicit proxy (undici's ProxyAgent, default
// timeouts: 10 s to connect, 300 s for the response head).
// usage: node fetch_once.mjs PROXY_URL CA_FILE URL
// PROXY_URL may carry a proxy token as userinfo (http://nilbox:TOKEN@HOST:PORT);
// it is passed with ProxyAgent's `token` option.
// Prints {"status", "statusText", "body"} or {"error", "code"} as JSON.
import { readFileSync } from 'node:fs';
import { fetch, ProxyAgent } from 'undici';

const [proxy, caFile, url] = process.argv.slice(2);
const pu = new URL(proxy);
const opts = { uri: pu.origin, requestTls: { ca: readFileSync(caFile) } };
if (pu.username || pu.password) {
  const cred = `${decodeURIComponent(pu.username)}:${decodeURIComponent(pu.password)}`;
  opts.token = `Basic ${Buffer.from(cred).toString('base64')}`;
}
const agent = new ProxyAgent(opts);
try {
  const r = await fetch(url, { dispatcher: agent });
  console.log(JSON.stringify({ status: r.status, statusText: r.statusText, body: await r.text() }));
} catch (e) {
  const c = e && e.cause ? e.cause : e;
  console.log(JSON.stringify({ error: String(c && c.message), code: c && c.code }));
}
await agent.close();
