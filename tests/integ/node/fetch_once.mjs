// One Node fetch through an explicit proxy (undici's ProxyAgent, default
// timeouts: 10 s to connect, 300 s for the response head).
// usage: node fetch_once.mjs PROXY_URL CA_FILE URL
// Prints {"status", "statusText", "body"} or {"error", "code"} as JSON.
import { readFileSync } from 'node:fs';
import { fetch, ProxyAgent } from 'undici';

const [proxy, caFile, url] = process.argv.slice(2);
const agent = new ProxyAgent({ uri: proxy, requestTls: { ca: readFileSync(caFile) } });
try {
  const r = await fetch(url, { dispatcher: agent });
  console.log(JSON.stringify({ status: r.status, statusText: r.statusText, body: await r.text() }));
} catch (e) {
  const c = e && e.cause ? e.cause : e;
  console.log(JSON.stringify({ error: String(c && c.message), code: c && c.code }));
}
await agent.close();
