#!/usr/bin/env python3
"""Latency of a tools/call round trip through mcpgate versus the same MCP server run
directly (interleaved rounds, paired differences, medians and p99), memory per idle
session, sessions opened per second, throughput at several concurrencies, and time to
ready. Starts its own daemon; the load client is `mcpgate mcp bench`.

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
# The peers (installed by scripts/bench).
MCP_PROXY = os.path.join(ROOT, ".cache", "venv-bench", "bin", "mcp-proxy")
SUPERGATEWAY = os.path.join(ROOT, ".cache", "bench-npm", "node_modules", "supergateway", "dist", "index.js")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=1000, help="idle sessions held open to measure memory per session")
    ap.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 64, 512], help="concurrent sessions for the throughput runs, e.g. 1,8,64,512")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mcpgate-bench-")
    # server-everything over Streamable HTTP, for the HTTP upstream path.
    http_port = free_port()
    everything_http = subprocess.Popen(["node", EVERYTHING, "streamableHttp"], env=dict(os.environ, PORT=str(http_port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(http_port, everything_http)
        run(args, tmp, http_port)
    finally:
        everything_http.terminate()
        everything_http.wait(timeout=10)


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port, proc):
    import socket
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not listen")


def run(args, tmp, http_port):
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
    - name: everything-http
      labels: {{env: bench}}
      uri: mcp+http://127.0.0.1:{http_port}/mcp
""")
    started = time.perf_counter()
    daemon = subprocess.Popen([BIN, "start", "--config", config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        measure(args, tmp, daemon, started, http_port)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def measure(args, tmp, daemon, started, http_port):
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
    env = dict(os.environ, MCPGATE_HOME=os.path.join(tmp, "home"), RECORD_FILE="/dev/null")
    pw = "benchmark password 1\n"
    subprocess.run([BIN, "signup", "--proxy", addr, "--ca-pin", pin, "--invite", token, "--password-stdin"], input=pw, env=env, check=True, capture_output=True, text=True)
    subprocess.run([BIN, "login", "--proxy", addr, "--ca-pin", pin, "--user", "bench", "--password-stdin"], input=pw, env=env, check=True, capture_output=True, text=True)

    def bench(*argv):
        """One run of the project's Rust load client; its JSON report."""
        out = subprocess.run([BIN, "mcp", "bench", *argv], env=env, check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    # Memory first, on a daemon that has served one session: its resident set with N more
    # idle, initialized sessions open
    # (the upstream processes are their own and not counted).
    def rss_kib():
        with open(f"/proc/{daemon.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    bench("rust", "--calls", "10")  # the first session's one-time costs
    before = rss_kib()
    holder = subprocess.Popen([BIN, "mcp", "bench", "rust", "--sessions", str(args.sessions), "--warmup", "1", "--hold"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = json.loads(holder.stdout.readline())
    per_session = (rss_kib() - before) / args.sessions
    holder.stdin.close()
    holder.wait(timeout=60)

    def upstreams():
        n = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    n += f.read().rsplit(")", 1)[1].split()[1] == str(daemon.pid)
            except OSError:
                pass
        return n

    # The held sessions' upstreams are stopped before anything is timed.
    deadline = time.time() + 60
    while upstreams() > 0 and time.time() < deadline:
        time.sleep(0.1)
    targets = [
        ("Rust stdio (`mcpgate mcp demo-server`, get_time)", f"{BIN} mcp demo-server", "rust", "get_time", {}),
        ("the same through the `mcp connect` bridge", f"{BIN} mcp demo-server", f"--direct={BIN} mcp connect rust", "get_time", {}),
        ("fast (python stdio fixture)", f"python3 {RECORDER}", "fast", "echo", {"message": "hi"}),
        ("server-everything (node)", f"node {EVERYTHING} stdio", "everything", "echo", {"message": "hi"}),
    ]
    report = ["| upstream | direct p50 µs | via mcpgate p50 µs | added p50 µs (paired) | added p99 µs | calls/s via mcpgate, one session |", "|---|---|---|---|---|---|"]
    for label, direct_cmd, app, tool, call_args in targets:
        common = ["--tool", tool, "--args", json.dumps(call_args), "--calls", str(args.calls)]
        diffs, d_runs, g_runs = [], [], []
        for _ in range(args.rounds):
            d = bench("--direct", direct_cmd, *common)
            g = bench(app, *common)
            diffs.append(g["p50_us"] - d["p50_us"])
            d_runs.append(d)
            g_runs.append(g)
        med = lambda runs, k: statistics.median(r[k] for r in runs)
        report.append(f"| {label} | {med(d_runs, 'p50_us'):.0f} | {med(g_runs, 'p50_us'):.0f} | {statistics.median(diffs):.0f} | {med(g_runs, 'p99_us') - med(d_runs, 'p99_us'):.0f} | {med(g_runs, 'calls_per_second'):.0f} |")
    # The HTTP path: an HTTP client → `mcpgate mcp proxy` → the gateway → the Rust upstream,
    # beside the peers a user would otherwise put in front of the same stdio server (no
    # auth, no policy, no audit): PyPI mcp-proxy and npm supergateway.
    http_report = []
    servers = []
    try:
        gate_http = subprocess.Popen([BIN, "mcp", "proxy", "rust", "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        servers.append(gate_http)
        paths = [("mcpgate (`mcp proxy` → gateway, audit on)", gate_http.stdout.readline().strip())]
        rust_cmd = f"{BIN} mcp demo-server"
        if os.path.exists(MCP_PROXY):
            port = free_port()
            p = subprocess.Popen([MCP_PROXY, "--host", "127.0.0.1", "--port", str(port), "--", BIN, "mcp", "demo-server"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(p)
            wait_listening(port, p)
            paths.append(("PyPI mcp-proxy 0.13.0", f"http://127.0.0.1:{port}/mcp"))
        if os.path.exists(SUPERGATEWAY):
            port = free_port()
            p = subprocess.Popen(["node", SUPERGATEWAY, "--stdio", rust_cmd, "--outputTransport", "streamableHttp", "--stateful", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(p)
            wait_listening(port, p)
            paths.append(("npm supergateway 4.0.0 (--stateful)", f"http://127.0.0.1:{port}/mcp"))
        common = ["--tool", "get_time", "--calls", str(args.calls)]
        added = {label: [] for label, _ in paths}
        p50s = {label: [] for label, _ in paths}
        p99s = {label: [] for label, _ in paths}
        for _ in range(args.rounds):
            d = bench("--direct", rust_cmd, *common)
            for label, url in paths:
                r = bench("--url", url, *common)
                added[label].append(r["p50_us"] - d["p50_us"])
                p50s[label].append(r["p50_us"])
                p99s[label].append(r["p99_us"] - d["p99_us"])
        # An HTTP upstream app: the same client over TLS through the gateway to
        # server-everything's Streamable HTTP endpoint, against that endpoint directly.
        echo = ["--tool", "echo", "--args", json.dumps({"message": "hi"}), "--calls", str(args.calls)]
        up_direct, up_gated = [], []
        for _ in range(args.rounds):
            up_direct.append(bench("--url", f"http://127.0.0.1:{http_port}/mcp", *echo))
            up_gated.append(bench("everything-http", *echo))
        http_upstream = (
            statistics.median(r["p50_us"] for r in up_direct),
            statistics.median(r["p50_us"] for r in up_gated),
            statistics.median(g["p50_us"] - d["p50_us"] for d, g in zip(up_direct, up_gated)),
            statistics.median(g["p99_us"] - d["p99_us"] for d, g in zip(up_direct, up_gated)),
        )
        gate_added = statistics.median(added[paths[0][0]])
        for label, _ in paths:
            a = statistics.median(added[label])
            ratio = "" if label == paths[0][0] else f"{gate_added / a:.2f}" if a > 0 else "n/a"
            http_report.append(f"| {label} | {statistics.median(p50s[label]):.0f} | {a:.0f} | {statistics.median(p99s[label]):.0f} | {ratio} |")
    finally:
        for p in servers:
            p.terminate()
            p.wait(timeout=10)
    # Throughput (after the memory figure, which the allocator's warm state would flatter):
    # N sessions over their own TLS connections from one Rust client, each calling as fast
    # as its answers come. The client and the upstreams share the 2 cores with the daemon,
    # so this is what one machine does end to end.
    def cpu_seconds():
        with open(f"/proc/{daemon.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    throughput = []
    for n in args.concurrency:
        cpu = cpu_seconds()
        r = bench("rust", "--sessions", str(n), "--warmup", "5", "--seconds", str(args.seconds))
        # The daemon's CPU over the whole run (sessions opening included) per measured call.
        cpu_us = (cpu_seconds() - cpu) * 1e6 / max(r["calls"], 1)
        throughput.append((n, r["calls_per_second"], r["p50_us"], r["p99_us"], cpu_us))
    text = "\n".join([
        f"# mcpgate latency and memory, {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores",
        f"{args.rounds} interleaved rounds x {args.calls} sequential `tools/call` per path, from the project's Rust load client (`mcpgate mcp bench`, raw JSON lines); audit on (SQLite, synchronous=normal, the default).",
        "Direct: the client runs the server as its child over stdio. Via mcpgate: the client speaks TLS to the proxy as a logged-in user, as `mcp connect` does.",
        "",
        *report,
        "",
        "HTTP path: a Streamable HTTP client (the same Rust load client) in front of the Rust upstream (`get_time`), each row paired with that round's direct stdio run. Ratio: what mcpgate adds over what the peer adds (target: at most 0.25).",
        "",
        "| path | p50 µs | added p50 µs (paired) | added p99 µs | mcpgate's added / this one's |",
        "|---|---|---|---|---|",
        *http_report,
        "",
        "HTTP upstream: server-everything over Streamable HTTP (`echo`), called directly over HTTP, and as an app through the gateway (client over TLS, the agent's HTTP transport to it).",
        "",
        "| direct HTTP p50 µs | via mcpgate p50 µs | added p50 µs (paired) | added p99 µs |",
        "|---|---|---|---|",
        "| {:.0f} | {:.0f} | {:.0f} | {:.0f} |".format(*http_upstream),
        "",
        f"Memory: {per_session:.0f} KiB of daemon RSS per open session ({args.sessions} idle sessions after one call each; upstream processes not counted). Sessions opened: {held['opened_per_second']:.0f}/s (TLS, hello, upstream started, initialize).",
        "",
        f"Ready: {ready_ms:.0f} ms from `mcpgate start` on an empty data dir (CAs made, SQLite created) to its banner (proxy listening, agent tunnel up).",
        "",
        "| concurrent sessions (Rust upstream) | calls/s through mcpgate, audit on | p50 µs | p99 µs | daemon CPU µs per call |",
        "|---|---|---|---|---|",
        *[f"| {n} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {cpu:.0f} |" for n, rate, p50, p99, cpu in throughput],
        "",
    ])
    print(text)
    out = os.path.join(ROOT, "target", "bench-report.md")
    with open(out, "w") as f:
        f.write(text)
    print(f"report written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
