// The daemon's API as the UI uses it. The token arrives in the URL fragment
// (#token=...), which browsers never send to a server; it is kept in this
// tab's sessionStorage (so a reload works), removed from the address bar, and
// sent only as an Authorization header to this same origin (and as a
// WebSocket subprotocol entry, the one place a browser allows).

const KEY = 'nilbox.token';

function readToken(): string {
  const m = /(?:^#|&)token=([0-9a-f]{64})(?:&|$)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, m[1]);
    history.replaceState(null, '', location.pathname + location.search);
    return m[1];
  }
  return sessionStorage.getItem(KEY) ?? '';
}

export const token = readToken();

// A link with a new token opened in this tab (same document: no reload).
window.addEventListener('hashchange', () => {
  if (/(?:^#|&)token=/.test(location.hash)) location.reload();
});

export class ApiError extends Error {
  status: number;
  code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// What to do about an error, for the few codes where the API's own message
// does not already say it.
export function hint(e: unknown): string {
  if (!(e instanceof ApiError)) return '';
  switch (e.status) {
    case 401:
      return 'Open the UI with the link from `nilbox ui` (or `nilbox daemon status`): the token changes at every daemon start.';
    case 0:
      return 'Is nilboxd running? Start it with `nilbox daemon start`.';
    default:
      return '';
  }
}

export async function api<T = any>(method: string, path: string, body?: unknown,
                                   raw?: BodyInit): Promise<T> {
  const headers: Record<string, string> = { Authorization: `Bearer ${token}` };
  let payload: BodyInit | undefined;
  if (raw !== undefined) {
    headers['Content-Type'] = 'application/octet-stream';
    payload = raw;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach nilboxd: ${String(e)}`);
  }
  const text = await res.text();
  let j: any = {};
  try {
    j = text ? JSON.parse(text) : {};
  } catch {
    j = { message: text };
  }
  if (!res.ok) throw new ApiError(res.status, j.error ?? 'error', j.message ?? res.statusText);
  return j as T;
}

export function wsUrl(path: string): string {
  return `ws://${location.host}${path}`;
}

export function openSocket(path: string): WebSocket {
  return new WebSocket(wsUrl(path), ['nilbox.v1', `nilbox.token.${token}`]);
}

export type NbEvent = { id?: number; type: string; time?: string; [k: string]: any };

// Screens that need events beyond what App keeps (store progress, usage
// records) listen here; App forwards every event of its one stream.
const listeners = new Set<(e: NbEvent) => void>();
export function onEvent(f: (e: NbEvent) => void): () => void {
  listeners.add(f);
  return () => { listeners.delete(f); };
}
export function dispatch(e: NbEvent) {
  for (const f of listeners) f(e);
}

// Path segment: names from the API go into URLs encoded.
export const seg = encodeURIComponent;

// The event stream with reconnects: `since` resumes where it left off.
export function subscribe(onEvent: (e: NbEvent) => void,
                          onState: (up: boolean) => void): () => void {
  let last = -1;
  let ws: WebSocket | null = null;
  let closed = false;
  let timer = 0;
  const connect = () => {
    ws = openSocket(`/v1/events${last >= 0 ? `?since=${last}` : ''}`);
    ws.onopen = () => onState(true);
    ws.onmessage = (m) => {
      let e: NbEvent;
      try {
        e = JSON.parse(String(m.data));
      } catch {
        return;
      }
      if (e.type === 'hello') {
        if (last < 0) last = Number(e.last_id ?? 0);
        return;
      }
      if (typeof e.id === 'number') last = e.id;
      onEvent(e);
    };
    ws.onclose = () => {
      onState(false);
      if (!closed) timer = window.setTimeout(connect, 1000);
    };
  };
  connect();
  return () => {
    closed = true;
    clearTimeout(timer);
    ws?.close();
  };
}

export type Vm = {
  name: string; image: string; state: string; cpus: number; memory_mib: number;
  disk_bytes: number; agent: boolean; busy?: string; accel?: string; boot_secs?: number;
  last_exit?: string; accel_setting?: string; accel_setting_from?: string; accel_reason?: string;
};
export type Prompt = {
  id: number; vm: string; host: string; is_ip: boolean; port: number; deadline: string;
  timeout_s: number; waiters: number; kind?: string;
};
export type Rule = {
  id: number; action: string; target: string; port: number; vm: string | null; http: boolean;
  note: string | null;
};
export type Binding = {
  id: number; secret: string; host: string; path_prefix?: string; placement: string;
  header?: string; vm?: string | null;
};
export type Secret = { name: string; version: number; updated_at: number; bindings: Binding[] };
