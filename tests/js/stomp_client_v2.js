// stompjs 2.3.3 (the seed's client style: `Stomp.over(socket)`) under Node with the `ws`
// package, driven by tests/e2e/test_stomp_interop.py. It speaks STOMP 1.0/1.1 only, splits
// frames over 16 KiB into several WebSocket messages, and sends heart-beats as "\n".
//
// Usage: node stomp_client_v2.js <ws-url> [--heartbeat <outgoing>,<incoming>] [--login <l> --passcode <p>]
//
// Prints one JSON object per line on stdout (same records as stomp_client_v7.js):
//   open, connected, message (headers, body), receipt, error, heartbeat-in, heartbeat-out, close.
// Reads commands on stdin, one JSON object per line:
//   {"op":"subscribe","destination":...,"id":...,"headers":{...},"receipt":...}
//   {"op":"send","destination":...,"body":<text>,"headers":{...},"receipt":...}
//   {"op":"ack","message":<message-id>,"subscription":<id>}
//   {"op":"disconnect"}
// Exits when stdin ends.
"use strict";

const readline = require("readline");
const WebSocket = require("ws");
const Stomp = require("stompjs");

function parseArgs(argv) {
  const options = { url: null, heartbeat: [10000, 10000], login: undefined, passcode: undefined };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--heartbeat") options.heartbeat = argv[++i].split(",").map(Number);
    else if (arg === "--login") options.login = argv[++i];
    else if (arg === "--passcode") options.passcode = argv[++i];
    else if (options.url === null) options.url = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  return options;
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

const options = parseArgs(process.argv.slice(2));
// The protocols a 1.1 client offers (what SockJS-less Spring demos pass to new WebSocket).
const socket = new WebSocket(options.url, ["v11.stomp", "v10.stomp"]);
socket.addEventListener("open", () => emit({ kind: "open", protocol: socket.protocol }));
socket.addEventListener("close", (event) => emit({ kind: "close", code: event.code, reason: String(event.reason || "") }));

const client = Stomp.over(socket);
client.heartbeat.outgoing = options.heartbeat[0];
client.heartbeat.incoming = options.heartbeat[1];
client.debug = (line) => {
  if (line === ">>> PING") emit({ kind: "heartbeat-out" });
  else if (line === "<<< PONG") emit({ kind: "heartbeat-in" });
};
client.onreceipt = (frame) => emit({ kind: "receipt", id: frame.headers["receipt-id"] });

const subscriptions = {};
const commands = {
  subscribe(cmd) {
    const headers = { id: cmd.id, ...(cmd.headers || {}) };
    if (cmd.receipt) headers.receipt = cmd.receipt;
    subscriptions[cmd.id] = client.subscribe(cmd.destination, (message) => {
      emit({ kind: "message", headers: message.headers, body: message.body, binary: false });
    }, headers);
  },
  unsubscribe(cmd) {
    subscriptions[cmd.id].unsubscribe();
  },
  send(cmd) {
    const headers = { ...(cmd.headers || {}) };
    if (cmd.receipt) headers.receipt = cmd.receipt;
    client.send(cmd.destination, headers, cmd.body);
  },
  ack(cmd) {
    client.ack(cmd.message, cmd.subscription);
  },
  disconnect() {
    client.disconnect(() => emit({ kind: "disconnected" }));
  },
};

const connectHeaders = {};
if (options.login !== undefined) connectHeaders.login = options.login;
if (options.passcode !== undefined) connectHeaders.passcode = options.passcode;
client.connect(
  connectHeaders,
  (frame) => emit({ kind: "connected", headers: frame.headers }),
  (error) => {
    // A frame for an ERROR, a string when the socket closed.
    if (typeof error === "string") return;
    emit({ kind: "error", headers: error.headers, body: error.body });
  },
);

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
  socket.terminate();
  process.exit(0);
});
