/* switchboard.js, part: long polling and interval polling. */

import { SwitchboardError, httpError } from "./errors.js";
import { HttpTransport } from "./http.js";
import { TokenSource } from "./tokens.js";
import { compound, eventOf, parseCompound } from "./util.js";

/** Long polling of every topic in one request: /api/long-poll?topic=a&topic=b&since=... */
export class LongPollTransport extends HttpTransport {
  constructor(client) {
    super(client, "long-polling");
  }

  /** One long poll of every topic: positions first, then the answer applied. */
  async _round(subs, gen, state) {
    const c = this.client;
    await c._position(subs, this.name);
    if (gen !== this.gen || subs.some((sub) => !sub.active)) return true;
    const token = await c._tokens.get();
    if (gen !== this.gen) return true;
    // A topic that never had an event has no position in a long poll: one published on
    // it between two polls would be missed. Its history, read after each answer, has it.
    const empty = subs.filter((sub) => !sub.cursor);
    const res = await this._poll(subs, token, gen);
    if (res === null) return true; // abandoned for new topics
    if (res.status !== 204 && res.status !== 200) return this._refused(httpError(res, this.name), subs, state);
    this._prove(subs);
    const page = res.status === 200 ? res.json() : null;
    if (empty.length) await c._catchUp(empty, this.name);
    if (gen !== this.gen) return true;
    if (page) this._apply(subs.filter((sub) => !empty.includes(sub)), page);
    state.retried = false;
    return true;
  }

  async _poll(subs, token, gen) {
    const c = this.client;
    let hold = c.options.longPollTimeout;
    const left = TokenSource.secondsLeft(token);
    if (left !== null) hold = Math.max(0, Math.min(hold, Math.floor(left - 2))); // answered before exp
    const params = new URLSearchParams();
    for (const sub of subs) params.append("topic", sub.topic);
    params.set("timeout", String(hold));
    params.set("limit", String(c.options.pageLimit));
    const since = compound(subs);
    if (since) params.set("since", since);
    const controller = new AbortController();
    this.controller = controller;
    let why = null;
    // A connection that died without a word would hang for ever: give up a while after the hold.
    this._after(hold * 1000 + 15000, () => {
      why = new SwitchboardError("timeout", "no answer to a long poll within its hold plus 15 s", { transport: this.name });
      controller.abort();
    });
    // Held by the server without failing: the path works.
    this._after(Math.min(2000, c.options.connectTimeout), () => { if (gen === this.gen) this._prove(subs); });
    try {
      return await c._http("long-poll", this.name, `${c._url("longPoll")}?${params}`, { token, signal: controller.signal });
    } catch (err) {
      if (gen !== this.gen && !why) return null;
      throw why || err;
    } finally {
      this._clearTimers();
    }
  }

  _apply(subs, page) {
    const c = this.client;
    const mine = (topic) => {
      const sub = c._subs.get(topic);
      return sub && subs.includes(sub) ? sub : null;
    };
    // A topic's gap is told with its first event after the hole (app/transports/longpoll.py).
    for (const topic of page.gaps || []) {
      const sub = mine(topic);
      if (sub) sub._gap(false, this.name);
    }
    for (const event of page.events || []) {
      const sub = mine(event.topic);
      if (sub) sub._deliver(eventOf(event), this.name);
    }
    // Every topic with history has a position in the answer, quiet ones too.
    for (const [topic, cursor] of parseCompound(page.cursor)) {
      const sub = mine(topic);
      if (sub) sub.cursor = cursor;
    }
  }
}

/** Interval polling, one request per topic a round, If-None-Match for a body-less 304.
 *  Only when asked for by name: it is the demo of what the other three save. */
export class PollingTransport extends HttpTransport {
  constructor(client) {
    super(client, "polling");
  }

  /** One round: a poll of each topic, then the interval (none after a full page). */
  async _round(subs, gen, state) {
    const c = this.client;
    let full = false;
    for (const sub of subs) {
      if (gen !== this.gen || this.ended) break;
      if (c._subs.get(sub.topic) !== sub || !sub.active) continue;
      const res = await this._poll(sub, gen);
      if (res === null) break;
      if (res.status === 304 || res.status === 200) {
        this._prove([sub]);
        if (res.status === 200) full = this._apply(sub, res.json()) || full;
        state.retried = false;
      } else if (!(await this._refused(httpError(res, this.name), [sub], state))) {
        return false;
      }
    }
    if (gen === this.gen && !this.ended) await this._idle(full ? 0 : c.options.pollInterval);
    return true;
  }

  async _poll(sub, gen) {
    const c = this.client;
    const first = !sub._positioned;
    const params = new URLSearchParams({ limit: String(first ? 1 : c.options.pageLimit) });
    const headers = {};
    if (sub.cursor) {
      params.set("since", sub.cursor);
      headers["If-None-Match"] = `"${sub.cursor}"`;
    }
    const controller = new AbortController();
    this.controller = controller;
    let why = null;
    this._after(c.options.replyTimeout, () => {
      why = new SwitchboardError("timeout", `no answer to a poll within ${c.options.replyTimeout} ms`, { transport: this.name });
      controller.abort();
    });
    try {
      return await c._http("poll", this.name, `${c._url("events", false, sub.topic)}?${params}`,
        { headers, signal: controller.signal });
    } catch (err) {
      if (gen !== this.gen && !why) return null;
      throw why || err;
    } finally {
      this._clearTimers();
    }
  }

  /** Returns true when the answer was a full page (more are waiting: no pause). */
  _apply(sub, page) {
    if (!sub._positioned) { // the first poll only finds where the topic is now
      sub._positioned = true;
      if (!sub.cursor) sub.cursor = page.cursor || null;
      return false;
    }
    if (page.gap) sub._gap(false, this.name);
    for (const event of page.events) sub._deliver(eventOf(event), this.name);
    if (page.cursor) sub.cursor = page.cursor;
    return page.events.length >= this.client.options.pageLimit;
  }
}
