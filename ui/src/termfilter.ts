// Guest output reaches the browser only through xterm.js (A21: never as
// HTML). These parser hooks apply the CLI's escape rules (src/cli/termfilter.c,
// A20) inside xterm.js: what could reach the clipboard, the window title,
// the desktop (notifications), open links or smuggle strings is swallowed
// and counted, never acted on. A handler that returns true ends xterm's own
// handling of that sequence.
import type { Terminal } from '@xterm/xterm';

export type FilterStats = { clipboard: number; feature: number; string: number; title: number };

// OSC numbers by kind. Colours (4, 10-19, 104, 110-119) and cwd (7) stay:
// they change only what xterm.js draws.
const CLIPBOARD = [52, 5522];
const FEATURE = [8, 9, 99, 777, 1337, 5113, 50, 51, 3008];
const TITLE = [0, 1, 2, 21, 22];

export function installFilter(term: Terminal, onBlocked: (s: FilterStats) => void): FilterStats {
  const st: FilterStats = { clipboard: 0, feature: 0, string: 0, title: 0 };
  const count = (k: keyof FilterStats) => () => {
    st[k]++;
    onBlocked(st);
    return true;
  };
  for (const n of CLIPBOARD) term.parser.registerOscHandler(n, count('clipboard'));
  for (const n of FEATURE) term.parser.registerOscHandler(n, count('feature'));
  // The title never reaches document.title or a tab name: guest text stays
  // inside the terminal. Not counted as a block (shells set it all the time).
  for (const n of TITLE) term.parser.registerOscHandler(n, () => true);
  // DCS strings: tmux passthrough (ESC P tmux; ...: final 't'), DECRQSS, sixel, XTGETTCAP.
  // xterm.js would answer DECRQSS ($q) and XTGETTCAP (+q) with text typed
  // into the session; nothing here needs any of them.
  const dcs = [{ intermediates: '$', final: 'q' }, { intermediates: '+', final: 'q' },
               { intermediates: '+', final: 'p' }, { final: 'q' }, { final: 't' }];
  for (const id of dcs) term.parser.registerDcsHandler(id, count('string'));
  // Window operations and reports (CSI ... t): resize/move/iconify/title
  // reports; xterm.js's own windowOptions are all off too.
  term.parser.registerCsiHandler({ final: 't' }, count('feature'));
  return st;
}

export function blockedNotice(st: FilterStats): string {
  const parts: string[] = [];
  if (st.clipboard) parts.push(`${st.clipboard} clipboard write${st.clipboard > 1 ? 's' : ''}`);
  if (st.feature) parts.push(`${st.feature} terminal feature${st.feature > 1 ? 's' : ''}`);
  if (st.string) parts.push(`${st.string} control string${st.string > 1 ? 's' : ''}`);
  return parts.length ? `blocked from the guest: ${parts.join(', ')}` : '';
}
