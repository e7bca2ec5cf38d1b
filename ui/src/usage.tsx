// Usage: LLM tokens and cost per day (a hand-made SVG bar chart: no chart
// library), per provider and per model, and the limits with how close each
// is (GET /v1/usage, /v1/limits; docs/internals/usage.md). Refreshed on
// usage.record / usage.limit events, at most once a second.
import { useCallback, useEffect, useRef, useState } from 'react';
import { api, onEvent, seg, Vm } from './api';
import { ErrorBox, useAction } from './screens';

type Row = { key: string; requests: number; input: number; output: number; cached: number;
             tokens: number; cost_usd: number; estimated: number };
type Summary = { by: string; rows: Row[]; total: Row; prices_as_of: string };
type Limit = { id: number; scope: string; who: string; window: string; unit: string; amount: number;
               used: number; reserved: number; percent: number; resets_at: string };

const num = (n: number) => n.toLocaleString('en-US');
const usd = (n: number) => (n === 0 ? '$0' : n < 0.01 ? `$${n.toPrecision(2)}` : `$${n.toFixed(2)}`);
const amount = (unit: string, n: number) => (unit === 'usd' ? usd(n) : `${num(Math.round(n))} ${unit}`);

// The last `days` UTC days, oldest first, zero where nothing was used.
function fillDays(rows: Row[], days: number): Row[] {
  const byKey = new Map(rows.map((r) => [r.key, r]));
  const out: Row[] = [];
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  for (let i = days - 1; i >= 0; i--) {
    const key = new Date(today - i * 86400000).toISOString().slice(0, 10);
    out.push(byKey.get(key) ?? { key, requests: 0, input: 0, output: 0, cached: 0, tokens: 0,
                                 cost_usd: 0, estimated: 0 });
  }
  return out;
}

function DayChart({ rows, metric }: { rows: Row[]; metric: 'tokens' | 'cost_usd' }) {
  const W = 720, H = 180, pad = 28;
  const max = Math.max(...rows.map((r) => r[metric]), 0);
  const bw = (W - pad) / Math.max(rows.length, 1);
  const label = metric === 'tokens' ? 'tokens' : 'cost in USD';
  const fmt = (v: number) => (metric === 'tokens' ? num(v) : usd(v));
  return (
    <svg className="chart" viewBox={`0 0 ${W} ${H + 20}`} role="img" aria-labelledby="chart-t">
      <title id="chart-t">{`${label} per day, ${rows[0]?.key ?? ''} to ${rows[rows.length - 1]?.key ?? ''}; ` +
        `highest ${fmt(max)}`}</title>
      <line x1={pad} y1={H} x2={W} y2={H} className="axis" />
      <text x={0} y={12} className="tick">{fmt(max)}</text>
      <text x={0} y={H} className="tick">0</text>
      {rows.map((r, i) => {
        const h = max > 0 ? Math.round((r[metric] / max) * (H - 16)) : 0;
        return (
          <g key={r.key}>
            <rect x={pad + i * bw + 1} y={H - h} width={Math.max(bw - 2, 1)} height={h} className="bar">
              <title>{`${r.key}: ${fmt(r[metric])}, ${r.requests} requests`}</title>
            </rect>
            {(i === 0 || i === rows.length - 1 || rows.length <= 10) &&
              <text x={i === rows.length - 1 && rows.length > 10 ? W : pad + i * bw} y={H + 14} className="tick"
                    textAnchor={i === rows.length - 1 && rows.length > 10 ? 'end' : 'start'}>{r.key.slice(5)}</text>}
          </g>
        );
      })}
    </svg>
  );
}

function Table({ caption, rows, total }: { caption: string; rows: Row[]; total?: Row }) {
  return (
    <table className="usage">
      <caption>{caption}</caption>
      <thead><tr><th scope="col">{caption.replace(/^Per /, '').replace(/^\w/, (c) => c.toUpperCase())}</th>
        <th scope="col">Requests</th><th scope="col">Input</th><th scope="col">Output</th>
        <th scope="col">Cached</th><th scope="col">Tokens</th><th scope="col">Cost</th></tr></thead>
      <tbody>
        {rows.length === 0 && <tr><td colSpan={7}>Nothing recorded in this period.</td></tr>}
        {rows.map((r) => (
          <tr key={r.key} data-key={r.key}>
            <td>{r.key || '(unknown)'}{r.estimated > 0 && ` (${r.estimated} estimated)`}</td>
            <td>{num(r.requests)}</td><td>{num(r.input)}</td><td>{num(r.output)}</td>
            <td>{num(r.cached)}</td><td>{num(r.tokens)}</td><td>{usd(r.cost_usd)}</td>
          </tr>
        ))}
      </tbody>
      {total && <tfoot><tr><th scope="row">Total</th><td>{num(total.requests)}</td><td>{num(total.input)}</td>
        <td>{num(total.output)}</td><td>{num(total.cached)}</td><td>{num(total.tokens)}</td>
        <td>{usd(total.cost_usd)}</td></tr></tfoot>}
    </table>
  );
}

export function UsageScreen({ vms }: { vms: Vm[] }) {
  const [days, setDays] = useState(30);
  const [vm, setVm] = useState('');
  const [metric, setMetric] = useState<'tokens' | 'cost_usd'>('cost_usd');
  const [data, setData] = useState<{ day: Summary; provider: Summary; model: Summary } | null>(null);
  const [limits, setLimits] = useState<Limit[]>([]);
  const [err, run, clear] = useAction();
  const [form, setForm] = useState({ scope: 'global', who: '', window: 'day', unit: 'usd', amount: '' });
  const load = useCallback(() => run(async () => {
    const q = (by: string) => `/v1/usage?by=${by}&days=${days}${vm ? `&vm=${seg(vm)}` : ''}`;
    const [day, provider, model, lim] = await Promise.all([
      api('GET', q('day')), api('GET', q('provider')), api('GET', q('model')), api('GET', '/v1/limits')]);
    setData({ day, provider, model });
    setLimits(lim.limits);
  }), [run, days, vm]);
  const timer = useRef(0);
  useEffect(() => {
    load();
    const off = onEvent((e) => {
      if (e.type === 'usage.record' || e.type === 'usage.limit' || e.type === 'proxy.limit') {
        if (!timer.current) timer.current = window.setTimeout(() => { timer.current = 0; load(); }, 1000);
      }
    });
    return () => { off(); clearTimeout(timer.current); timer.current = 0; };
  }, [load]);
  const setLimit = (e: React.FormEvent) => {
    e.preventDefault();
    run(async () => {
      const body: any = { scope: form.scope, window: form.window, unit: form.unit,
                          amount: Number(form.amount) };
      if (form.scope !== 'global') body.who = form.who;
      await api('POST', '/v1/limits', body);
      setForm({ ...form, amount: '' });
      load();
    });
  };
  return (
    <section aria-labelledby="usage-h">
      <h2 id="usage-h">Usage</h2>
      <ErrorBox err={err} onClose={clear} />
      <form className="create" aria-label="usage period" onSubmit={(e) => { e.preventDefault(); load(); }}>
        <label>Period <select value={days} onChange={(e) => setDays(Number(e.target.value))}>
          <option value={7}>7 days</option><option value={30}>30 days</option><option value={90}>90 days</option>
        </select></label>
        <label>VM <select value={vm} onChange={(e) => setVm(e.target.value)}>
          <option value="">every VM</option>
          {vms.map((v) => <option key={v.name}>{v.name}</option>)}
        </select></label>
        <label>Chart <select value={metric} onChange={(e) => setMetric(e.target.value as any)}>
          <option value="cost_usd">cost</option><option value="tokens">tokens</option>
        </select></label>
        <button type="submit">Refresh</button>
      </form>
      {data && <>
        <p className="hint">Costs at list prices as of {data.day.prices_as_of} (unverified); “estimated”
          counts come from body sizes where the provider's answer carried no usage.</p>
        <DayChart rows={fillDays(data.day.rows, days)} metric={metric} />
        <Table caption="Per provider" rows={data.provider.rows} total={data.provider.total} />
        <Table caption="Per model" rows={data.model.rows} />
        <details><summary>Per day</summary><Table caption="Per day" rows={data.day.rows} /></details>
      </>}
      <h3>Limits</h3>
      <table className="limits">
        <thead><tr><th scope="col">#</th><th scope="col">Scope</th><th scope="col">Window</th>
          <th scope="col">Limit</th><th scope="col">Used</th><th scope="col">How close</th>
          <th scope="col">Resets</th><th scope="col"><span className="sr">Actions</span></th></tr></thead>
        <tbody>
          {limits.length === 0 && <tr><td colSpan={8}>No limits: requests are only counted.</td></tr>}
          {limits.map((l) => (
            <tr key={l.id} data-limit={l.id}>
              <td>{l.id}</td><td>{l.scope}{l.who ? ` ${l.who}` : ''}</td><td>{l.window}</td>
              <td>{amount(l.unit, l.amount)}</td>
              <td>{amount(l.unit, l.used)}{l.reserved > 0 && ` (+${amount(l.unit, l.reserved)} reserved)`}</td>
              <td className={l.percent >= 95 ? 'pct bad' : l.percent >= 80 ? 'pct warn' : 'pct'}>
                <meter min={0} max={100} low={80} high={95} optimum={0} value={Math.min(l.percent, 100)}
                       aria-label={`limit ${l.id} used`} />{' '}{l.percent.toFixed(l.percent < 1 ? 3 : 1)} %
              </td>
              <td>{l.resets_at}</td>
              <td><button type="button" aria-label={`remove limit ${l.id}`}
                          onClick={() => run(async () => { await api('DELETE', `/v1/limits/${l.id}`); load(); })}>
                Remove</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <form className="create" onSubmit={setLimit} aria-label="set a limit">
        <h3>Set a limit</h3>
        <label>Scope <select value={form.scope} onChange={(e) => setForm({ ...form, scope: e.target.value })}>
          <option>global</option><option>vm</option><option>provider</option><option>secret</option></select></label>
        <label>Who <input value={form.who} disabled={form.scope === 'global'}
                          placeholder={form.scope === 'global' ? 'everyone' : `the ${form.scope}'s name`}
                          onChange={(e) => setForm({ ...form, who: e.target.value })} /></label>
        <label>Window <select value={form.window} onChange={(e) => setForm({ ...form, window: e.target.value })}>
          <option>minute</option><option>hour</option><option>day</option><option>month</option></select></label>
        <label>Unit <select value={form.unit} onChange={(e) => setForm({ ...form, unit: e.target.value })}>
          <option>usd</option><option>tokens</option><option>requests</option></select></label>
        <label>Amount <input required inputMode="decimal" value={form.amount}
                             onChange={(e) => setForm({ ...form, amount: e.target.value })} /></label>
        <button type="submit">Set limit</button>
      </form>
      <p className="hint">Requests limits are per minute; tokens and USD per hour, day or month.
        A request that would pass a limit gets 429 in the VM.</p>
    </section>
  );
}
