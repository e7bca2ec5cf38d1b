// The screens. Everything from the daemon or a VM is rendered as React text
// (escaped), never as HTML (A21); host names from prompts are shown exactly
// as the API escaped them (A16).
import { useCallback, useEffect, useRef, useState } from 'react';
import { api, ApiError, Binding, hint, NbEvent, Prompt, Rule, Secret, Vm } from './api';
import { earlyImages, takeEarlyImages } from './early';

export function ErrorBox({ err, onClose }: { err: unknown; onClose?: () => void }) {
  if (!err) return null;
  const msg = err instanceof Error ? err.message : String(err);
  const h = hint(err);
  return (
    <div className="error" role="alert">
      <strong>{err instanceof ApiError ? `${err.status} ${err.code}` : 'error'}:</strong> {msg}
      {h && <div className="hint">{h}</div>}
      {onClose && <button type="button" onClick={onClose} aria-label="dismiss the error">×</button>}
    </div>
  );
}

export function useAction(): [unknown, (f: () => Promise<unknown>) => Promise<void>, () => void] {
  const [err, setErr] = useState<unknown>(null);
  const run = useCallback(async (f: () => Promise<unknown>) => {
    setErr(null);
    try {
      await f();
    } catch (e) {
      setErr(e);
    }
  }, []);
  return [err, run, () => setErr(null)];
}

const mib = (b: number) => `${Math.round(b / 1048576)} MiB`;
const gib = (b: number) => (b >= 1 << 30 ? `${(b / 2 ** 30).toFixed(1)} GiB` : mib(b));

// ------------------------------------------------------------------ VMs

export function VmsScreen({ vms, reload, progress, openTerminal }: {
  vms: Vm[] | null; reload: () => void; progress: Record<string, string>;
  openTerminal: (vm: string) => void;
}) {
  const [err, run, clear] = useAction();
  const [images, setImages] = useState<string[]>(() => earlyImages?.value ?? []);
  const [form, setForm] = useState({ name: '', image: 'tiny', cpus: 1, memory: '512', disk: '4G' });
  const [logsOf, setLogsOf] = useState<string | null>(null);
  useEffect(() => {
    (takeEarlyImages() ?? api('GET', '/v1/images').then((j) => j.images.map((i: any) => i.name) as string[]))
      .then(setImages).catch(() => {});
  }, []);
  const act = (name: string, verb: string, body?: unknown) =>
    run(async () => {
      if (verb === 'delete') {
        if (!confirm(`Delete VM ${name} and its disk?`)) return;
        await api('DELETE', `/v1/vms/${encodeURIComponent(name)}?force=1`);
      } else {
        await api('POST', `/v1/vms/${encodeURIComponent(name)}/${verb}`, body ?? {});
      }
      reload();
    });
  const create = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      const mem = /^\d+$/.test(form.memory) ? Number(form.memory) : form.memory;
      await api('POST', '/v1/vms', { name: form.name, image: form.image, cpus: Number(form.cpus),
                                     memory: mem, disk: form.disk });
      setForm({ ...form, name: '' });
      reload();
    });
  };
  return (
    <section aria-labelledby="vms-h">
      <h2 id="vms-h">VMs</h2>
      <ErrorBox err={err} onClose={clear} />
      {vms === null ? <p>Loading…</p> : vms.length === 0 ? <p>No VMs yet: create one below.</p> : (
        <table className="vms">
          <thead>
            <tr><th>Name</th><th>State</th><th>Image</th><th>CPUs</th><th>Memory</th><th>Disk</th><th>Actions</th></tr>
          </thead>
          <tbody>
            {vms.map((v) => (
              <tr key={v.name} data-vm={v.name}>
                <td>{v.name}</td>
                <td>
                  <span className={`state state-${v.state}`} data-testid={`state-${v.name}`}>{v.state}</span>
                  {v.state === 'running' && !v.agent && ' (agent not ready)'}
                  {v.busy && ` (${v.busy})`}
                  {progress[v.name] && <div className="progress">{progress[v.name]}</div>}
                  {v.state === 'crashed' && v.last_exit && <div className="hint">{String(v.last_exit)}</div>}
                </td>
                <td>{v.image}</td>
                <td>{v.cpus}</td>
                <td>{v.memory_mib} MiB</td>
                <td>{gib(v.disk_bytes)}</td>
                <td className="actions">
                  {(v.state === 'stopped' || v.state === 'crashed') &&
                    <button type="button" onClick={() => act(v.name, 'start')}>Start</button>}
                  {(v.state === 'running' || v.state === 'starting') && <>
                    <button type="button" onClick={() => act(v.name, 'stop')}>Stop</button>
                    <button type="button" onClick={() => act(v.name, 'restart')}>Restart</button>
                    <button type="button" onClick={() => openTerminal(v.name)}
                            aria-label={`open a terminal in ${v.name}`}>Terminal</button>
                  </>}
                  <button type="button" onClick={() => setLogsOf(logsOf === v.name ? null : v.name)}>
                    {logsOf === v.name ? 'Hide logs' : 'Logs'}
                  </button>
                  <button type="button" className="danger" onClick={() => act(v.name, 'delete')}
                          aria-label={`delete ${v.name}`}>Delete</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {logsOf && <Logs vm={logsOf} />}
      <form className="create" onSubmit={create} aria-labelledby="create-h">
        <h3 id="create-h">Create a VM</h3>
        <label>Name <input required pattern="[a-z][a-z0-9\-]{0,31}" value={form.name}
                           onChange={(e) => setForm({ ...form, name: e.target.value })} /></label>
        <label>Image <select value={form.image} onChange={(e) => setForm({ ...form, image: e.target.value })}>
          {(images.length ? images : ['tiny']).map((i) => <option key={i}>{i}</option>)}
        </select></label>
        <label>CPUs <input type="number" min={1} max={64} value={form.cpus}
                           onChange={(e) => setForm({ ...form, cpus: Number(e.target.value) })} /></label>
        <label>Memory (MiB or 2G) <input value={form.memory}
                           onChange={(e) => setForm({ ...form, memory: e.target.value })} /></label>
        <label>Disk <input value={form.disk} onChange={(e) => setForm({ ...form, disk: e.target.value })} /></label>
        <button type="submit">Create</button>
      </form>
    </section>
  );
}

// Console log with follow: polls `offset=next` (a new boot restarts at 0).
function Logs({ vm }: { vm: string }) {
  const [text, setText] = useState('');
  const [follow, setFollow] = useState(true);
  const [err, setErr] = useState<unknown>(null);
  const pre = useRef<HTMLPreElement>(null);
  useEffect(() => {
    let next = -1;
    let stop = false;
    let timer = 0;
    const tick = async () => {
      try {
        const q = next < 0 ? 'tail=65536' : `offset=${next}`;
        const j = await api('GET', `/v1/vms/${encodeURIComponent(vm)}/logs?${q}`);
        if (stop) return;
        setText((t) => {
          const s = (next >= 0 && j.offset >= next ? t : '') + j.data;
          return s.length > 262144 ? s.slice(-262144) : s;
        });
        next = j.next;
        setErr(null);
      } catch (e) {
        setErr(e);
      }
      if (!stop && follow) timer = window.setTimeout(tick, 1000);
    };
    tick();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [vm, follow]);
  useEffect(() => {
    if (follow && pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text, follow]);
  return (
    <div className="logs">
      <h3>Console of {vm}</h3>
      <label><input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> Follow</label>
      <ErrorBox err={err} />
      <pre ref={pre} tabIndex={0} aria-label={`console log of ${vm}`}>{text}</pre>
    </div>
  );
}

// --------------------------------------------------------- Destinations

export function PromptModal({ prompt, onDone }: { prompt: Prompt; onDone: () => void }) {
  const [err, run] = useAction();
  const first = useRef<HTMLButtonElement>(null);
  useEffect(() => first.current?.focus(), [prompt.id]);
  const answer = (a: string) => run(async () => {
    await api('POST', `/v1/prompts/${prompt.id}/answer`, { answer: a });
    onDone();
  });
  const secs = Math.max(0, Math.round((Date.parse(prompt.deadline) - Date.now()) / 1000));
  return (
    <div className="modal-bg">
      <div className="modal" role="dialog" aria-modal="true" aria-labelledby="prompt-h"
           aria-describedby="prompt-d">
        <h2 id="prompt-h">{prompt.kind === 'mcp' ? 'Allow an MCP tool call?' : 'Allow a new destination?'}</h2>
        {prompt.kind === 'mcp' ? (
          <p id="prompt-d">
            VM <strong>{prompt.vm}</strong> wants to call the MCP tool (server/tool){' '}
            <code className="host" data-testid="prompt-host">{prompt.host}</code>.
          </p>
        ) : (
          <p id="prompt-d">
            VM <strong>{prompt.vm}</strong> wants to connect to{' '}
            <code className="host" data-testid="prompt-host">{prompt.host}</code> port {prompt.port}
            {prompt.is_ip && ' (an IP address)'}.
          </p>
        )}
        <p className="hint">Denied automatically in about {secs} s. {prompt.waiters} connection(s) wait.</p>
        <ErrorBox err={err} />
        <div className="buttons">
          <button type="button" ref={first} onClick={() => answer('allow-once')}>Allow once</button>
          <button type="button" onClick={() => answer('allow-always')}>Allow always</button>
          <button type="button" onClick={() => answer('deny-once')}>Deny once</button>
          <button type="button" className="danger" onClick={() => answer('deny-always')}>Deny always</button>
        </div>
      </div>
    </div>
  );
}

export function DestinationsScreen({ prompts, tick }: { prompts: Prompt[]; tick: number }) {
  const [rules, setRules] = useState<Rule[]>([]);
  const [err, run, clear] = useAction();
  const [form, setForm] = useState({ action: 'allow', target: '', port: '', vm: '', note: '' });
  const load = useCallback(() => run(async () => setRules((await api('GET', '/v1/rules')).rules)), [run]);
  useEffect(() => { load(); }, [load, tick]);
  const add = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      const body: any = { action: form.action, target: form.target };
      if (form.port) body.port = Number(form.port);
      if (form.vm) body.vm = form.vm;
      if (form.note) body.note = form.note;
      await api('POST', '/v1/rules', body);
      setForm({ ...form, target: '', port: '', note: '' });
      load();
    });
  };
  return (
    <section aria-labelledby="dest-h">
      <h2 id="dest-h">Destinations</h2>
      <ErrorBox err={err} onClose={clear} />
      <h3>Waiting for an answer</h3>
      {prompts.length === 0 ? <p>No destination is waiting.</p> : (
        <ul>{prompts.map((p) => <li key={p.id}>{p.vm} → <code>{p.host}</code>:{p.port}</li>)}</ul>
      )}
      <h3>Rules</h3>
      <table className="rules">
        <thead><tr><th>#</th><th>Action</th><th>Target</th><th>Port</th><th>VM</th><th>Note</th><th><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {rules.map((r) => (
            <tr key={r.id}>
              <td>{r.id}</td><td>{r.action}</td><td><code>{r.target}</code></td>
              <td>{r.port || 'any'}</td><td>{r.vm ?? 'every VM'}</td><td>{r.note ?? ''}</td>
              <td><button type="button" aria-label={`remove rule ${r.id}`}
                          onClick={() => run(async () => { await api('DELETE', `/v1/rules/${r.id}`); load(); })}>
                Remove</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <form className="create" onSubmit={add} aria-label="add a rule">
        <label>Action <select value={form.action} onChange={(e) => setForm({ ...form, action: e.target.value })}>
          <option>allow</option><option>deny</option></select></label>
        <label>Target <input required placeholder="api.example.com, *.example.com, 10.0.0.0/8"
                             value={form.target} onChange={(e) => setForm({ ...form, target: e.target.value })} /></label>
        <label>Port <input type="number" min={1} max={65535} value={form.port}
                           onChange={(e) => setForm({ ...form, port: e.target.value })} /></label>
        <label>VM <input placeholder="every VM" value={form.vm}
                         onChange={(e) => setForm({ ...form, vm: e.target.value })} /></label>
        <label>Note <input value={form.note} onChange={(e) => setForm({ ...form, note: e.target.value })} /></label>
        <button type="submit">Add rule</button>
      </form>
    </section>
  );
}

// -------------------------------------------------------------- Secrets

export function SecretsScreen({ tick }: { tick: number }) {
  const [secrets, setSecrets] = useState<Secret[]>([]);
  const [err, run, clear] = useAction();
  const [name, setName] = useState('');
  const [bind, setBind] = useState({ secret: '', host: '', vm: '', header: '' });
  const value = useRef<HTMLInputElement>(null);
  const load = useCallback(() => run(async () => setSecrets((await api('GET', '/v1/secrets')).secrets)), [run]);
  useEffect(() => { load(); }, [load, tick]);
  const add = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      // The value goes from the password field straight into the request
      // body; it is never kept in state nor shown back.
      const v = value.current!.value;
      await api('PUT', `/v1/secrets/${encodeURIComponent(name)}`, undefined, v);
      value.current!.value = '';
      setName('');
      load();
    });
  };
  const addBinding = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      const body: any = { host: bind.host };
      if (bind.vm) body.vm = bind.vm;
      if (bind.header) body.header = bind.header;
      await api('POST', `/v1/secrets/${encodeURIComponent(bind.secret)}/bindings`, body);
      setBind({ ...bind, host: '' });
      load();
    });
  };
  return (
    <section aria-labelledby="sec-h">
      <h2 id="sec-h">Secrets</h2>
      <ErrorBox err={err} onClose={clear} />
      <p className="hint">Guests see a placeholder; the real value is injected by the proxy only toward the bound hosts.</p>
      <table className="secrets">
        <thead><tr><th>Name</th><th>Version</th><th>Bound to</th><th><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {secrets.map((s) => (
            <tr key={s.name} data-secret={s.name}>
              <td><code>{s.name}</code></td>
              <td>{s.version}</td>
              <td>{s.bindings.length === 0 ? 'nothing' : (
                <ul>{s.bindings.map((b: Binding) => (
                  <li key={b.id}>
                    {b.host}{b.path_prefix ?? ''} ({b.placement}{b.header ? ` ${b.header}` : ''}) for {b.vm ?? 'every VM'}{' '}
                    <button type="button" aria-label={`remove binding ${b.id}`}
                            onClick={() => run(async () => { await api('DELETE', `/v1/bindings/${b.id}`); load(); })}>×</button>
                  </li>))}</ul>)}
              </td>
              <td><button type="button" className="danger" aria-label={`delete secret ${s.name}`}
                          onClick={() => confirm(`Delete secret ${s.name}?`) &&
                            run(async () => { await api('DELETE', `/v1/secrets/${encodeURIComponent(s.name)}`); load(); })}>
                Delete</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <form className="create" onSubmit={add} aria-label="add a secret">
        <h3>Add or replace a secret</h3>
        <label>Name <input required pattern="[A-Za-z_][A-Za-z0-9_]{0,127}" value={name}
                           onChange={(e) => setName(e.target.value)} /></label>
        <label>Value <input required type="password" autoComplete="off" ref={value} /></label>
        <button type="submit">Save secret</button>
      </form>
      <form className="create" onSubmit={addBinding} aria-label="bind a secret">
        <h3>Bind a secret to a host</h3>
        <label>Secret <select required value={bind.secret} onChange={(e) => setBind({ ...bind, secret: e.target.value })}>
          <option value="">choose…</option>
          {secrets.map((s) => <option key={s.name}>{s.name}</option>)}
        </select></label>
        <label>Host <input required placeholder="api.example.com" value={bind.host}
                           onChange={(e) => setBind({ ...bind, host: e.target.value })} /></label>
        <label>VM <input placeholder="every VM" value={bind.vm}
                         onChange={(e) => setBind({ ...bind, vm: e.target.value })} /></label>
        <label>Header <input placeholder="Authorization: Bearer {secret}" value={bind.header}
                             onChange={(e) => setBind({ ...bind, header: e.target.value })} /></label>
        <button type="submit">Bind</button>
      </form>
    </section>
  );
}

// ---------------------------------------------------------------- Audit

export function AuditScreen({ tick }: { tick: number }) {
  const [rows, setRows] = useState<any[]>([]);
  const [kind, setKind] = useState('');
  const [vm, setVm] = useState('');
  const [verify, setVerify] = useState<any>(null);
  const [err, run, clear] = useAction();
  const load = useCallback(() => run(async () => {
    const q = new URLSearchParams({ limit: '200' });
    if (kind) q.set('kind', kind);
    if (vm) q.set('vm', vm);
    setRows((await api('GET', `/v1/audit?${q}`)).rows.reverse());
  }), [run, kind, vm]);
  useEffect(() => { load(); }, [load, tick]);
  return (
    <section aria-labelledby="audit-h">
      <h2 id="audit-h">Audit</h2>
      <ErrorBox err={err} onClose={clear} />
      <form className="create" onSubmit={(e) => { e.preventDefault(); load(); }} aria-label="search the audit log">
        <label>Kind <input placeholder="secret.* or vm.started" value={kind} onChange={(e) => setKind(e.target.value)} /></label>
        <label>VM <input value={vm} onChange={(e) => setVm(e.target.value)} /></label>
        <button type="submit">Search</button>
        <button type="button" onClick={() => run(async () => setVerify(await api('GET', '/v1/audit/verify')))}>Verify chain</button>
      </form>
      {verify && <p role="status" className={verify.ok ? 'ok' : 'error'}>
        {verify.ok ? `chain verified: ${verify.rows} rows (${verify.keyed ? 'keyed' : 'not keyed: store locked'})`
                   : `chain broken at row ${verify.first_bad_seq}: ${verify.reason}`}</p>}
      <table className="audit">
        <thead><tr><th>#</th><th>Time</th><th>Kind</th><th>VM</th><th>Destination</th><th>Detail</th></tr></thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.seq}>
              <td>{r.seq}</td><td>{r.time}</td><td>{r.kind}</td><td>{r.vm ?? ''}</td>
              <td>{r.host ? `${r.host}${r.port ? ':' + r.port : ''}` : ''}</td>
              <td><code>{r.detail ? JSON.stringify(r.detail) : ''}</code></td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

export type { NbEvent };
