// Store: the signed catalogue (/v1/store), what is installed in a VM, and
// installs that show the rules an app proposes and add them (as allow
// rules for that VM, through /v1/rules like `nilbox store install`) only
// once the user accepted them; the daemon refuses an install while one is
// missing. Progress lines come from the event stream, as text (A21).
import { useCallback, useEffect, useRef, useState } from 'react';
import { api, ApiError, onEvent, seg, Vm } from './api';
import { ErrorBox, useAction } from './screens';

type App = { id: string; name: string; kind: string; summary: string; image: string; vendor: string };
type Plan = { vm: string; app: string; rules: string[] | null; missing_rules: string[];
              secrets: { name: string; hosts: string[] }[] | null; image_ok: boolean; image: string;
              vm_image: string };
type Job = { vm: string; app: string; lines: string[]; state: 'running' | 'installed' | 'failed' | 'removed';
             message?: string };

export function StoreScreen({ vms }: { vms: Vm[] }) {
  const [cat, setCat] = useState<{ version: string; source: string; apps: App[];
                                   refused: { id: string; reason: string }[] } | null>(null);
  const [vm, setVm] = useState('');
  const [installed, setInstalled] = useState<{ app: string; version: string; installed_at: string }[]>([]);
  const [plan, setPlan] = useState<Plan | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const [err, run, clear] = useAction();
  const running = vms.filter((v) => v.state === 'running');
  const target = vm || running[0]?.name || '';
  const jobRef = useRef<Job | null>(null);
  jobRef.current = job;

  const loadInstalled = useCallback(() => run(async () => {
    setInstalled(target ? (await api('GET', `/v1/vms/${seg(target)}/apps`)).apps : []);
  }), [run, target]);
  useEffect(() => { run(async () => setCat(await api('GET', '/v1/store'))); }, [run]);
  useEffect(() => { loadInstalled(); }, [loadInstalled]);
  useEffect(() => onEvent((e) => {
    const j = jobRef.current;
    if (!j || e.vm !== j.vm || e.app !== j.app) return;
    // Functional updates: events often arrive in one burst ("step two" and
    // "installed" together), before a render refreshes jobRef, and each
    // must build on the one before it.
    const upd = (f: (cur: Job) => Job) =>
      setJob((cur) => (cur && cur.vm === e.vm && cur.app === e.app ? f(cur) : cur));
    if (e.type === 'progress') {
      upd((cur) => ({ ...cur, lines: [...cur.lines.slice(-199), String(e.message ?? '')] }));
    } else if (e.type === 'store.installed') {
      upd((cur) => ({ ...cur, state: 'installed' }));
      loadInstalled();
    } else if (e.type === 'store.install_failed') {
      upd((cur) => ({ ...cur, state: 'failed', message: String(e.message ?? '') }));
      loadInstalled();
    }
  }), [loadInstalled]);

  const propose = (app: string) => run(async () => {
    setJob(null);
    setPlan(await api('GET', `/v1/vms/${seg(target)}/apps/${seg(app)}/plan`));
  });
  const accept = (p: Plan) => run(async () => {
    for (const r of p.missing_rules)
      await api('POST', '/v1/rules', { action: 'allow', target: r, vm: p.vm, note: `store: ${p.app}` });
    setPlan(null);
    setJob({ vm: p.vm, app: p.app, lines: [], state: 'running' });
    try {
      await api('POST', `/v1/vms/${seg(p.vm)}/apps/${seg(p.app)}`);
    } catch (e) {
      setJob(null);
      throw e;
    }
  });
  const remove = (app: string) => confirm(`Remove ${app} from ${target}?`) && run(async () => {
    await api('DELETE', `/v1/vms/${seg(target)}/apps/${seg(app)}`);
    setJob({ vm: target, app, lines: [], state: 'removed' });
    loadInstalled();
  });
  const isInstalled = (id: string) => installed.some((a) => a.app === id);

  return (
    <section aria-labelledby="store-h">
      <h2 id="store-h">Store</h2>
      <ErrorBox err={err} onClose={clear} />
      {err instanceof ApiError && err.code === 'catalogue-refused' &&
        <p className="hint">The catalogue did not verify, so nothing can be installed until it does.</p>}
      {cat && <p className="hint">Catalogue {cat.version} ({cat.source === 'home' ? 'from your home, signed' : 'built in'}).
        Apps only install after you accept the destinations they need.</p>}
      <label className="inline">Install into VM <select value={target} onChange={(e) => { setVm(e.target.value); setPlan(null); }}>
        {running.length === 0 && <option value="">no VM is running</option>}
        {running.map((v) => <option key={v.name}>{v.name}</option>)}</select></label>
      <table className="store">
        <thead><tr><th scope="col">App</th><th scope="col">Kind</th><th scope="col">What it is</th>
          <th scope="col">Image</th><th scope="col">Vendor</th><th scope="col"><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {(cat?.apps ?? []).map((a) => (
            <tr key={a.id} data-app={a.id}>
              <td>{a.name} <code>{a.id}</code></td><td>{a.kind}</td><td>{a.summary}</td><td>{a.image}</td>
              <td>{a.vendor}</td>
              <td>{isInstalled(a.id)
                ? <>installed{' '}<button type="button" className="danger" aria-label={`remove ${a.id}`}
                                         onClick={() => remove(a.id)}>Remove</button></>
                : <button type="button" disabled={!target || job?.state === 'running'}
                          aria-label={`install ${a.id}`} onClick={() => propose(a.id)}>Install…</button>}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {cat && cat.refused.length > 0 && <>
        <h3>Left out of the catalogue</h3>
        <ul>{cat.refused.map((r) => <li key={r.id}><code>{r.id}</code>: {r.reason}</li>)}</ul>
      </>}
      {plan && (
        <div className="panel" role="region" aria-labelledby="plan-h">
          <h3 id="plan-h">Install {plan.app} into {plan.vm}?</h3>
          {!plan.image_ok ? (
            <p role="alert" className="error">{plan.app} is made for the {plan.image} image; {plan.vm} runs
              {' '}{plan.vm_image}. Create a VM from {plan.image} to install it.</p>
          ) : <>
            <p>It needs to reach these destinations from {plan.vm} (added as allow rules for this VM only):</p>
            <ul data-testid="plan-rules">{(plan.rules ?? []).map((r) => (
              <li key={r}><code>{r}</code>{plan.missing_rules.includes(r) ? ' (new rule)' : ' (already allowed)'}</li>))}
              {(plan.rules ?? []).length === 0 && <li>no destination</li>}</ul>
            {(plan.secrets ?? []).length > 0 && <>
              <p>It uses these secrets; the store never binds them: add and bind them on the Secrets screen.</p>
              <ul>{plan.secrets!.map((s) => <li key={s.name}><code>{s.name}</code> for {s.hosts.join(', ')}</li>)}</ul>
            </>}
            <p className="hint">A snapshot of the VM's disk is taken first; a failing install is rolled back.</p>
          </>}
          <div className="buttons">
            {plan.image_ok && <button type="button" onClick={() => accept(plan)}>
              {plan.missing_rules.length ? 'Accept the rules and install' : 'Install'}</button>}
            <button type="button" onClick={() => setPlan(null)}>Cancel</button>
          </div>
        </div>
      )}
      {job && (
        <div className="panel" role="region" aria-label={`${job.app} in ${job.vm}`}>
          <h3>{job.app} in {job.vm}</h3>
          <p role="status" data-testid="store-status" className={job.state === 'failed' ? 'error' : ''}>
            {job.state === 'running' ? 'installing…' : job.state === 'installed' ? `${job.app} is installed in ${job.vm}`
              : job.state === 'removed' ? `removed ${job.app} from ${job.vm} (the rules added for it stay)`
              : `install failed: ${job.message}`}</p>
          {job.lines.length > 0 && <pre className="log" tabIndex={0} aria-label="install output">{job.lines.join('\n')}</pre>}
        </div>
      )}
    </section>
  );
}
