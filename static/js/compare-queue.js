/* The compare page's work queue, beside the broadcast topic: jobs sent over HTTP
 * (POST /api/queues/<name>/messages, one request at a time) to one queue that two /ws
 * connections consume ({op: consume, prefetch: 1}), each acknowledging every job as it
 * arrives. Each job goes to exactly one consumer: their two counts add up to the jobs sent.
 * The sockets open on the first send; a socket that closes opens again on the next. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const root = document.querySelector("[data-queue-panel]");
  if (!root) return;

  const queue = root.dataset.queueName;
  const sendUrl = root.dataset.queueUrl;
  const OPEN_TIMEOUT_MS = 10000;
  const form = root.querySelector("[data-queue-form]");
  const statusEl = root.querySelector("[data-queue-status]");
  let sent = 0;

  function wsUrl() {
    const url = new URL(S.data.wsUrl, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function setStatus(text, kind) {
    statusEl.replaceChildren(text);
    if (kind) statusEl.dataset.kind = kind;
    else delete statusEl.dataset.kind;
  }

  function setStat(key, value) {
    root.querySelector(`[data-queue-stat="${key}"]`).textContent = String(value);
  }

  /** One /ws consumer of the queue: counts what it takes, acknowledges each at once. */
  class Consumer {
    constructor(name) {
      this.name = name;
      this.taken = 0;
      this.ws = null;
      this.ready = null; // a promise of the consume op's "ok", while the socket is open
    }

    open() {
      if (this.ready) return this.ready;
      this.ready = new Promise((resolve, reject) => {
        const ws = this.ws = new WebSocket(wsUrl());
        const fail = (error) => {
          clearTimeout(timer);
          this.ready = null;
          reject(error);
        };
        const timer = setTimeout(() => {
          ws.close();
          fail(new S.PageError(S.t("no connection to the server within {s} s", { s: OPEN_TIMEOUT_MS / 1000 })));
        }, OPEN_TIMEOUT_MS);
        ws.addEventListener("open", () => {
          ws.send(JSON.stringify({ op: "consume", ref: `consume-${this.name}`, queue, prefetch: 1 }));
        });
        ws.addEventListener("message", (ev) => {
          const op = JSON.parse(ev.data);
          if (op.op === "ok" && op.ref === `consume-${this.name}`) {
            clearTimeout(timer);
            resolve();
          } else if (op.op === "message") {
            ws.send(JSON.stringify({ op: "ack", id: op.id }));
            this.taken += 1;
            setStat(this.name, this.taken);
          } else if (op.op === "error") {
            const error = S.Refusal.fromWsError(op) || new S.ServerError(null, op.error, op.message);
            if (op.ref === `consume-${this.name}`) {
              ws.close();
              fail(error);
            } else {
              setStatus(S.explain(error), "error");
            }
          }
        });
        ws.addEventListener("close", () => {
          if (this.ws === ws) this.ws = null;
          fail(new S.PageError(S.t("the connection closed")));
        });
      });
      return this.ready;
    }
  }

  const consumers = [new Consumer("1"), new Consumer("2")];

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = form.querySelector("#queue-jobs");
    const n = Math.max(1, Math.min(50, Math.round(Number(input.value)) || 1));
    const button = form.querySelector("[data-queue-send]");
    button.disabled = true;
    setStatus(S.t("Sending…"));
    try {
      await Promise.all(consumers.map((consumer) => consumer.open()));
      for (let i = 0; i < n; i += 1) {
        await S.publishHTTP(sendUrl, { job: sent + 1 }, "job");
        sent += 1;
        setStat("sent", sent);
      }
      setStatus(S.tn("Sent {n} job to the queue.", "Sent {n} jobs to the queue; the consumers shared them.", n), "ok");
    } catch (err) {
      setStatus(S.tx("Not sent: {why}", { why: S.explain(err) }), "error");
    } finally {
      button.disabled = false;
    }
  });

  window.addEventListener("pagehide", () => {
    for (const consumer of consumers) if (consumer.ws) consumer.ws.close();
  });
})();
