// A real MCP client (@modelcontextprotocol/sdk) driving the nilbox MCP
// bridge for tests/e2e/test_mcp.py and bench/mcp. Prints one JSON object.
//
//   node client.mjs stdio SCENARIO CMD ARGS...        (stdio transport)
//   node client.mjs http SCENARIO URL TOKEN            (Streamable HTTP)
//   node client.mjs sse SCENARIO URL TOKEN             (the older HTTP+SSE)
//
// Scenarios for tests/e2e/mcp_testsrv: basic, restart, ask, notify (server
// messages outside any request: list_changed, a ping from the server). For
// @modelcontextprotocol/server-everything (tests/e2e/test_mcp_debian.py):
// everything (its tools, progress, a cancellation, a denied get-env). For
// either: pause (a call, then {"paused":true} on stdout and a wait for a line
// on stdin while the test kills the server, then calls again), call:JSON
// (one tools/call of {name, arguments}, 120 s to answer), bench:N (N echo
// calls, latencies in ms).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const [kind, scenario, ...rest] = process.argv.slice(2);
// NB_MCP_TIMEOUT_MS: every request's timeout (the SDK's default is 60 s): a
// Node.js server in a loaded TCG VM can take longer than that to start.
const timeout = Number(process.env.NB_MCP_TIMEOUT_MS || 60000);

function transport() {
  if (kind === "stdio")
    return new StdioClientTransport({ command: rest[0], args: rest.slice(1), env: process.env, stderr: "inherit" });
  if (kind === "sse")
    return new SSEClientTransport(new URL(rest[0]), {
      requestInit: { headers: { Authorization: `Bearer ${rest[1]}` } },
    });
  return new StreamableHTTPClientTransport(new URL(rest[0]), {
    requestInit: { headers: { Authorization: `Bearer ${rest[1]}` } },
  });
}

async function attempt(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, code: e.code ?? null, message: String(e.message ?? e), name: e.name };
  }
}

const text = (r) => r?.content?.[0]?.text;
// The request timeout for calls that set none of their own.
function withTimeout(client) {
  const call = client.callTool.bind(client), list = client.listTools.bind(client);
  client.callTool = (p, schema, opts) => call(p, schema, { timeout, ...opts });
  client.listTools = (p, opts) => list(p, { timeout, ...opts });
  return client;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// echo's argument is `text` in mcp_testsrv and `message` in server-everything;
// each ignores the other's.
const echoArgs = (s) => ({ text: s, message: s });

function stdinLine() {
  return new Promise((resolve) => {
    process.stdin.once("data", (d) => {
      process.stdin.pause();
      resolve(String(d));
    });
  });
}

async function main() {
  const client = withTimeout(new Client({ name: "nilbox-test", version: "1.0" }));
  const errors = [];
  client.onerror = (e) => errors.push(String(e.message ?? e));
  await client.connect(transport(), { timeout });
  const out = { server: client.getServerVersion()?.name };
  if (scenario === "basic") {
    out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
    out.echo = text(await client.callTool({ name: "echo", arguments: { text: "héllo" } }));
    out.add = text(await client.callTool({ name: "add", arguments: { a: 2, b: 40 } }));
    const progress = [];
    out.slow = text(
      await client.callTool({ name: "slow", arguments: { steps: 3 } }, undefined, {
        onprogress: (p) => progress.push(p.progress),
      }),
    );
    out.progress = progress;
    const ac = new AbortController();
    setTimeout(() => ac.abort("enough"), 400);
    out.cancelled = await attempt(() =>
      client.callTool({ name: "slow", arguments: { steps: 100 } }, undefined, { signal: ac.signal }),
    );
    out.denied = await attempt(() => client.callTool({ name: "secret", arguments: { text: "x" } }));
    out.after = text(await client.callTool({ name: "echo", arguments: { text: "still here" } }));
  } else if (scenario === "restart") {
    out.before = text(await client.callTool({ name: "echo", arguments: { text: "one" } }));
    out.crash = await attempt(() => client.callTool({ name: "crash", arguments: {} }));
    out.after = text(await client.callTool({ name: "echo", arguments: { text: "two" } }));
    out.tools = (await client.listTools()).tools.length;
  } else if (scenario === "ask") {
    out.asked = await attempt(() =>
      client.callTool({ name: "asked", arguments: { text: "may I" } }, undefined, { timeout: 120000 }),
    );
  } else if (scenario === "notify") {
    let changed = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => changed++);
    out.later = text(await client.callTool({ name: "later", arguments: {} }));
    for (let i = 0; i < 200 && !changed; i++) await new Promise((r) => setTimeout(r, 100));
    out.changed = changed;
    // The server's ping came in next to the notification; give our answer time to leave.
    await new Promise((r) => setTimeout(r, 500));
    out.after = text(await client.callTool({ name: "echo", arguments: { text: "after" } }));
  } else if (scenario === "everything") {
    out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
    out.echo = text(await client.callTool({ name: "echo", arguments: { message: "héllo" } }));
    out.add = text(await client.callTool({ name: "get-sum", arguments: { a: 2, b: 40 } }));
    const progress = [];
    out.slow = text(
      await client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 1.5, steps: 3 } },
        undefined,
        { onprogress: (p) => progress.push(p.progress) },
      ),
    );
    out.progress = progress;
    // No progress token on the one we cancel: its steps would come back as
    // progress for a token the SDK forgot when it cancelled.
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort("enough"), 1000);
    out.cancelled = await attempt(() =>
      client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 4, steps: 2 } },
        undefined,
        { signal: ac.signal },
      ),
    );
    out.denied = await attempt(() => client.callTool({ name: "get-env", arguments: {} }));
    out.after = text(await client.callTool({ name: "echo", arguments: { message: "still here" } }));
    // Past the cancelled operation's end: a server (or bridge) that answered
    // it anyway shows up in `errors` (a response for an unknown id).
    await sleep(Math.max(0, t0 + 5000 - Date.now()));
    out.late = text(await client.callTool({ name: "echo", arguments: { message: "late" } }));
  } else if (scenario === "pause") {
    out.before = text(await client.callTool({ name: "echo", arguments: echoArgs("one") }));
    process.stdout.write(JSON.stringify({ paused: true }) + "\n");
    await stdinLine();
    out.after = text(await client.callTool({ name: "echo", arguments: echoArgs("two") }));
    out.tools = (await client.listTools()).tools.length;
  } else if (scenario.startsWith("call:")) {
    const call = JSON.parse(scenario.slice(5));
    out.call = await attempt(() => client.callTool(call, undefined, { timeout: Math.max(timeout, 120000) }));
  } else if (scenario.startsWith("bench:")) {
    const n = Number(scenario.slice(6));
    const ms = [];
    for (let i = 0; i < n + 5; i++) {
      const t0 = process.hrtime.bigint();
      await client.callTool({ name: "echo", arguments: echoArgs("ping") });
      if (i >= 5) ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    out.ms = ms;
  }
  out.errors = errors;
  await client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ fatal: String(e.stack ?? e) }) + "\n");
  process.exit(1);
});
