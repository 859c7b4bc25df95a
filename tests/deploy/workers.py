"""Which worker of a served gateway holds which socket, read from the kernel:
the process holding the server side of a TCP connection (/proc/net/tcp,
/proc/PID/fd). Nothing in the gateway says it, and nothing needs to."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.live import GatewayServer


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _tcp_sockets(local_port: int) -> list[tuple[int, str, str]]:
    """(remote port, state, inode) of each socket on ``local_port`` (IPv4, as the
    tests use)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port:
            found.append((int(fields[2].split(":")[1], 16), fields[3], fields[9]))
    return found


def _listening(port: int) -> set[str]:
    return {inode for _, state, inode in _tcp_sockets(port) if state == "0A"}


def _connections(port: int) -> dict[int, str]:
    """The server side of the connections to ``port``, by the client's port."""
    return {remote: inode for remote, state, inode in _tcp_sockets(port) if state != "0A"}


def workers_of(server: GatewayServer) -> list[int]:
    """The worker processes: those below the command that listen on its port
    (each on a socket of its own)."""
    assert server.process is not None
    listening = _listening(server.port)
    return [p for p in _descendants(server.process.pid) if listening & _socket_inodes(p)]


def worker_serving(server: GatewayServer, response: httpx.Response) -> int:
    """The process holding the server side of ``response``'s connection."""
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    inode = _connections(server.port)[client_port]
    holders = [p for p in workers_of(server) if inode in _socket_inodes(p)]
    assert len(holders) == 1, holders
    return holders[0]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def audit_children(worker: int) -> list[int]:
    return [pid for pid in _children(worker) if "spawn_main" in _cmdline(pid)]


def client_on(server: GatewayServer, worker: int, tries: int = 40) -> httpx.Client:
    """A client whose kept-alive connection the kernel gave to ``worker``."""
    for _ in range(tries):
        client = httpx.Client(base_url=server.url, timeout=10)
        with client.stream("GET", "/healthz") as response:
            reached = worker_serving(server, response)
            response.read()
        if reached == worker:
            return client
        client.close()
    raise AssertionError(f"{tries} connections never reached worker {worker}")


def burst(server: GatewayServer, workers: list[int], size: int = 100) -> dict[int, int]:
    """Open ``size`` connections at once; how many each worker accepted."""
    opened: list[socket.socket] = []
    barrier = threading.Barrier(size)

    def connect() -> None:
        barrier.wait()
        opened.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))

    threads = [threading.Thread(target=connect) for _ in range(size)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        ports = [sock.getsockname()[1] for sock in opened]
        deadline = time.monotonic() + 10
        while True:
            connections = _connections(server.port)
            ours = {connections.get(port) for port in ports}
            counts = {w: len(_socket_inodes(w) & ours) for w in workers}
            if sum(counts.values()) == size or time.monotonic() > deadline:
                return counts
            time.sleep(0.1)
    finally:
        for sock in opened:
            sock.close()
