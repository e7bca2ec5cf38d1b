// Settings: the daemon (/v1/status), each VM's accelerator (PATCH
// /v1/vms/{name}: auto / kvm / tcg, from the next start) with what the
// running boot uses and why, and the checks of `nilbox doctor`
// (/v1/doctor, run on the daemon: may take a few seconds for the KVM probe).
import { useCallback, useEffect, useState } from 'react';
import { api, seg, Vm } from './api';
import { ErrorBox, useAction } from './screens';

type Check = { name: string; status: string; message: string; hint: string };

export function SettingsScreen({ vms, reload }: { vms: Vm[]; reload: () => void }) {
  const [st, setSt] = useState<any>(null);
  const [doc, setDoc] = useState<{ ok: boolean; checks: Check[] } | null>(null);
  const [busy, setBusy] = useState(false);
  const [err, run, clear] = useAction();
  const load = useCallback(() => run(async () => setSt(await api('GET', '/v1/status'))), [run]);
  useEffect(() => { load(); }, [load]);
  const doctor = () => run(async () => {
    setBusy(true);
    try {
      setDoc(await api('GET', '/v1/doctor'));
    } finally {
      setBusy(false);
    }
  });
  const setAccel = (name: string, accel: string) => run(async () => {
    await api('PATCH', `/v1/vms/${seg(name)}`, { accel });
    reload();
  });
  return (
    <section aria-labelledby="set-h">
      <h2 id="set-h">Settings</h2>
      <ErrorBox err={err} onClose={clear} />
      {st && <dl className="facts">
        <dt>Daemon</dt><dd>nilboxd {st.version}, pid {st.pid}, up {Math.round(st.uptime_s)} s</dd>
        <dt>Home</dt><dd><code>{st.home}</code></dd>
        <dt>Log</dt><dd><code>{st.log}</code></dd>
        <dt>Secret store</dt><dd>{st.secrets?.state} ({st.secrets?.provider}){st.secrets?.hint ? `: ${st.secrets.hint}` : ''}</dd>
      </dl>}
      <h3>Accelerator</h3>
      <p className="hint">auto: KVM where it really works here, else TCG (software, slower). A change applies from the
        VM's next start.</p>
      <table className="accel">
        <thead><tr><th scope="col">VM</th><th scope="col">Setting</th><th scope="col">Set by</th>
          <th scope="col">This boot</th></tr></thead>
        <tbody>
          {vms.length === 0 && <tr><td colSpan={4}>No VMs.</td></tr>}
          {vms.map((v) => (
            <tr key={v.name} data-vm={v.name}>
              <td>{v.name}</td>
              <td><select value={v.accel_setting ?? 'auto'} aria-label={`accelerator of ${v.name}`}
                          onChange={(e) => setAccel(v.name, e.target.value)}>
                <option>auto</option><option>kvm</option><option>tcg</option></select></td>
              <td>{v.accel_setting_from ?? ''}</td>
              <td>{v.accel ? `${v.accel}${v.accel_reason ? ': ' + v.accel_reason : ''}` : 'not running'}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>Doctor</h3>
      <button type="button" onClick={doctor} disabled={busy}>{busy ? 'Checking…' : doc ? 'Check again' : 'Run the checks'}</button>
      {doc && <>
        <p role="status" className={doc.ok ? 'ok' : 'error'}>{doc.ok ? 'Every check passed or only warns.' : 'Some checks fail: see what to do below.'}</p>
        <table className="doctor">
          <thead><tr><th scope="col">Check</th><th scope="col">Status</th><th scope="col">Finding</th>
            <th scope="col">What to do</th></tr></thead>
          <tbody>
            {doc.checks.map((c) => (
              <tr key={c.name} data-check={c.name}>
                <td>{c.name}</td><td className={`st-${c.status}`}>{c.status}</td><td>{c.message}</td><td>{c.hint}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </>}
    </section>
  );
}
