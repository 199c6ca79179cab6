/* switchboard.js, part: one followed topic, its cursor, and what is told to the application. */

import { SwitchboardError } from "./errors.js";
import { RECENT_IDS, safely } from "./util.js";

/** One topic followed by a Switchboard; made by sb.subscribe(). */
export class Subscription {
  constructor(client, topic, options) {
    this.topic = topic;
    this.cursor = options.since || null; // the id of the last event delivered: where a resume starts
    this.state = "subscribing"; // subscribed, subscribing (again, after a drop), unsubscribed, failed
    this.options = options;
    this._client = client;
    this._recent = [];
    this._recentSet = new Set();
    this._gapTold = false; // a gap was told and no event came since: the same hole is not told twice
    this._attached = false; // history read (if asked): transports may follow it
    this._positioned = Boolean(this.cursor); // it has a position (or was found to have none yet)
    this.ready = new Promise((resolve, reject) => { this._ready = { resolve, reject }; });
    this.ready.catch(() => {}); // awaited by whoever wants it; never an unhandled rejection
  }

  /** Stop following the topic. */
  unsubscribe() { this._client._unsubscribe(this); }

  get active() { return this._attached && (this.state === "subscribing" || this.state === "subscribed"); }

  _deliver(event, transport, history = false) {
    if (this.state === "unsubscribed" || this.state === "failed") return;
    if (this._recentSet.has(event.id)) {
      this._client.stats.duplicates += 1;
      return;
    }
    this._recent.push(event.id);
    this._recentSet.add(event.id);
    if (this._recent.length > RECENT_IDS) this._recentSet.delete(this._recent.shift());
    this.cursor = event.id;
    this._gapTold = false;
    this._client.stats.events += 1;
    safely(this.options.onEvent, event, { history, transport });
  }

  _gap(slow, transport) {
    if (!this.active || this._gapTold) return;
    this._gapTold = true;
    this._client.stats.gaps += 1;
    safely(this.options.onGap, { topic: this.topic, slow: Boolean(slow), transport });
  }

  _setState(state, transport) {
    if (this.state === state || this.state === "unsubscribed" || this.state === "failed") return;
    this.state = state;
    if (state === "subscribed") this._ready.resolve(this);
    safely(this.options.onState, { state, transport });
  }

  _end(state, err) {
    if (this.state === "unsubscribed" || this.state === "failed") return;
    this.state = state;
    this._ready.reject(err || new SwitchboardError("unsubscribed", `unsubscribed from ${this.topic}`));
    safely(this.options.onState, { state });
  }
}
