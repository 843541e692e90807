#!/usr/bin/env python3
"""What each part of an admission costs Redis (issue 14, part 3; BENCHMARKS.md).

Starts a private redis-server on a free loopback port (and stops it), loads
lua/admit.lua and lua/settle.lua with their includes spliced in, queues 20,000
sessions in one event, admits them 1,000 a call as the worker does (signed: each
call carries the session ids, user ids and 340-byte tokens, and reads 1,000
waiters ahead), settles each call's entries as Kafka's acknowledgement does, and
reads the EVALSHA time from INFO commandstats. Each variant takes one part out of
a copy of the script text (the shipped scripts are not changed); the minimal
reference is the bench's (src/tools/bench/minimal.rs). Standard library only.

usage: python3 scripts/ablate_admit.py [ROUNDS]     (default 3; ~1 min a round)
"""
import os, re, socket, sys, time, statistics, json
import private_redis
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
USERS, BATCH = 20000, 1000

port, server = private_redis.start('ablate')

class R:
    def __init__(s, port):
        s.s = socket.create_connection(('127.0.0.1', port)); s.f = s.s.makefile('rb')
    def cmd(s, *a):
        out = [b'*%d\r\n' % len(a)]
        for x in a:
            x = x if isinstance(x, bytes) else str(x).encode()
            out.append(b'$%d\r\n%s\r\n' % (len(x), x))
        s.s.sendall(b''.join(out)); return s.read()
    def pipe(s, cmds):
        buf = []
        for a in cmds:
            buf.append(b'*%d\r\n' % len(a))
            for x in a:
                x = x if isinstance(x, bytes) else str(x).encode()
                buf.append(b'$%d\r\n%s\r\n' % (len(x), x))
        s.s.sendall(b''.join(buf)); return [s.read() for _ in cmds]
    def read(s):
        l = s.f.readline(); t, v = l[:1], l[1:-2]
        if t == b'+': return v.decode()
        if t == b'-': raise RuntimeError(v.decode())
        if t == b':': return int(v)
        if t == b'$':
            n = int(v)
            if n < 0: return None
            d = s.f.read(n + 2); return d[:-2]
        if t == b'*':
            n = int(v)
            return None if n < 0 else [s.read() for _ in range(n)]
        raise RuntimeError(l)

def splice(path):
    src = open(path).read()
    def inc(m):
        return open(os.path.join(repo, 'lua/include', m.group(1) + '.lua')).read()
    return re.sub(r'^-- @include (\w+)\s*$', inc, src, flags=re.M)

admit = splice(os.path.join(repo, 'lua/admit.lua'))
settle = splice(os.path.join(repo, 'lua/settle.lua'))
def cut(src, old, new=''):
    assert old in src, old
    return src.replace(old, new)
variants = {
  'v13 as shipped': (admit, {}),
  'no outbox entry': (cut(admit, "outbox_len = outbox_len + chunked('ZADD', outbox, outbox_args, 500)"), {}),
  'no untold mark': (cut(admit, "deadlines_len = deadlines_len + chunked('ZADD', deadlines, deadline_args, 500)"), {}),
  'no read-ahead (lookahead 0)': (admit, {'lookahead': 0}),
  'validate status+user_id only': (cut(admit, "'status', 'user_id', 'event_id',\n          'last_seen', 'claimed_at', 'claim_expires_at')", "'status', 'user_id')"), {}),
  'unsigned (no token, no read-ahead)': (admit, {'unsigned': True}),
}
MIN = open(os.path.join(repo, 'src/tools/bench/minimal.rs')).read().split('r#"', 1)[1].split('"#', 1)[0]

r = R(port)
TOKEN = b'e' * 340
def seed(prefix):
    cmds = []
    now = int(time.time() * 1000)
    for i in range(USERS):
        sid = 's-%06d' % i
        cmds.append(['HSET', f'{prefix}:session:{sid}', 'status', 'queued', 'user_id', 'u-%06d' % i, 'event_id', 'ev', 'position', i])
        cmds.append(['ZADD', f'{prefix}:ev:queue', now + i, sid])
        if len(cmds) >= 2000: r.pipe(cmds); cmds = []
    if cmds: r.pipe(cmds)
def clear(prefix):
    cur = '0'
    while True:
        cur, keys = r.cmd('SCAN', cur, 'MATCH', prefix + ':*', 'COUNT', 5000)
        if keys: r.cmd('UNLINK', *keys)
        cur = cur.decode()
        if cur == '0': break
def evalsha_usec():
    info = r.cmd('INFO', 'commandstats').decode()
    m = re.search(r'cmdstat_evalsha:calls=(\d+),usec=(\d+)', info)
    return int(m.group(2)) if m else 0
def now_ms():
    s, us = r.cmd('TIME'); return int(s) * 1000 + int(us) // 1000

def run_admit(name, src, opt, n):
    sha = r.cmd('SCRIPT', 'LOAD', src).decode()
    prefix = f'abl{n}'
    seed(prefix)
    keys = [f'{prefix}:ev:{k}' for k in ('queue', 'priority', 'processing', 'config', 'outbox', 'deadlines', 'rate', 'stats', 'valve', 'sold_out')]
    u0 = evalsha_usec(); admitted = 0; settle_us = 0; nxt = 0
    while admitted < USERS:
        signed = not opt.get('unsigned')
        argv = [f'{prefix}:session:', 'ev', 1000000000, BATCH, 900000, 7200000, 30000, BATCH, BATCH * 2, 600000, 1, 1000, 0, 0, 0, 10]
        if signed:
            argv += [1, now_ms(), 0, opt.get('lookahead', BATCH)]
            for i in range(nxt, min(nxt + BATCH, USERS)):
                argv += ['s-%06d' % i, 'u-%06d' % i, TOKEN]
        reply = r.cmd('EVALSHA', sha, len(keys), *keys, *argv)
        got = reply[0][0]
        if got == 0: raise RuntimeError(f'{name}: admitted nothing: {reply[0]} {reply[5]}')
        admitted += got; nxt += got
        # settle what was admitted, as Kafka's acknowledgement does
        entries = reply[2]
        if settle_sha and entries:
            sargs = [len(entries), 0]
            for e in entries:
                j = json.loads(e)
                sargs += [e, j[0], j[3], j[2]]
            s0 = evalsha_usec()
            r.cmd('EVALSHA', settle_sha, 2, keys[4], keys[5], *sargs)
            settle_us += evalsha_usec() - s0
    total = evalsha_usec() - u0 - settle_us
    clear(prefix)
    return total / admitted, settle_us / admitted

def run_min(with_token, n):
    sha = r.cmd('SCRIPT', 'LOAD', MIN).decode()
    prefix = f'min{n}'
    seed(prefix)
    keys = [f'{prefix}:ev:queue', f'{prefix}:ev:processing', f'{prefix}:admitted']
    u0 = evalsha_usec(); admitted = 0
    while True:
        argv = [f'{prefix}:session:', BATCH, 1000000000, 7200]
        if with_token: argv += [TOKEN] * BATCH
        got = r.cmd('EVALSHA', sha, len(keys), *keys, *argv)
        if got == 0: break
        admitted += got
    total = evalsha_usec() - u0
    clear(prefix)
    return total / admitted

settle_sha = r.cmd('SCRIPT', 'LOAD', settle).decode()
res = {}
n = 0
for _ in range(rounds):
    for name, (src, opt) in variants.items():
        n += 1
        a, s = run_admit(name, src, opt, n)
        res.setdefault(name, []).append(a)
        if name == 'v13 as shipped': res.setdefault('settle.lua (per admission)', []).append(s)
    n += 1; res.setdefault('minimal', []).append(run_min(False, n))
    n += 1; res.setdefault('minimal + token', []).append(run_min(True, n))
private_redis.stop(server)
base = statistics.median(res['minimal'])
for k, v in res.items():
    med = statistics.median(v)
    print(f'{k:38s} ' + ' / '.join(f'{x:5.2f}' for x in v) + f'  median {med:5.2f} us  ({med/base:4.2f}x minimal)')
