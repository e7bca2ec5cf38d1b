// MCP: servers per VM (/v1/mcp), per-tool policies (allow / deny / ask,
// '*' the server's default), the server's stderr log (text only: it comes
// from the VM, A21) and the client configuration snippet of `nilbox mcp
// config`. The endpoint's bearer token is fetched only when the user asks
// for a snippet that carries it.
import { useCallback, useEffect, useState } from 'react';
import { api, onEvent, seg, Vm } from './api';
import { CopyButton } from './mappings';
import { ErrorBox, useAction } from './screens';

type Server = { vm: string; name: string; kind: string; command?: string[]; url?: string;
                endpoint: string; port: number; policy: Record<string, string>; listening: boolean };

const CLIENTS: [string, string][] = [
  ['claude-desktop', 'merge into claude_desktop_config.json'],
  ['claude-code', 'merge into .mcp.json (project) or ~/.claude.json'],
  ['cursor', 'merge into ~/.cursor/mcp.json'],
  ['vscode', 'merge into .vscode/mcp.json'],
];

// The same shapes as `nilbox mcp config` (src/cli/cmd_mcp.c).
export function clientSnippet(client: string, s: Server & { token?: string }, home: string): string {
  const auth = `Bearer ${s.token ?? ''}`;
  const entry = client === 'claude-desktop'
    ? { command: 'nilbox', args: ['mcp', 'stdio', s.vm, s.name], env: { NILBOX_HOME: home } }
    : client === 'cursor' ? { url: s.endpoint, headers: { Authorization: auth } }
    : { type: 'http', url: s.endpoint, headers: { Authorization: auth } };
  return JSON.stringify({ [client === 'vscode' ? 'servers' : 'mcpServers']: { [`${s.vm}-${s.name}`]: entry } },
                        null, 2);
}

function Details({ s, home, reload }: { s: Server; home: string; reload: () => void }) {
  const [err, run, clear] = useAction();
  const [tool, setTool] = useState({ name: '', action: 'deny' });
  const [client, setClient] = useState('claude-desktop');
  const [snippet, setSnippet] = useState('');
  const [log, setLog] = useState<string | null>(null);
  const base = `/v1/mcp/${seg(s.vm)}/${seg(s.name)}`;
  const policy = (t: string, action: string) => run(async () => {
    await api('PUT', `${base}/policy`, { tool: t, action });
    reload();
  });
  useEffect(() => setSnippet(''), [client, s.vm, s.name]);
  const showSnippet = () => run(async () => {
    const full = client === 'claude-desktop' ? s : await api('GET', `${base}?token=1`);
    setSnippet(clientSnippet(client, full, home));
  });
  const entries = Object.entries(s.policy ?? {}).sort();
  return (
    <div className="panel" role="region" aria-label={`MCP server ${s.vm}/${s.name}`}>
      <h3>{s.vm}/{s.name}</h3>
      <ErrorBox err={err} onClose={clear} />
      <h4>Tool policy</h4>
      <p className="hint">deny: the call fails and tools/list hides the tool; ask: each call waits for
        your answer; '*' is the default (allow when unset). Every call is audited, never its arguments.</p>
      <table className="policy">
        <thead><tr><th scope="col">Tool</th><th scope="col">Policy</th><th scope="col"><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {entries.length === 0 && <tr><td colSpan={3}>Nothing set: every tool is allowed.</td></tr>}
          {entries.map(([t, a]) => (
            <tr key={t} data-tool={t}>
              <td><code>{t}</code></td>
              <td><select value={a} aria-label={`policy of ${t}`} onChange={(e) => policy(t, e.target.value)}>
                <option>allow</option><option>deny</option><option>ask</option></select></td>
              <td><button type="button" aria-label={`clear the policy of ${t}`} onClick={() => policy(t, 'clear')}>
                Clear</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <form className="create" aria-label="set a tool policy"
            onSubmit={(e) => { e.preventDefault(); policy(tool.name, tool.action); setTool({ ...tool, name: '' }); }}>
        <label>Tool <input required placeholder="tool name or *" value={tool.name}
                           onChange={(e) => setTool({ ...tool, name: e.target.value })} /></label>
        <label>Policy <select value={tool.action} onChange={(e) => setTool({ ...tool, action: e.target.value })}>
          <option>allow</option><option>deny</option><option>ask</option></select></label>
        <button type="submit">Set policy</button>
      </form>
      <h4>Client configuration</h4>
      <form className="create" aria-label="client configuration" onSubmit={(e) => { e.preventDefault(); showSnippet(); }}>
        <label>Client <select value={client} onChange={(e) => setClient(e.target.value)}>
          {CLIENTS.map(([c]) => <option key={c}>{c}</option>)}</select></label>
        <button type="submit">Show snippet</button>
      </form>
      {snippet && <>
        <p className="hint">{CLIENTS.find(([c]) => c === client)?.[1]}
          {client !== 'claude-desktop' && ': it holds the endpoint\'s bearer token, keep that file private'}.</p>
        <pre className="snippet" tabIndex={0} aria-label="client configuration snippet" data-testid="mcp-snippet">{snippet}</pre>
        <CopyButton text={snippet} what="the snippet" />
      </>}
      <h4>Log</h4>
      <button type="button" onClick={() => run(async () => setLog((await api('GET', `${base}/logs`)).log))}>
        {log === null ? 'Show log' : 'Refresh log'}</button>
      {log !== null && <pre className="log" tabIndex={0} aria-label={`log of ${s.name}`}>{log || '(empty)'}</pre>}
    </div>
  );
}

export function McpScreen({ vms }: { vms: Vm[] }) {
  const [servers, setServers] = useState<Server[]>([]);
  const [home, setHome] = useState('');
  const [sel, setSel] = useState('');
  const [err, run, clear] = useAction();
  const [form, setForm] = useState({ vm: '', name: '', kind: 'stdio', command: '', url: '' });
  const load = useCallback(() => run(async () => {
    const [l, st] = await Promise.all([api('GET', '/v1/mcp'), api('GET', '/v1/status')]);
    setServers(l.servers);
    setHome(st.home);
  }), [run]);
  useEffect(() => {
    load();
    return onEvent((e) => { if (e.type.startsWith('mcp.')) load(); });
  }, [load]);
  const add = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      const body: any = { vm: form.vm || vms[0]?.name, name: form.name };
      if (form.kind === 'http') body.url = form.url;
      else body.command = form.command.trim().split(/\s+/).filter(Boolean);
      await api('POST', '/v1/mcp', body);
      setForm({ ...form, name: '', command: '', url: '' });
      load();
    });
  };
  const cur = servers.find((s) => `${s.vm}/${s.name}` === sel);
  return (
    <section aria-labelledby="mcp-h">
      <h2 id="mcp-h">MCP</h2>
      <ErrorBox err={err} onClose={clear} />
      <table className="mcp">
        <thead><tr><th scope="col">VM</th><th scope="col">Name</th><th scope="col">Runs</th>
          <th scope="col">Endpoint</th><th scope="col">Policy</th><th scope="col"><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {servers.length === 0 && <tr><td colSpan={6}>No MCP server registered.</td></tr>}
          {servers.map((s) => (
            <tr key={`${s.vm}/${s.name}`} data-mcp={`${s.vm}/${s.name}`}>
              <td>{s.vm}</td><td>{s.name}</td>
              <td><code>{s.kind === 'http' ? s.url : (s.command ?? []).join(' ')}</code></td>
              <td><code>{s.endpoint}</code>{s.listening === false && ' (not listening)'}</td>
              <td>{Object.entries(s.policy ?? {}).map(([t, a]) => `${t}: ${a}`).join(', ') || 'allow all'}</td>
              <td>
                <button type="button" aria-pressed={sel === `${s.vm}/${s.name}`}
                        aria-label={`manage ${s.vm}/${s.name}`}
                        onClick={() => setSel(sel === `${s.vm}/${s.name}` ? '' : `${s.vm}/${s.name}`)}>Manage</button>{' '}
                <button type="button" className="danger" aria-label={`remove MCP server ${s.vm}/${s.name}`}
                        onClick={() => confirm(`Remove MCP server ${s.vm}/${s.name}? Its sessions end.`) &&
                          run(async () => { await api('DELETE', `/v1/mcp/${seg(s.vm)}/${seg(s.name)}`); load(); })}>
                  Remove</button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {cur && <Details s={cur} home={home} reload={load} />}
      <form className="create" onSubmit={add} aria-label="add an MCP server">
        <h3>Add a server that runs in a VM</h3>
        <label>VM <select required value={form.vm || vms[0]?.name || ''}
                          onChange={(e) => setForm({ ...form, vm: e.target.value })}>
          {vms.map((v) => <option key={v.name}>{v.name}</option>)}</select></label>
        <label>Name <input required value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} /></label>
        <label>Kind <select value={form.kind} onChange={(e) => setForm({ ...form, kind: e.target.value })}>
          <option value="stdio">stdio (a command)</option><option value="http">HTTP (a URL in the guest)</option></select></label>
        {form.kind === 'stdio'
          ? <label>Command <input required placeholder="mcp-server-filesystem /home/agent" value={form.command}
                                  onChange={(e) => setForm({ ...form, command: e.target.value })} /></label>
          : <label>URL <input required placeholder="http://127.0.0.1:8000/mcp" value={form.url}
                              onChange={(e) => setForm({ ...form, url: e.target.value })} /></label>}
        <button type="submit">Add server</button>
      </form>
      <p className="hint">Arguments are separated by spaces (no quoting); use the CLI (<code>nilbox mcp add VM NAME -- CMD…</code>)
        for arguments with spaces.</p>
    </section>
  );
}
