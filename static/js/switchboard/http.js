/* switchboard.js, part: what the HTTP transports (SSE, long polling, polling) share. */

/** Base of the HTTP transports: one request at a time, restarted when the topics change. */
export class HttpTransport {
  constructor(client, name) {
    this.name = name;
    this.client = client;
    this.ended = false;
    this.proven = false;
    this.gen = 0; // bumped to abandon the request in flight
    this.controller = null;
    this.timers = new Set();
    this.wake = null; // resolves an idle wait
  }

  start() { this._loop(); }

  /** The loop every HTTP transport runs: while there is no topic, wait; else one round for
   *  the active topics (a stream, a long poll, a poll of each). `_round` resolves true to
   *  go on, false when the transport ended; an error ends it, unless the round was abandoned
   *  for new topics (the generation moved on). */
  async _loop() {
    const state = { retried: false }; // one retry with a new token after a 401
    while (!this.ended) {
      const subs = this.client._activeSubs();
      if (!subs.length) {
        await this._idle();
        continue;
      }
      const gen = this.gen;
      try {
        if (!(await this._round(subs, gen, state))) return;
      } catch (err) {
        if (gen === this.gen && !this.ended) this._end(err);
        else if (!this.ended) continue;
        return;
      }
    }
  }

  _after(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  _clearTimers() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  /** Wait until the topics change (or `ms` pass, when given). */
  _idle(ms) {
    return new Promise((resolve) => {
      this.wake = resolve;
      if (ms !== undefined) this._after(ms, resolve);
    });
  }

  /** The topics changed: abandon the request in flight and start over at once. */
  _kick() {
    this.gen += 1;
    if (this.controller) this.controller.abort();
    this._clearTimers();
    const wake = this.wake;
    this.wake = null;
    if (wake) wake();
  }

  add() { this._kick(); }

  remove() { this._kick(); }

  _prove(subs) {
    if (!this.proven) {
      this.proven = true;
      this.client._established(this);
    }
    for (const sub of subs) if (this.client._subs.get(sub.topic) === sub) sub._setState("subscribed", this.name);
  }

  /** A refusal of the whole request: the topics it is about are failed (403 names one topic
   *  at a time, so each is asked alone), or the connection ends. Returns true to go on. */
  async _refused(err, subs, state) {
    const c = this.client;
    if (err.status === 401 && c._tokens.refreshable && !state.retried) {
      state.retried = true; // the token may have run out: once more with a new one
      c._tokens.stale = true;
      return true;
    }
    if (err.status === 403 && err.code === "forbidden") {
      const refused = await c._forbidden(subs, this.name);
      if (this.ended) return false;
      for (const [sub, why] of refused) c._fail(sub, why);
      if (refused.length) return true;
    }
    this._end(err);
    return false;
  }

  _end(err, info = {}) {
    if (this.ended) return;
    this.stop();
    this.client._ended(this, err, { proven: this.proven, ...info });
  }

  stop() {
    this.ended = true;
    this._kick();
  }
}
