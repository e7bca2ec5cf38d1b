// The shell of the UI: navigation, the event stream (live VM states,
// progress, prompts) and the terminal tabs, which stay alive while another
// screen is shown.
import { lazy, Suspense, useCallback, useEffect, useRef, useState } from 'react';
import { api, dispatch, NbEvent, Prompt, subscribe, token, Vm } from './api';
import { earlyVms, takeEarlyVms } from './early';
import { AuditScreen, DestinationsScreen, ErrorBox, PromptModal, SecretsScreen, VmsScreen } from './screens';
// xterm.js is about half the code: loaded when the first terminal opens.
// The other screens load when first shown: the VMs screen, the first one,
// compiles and paints sooner without them (bench/ui).
const TerminalTab = lazy(() => import('./Terminal').then((m) => ({ default: m.TerminalTab })));
const UsageScreen = lazy(() => import('./usage').then((m) => ({ default: m.UsageScreen })));
const MappingsScreen = lazy(() => import('./mappings').then((m) => ({ default: m.MappingsScreen })));
const McpScreen = lazy(() => import('./mcp').then((m) => ({ default: m.McpScreen })));
const StoreScreen = lazy(() => import('./store').then((m) => ({ default: m.StoreScreen })));
const SettingsScreen = lazy(() => import('./settings').then((m) => ({ default: m.SettingsScreen })));

type Screen = 'vms' | 'terminal' | 'destinations' | 'secrets' | 'usage' | 'mappings' | 'mcp' |
  'store' | 'audit' | 'settings';
const SCREENS: [Screen, string][] = [
  ['vms', 'VMs'], ['terminal', 'Terminal'], ['destinations', 'Destinations'],
  ['secrets', 'Secrets'], ['usage', 'Usage'], ['mappings', 'Mappings'], ['mcp', 'MCP'],
  ['store', 'Store'], ['audit', 'Audit'], ['settings', 'Settings'],
];

let tabSeq = 0;

export function App() {
  const [screen, setScreen] = useState<Screen>('vms');
  // The early answer (early.ts) is usually in by the first render.
  const [vms, setVms] = useState<Vm[] | null>(() => earlyVms?.value ?? null);
  const [err, setErr] = useState<unknown>(null);
  const [live, setLive] = useState(false);
  const [prompts, setPrompts] = useState<Prompt[]>([]);
  const [progress, setProgress] = useState<Record<string, string>>({});
  const [banner, setBanner] = useState('');
  const [tick, setTick] = useState(0);
  const [tabs, setTabs] = useState<{ id: number; vm: string }[]>([]);
  const [activeTab, setActiveTab] = useState(0);
  const reloadTimer = useRef(0);

  const loadVms = useCallback(() => {
    (takeEarlyVms() ?? api('GET', '/v1/vms').then((j) => j.vms as Vm[]))
      .then((v) => { setVms(v); setErr(null); }).catch(setErr);
  }, []);
  const loadPrompts = useCallback(() => {
    api('GET', '/v1/prompts').then((j) => setPrompts(j.prompts)).catch(() => {});
  }, []);

  useEffect(() => {
    if (!token) return;
    loadVms();
    loadPrompts();
    return subscribe((e: NbEvent) => {
      const t = e.type;
      dispatch(e);
      if (t.startsWith('vm.')) {
        // Bursts of events (a boot) give one reload.
        clearTimeout(reloadTimer.current);
        reloadTimer.current = window.setTimeout(loadVms, 100);
        if (e.vm && (t === 'vm.running' || t === 'vm.stopped' || t === 'vm.crashed' || t === 'vm.removed'))
          setProgress((p) => { const n = { ...p }; delete n[e.vm]; return n; });
      } else if (t === 'progress') {
        // Store installs report per app on their own screen.
        if (e.vm && e.app) return;
        if (e.vm) setProgress((p) => ({ ...p, [e.vm]: String(e.message ?? '') }));
        else setBanner(`${e.op ?? 'progress'}: ${String(e.message ?? '')}`);
      } else if (t.startsWith('image.')) {
        setBanner(`${t}${e.image ? ' ' + e.image : ''}${e.message ? ': ' + e.message : ''}`);
      } else if (t === 'prompt.created' || t === 'prompt.updated') {
        const p = e.prompt as Prompt;
        setPrompts((ps) => [...ps.filter((x) => x.id !== p.id), p].sort((a, b) => a.id - b.id));
      } else if (t === 'prompt.resolved') {
        setPrompts((ps) => ps.filter((x) => x.id !== e.prompt_id));
      }
      if (t.startsWith('rule.') || t.startsWith('secrets.') || t.startsWith('prompt.resolved'))
        setTick((n) => n + 1);
    }, (up) => {
      setLive(up);
      if (up) { loadVms(); loadPrompts(); }
    });
  }, [loadVms, loadPrompts]);

  const openTerminal = (vm: string) => {
    const id = ++tabSeq;
    setTabs((t) => [...t, { id, vm }]);
    setActiveTab(id);
    setScreen('terminal');
  };
  const closeTab = (id: number) => setTabs((t) => {
    const rest = t.filter((x) => x.id !== id);
    if (activeTab === id) setActiveTab(rest.length ? rest[rest.length - 1].id : 0);
    return rest;
  });

  if (!token) {
    return (
      <main className="notoken">
        <h1>nilbox</h1>
        <p role="alert">This page needs the daemon's token. Open the UI with the link that
          <code> nilbox ui</code> prints (it ends with <code>#token=…</code>).</p>
      </main>
    );
  }
  const running = (vms ?? []).filter((v) => v.state === 'running');
  return (
    <>
      <header>
        <h1>nilbox</h1>
        <nav aria-label="screens">
          {SCREENS.map(([s, label]) => (
            <button type="button" key={s} aria-current={screen === s ? 'page' : undefined}
                    onClick={() => setScreen(s)}>
              {label}{s === 'destinations' && prompts.length > 0 ? ` (${prompts.length})` : ''}
            </button>
          ))}
        </nav>
        <span className={live ? 'live on' : 'live'} role="status">{live ? 'live' : 'reconnecting…'}</span>
      </header>
      <main>
        <ErrorBox err={err} />
        {banner && <div className="banner" role="status">{banner}
          <button type="button" aria-label="dismiss" onClick={() => setBanner('')}>×</button></div>}
        {screen === 'vms' && <VmsScreen vms={vms} reload={loadVms} progress={progress} openTerminal={openTerminal} />}
        <section hidden={screen !== 'terminal'} aria-labelledby="term-h" className="terminals">
          <h2 id="term-h">Terminal</h2>
          <div className="tabs" role="group" aria-label="terminals">
            {tabs.map((t) => (
              <span key={t.id} className="tab">
                <button type="button" aria-pressed={t.id === activeTab}
                        onClick={() => setActiveTab(t.id)}>{t.vm} #{t.id}</button>
                <button type="button" aria-label={`close terminal ${t.id}`} onClick={() => closeTab(t.id)}>×</button>
              </span>
            ))}
            <label className="newtab">New terminal in{' '}
              <select value="" aria-label="open a terminal in a VM"
                      onChange={(e) => e.target.value && openTerminal(e.target.value)}>
                <option value="">choose a running VM…</option>
                {running.map((v) => <option key={v.name}>{v.name}</option>)}
              </select>
            </label>
          </div>
          {tabs.length === 0 && <p>No terminal open: pick a running VM.</p>}
          <Suspense fallback={<p role="status">Loading the terminal…</p>}>
            {tabs.map((t) => (
              <TerminalTab key={t.id} vm={t.vm} active={screen === 'terminal' && t.id === activeTab}
                           onExit={() => {}} />
            ))}
          </Suspense>
        </section>
        {screen === 'destinations' && <DestinationsScreen prompts={prompts} tick={tick} />}
        {screen === 'secrets' && <SecretsScreen tick={tick} />}
        <Suspense fallback={<p role="status">Loading…</p>}>
          {screen === 'usage' && <UsageScreen vms={vms ?? []} />}
          {screen === 'mappings' && <MappingsScreen vms={vms ?? []} />}
          {screen === 'mcp' && <McpScreen vms={vms ?? []} />}
          {screen === 'store' && <StoreScreen vms={vms ?? []} />}
          {screen === 'settings' && <SettingsScreen vms={vms ?? []} reload={loadVms} />}
        </Suspense>
        {screen === 'audit' && <AuditScreen tick={tick} />}
      </main>
      {prompts.length > 0 && <PromptModal prompt={prompts[0]} onDone={loadPrompts} />}
    </>
  );
}
