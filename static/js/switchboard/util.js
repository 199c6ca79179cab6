/* switchboard.js, part: small stateless helpers the other parts share. */

export const RECENT_IDS = 64; // ids remembered per subscription, to drop a repeat (counted in stats)

export function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/** Calls fn; an exception thrown by the application's callback is rethrown on its own turn,
 *  where window.onerror or Node's uncaughtException sees it, and the library carries on. */
export function safely(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => { throw err; });
  }
}

export class Backoff {
  constructor({ base, cap }) {
    this.base = base;
    this.cap = cap;
    this.attempt = 0;
  }

  next() {
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  }

  reset() { this.attempt = 0; }
}

/** A multi-topic cursor as the server writes it (app/transports/cursor.py, format_compound):
 *  "<topic>~<cursor>" pairs joined by "~". Built here from each topic's own cursor, so that
 *  any transport can resume topics that another one delivered. */
export function compound(subs) {
  return subs.filter((sub) => sub.cursor).map((sub) => `${sub.topic}~${sub.cursor}`).join("~");
}

export function parseCompound(text) {
  const parts = (text || "").split("~");
  const positions = new Map();
  for (let i = 0; i + 1 < parts.length; i += 2) positions.set(parts[i], parts[i + 1]);
  return positions;
}

export function eventOf(message) {
  const { id, topic, type, data, sender, time } = message;
  return { id, topic, type, data, sender, time };
}
