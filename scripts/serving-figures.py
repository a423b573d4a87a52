#!/usr/bin/env python3
"""Figures for herald serve's shutdown and connection handling, loopback only.

  scripts/serving-figures.py target/release/herald shutdown 1 100 1000
  scripts/serving-figures.py target/release/herald idle 5000 [--nofile 1024]

shutdown N: opens N `GET /v1/events` streams, sends SIGTERM, prints the time
to exit, the exit status and how many streams saw `event: shutdown`.
idle N: holds N idle connections open, then times 200 `GET /healthz` and
200 `POST /v1/broadcasts` (one new connection each), and prints how many
were answered and their latency (p50, p99, max). Bounded: every socket has
a timeout, every loop a count.
"""
import json, os, signal, socket, subprocess, sys, tempfile, time

CONFIG = """[server]
[destinations.down]
kind = "webhook"
url = "http://127.0.0.1:9/down"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, workdir, nofile=None):
    config = os.path.join(workdir, "herald.toml")
    with open(config, "w") as f:
        f.write(CONFIG)
    port = free_port()
    command = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--config", config,
               "--database", os.path.join(workdir, "herald.db")]
    if nofile:
        command = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + command
    log = open(os.path.join(workdir, "herald.log"), "w")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(500):
        try:
            if request(port, "GET", "/healthz")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.02)
    raise SystemExit("herald did not start")


def request(port, method, path, body=None, timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        data = body.encode() if body else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        s.sendall(head.encode() + b"\r\n" + data)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return int(answer.split(b" ", 2)[1]), answer


def open_stream(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: herald\r\nAccept: text/event-stream\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("stream closed in its head")
        head += chunk
    return s


def shutdown(binary, counts):
    for n in counts:
        with tempfile.TemporaryDirectory() as workdir:
            process, port = start(binary, workdir)
            streams = [open_stream(port) for _ in range(n)]
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                status = "still running after 120 s (killed)"
            took = time.monotonic() - began
            saw = 0
            for s in streams:
                s.settimeout(5)
                text = b""
                try:
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        text += chunk
                except OSError:
                    pass
                saw += b"event: shutdown" in text
                s.close()
            print(f"shutdown streams={n} exit_after_s={took:.3f} status={status} saw_shutdown_event={saw}/{n}")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def idle(binary, n, nofile):
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start(binary, workdir, nofile)
        held, refused = [], 0
        for _ in range(n):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                refused += 1
        body = json.dumps({"title": "INC-1 idle flood", "destinations": ["down"]})
        for method, path, payload in [("GET", "/healthz", None), ("POST", "/v1/broadcasts", body)]:
            latencies, failures = [], 0
            for _ in range(200):
                began = time.monotonic()
                try:
                    status, _ = request(port, method, path, payload, timeout=10)
                    if status in (200, 202):
                        latencies.append((time.monotonic() - began) * 1000)
                    else:
                        failures += 1
                except OSError:
                    failures += 1
            if latencies:
                print(f"idle={n} nofile={nofile or 'as is'} connect_failures={refused} {method} {path}: "
                      f"answered={len(latencies)}/200 p50_ms={percentile(latencies, 0.5):.2f} "
                      f"p99_ms={percentile(latencies, 0.99):.2f} max_ms={max(latencies):.2f}")
            else:
                print(f"idle={n} {method} {path}: answered=0/200")
        for s in held:
            s.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


if __name__ == "__main__":
    binary, mode, *rest = sys.argv[1:]
    if mode == "shutdown":
        shutdown(binary, [int(n) for n in rest])
    else:
        nofile = int(rest[rest.index("--nofile") + 1]) if "--nofile" in rest else None
        idle(binary, int(rest[0]), nofile)
