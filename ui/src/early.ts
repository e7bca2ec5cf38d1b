// The first API answers the VMs screen needs, asked for as soon as the page
// has parsed: `boot.ts` (its own tiny entry, run before app.js has even
// been compiled) imports this module, and App imports the same instance.
// Without it, the fetches would start only after React and every screen had
// been compiled and rendered once: the VM list would wait for two round
// trips in sequence instead of one in parallel with the compile (bench/ui).
import { api, token, Vm } from './api';

type Early<T> = { promise: Promise<T>; value?: T; error?: unknown };

function start<T>(path: string, pick: (j: any) => T): Early<T> | null {
  if (!token) return null;
  const e: Early<T> = { promise: api('GET', path).then(pick) };
  // Kept for a synchronous read by the first render; the promise keeps
  // its rejection for whoever awaits it (App shows it).
  e.promise.then((v) => { e.value = v; }, (err) => { e.error = err; });
  return e;
}

export const earlyVms = start<Vm[]>('/v1/vms', (j) => j.vms);
export const earlyImages = start<string[]>('/v1/images', (j) => j.images.map((i: any) => i.name));

// Each answer serves the first load only: a later load asks again.
let vmsTaken = false;
export function takeEarlyVms(): Promise<Vm[]> | null {
  if (vmsTaken || !earlyVms) return null;
  vmsTaken = true;
  return earlyVms.promise;
}
let imagesTaken = false;
export function takeEarlyImages(): Promise<string[]> | null {
  if (imagesTaken || !earlyImages) return null;
  imagesTaken = true;
  return earlyImages.promise;
}
