// One terminal tab: xterm.js on a `pty` WebSocket (docs/api.md, "exec and
// pty over WebSocket"). Guest bytes go to xterm.js only (A21), through the
// escape filter (termfilter.ts, A20). Flow control: output is acknowledged
// once xterm.js has parsed it, so a flood of output slows the guest instead
// of the tab.
import { useEffect, useRef, useState } from 'react';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { WebLinksAddon } from '@xterm/addon-web-links';
import { openSocket } from './api';
import { blockedNotice, installFilter } from './termfilter';

const enc = new TextEncoder();

// Links the guest prints open only on a click, only http(s), in a new
// browsing context without access to this one.
function openLink(_ev: MouseEvent, uri: string) {
  try {
    const u = new URL(uri);
    if (u.protocol === 'http:' || u.protocol === 'https:')
      window.open(u.href, '_blank', 'noopener,noreferrer');
  } catch {
    /* not a URL */
  }
}

export function TerminalTab({ vm, active, onExit }: {
  vm: string; active: boolean; onExit: (why: string) => void;
}) {
  const box = useRef<HTMLDivElement>(null);
  const fitRef = useRef<FitAddon | null>(null);
  const [status, setStatus] = useState('connecting…');
  const [notice, setNotice] = useState('');

  useEffect(() => {
    const term = new XTerm({
      // No blinking: xterm.js restarts the blink on every key, a style and
      // paint change in the frame that chromium makes every key wait for
      // before it delivers the echo (it defers a page's tasks after input
      // until the next frame): about 2 ms more per echo on the loaded
      // bench machine (bench/ui).
      cursorBlink: false,
      fontFamily: 'monospace',
      fontSize: 14,
      scrollback: 5000,
      allowProposedApi: false,
      screenReaderMode: false,
    });
    const fit = new FitAddon();
    fitRef.current = fit;
    term.loadAddon(fit);
    term.loadAddon(new WebLinksAddon(openLink));
    installFilter(term, (st) => setNotice(blockedNotice(st)));
    term.open(box.current!);
    term.textarea?.setAttribute('aria-label', `terminal of ${vm}`);
    try {
      fit.fit();
    } catch {
      /* not laid out yet */
    }
    const ws = openSocket(`/v1/vms/${encodeURIComponent(vm)}/pty?rows=${term.rows}&cols=${term.cols}` +
                          '&term=xterm-256color');
    ws.binaryType = 'arraybuffer';
    let ended = false;
    const send = (o: unknown) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(o));
    ws.onopen = () => {
      setStatus('connected');
      send({ resize: { rows: term.rows, cols: term.cols } });
      term.focus();
    };
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') {
        let j: any = {};
        try {
          j = JSON.parse(m.data);
        } catch {
          return;
        }
        if ('exit' in j) {
          ended = true;
          setStatus(`exited with ${j.exit}`);
          onExit(`exited with ${j.exit}`);
        } else if ('signal' in j) {
          ended = true;
          setStatus(`ended by signal ${j.signal}`);
        } else if (j.error) {
          ended = true;
          setStatus(`error: ${String(j.error)}`);
        }
        return;
      }
      const b = new Uint8Array(m.data as ArrayBuffer);
      if (b.length < 1 || b[0] !== 0) return;
      const n = b.length - 1;
      term.write(b.subarray(1), () => send({ ack: n }));
    };
    ws.onclose = (ev) => {
      if (!ended) setStatus(ev.code === 1000 ? 'closed' : `disconnected (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`);
    };
    ws.onerror = () => setStatus('cannot open the terminal: is the VM running?');
    const input = (s: string | Uint8Array) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const data = typeof s === 'string' ? enc.encode(s) : s;
      const f = new Uint8Array(data.length + 1);
      f[0] = 0;
      f.set(data, 1);
      ws.send(f);
    };
    const d1 = term.onData((s) => input(s));
    const d2 = term.onBinary((s) => input(Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff)));
    const d3 = term.onResize(({ rows, cols }) => send({ resize: { rows, cols } }));
    const ro = new ResizeObserver(() => {
      try {
        if (box.current && box.current.offsetWidth > 0) fit.fit();
      } catch {
        /* hidden */
      }
    });
    ro.observe(box.current!);
    // Copy: the selection, on Ctrl+Shift+C (Ctrl+C goes to the guest).
    // Paste: the browser's paste event (Ctrl+Shift+V, Ctrl+V, menu) reaches
    // xterm.js's textarea, which sends it as bracketed paste when the guest
    // asked for it.
    term.attachCustomKeyEventHandler((e) => {
      if (e.type === 'keydown' && e.ctrlKey && e.shiftKey && (e.key === 'C' || e.key === 'c')) {
        const sel = term.getSelection();
        if (sel) navigator.clipboard?.writeText(sel).catch(() => {});
        return false;
      }
      return true;
    });
    (box.current as any).nbTerm = term; // for tests and the latency bench
    return () => {
      ro.disconnect();
      d1.dispose();
      d2.dispose();
      d3.dispose();
      ws.close();
      term.dispose();
    };
  }, [vm]);

  useEffect(() => {
    if (active) {
      try {
        fitRef.current?.fit();
      } catch {
        /* hidden */
      }
    }
  }, [active]);

  return (
    <div className="term-tab" hidden={!active}>
      <div className="term-status" role="status">
        {vm}: {status}
        {notice && <span className="term-notice"> · {notice}</span>}
      </div>
      <div className="term-box" ref={box} data-vm={vm} />
    </div>
  );
}
