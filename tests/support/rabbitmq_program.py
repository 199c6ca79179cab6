"""A work-queue program as one writes it for RabbitMQ's Web-STOMP plugin with stomp.py,
run unchanged against Switchboard by tests/e2e/test_stomp_interop_broker.py (only the host,
port and path differ: RabbitMQ's are host:15674/ws).

Usage: python rabbitmq_program.py <host> <port> <path> <tasks>

Two workers share /queue/tasks with prefetch-count 1 and client-individual acks; the first
task is NACKed once and comes back redelivered; each finished task is logged to
/topic/logs.info, which a logger follows as /topic/logs.#; the producer sends the tasks in a
transaction and waits for the COMMIT's receipt. Prints one JSON line and exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import stomp


def main(host: str, port: int, path: str, count: int) -> dict:
    done: dict[str, list[int]] = {"w1": [], "w2": []}
    redelivered: list[int] = []
    logs: list[str] = []
    lock = threading.Lock()
    finished = threading.Event()
    committed = threading.Event()
    state = {"nacked": False}

    def connection(listener) -> stomp.WSStompConnection:
        conn = stomp.WSStompConnection([(host, port)], ws_path=path, heartbeats=(0, 0))
        conn.set_listener("program", listener)
        conn.connect("guest", "guest", wait=True)
        return conn

    class Logger(stomp.ConnectionListener):
        def on_message(self, frame):
            with lock:
                logs.append(frame.body)

    class Worker(stomp.ConnectionListener):
        def __init__(self, name):
            self.name = name
            self.conn = None

        def on_message(self, frame):
            task = json.loads(frame.body)["task"]
            headers = frame.headers
            with lock:
                if headers.get("redelivered") == "true":
                    redelivered.append(task)
                first = task == 0 and not state["nacked"]
                state["nacked"] = state["nacked"] or first
            if first:
                self.conn.nack(headers["ack"])
                return
            time.sleep(0.005)
            self.conn.send("/topic/logs.info", f"{self.name} did {task}")
            self.conn.ack(headers["ack"])
            with lock:
                done[self.name].append(task)
                if len(done["w1"]) + len(done["w2"]) == count:
                    finished.set()

    class Producer(stomp.ConnectionListener):
        def on_receipt(self, frame):
            if frame.headers.get("receipt-id") == "committed":
                committed.set()

    logger = connection(Logger())
    logger.subscribe("/topic/logs.#", id="logs", ack="auto")
    workers = []
    for name in ("w1", "w2"):
        listener = Worker(name)
        listener.conn = connection(listener)
        listener.conn.subscribe("/queue/tasks", id=name, ack="client-individual", headers={"prefetch-count": "1"})
        workers.append(listener.conn)
    producer = connection(Producer())
    transaction = producer.begin()
    for task in range(count):
        producer.send(
            "/queue/tasks",
            json.dumps({"task": task}),
            content_type="application/json",
            headers={"persistent": "true", "transaction": transaction},
        )
    producer.commit(transaction, receipt="committed")
    if not committed.wait(20) or not finished.wait(30):
        raise SystemExit(json.dumps({"error": "timed out", "done": done}))
    time.sleep(0.2)  # the last log line
    for conn in (logger, producer, *workers):
        conn.disconnect()
    return {"done": done, "redelivered": redelivered, "logs": logs}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))), flush=True)
