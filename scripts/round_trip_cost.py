#!/usr/bin/env python3
"""What a round trip costs Redis, beside the commands it carries (issue 14,
part 1; BENCHMARKS.md).

Starts a private redis-server on a free loopback port (and stops it). For each
case, N clients each send one pipeline of K PINGs in turn, at about four round
trips per client and second, for 20 s, and Redis's own CPU (INFO cpu, user +
sys) is read before and after. The difference between cases, divided by the
difference in round trips per second, is Redis CPU per round trip; PING itself
costs about a microsecond. Standard library only.

usage: python3 scripts/round_trip_cost.py [ROUNDS]     (default 3; ~80 s a round)
"""
import socket, statistics, sys, time
import private_redis

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DURATION = 20.0
CASES = [(1, 1), (16, 1), (16, 12), (1, 1)]


port, server = private_redis.start('round-trip')


def connect():
    for _ in range(100):
        try:
            c = socket.create_connection(('127.0.0.1', port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return c
        except OSError:
            time.sleep(0.05)
    raise SystemExit('redis-server did not start')


def redis_cpu(c):
    c.sendall(b'*2\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n')
    data = b''
    while True:
        data += c.recv(65536)
        head, _, rest = data.partition(b'\r\n')
        if head.startswith(b'$') and len(rest) >= int(head[1:]) + 2:
            break
    fields = dict(l.split(':', 1) for l in rest.decode().split('\r\n') if ':' in l)
    return float(fields['used_cpu_sys']) + float(fields['used_cpu_user'])


def case(clients, per):
    conns = [connect() for _ in range(clients)]
    ctl = connect()
    msg = b'*1\r\n$4\r\nPING\r\n' * per
    want = len(b'+PONG\r\n') * per
    pause = 1.0 / (clients * 4)
    cpu0, t0, trips = redis_cpu(ctl), time.time(), 0
    while time.time() - t0 < DURATION:
        for c in conns:
            c.sendall(msg)
            got = 0
            while got < want:
                got += len(c.recv(65536))
            trips += 1
            time.sleep(pause)
    secs = time.time() - t0
    cpu = (redis_cpu(ctl) - cpu0) * 1e3 / secs
    for c in conns + [ctl]:
        c.close()
    return trips / secs, cpu


try:
    per_trip = []
    for r in range(rounds):
        rows = [(n, k) + case(n, k) for n, k in CASES]
        base = (rows[0][3] + rows[3][3]) / 2
        for n, k, rate, cpu in rows:
            print(f'round {r + 1}: {n:2d} clients x {k:2d} PING a round trip: '
                  f'{rate:5.0f} round trips/s, Redis CPU {cpu:5.2f} ms/s')
        one = (rows[1][3] - base) * 1e3 / (rows[1][2] - (rows[0][2] + rows[3][2]) / 2)
        per_trip.append(one)
        print(f'round {r + 1}: Redis CPU per round trip {one:.0f} us; '
              f'11 more PINGs a round trip: {(rows[2][3] - rows[1][3]) * 1e3 / rows[2][2]:.1f} us')
    print(f'median of {rounds}: {statistics.median(per_trip):.0f} us of Redis CPU per round trip')
finally:
    private_redis.stop(server)
