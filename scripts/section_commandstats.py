#!/usr/bin/env python3
"""Where each `waitroom-worker bench` section's Redis time goes, by command
(issue 10's benchmark line; BENCHMARKS.md).

Starts a private redis-server on a free loopback port (and stops it), runs the
given bench binary against it (text output: its progress lines mark the
sections), resets `INFO commandstats` when a section begins and reads it, with
Redis's own CPU, when the next begins. Writes one JSON object: per section,
Redis CPU ms and per command [calls, usec]. Standard library only.

usage: python3 scripts/section_commandstats.py BINARY OUT.json [bench args...]
  e.g. python3 scripts/section_commandstats.py ./target/release/waitroom-worker \\
         new.json --big-queue 20000 --events 1000 --samples 20 --replicas 2
Commands a script runs are counted under their own names too (and in EVALSHA's).
"""
import json, socket, subprocess, sys, time
import private_redis


def command(port, *args):
    """One command, its raw reply (bulk or simple string)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        msg = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        s.sendall(msg.encode())
        data = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"$"):
                head = data.index(b"\r\n")
                if len(data) >= head + 2 + int(data[1:head]) + 2:
                    break
            elif data.endswith(b"\r\n"):
                break
    return data.decode(errors="replace")


def snapshot(port):
    stats = {}
    for line in command(port, "INFO", "commandstats").split("\r\n"):
        if line.startswith("cmdstat_"):
            name, fields = line.split(":", 1)
            f = dict(x.split("=") for x in fields.split(","))
            stats[name[len("cmdstat_"):]] = [int(f["calls"]), int(f["usec"])]
    cpu = 0.0
    for line in command(port, "INFO", "cpu").split("\r\n"):
        if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
            cpu += float(line.split(":")[1])
    return stats, cpu


def main():
    binary, out, bench_args = sys.argv[1], sys.argv[2], sys.argv[3:]
    port, server = private_redis.start('section-commandstats')
    try:
        bench = subprocess.Popen(
            [binary, "bench", "--redis-url", f"redis://127.0.0.1:{port}"] + bench_args,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        sections, current, cpu0 = {}, None, 0.0

        def close():
            stats, cpu = snapshot(port)
            sections[current] = {"cpu_ms": (cpu - cpu0) * 1e3, "commands": stats}

        for line in bench.stderr:
            if not line.startswith("bench: "):
                continue
            if current is not None:
                close()
            current = line[len("bench: "):].strip()
            command(port, "CONFIG", "RESETSTAT")
            _, cpu0 = snapshot(port)
        bench.wait()
        if current is not None:
            close()
        with open(out, "w") as f:
            json.dump(sections, f, indent=1)
        for name, s in sections.items():
            top = sorted(s["commands"].items(), key=lambda kv: -kv[1][1])[:5]
            print(f"{name}: {s['cpu_ms']:.1f} ms Redis CPU; "
                  + ", ".join(f"{k} {v[0]} calls {v[1] / 1e3:.1f} ms" for k, v in top))
    finally:
        private_redis.stop(server)


if __name__ == "__main__":
    main()
