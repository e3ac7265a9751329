#!/usr/bin/env python3
"""Latency of a tools/call round trip through mcpgate versus the same MCP server run
directly: interleaved rounds, paired differences, medians and p99. Starts its own daemon.

Usage: scripts/bench [--rounds N] [--calls N] [--sessions N] [--concurrency 1,8,64] [--seconds S]"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "mcpgate")
RECORDER = os.path.join(ROOT, "crates", "mcpgate", "tests", "fixtures", "recorder.py")
EVERYTHING = os.path.join(ROOT, ".cache", "npm", "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js")


class Client:
    """A raw JSON-RPC client over a child's stdin/stdout."""

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0)
        self.next = 0

    def request(self, method, params):
        self.next += 1
        rid = self.next
        self.p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + "\n").encode())
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"{method}: the server closed")
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg

    def start(self):
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
        self.p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        return self

    def timed_call(self, tool, args):
        t = time.perf_counter_ns()
        r = self.request("tools/call", {"name": tool, "arguments": args})
        dt = time.perf_counter_ns() - t
        if "result" not in r:
            raise RuntimeError(f"call failed: {r}")
        return dt / 1000.0

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=100, help="idle sessions held open to measure memory per session")
    ap.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 64], help="concurrent sessions for the throughput runs, e.g. 1,8,64")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mcpgate-bench-")
    record = os.path.join(tmp, "record.jsonl")
    config = os.path.join(tmp, "mcpgate.yaml")
    with open(config, "w") as f:
        f.write(f"""version: v1
cluster_name: bench.local
data_dir: {tmp}/data
auth: {{second_factor: off}}
proxy: {{listen: 127.0.0.1:0}}
agent:
  apps:
    - name: fast
      labels: {{env: bench}}
      uri: mcp+stdio://
      mcp: {{command: python3, args: ["{RECORDER}"], env: {{RECORD_FILE: /dev/null}}}}
    - name: everything
      labels: {{env: bench}}
      uri: mcp+stdio://
      mcp: {{command: node, args: ["{EVERYTHING}", "stdio"]}}
    - name: rust
      labels: {{env: bench}}
      uri: mcp+stdio://
      mcp: {{command: "{BIN}", args: [mcp, demo-server]}}
""")
    started = time.perf_counter()
    daemon = subprocess.Popen([BIN, "start", "--config", config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = {}
    for line in daemon.stdout:
        if ":" in line and line.startswith("  "):
            k, v = line.strip().split(":", 1)
            banner[k] = v.strip()
        if line.startswith("  mcpgate signup"):
            break
    # The banner comes once the proxy listens and the in-process agent's tunnel is up.
    ready_ms = (time.perf_counter() - started) * 1000
    addr, pin = banner["proxy"], banner["CA pin"]
    dd = ["--data-dir", f"{tmp}/data"]
    roles = os.path.join(tmp, "roles.yaml")
    with open(roles, "w") as f:
        f.write("kind: role\nversion: v8\nmetadata: {name: bench}\nspec:\n  allow:\n    app_labels: {env: bench}\n    mcp: {tools: [echo, get_time]}\n")
    subprocess.run([BIN, "admin", "create", "-f", roles, *dd], check=True, capture_output=True)
    token = json.loads(subprocess.run([BIN, "admin", "users", "add", "bench", "--roles", "bench", "--format", "json", *dd], check=True, capture_output=True, text=True).stdout)["token"]
    env = dict(os.environ, MCPGATE_HOME=os.path.join(tmp, "home"))
    pw = "benchmark password 1\n"
    subprocess.run([BIN, "signup", "--proxy", addr, "--ca-pin", pin, "--invite", token, "--password-stdin"], input=pw, env=env, check=True, capture_output=True, text=True)
    subprocess.run([BIN, "login", "--proxy", addr, "--ca-pin", pin, "--user", "bench", "--password-stdin"], input=pw, env=env, check=True, capture_output=True, text=True)

    targets = [
        ("Rust stdio (`mcpgate mcp demo-server`, get_time)", [BIN, "mcp", "demo-server"], "rust", "get_time", {}),
        ("fast (python stdio fixture)", ["python3", RECORDER], "fast", "echo", {"message": "hi"}),
        ("server-everything (node)", ["node", EVERYTHING, "stdio"], "everything", "echo", {"message": "hi"}),
    ]
    report = ["| upstream | direct p50 µs | via mcpgate p50 µs | added p50 µs (paired) | added p99 µs | calls/s via mcpgate |", "|---|---|---|---|---|---|"]
    for label, direct_argv, app, tool, call_args in targets:
        direct = Client(direct_argv, env=dict(os.environ, RECORD_FILE="/dev/null")).start()
        gated = Client([BIN, "mcp", "connect", app], env=env).start()
        for c in (direct, gated):  # warm up
            for _ in range(50):
                c.timed_call(tool, call_args)
        diffs, d_all, g_all = [], [], []
        t_gated = 0.0
        for _ in range(args.rounds):
            d = [direct.timed_call(tool, call_args) for _ in range(args.calls)]
            t0 = time.perf_counter()
            g = [gated.timed_call(tool, call_args) for _ in range(args.calls)]
            t_gated += time.perf_counter() - t0
            diffs.append(statistics.median(g) - statistics.median(d))
            d_all += d
            g_all += g
        direct.close()
        gated.close()
        rate = args.rounds * args.calls / t_gated
        report.append(f"| {label} | {statistics.median(d_all):.0f} | {statistics.median(g_all):.0f} | {statistics.median(diffs):.0f} | {p99(g_all) - p99(d_all):.0f} | {rate:.0f} |")
    # Memory: the daemon's resident set with N more idle, initialized sessions open
    # (the upstream processes are their own and not counted).
    def rss_kib():
        with open(f"/proc/{daemon.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    warm = Client([BIN, "mcp", "connect", "fast"], env=env).start()
    before = rss_kib()
    idle = [Client([BIN, "mcp", "connect", "fast"], env=env).start() for _ in range(args.sessions)]
    for c in idle:  # every session has been through the gate and back
        c.timed_call("echo", {"message": "hi"})
    per_session = (rss_kib() - before) / args.sessions
    for c in idle + [warm]:
        c.close()
    # Throughput (after the memory figure, which the allocator's warm state would flatter):
    # N sessions, each with its own bridge and upstream, calling as fast as
    # their answers come, for a few seconds. The clients share the 2 cores with the daemon
    # and the upstreams, so this is what one machine does end to end.
    import threading
    throughput = []
    for n in args.concurrency:
        clients = [Client([BIN, "mcp", "connect", "fast"], env=env).start() for _ in range(n)]
        for c in clients:
            c.timed_call("echo", {"message": "hi"})
        counts = [0] * n
        stop = time.perf_counter() + args.seconds

        def run(i, c):
            while time.perf_counter() < stop:
                c.timed_call("echo", {"message": "hi"})
                counts[i] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        throughput.append((n, sum(counts) / elapsed))
        for c in clients:
            c.close()
    daemon.terminate()
    daemon.wait(timeout=10)
    text = "\n".join([
        f"# mcpgate latency and memory, {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores",
        f"{args.rounds} interleaved rounds x {args.calls} sequential `tools/call echo` per path; audit on (SQLite, synchronous=normal, the default).",
        "The Python client's own cost is in both paths and cancels out in the paired difference.",
        "",
        *report,
        "",
        f"Memory: {per_session:.0f} KiB of daemon RSS per open session ({args.sessions} idle sessions after one call each; upstream processes not counted).",
        "",
        f"Ready: {ready_ms:.0f} ms from `mcpgate start` on an empty data dir (CAs made, SQLite created) to its banner (proxy listening, agent tunnel up).",
        "",
        "| concurrent sessions (fast upstream) | calls/s through mcpgate, audit on |",
        "|---|---|",
        *[f"| {n} | {rate:.0f} |" for n, rate in throughput],
        "",
    ])
    print(text)
    out = os.path.join(ROOT, "target", "bench-report.md")
    with open(out, "w") as f:
        f.write(text)
    print(f"report written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
