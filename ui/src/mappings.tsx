// Mappings: host ports to guest ports (/v1/ports), host folders in VMs
// (/v1/shares) and the SSH gateway (/v1/ssh) with the ~/.ssh/config block
// `nilbox ssh-config` prints. Paths and names are shown as text (A21).
import { useCallback, useEffect, useState } from 'react';
import { api, Vm } from './api';
import { ErrorBox, useAction } from './screens';

type Port = { id: number; vm: string; bind: string; host_port: number; guest_port: number;
              public: boolean; listening: boolean; error: string | null; connections: number };
type Share = { id: number; vm: string; host: string; guest: string; ro: boolean; state: string;
               error?: string };
type Ssh = { enabled: boolean; message?: string; host?: string; port?: number; host_key?: string;
             fingerprint?: string; sessions?: number; channels?: number;
             key_files?: { path: string; exists: boolean; keys: number }[] };

// The same block as `nilbox ssh-config` (src/cli/cmd_ssh.c).
export function sshConfig(ssh: Ssh, vms: string[], home: string): string {
  const users = vms.map((v) => `Host nilbox-${v}\n    User ${v}\n`).join('');
  return `${users}# nilbox SSH gateway: 'ssh nilbox-VM' opens a shell in VM (scp, sftp, rsync, -L too)
Host nilbox-*
    HostName 127.0.0.1
    Port ${ssh.port}
    UserKnownHostsFile ${home}/ssh/known_hosts
    StrictHostKeyChecking yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    ForwardAgent no
    ForwardX11 no
`;
}

export function CopyButton({ text, what }: { text: string; what: string }) {
  const [done, setDone] = useState('');
  return (
    <span>
      <button type="button" aria-label={`copy ${what}`}
              onClick={() => navigator.clipboard?.writeText(text).then(() => setDone('copied'),
                () => setDone('the browser refused: select the text and copy it'))}>Copy</button>
      {done && <span role="status" className="hint"> {done}</span>}
    </span>
  );
}

export function MappingsScreen({ vms }: { vms: Vm[] }) {
  const [ports, setPorts] = useState<Port[]>([]);
  const [shares, setShares] = useState<Share[]>([]);
  const [ssh, setSsh] = useState<Ssh | null>(null);
  const [home, setHome] = useState('');
  const [err, run, clear] = useAction();
  const first = vms[0]?.name ?? '';
  const [pf, setPf] = useState({ vm: '', host_port: '', guest_port: '', bind: '', public: false });
  const [sf, setSf] = useState({ vm: '', host: '', guest: '', ro: false });
  const load = useCallback(() => run(async () => {
    const [p, s, g, st] = await Promise.all([api('GET', '/v1/ports'), api('GET', '/v1/shares'),
                                             api('GET', '/v1/ssh'), api('GET', '/v1/status')]);
    setPorts(p.ports);
    setShares(s.shares);
    setSsh(g);
    setHome(st.home);
  }), [run]);
  useEffect(() => { load(); }, [load]);
  const addPort = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      const body: any = { vm: pf.vm || first, host_port: Number(pf.host_port),
                          guest_port: Number(pf.guest_port) };
      if (pf.bind) body.bind = pf.bind;
      if (pf.public) body.public = true;
      await api('POST', '/v1/ports', body);
      setPf({ ...pf, host_port: '', guest_port: '' });
      load();
    });
  };
  const addShare = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      await api('POST', '/v1/shares', { vm: sf.vm || first, host: sf.host, guest: sf.guest, ro: sf.ro });
      setSf({ ...sf, host: '', guest: '' });
      load();
    });
  };
  const vmSelect = (value: string, set: (v: string) => void) => (
    <label>VM <select required value={value || first} onChange={(e) => set(e.target.value)}>
      {vms.map((v) => <option key={v.name}>{v.name}</option>)}
    </select></label>
  );
  const names = vms.map((v) => v.name);
  return (
    <section aria-labelledby="map-h">
      <h2 id="map-h">Mappings</h2>
      <ErrorBox err={err} onClose={clear} />
      <h3 id="ports-h">Ports</h3>
      <table className="ports" aria-labelledby="ports-h">
        <thead><tr><th scope="col">#</th><th scope="col">VM</th><th scope="col">Host</th>
          <th scope="col">Guest port</th><th scope="col">State</th><th scope="col">Connections</th>
          <th scope="col"><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {ports.length === 0 && <tr><td colSpan={7}>No port mapped.</td></tr>}
          {ports.map((p) => (
            <tr key={p.id} data-port={p.host_port}>
              <td>{p.id}</td><td>{p.vm}</td><td><code>{p.bind}:{p.host_port}</code>{p.public && ' (public)'}</td>
              <td>{p.guest_port}</td>
              <td>{p.listening ? 'listening' : `down${p.error ? ': ' + p.error : ''}`}</td>
              <td>{p.connections}</td>
              <td><button type="button" aria-label={`remove port ${p.host_port}`}
                          onClick={() => run(async () => { await api('DELETE', `/v1/ports/${p.id}`); load(); })}>
                Remove</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <form className="create" onSubmit={addPort} aria-label="map a port">
        {vmSelect(pf.vm, (vm) => setPf({ ...pf, vm }))}
        <label>Host port <input required type="number" min={1} max={65535} value={pf.host_port}
                                onChange={(e) => setPf({ ...pf, host_port: e.target.value })} /></label>
        <label>Guest port <input required type="number" min={1} max={65535} value={pf.guest_port}
                                 onChange={(e) => setPf({ ...pf, guest_port: e.target.value })} /></label>
        <label>Bind <input placeholder="127.0.0.1" value={pf.bind}
                           onChange={(e) => setPf({ ...pf, bind: e.target.value })} /></label>
        <label className="check"><input type="checkbox" checked={pf.public}
                                        onChange={(e) => setPf({ ...pf, public: e.target.checked })} /> Public
          (reachable from other machines)</label>
        <button type="submit">Map port</button>
      </form>

      <h3 id="shares-h">Folders</h3>
      <table className="shares" aria-labelledby="shares-h">
        <thead><tr><th scope="col">#</th><th scope="col">VM</th><th scope="col">Host folder</th>
          <th scope="col">In the guest</th><th scope="col">Access</th><th scope="col">State</th>
          <th scope="col"><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {shares.length === 0 && <tr><td colSpan={7}>No folder shared.</td></tr>}
          {shares.map((s) => (
            <tr key={s.id} data-share={s.guest}>
              <td>{s.id}</td><td>{s.vm}</td><td><code>{s.host}</code></td><td><code>{s.guest}</code></td>
              <td>{s.ro ? 'read-only' : 'read-write'}</td>
              <td>{s.state}{s.error ? `: ${s.error}` : ''}</td>
              <td><button type="button" aria-label={`remove share ${s.guest} of ${s.vm}`}
                          onClick={() => run(async () => { await api('DELETE', `/v1/shares/${s.id}`); load(); })}>
                Remove</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <form className="create" onSubmit={addShare} aria-label="share a folder">
        {vmSelect(sf.vm, (vm) => setSf({ ...sf, vm }))}
        <label>Host folder <input required placeholder="/home/me/project" value={sf.host}
                                  onChange={(e) => setSf({ ...sf, host: e.target.value })} /></label>
        <label>Guest folder <input required placeholder="/mnt/project" value={sf.guest}
                                   onChange={(e) => setSf({ ...sf, guest: e.target.value })} /></label>
        <label className="check"><input type="checkbox" checked={sf.ro}
                                        onChange={(e) => setSf({ ...sf, ro: e.target.checked })} /> Read-only</label>
        <button type="submit">Share folder</button>
      </form>

      <h3>SSH gateway</h3>
      {ssh && !ssh.enabled && <p>{ssh.message ?? 'The SSH gateway is off.'}</p>}
      {ssh && ssh.enabled && <>
        <dl className="facts">
          <dt>Address</dt><dd><code>{ssh.host}:{ssh.port}</code></dd>
          <dt>Host key</dt><dd><code>{ssh.fingerprint}</code></dd>
          <dt>Open</dt><dd>{ssh.sessions} connection(s), {ssh.channels} stream(s)</dd>
          <dt>Authorized keys</dt><dd>{(ssh.key_files ?? []).map((k) => (
            <div key={k.path}><code>{k.path}</code>: {k.exists ? `${k.keys} key(s)` : 'missing'}</div>))}</dd>
        </dl>
        <p>Add this to <code>~/.ssh/config</code>, then <code>ssh nilbox-VM</code> opens a shell in VM:</p>
        <pre className="snippet" tabIndex={0} aria-label="ssh config block" data-testid="ssh-config">
          {sshConfig(ssh, names, home)}</pre>
        <CopyButton text={sshConfig(ssh, names, home)} what="the ssh config block" />
        <p>and this line to <code>{home}/ssh/known_hosts</code> (<code>nilbox ssh-config</code> writes it for you):</p>
        <pre className="snippet" tabIndex={0} aria-label="known_hosts line">
          {`[127.0.0.1]:${ssh.port} ${ssh.host_key}`}</pre>
      </>}
    </section>
  );
}
