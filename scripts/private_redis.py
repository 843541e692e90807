"""A redis-server of a measuring script's own (scripts/*.py import it): on a free
loopback port, in a temporary directory, persisting nothing; started and waited
for by `start`, stopped by `stop`. Standard library only."""
import socket, subprocess, tempfile, time


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start(name):
    """Start one; returns (port, process) once it accepts connections."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix=name + '-')
    server = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1',
                               '--save', '', '--appendonly', 'no', '--dir', workdir],
                              stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(('127.0.0.1', port)).close()
            return port, server
        except OSError:
            time.sleep(0.05)
    server.terminate()
    raise SystemExit('redis-server did not start')


def stop(server):
    server.terminate()
    server.wait()
