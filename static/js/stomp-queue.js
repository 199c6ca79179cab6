/* The STOMP page's work queue: two consumers, each its own STOMP session (the vendored
 * @stomp/stompjs, global StompJs), share one /queue/<name> with ack:client-individual and
 * prefetch-count:1; a third session, opened on the first "Send jobs", SENDs the jobs. Each
 * job goes to exactly one consumer and stays that consumer's until it ACKs it; a NACK or a
 * disconnect puts it back for the other consumer, which gets it with redelivered:true and a
 * higher delivery-count. Every job shown says which, as the MESSAGE's own headers. */
(function () {
  "use strict";
  const S = window.Switchboard;
  const StompJs = window.StompJs;
  const root = document.querySelector("[data-queue-panel]");
  if (!root || !StompJs) return;

  const destination = root.dataset.queueDestination; // e.g. /queue/jobs
  const brokerUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${new URL(S.data.stompUrl).pathname}`;
  const batch = Math.random().toString(36).slice(2, 8); // this page's jobs, told apart from another tab's
  const CONNECT_TIMEOUT_MS = 10000;
  const RECEIPT_TIMEOUT_MS = 10000;
  const MAX_JOBS_SHOWN = 40; // per consumer; the counters keep counting past it

  const form = root.querySelector("[data-queue-form]");
  const jobsInput = root.querySelector("#queue-jobs");
  const autoAck = root.querySelector("[data-auto-ack]");
  const statusEl = root.querySelector("[data-queue-status]");
  let nextJob = 0;
  let nextReceipt = 0;

  function setStatus(el, text, kind) {
    el.replaceChildren(text);
    if (kind) el.dataset.kind = kind;
    else delete el.dataset.kind;
  }

  /** A stompjs client that reconnects with capped exponential backoff, jitter added. */
  function newClient(callbacks) {
    let attempts = 0;
    return new StompJs.Client({
      brokerURL: brokerUrl,
      reconnectDelay: 1000,
      maxReconnectDelay: 15000,
      reconnectTimeMode: StompJs.ReconnectionTimeMode.EXPONENTIAL,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      beforeConnect: async () => {
        attempts += 1;
        if (attempts > 1) await S.sleep(Math.random() * 500);
      },
      ...callbacks,
    });
  }

  /** Resolves when the RECEIPT named `receipt` comes; rejects after the timeout or an ERROR. */
  function receiptOf(client, receipt, pending) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(receipt);
        reject(new S.PageError(S.t("no RECEIPT within {s} s", { s: RECEIPT_TIMEOUT_MS / 1000 })));
      }, RECEIPT_TIMEOUT_MS);
      pending.set(receipt, (error) => {
        clearTimeout(timer);
        reject(error);
      });
      client.watchForReceipt(receipt, () => {
        clearTimeout(timer);
        pending.delete(receipt);
        resolve();
      });
    });
  }

  /** An ERROR frame as an Error the page can explain: a Refusal (401/403) or the server's words. */
  function stompError(frame) {
    return S.Refusal.fromStompError(frame)
      || new S.PageError(S.t("ERROR from the server: {message}", { message: frame.headers.message || "?" }));
  }

  // -- the consumers -------------------------------------------------------------------------

  class Consumer {
    constructor(el) {
      this.el = el;
      this.name = el.dataset.consumer;
      this.list = el.querySelector("[data-jobs]");
      this.statusEl = el.querySelector("[data-consumer-status]");
      this.toggle = el.querySelector("[data-consumer-toggle]");
      this.counters = new S.Counters(el);
      this.held = new Set(); // jobs given to this consumer and not yet settled
      this.pending = new Map(); // receipt -> reject
      this.refusal = null;
      this.client = newClient({
        onConnect: () => this.subscribe(),
        onStompError: (frame) => this.failed(frame),
        onWebSocketClose: () => this.closed(),
      });
      this.toggle.addEventListener("click", () => this.switchOver());
    }

    state(name) { this.el.dataset.state = name; }

    subscribe() {
      this.refusal = null;
      const receipt = `queue-sub-${this.name}-${++nextReceipt}`;
      const ready = receiptOf(this.client, receipt, this.pending);
      // stompjs only logs what a frame handler throws: say it as an error, where tests see it.
      const take = (message) => {
        try {
          this.take(message);
        } catch (err) {
          console.error("work queue: a MESSAGE could not be shown", err);
        }
      };
      this.client.subscribe(destination, take, {
        id: `queue-${this.name}`, ack: "client-individual", "prefetch-count": "1", receipt,
      });
      ready.then(() => {
        this.state("ready");
        setStatus(this.statusEl, S.tx("Ready: consuming {destination}", { destination: S.verbatim(destination) }), "ok");
      }, (err) => setStatus(this.statusEl, S.explain(err), "error"));
    }

    take(message) {
      const headers = message.headers;
      let body = null;
      try {
        body = JSON.parse(message.body);
      } catch (err) { /* another producer's job: shown by its id */ }
      const job = {
        message,
        number: body && Number.isInteger(body.job) ? body.job : null,
        batch: body && typeof body.batch === "string" ? body.batch : "",
        count: Number(headers["delivery-count"] || 1),
        redelivered: headers.redelivered === "true",
      };
      job.label = S.t("job {id}", { id: job.number === null ? headers["message-id"] : job.number });
      this.render(job);
      this.counters.add("received");
      if (job.redelivered) this.counters.add("redelivered");
      this.held.add(job);
      if (autoAck.checked) this.ack(job);
    }

    render(job) {
      const li = job.item = document.createElement("li");
      li.className = "job";
      li.dataset.job = `${job.batch}:${job.number === null ? job.message.headers["message-id"] : job.number}`;
      li.dataset.batch = job.batch;
      li.dataset.deliveryCount = String(job.count);
      li.dataset.redelivered = String(job.redelivered);
      const name = document.createElement("span");
      name.className = "job-name";
      name.textContent = job.label;
      const count = document.createElement("code");
      count.textContent = `delivery-count:${job.count}`;
      li.append(name, count);
      if (job.redelivered) {
        const flag = document.createElement("code");
        flag.dataset.redeliveredFlag = "";
        flag.textContent = "redelivered:true";
        li.append(flag);
      }
      const state = document.createElement("span");
      state.className = "job-state";
      li.append(state);
      const ack = this.button(S.t("ACK"), S.t("ACK {job}", { job: job.label }), "ack", () => this.ack(job));
      const nack = this.button(S.t("NACK"), S.t("NACK {job}", { job: job.label }), "nack", () => this.nack(job));
      li.append(ack, nack);
      job.state = state;
      this.show(job, "held", S.t("held: waiting for this consumer's answer"));
      this.list.prepend(li);
      while (this.list.children.length > MAX_JOBS_SHOWN) this.list.lastElementChild.remove();
    }

    button(text, label, action, onClick) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = text;
      button.setAttribute("aria-label", label);
      button.dataset.action = action;
      button.addEventListener("click", onClick);
      return button;
    }

    show(job, state, text) {
      job.item.dataset.state = state;
      job.state.textContent = text;
      if (state !== "held") for (const button of job.item.querySelectorAll("button")) button.remove();
    }

    ack(job) {
      if (!this.held.delete(job) || !this.client.connected) return;
      job.message.ack();
      this.counters.add("acked");
      this.show(job, "acked", S.t("acknowledged: gone from the queue"));
    }

    nack(job) {
      if (!this.held.delete(job) || !this.client.connected) return;
      job.message.nack();
      this.show(job, "nacked", S.t("refused: back in the queue for the other consumer"));
    }

    /** The socket closed: what this consumer held is the queue's again (the broker gives it back). */
    closed() {
      for (const job of this.held) this.show(job, "given-back", S.t("given back: this consumer disconnected"));
      this.held.clear();
      for (const reject of this.pending.values()) reject(new S.PageError(S.t("the connection closed")));
      this.pending.clear();
      if (this.refusal) return;
      if (this.client.active) {
        this.state("connecting");
        setStatus(this.statusEl, S.t("Disconnected; reconnecting"), "error");
      } else {
        this.state("off");
        setStatus(this.statusEl, S.t("Disconnected on purpose: what it held went back to the queue"), "error");
      }
    }

    /** A refusal ends the session for good (it would be refused again); any other ERROR reconnects. */
    failed(frame) {
      const error = stompError(frame);
      for (const reject of this.pending.values()) reject(error);
      this.pending.clear();
      if (error instanceof S.Refusal) {
        this.refusal = error;
        this.state("refused");
        this.client.deactivate();
        this.toggle.textContent = S.t("Reconnect");
      }
      setStatus(this.statusEl, S.explain(error), "error");
    }

    switchOver() {
      if (this.client.active) {
        this.client.deactivate();
        this.toggle.textContent = S.t("Reconnect");
      } else {
        this.refusal = null;
        this.state("connecting");
        setStatus(this.statusEl, S.t("Connecting…"));
        this.toggle.textContent = S.t("Disconnect");
        this.client.activate();
      }
    }
  }

  const consumers = [...root.querySelectorAll("[data-consumer]")].map((el) => new Consumer(el));

  autoAck.addEventListener("change", () => {
    if (!autoAck.checked) return;
    for (const consumer of consumers) for (const job of [...consumer.held]) consumer.ack(job);
  });

  // -- the producer: a third session, opened on the first send ----------------------------

  const producer = {
    pending: new Map(),
    connected: null, // a promise of the CONNECTED frame, while the session is wanted
    client: null,
    open() {
      if (this.connected) return this.connected;
      this.connected = new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this.close();
          reject(new S.PageError(S.t("no connection to the server within {s} s", { s: CONNECT_TIMEOUT_MS / 1000 })));
        }, CONNECT_TIMEOUT_MS);
        this.client = newClient({
          onConnect: () => {
            clearTimeout(timer);
            resolve(this.client);
          },
          onStompError: (frame) => {
            const error = stompError(frame);
            clearTimeout(timer);
            reject(error);
            for (const fail of this.pending.values()) fail(error);
            this.pending.clear();
            this.close(); // a new session on the next send
          },
        });
        this.client.activate();
      });
      return this.connected;
    },
    close() {
      if (this.client) this.client.deactivate();
      this.client = null;
      this.connected = null;
    },
  };

  async function sendJobs(n) {
    const client = await producer.open();
    if (!client.connected) throw new S.PageError(S.t("not connected; the page is reconnecting"));
    const receipt = `queue-send-${++nextReceipt}`;
    const confirmed = receiptOf(client, receipt, producer.pending);
    for (let i = 1; i <= n; i += 1) {
      nextJob += 1;
      const headers = { "content-type": "application/json" };
      if (i === n) headers.receipt = receipt; // frames are handled in order: one RECEIPT covers all
      client.publish({ destination, body: JSON.stringify({ job: nextJob, batch }), headers });
    }
    await confirmed;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const n = Math.max(1, Math.min(20, Math.round(Number(jobsInput.value)) || 1));
    const button = form.querySelector("[data-queue-send]");
    button.disabled = true;
    setStatus(statusEl, S.t("Sending…"));
    try {
      await sendJobs(n);
      setStatus(statusEl, S.tn("Sent {n} job; the RECEIPT confirmed it.", "Sent {n} jobs; the RECEIPT confirmed them.", n), "ok");
    } catch (err) {
      setStatus(statusEl, S.tx("Not sent: {why}", { why: S.explain(err) }), "error");
    } finally {
      button.disabled = false;
    }
  });

  window.addEventListener("pagehide", () => {
    for (const consumer of consumers) consumer.client.deactivate();
    producer.close();
  });
  window.addEventListener("pageshow", (ev) => {
    if (!ev.persisted) return; // back from the back/forward cache: the consumers come back
    for (const consumer of consumers) if (!consumer.refusal) consumer.client.activate();
  });

  for (const consumer of consumers) consumer.client.activate();
})();
