// STOMP over SockJS under Node, with sockjs-client 1.6.1 forced onto one transport, and either
// stompjs 2.3.3 (the seed's `Stomp.over(new SockJS(url))`) or @stomp/stompjs 7
// (`webSocketFactory: () => new SockJS(url)`). Driven by tests/e2e/test_sockjs_stomp.py.
//
// Usage: node sockjs_stomp_client.js <http-url of the SockJS endpoint> --lib v2|v7
//        [--transport websocket|xhr-streaming|xhr-polling|eventsource] [--heartbeat <out>,<in>]
//        [--login <l> --passcode <p>]
//
// Prints one JSON object per line, the records of stomp_client_v2.js / stomp_client_v7.js:
//   open (with the SockJS transport in use), connected, message, receipt, error,
//   heartbeat-in, heartbeat-out, close.
// Reads the same commands on stdin (subscribe, unsubscribe, send, ack, nack, begin, commit,
// abort, disconnect). Exits when stdin ends.
"use strict";

const readline = require("readline");
const SockJS = require("sockjs-client");

function parseArgs(argv) {
  const options = { url: null, lib: "v7", transport: null, heartbeat: [10000, 10000], headers: {} };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--lib") options.lib = argv[++i];
    else if (arg === "--transport") options.transport = argv[++i];
    else if (arg === "--heartbeat") options.heartbeat = argv[++i].split(",").map(Number);
    else if (arg === "--login") options.headers.login = argv[++i];
    else if (arg === "--passcode") options.headers.passcode = argv[++i];
    else if (options.url === null) options.url = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  return options;
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

const options = parseArgs(process.argv.slice(2));
const subscriptions = {};
const transactions = {};
let socket = null;

function openSocket() {
  const sockOptions = options.transport ? { transports: [options.transport] } : {};
  socket = new SockJS(options.url, null, sockOptions);
  socket.addEventListener("open", () => emit({ kind: "open", transport: socket.transport, protocol: socket.protocol || null }));
  socket.addEventListener("close", (event) => emit({ kind: "close", code: event.code, reason: String(event.reason || "") }));
  return socket;
}

function onMessage(message) {
  emit({ kind: "message", headers: message.headers, body: message.body, binary: false });
}

let client;
const commands = {};

if (options.lib === "v2") {
  const Stomp = require("stompjs");
  client = Stomp.over(openSocket());
  client.heartbeat.outgoing = options.heartbeat[0];
  client.heartbeat.incoming = options.heartbeat[1];
  client.debug = (line) => {
    if (line === ">>> PING") emit({ kind: "heartbeat-out" });
    else if (line === "<<< PONG") emit({ kind: "heartbeat-in" });
  };
  client.onreceipt = (frame) => emit({ kind: "receipt", id: frame.headers["receipt-id"] });
  Object.assign(commands, {
    subscribe(cmd) {
      const headers = { id: cmd.id, ...(cmd.headers || {}) };
      if (cmd.receipt) headers.receipt = cmd.receipt;
      subscriptions[cmd.id] = client.subscribe(cmd.destination, onMessage, headers);
    },
    unsubscribe(cmd) { subscriptions[cmd.id].unsubscribe(); },
    send(cmd) {
      const headers = { ...(cmd.headers || {}) };
      if (cmd.receipt) headers.receipt = cmd.receipt;
      client.send(cmd.destination, headers, cmd.body);
    },
    ack(cmd) { client.ack(cmd.message, cmd.subscription, cmd.headers || {}); },
    nack(cmd) { client.nack(cmd.message, cmd.subscription, cmd.headers || {}); },
    begin(cmd) { transactions[cmd.id] = client.begin(cmd.id); },
    commit(cmd) { transactions[cmd.id].commit(); },
    abort(cmd) { transactions[cmd.id].abort(); },
    disconnect() { client.disconnect(() => emit({ kind: "disconnected" })); },
  });
  client.connect(options.headers, (frame) => emit({ kind: "connected", headers: frame.headers }), (error) => {
    if (typeof error === "string") return; // the socket closed: the close record says how
    emit({ kind: "error", headers: error.headers, body: error.body });
  });
} else {
  const { Client } = require("@stomp/stompjs");
  client = new Client({
    webSocketFactory: openSocket,
    connectHeaders: options.headers,
    heartbeatOutgoing: options.heartbeat[0],
    heartbeatIncoming: options.heartbeat[1],
    reconnectDelay: 0,
    debug: (line) => { if (line === ">>> PING") emit({ kind: "heartbeat-out" }); },
    onHeartbeatReceived: () => emit({ kind: "heartbeat-in" }),
    onConnect: (frame) => emit({ kind: "connected", headers: frame.headers }),
    onStompError: (frame) => emit({ kind: "error", headers: frame.headers, body: frame.body }),
    onUnhandledReceipt: (frame) => emit({ kind: "receipt", id: frame.headers["receipt-id"] }),
    onUnhandledMessage: (message) => emit({ kind: "unhandled", headers: message.headers }),
  });
  Object.assign(commands, {
    subscribe(cmd) {
      const headers = { ...(cmd.headers || {}) };
      if (cmd.receipt) headers.receipt = cmd.receipt;
      subscriptions[cmd.id] = client.subscribe(cmd.destination, onMessage, { id: cmd.id, ...headers });
    },
    unsubscribe(cmd) { subscriptions[cmd.id].unsubscribe(); },
    send(cmd) {
      const headers = { ...(cmd.headers || {}) };
      if (cmd.receipt) headers.receipt = cmd.receipt;
      client.publish({ destination: cmd.destination, body: cmd.body, headers });
    },
    ack(cmd) { client.ack(cmd.message, cmd.subscription, cmd.headers || {}); },
    nack(cmd) { client.nack(cmd.message, cmd.subscription, cmd.headers || {}); },
    begin(cmd) { transactions[cmd.id] = client.begin(cmd.id); },
    commit(cmd) { transactions[cmd.id].commit(); },
    abort(cmd) { transactions[cmd.id].abort(); },
    disconnect() { client.deactivate().then(() => emit({ kind: "disconnected" })); },
  });
  client.activate();
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  try {
    commands[cmd.op](cmd);
  } catch (err) {
    emit({ kind: "exception", op: cmd.op, message: String(err && err.message) });
  }
});
process.stdin.on("end", () => {
  try { socket.close(); } catch (err) { /* already closed */ }
  process.exit(0);
});
