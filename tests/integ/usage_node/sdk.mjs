// The real OpenAI and Anthropic SDKs through `nilbox proxy` (undici ProxyAgent
// as their fetch), for tests/integ/test_usage.py and bench/usage.
// usage: node sdk.mjs PROXY_URL CA_FILE SCENARIO [N] [DELAY_MS]
// Scenarios: openai-json, openai-stream, openai-stream-usage, anthropic-json,
// anthropic-stream, concurrent-openai (N parallel streams), many-openai-json (N in a row).
// Prints {results: one object per request ({ok, status, usage, chunks, text, ...}),
// refusals: the 429 bodies and Retry-After values}.
import { readFileSync } from 'node:fs';
import { fetch, ProxyAgent } from 'undici';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const [proxy, caFile, scenario, nArg, delayArg] = process.argv.slice(2);
const n = Number(nArg || 1);
const delay = String(delayArg || 0);
const pu = new URL(proxy);
const opts = { uri: pu.origin, requestTls: { ca: readFileSync(caFile) }, connections: 64 };
if (pu.username || pu.password) {
  const cred = `${decodeURIComponent(pu.username)}:${decodeURIComponent(pu.password)}`;
  opts.token = `Basic ${Buffer.from(cred).toString('base64')}`;
}
const agent = new ProxyAgent(opts);
// The bodies of refusals as the agent would read them (the SDK keeps only
// their "error" field).
const refusals = [];
const viaProxy = async (url, init) => {
  const r = await fetch(url, { ...init, dispatcher: agent });
  if (r.status === 429) refusals.push({ body: JSON.parse(await r.clone().text()),
                                        retryAfter: r.headers.get('retry-after') });
  return r;
};
const common = { fetch: viaProxy, maxRetries: 0, defaultHeaders: { 'x-fake-delay-ms': delay } };
// The keys are placeholders: nilbox injects the real ones (the test binds them).
const openai = new OpenAI({ apiKey: 'OPENAI_API_KEY', ...common });
const anthropic = new Anthropic({ apiKey: 'ANTHROPIC_API_KEY', ...common });

function failure(e) {
  return { ok: false, status: e.status ?? 0, error: e.error ?? String(e),
           headers: e.headers ?? null };
}

async function openaiStream(askUsage) {
  const params = { model: 'gpt-4o-mini', max_tokens: 10, stream: true,
                   messages: [{ role: 'user', content: 'Say hello to the usage meter.' }] };
  if (askUsage) params.stream_options = { include_usage: true };
  try {
    const s = await openai.chat.completions.create(params);
    let chunks = 0, text = '', usage = null, emptyChoices = 0;
    for await (const c of s) {
      chunks++;
      if (c.choices.length === 0) emptyChoices++;
      else text += c.choices[0].delta?.content ?? '';
      if (c.usage) usage = c.usage;
    }
    return { ok: true, chunks, text, usage, emptyChoices };
  } catch (e) { return failure(e); }
}

async function openaiJson() {
  try {
    const { data, response } = await openai.chat.completions.create({
      model: 'gpt-4o-mini', max_tokens: 8,
      messages: [{ role: 'user', content: 'Count my tokens please, exactly.' }] }).withResponse();
    return { ok: true, usage: data.usage, text: data.choices[0].message.content,
             warning: response.headers.get('x-nilbox-usage-warning') };
  } catch (e) { return failure(e); }
}

async function anthropicRun(stream) {
  const params = { model: 'claude-3-5-haiku-20241022', max_tokens: 9,
                   messages: [{ role: 'user', content: 'Hello from a VM.' }] };
  try {
    if (!stream) {
      const m = await anthropic.messages.create(params);
      return { ok: true, usage: m.usage, text: m.content[0].text };
    }
    const s = anthropic.messages.stream(params);
    let events = 0;
    s.on('streamEvent', () => { events++; });
    const m = await s.finalMessage();
    return { ok: true, usage: m.usage, text: m.content[0].text, events };
  } catch (e) { return failure(e); }
}

let out = [];
if (scenario === 'openai-json') out.push(await openaiJson());
else if (scenario === 'openai-stream') out.push(await openaiStream(false));
else if (scenario === 'openai-stream-usage') out.push(await openaiStream(true));
else if (scenario === 'anthropic-json') out.push(await anthropicRun(false));
else if (scenario === 'anthropic-stream') out.push(await anthropicRun(true));
else if (scenario === 'concurrent-openai') {
  out = await Promise.all(Array.from({ length: n }, () => openaiStream(false)));
} else if (scenario === 'many-openai-json') {
  for (let i = 0; i < n; i++) out.push(await openaiJson());
} else {
  console.error('unknown scenario', scenario);
  process.exit(2);
}
console.log(JSON.stringify({ results: out, refusals }));
await agent.close();
