// The real OpenAI, Anthropic, Gemini (@google/genai) and Bedrock
// (@aws-sdk/client-bedrock-runtime) SDKs through `nilbox proxy`, for
// tests/integ/test_usage.py: undici's ProxyAgent as the fetch of the first
// two and as the global dispatcher for Gemini's (it calls the global fetch);
// a CONNECT-tunnelling https.Agent for the AWS SDK (node:https).
// usage: node sdk.mjs PROXY_URL CA_FILE SCENARIO [N] [DELAY_MS]
// Scenarios: openai-json, openai-stream, openai-stream-usage, anthropic-json,
// anthropic-stream, gemini-json, gemini-stream, bedrock-json, bedrock-stream,
// concurrent-openai (N parallel streams), many-openai-json (N in a row).
// Prints {results: one object per request ({ok, status, usage, chunks, text, ...}),
// refusals: the 429 bodies and Retry-After values}.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { fetch, ProxyAgent, setGlobalDispatcher } from 'undici';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { BedrockRuntimeClient, ConverseCommand, ConverseStreamCommand }
  from '@aws-sdk/client-bedrock-runtime';
import { NodeHttpHandler } from '@smithy/node-http-handler';

const [proxy, caFile, scenario, nArg, delayArg, holdArg] = process.argv.slice(2);
const n = Number(nArg || 1);
const delay = String(delayArg || 0);
const hold = String(holdArg || 0);
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
const common = { fetch: viaProxy, maxRetries: 0, defaultHeaders: { 'x-fake-delay-ms': delay,
                                                                   'x-fake-hold-ms': hold } };
// The keys are placeholders: nilbox injects the real ones (the test binds them).
const openai = new OpenAI({ apiKey: 'OPENAI_API_KEY', ...common });
const anthropic = new Anthropic({ apiKey: 'ANTHROPIC_API_KEY', ...common });
setGlobalDispatcher(agent);
const gemini = new GoogleGenAI({ apiKey: 'GEMINI_API_KEY',
                                 httpOptions: { headers: { 'x-fake-delay-ms': delay } } });

// node:https through the proxy: CONNECT, then TLS to the origin inside the tunnel.
class TunnelAgent extends https.Agent {
  createConnection(o, cb) {
    const req = http.request({ host: pu.hostname, port: pu.port, method: 'CONNECT',
                               path: `${o.host}:${o.port}`,
                               headers: opts.token ? { 'proxy-authorization': opts.token } : {} });
    req.on('connect', (res, socket) => {
      if (res.statusCode !== 200) return cb(new Error(`CONNECT: ${res.statusCode}`));
      cb(null, tls.connect({ socket, servername: o.servername || o.host, ca: opts.requestTls.ca }));
    });
    req.on('error', cb);
    req.end();
  }
}
// The placeholders: nilbox re-signs with the real key (secret bind-aws).
const bedrock = new BedrockRuntimeClient({
  region: 'us-east-1', maxAttempts: 1,
  credentials: { accessKeyId: 'AWS_ACCESS_KEY_ID', secretAccessKey: 'AWS_SECRET_ACCESS_KEY' },
  // HTTP/1.1 (the client's default is HTTP/2, which the proxy does not speak to clients).
  requestHandler: new NodeHttpHandler({ httpsAgent: new TunnelAgent({ keepAlive: false }) }) });

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

async function geminiRun(stream) {
  const params = { model: 'gemini-2.0-flash', contents: 'Hello from a VM, Gemini.',
                   config: { maxOutputTokens: 7 } };
  try {
    if (!stream) {
      const r = await gemini.models.generateContent(params);
      return { ok: true, usage: r.usageMetadata, text: r.text, model: r.modelVersion };
    }
    let chunks = 0, text = '', usage = null, model = null;
    for await (const c of await gemini.models.generateContentStream(params)) {
      chunks++;
      text += c.text ?? '';
      if (c.usageMetadata) usage = c.usageMetadata;
      model = c.modelVersion;
    }
    return { ok: true, usage, text, chunks, model };
  } catch (e) { return failure(e); }
}

async function bedrockRun(stream) {
  const params = { modelId: 'anthropic.claude-3-haiku-20240307-v1:0',
                   messages: [{ role: 'user', content: [{ text: 'Hello from a VM, Bedrock.' }] }],
                   inferenceConfig: { maxTokens: 11 } };
  try {
    if (!stream) {
      const r = await bedrock.send(new ConverseCommand(params));
      return { ok: true, usage: r.usage, text: r.output.message.content[0].text };
    }
    const r = await bedrock.send(new ConverseStreamCommand(params));
    let events = 0, text = '', usage = null;
    for await (const ev of r.stream) {
      events++;
      if (ev.contentBlockDelta) text += ev.contentBlockDelta.delta.text;
      if (ev.metadata) usage = ev.metadata.usage;
    }
    return { ok: true, usage, text, events };
  } catch (e) {
    return { ok: false, status: e.$metadata?.httpStatusCode ?? 0, error: String(e) };
  }
}

let out = [];
if (scenario === 'openai-json') out.push(await openaiJson());
else if (scenario === 'openai-stream') out.push(await openaiStream(false));
else if (scenario === 'openai-stream-usage') out.push(await openaiStream(true));
else if (scenario === 'anthropic-json') out.push(await anthropicRun(false));
else if (scenario === 'anthropic-stream') out.push(await anthropicRun(true));
else if (scenario === 'gemini-json') out.push(await geminiRun(false));
else if (scenario === 'gemini-stream') out.push(await geminiRun(true));
else if (scenario === 'bedrock-json') out.push(await bedrockRun(false));
else if (scenario === 'bedrock-stream') out.push(await bedrockRun(true));
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
