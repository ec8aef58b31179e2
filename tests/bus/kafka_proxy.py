"""A TCP proxy in front of the real broker that injects faults: it loses Produce responses (the broker
has appended the batch, the client never hears so, and retries it), and fails heartbeats for a while
(a group coordinator that is loading, as after a broker restart). The retried batch is the duplicate
an idempotent producer exists to prevent (the broker recognises it by producer id and sequence
number), produced on demand instead of waiting for a network fault.

The proxy speaks just enough of the Kafka protocol (https://kafka.apache.org/protocol) to do this:
- every frame is a big-endian int32 size and that many bytes; a request's header starts with api_key
  (int16), api_version (int16), correlation_id (int32); its response starts with the correlation_id;
- Metadata responses (api_key 3) name the broker's own host and port, so the proxy rewrites each
  broker's port to its own, and the client keeps talking through it after bootstrap; so do
  FindCoordinator responses (api_key 10), for the consumer's group coordinator;
- the first `drop` Produce responses (api_key 0) are not forwarded: the proxy closes the client's
  connection instead, as a network failure after the broker's append would;
- for `fail_heartbeats(s)` seconds, Heartbeat responses (api_key 12) say NOT_COORDINATOR: the broker
  still has the consumer's heartbeats (its member stays in the group), the consumer hears no success
  and its session times out, as one does while a restarted broker loads the group;
- `disconnect(api_key)` closes the open connections that have carried a request of that kind (e.g.
  EndTxn, api_key 26: a transactional producer's connection to its transaction coordinator) and
  keeps accepting new ones: the client sees its connection closed by the peer, and its reconnect
  succeeds.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

PRODUCE, METADATA, FIND_COORDINATOR, HEARTBEAT, END_TXN = 0, 3, 10, 12, 26
NOT_COORDINATOR = 16
FIRST_FLEXIBLE_HEARTBEAT = 4
FIRST_FLEXIBLE_METADATA = 9  # compact arrays/strings and tagged fields from Metadata v9 on


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _read_frame(sock: socket.socket) -> bytes | None:
    size = _recv_exact(sock, 4)
    if size is None:
        return None
    return _recv_exact(sock, struct.unpack(">i", size)[0])


def _uvarint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip_tagged_fields(buf: bytes | bytearray, pos: int) -> int:
    count, pos = _uvarint(buf, pos)
    for _ in range(count):
        _, pos = _uvarint(buf, pos)  # tag
        size, pos = _uvarint(buf, pos)
        pos += size
    return pos


def rewrite_coordinator_port(response: bytes, host: str, port: int, new_port: int) -> bytes:
    """The FindCoordinator response with the coordinator's port `port` replaced by `new_port`. In every
    version of the response the port (int32) directly follows the host's bytes, so the pair is found
    by its bytes rather than by parsing the version's layout."""
    address = host.encode()
    return response.replace(address + struct.pack(">i", port), address + struct.pack(">i", new_port))


def heartbeat_failed(response: bytes, version: int) -> bytes:
    """The Heartbeat response with its error code set to NOT_COORDINATOR."""
    buf = bytearray(response)
    pos = 4  # correlation id
    if version >= FIRST_FLEXIBLE_HEARTBEAT:
        pos = _skip_tagged_fields(buf, pos)  # response header v1
    if version >= 1:
        pos += 4  # throttle_time_ms
    struct.pack_into(">h", buf, pos, NOT_COORDINATOR)
    return bytes(buf)


def rewrite_metadata_ports(response: bytes, version: int, port: int) -> bytes:
    """The Metadata response with every broker's port replaced by `port` (hosts unchanged)."""
    buf = bytearray(response)
    flexible = version >= FIRST_FLEXIBLE_METADATA
    pos = 4  # correlation id
    if flexible:
        pos = _skip_tagged_fields(buf, pos)  # response header v1
    if version >= 3:
        pos += 4  # throttle_time_ms
    if flexible:
        count, pos = _uvarint(buf, pos)
        count -= 1
    else:
        (count,), pos = struct.unpack_from(">i", buf, pos), pos + 4
    for _ in range(count):
        pos += 4  # node_id
        if flexible:
            length, pos = _uvarint(buf, pos)
            pos += length - 1
        else:
            (length,), pos = struct.unpack_from(">h", buf, pos), pos + 2
            pos += length
        struct.pack_into(">i", buf, pos, port)
        pos += 4
        if version >= 1:  # rack, a nullable string
            if flexible:
                length, pos = _uvarint(buf, pos)
                pos += max(length - 1, 0)
            else:
                (length,), pos = struct.unpack_from(">h", buf, pos), pos + 2
                pos += max(length, 0)
        if flexible:
            pos = _skip_tagged_fields(buf, pos)
    return bytes(buf)


class FaultyKafkaProxy:
    """Listens on 127.0.0.1 (`bootstrap`), forwards to the broker at `upstream`, and swallows the next
    `drop_next(n)` Produce responses by closing that client connection (counted in `dropped`), and
    fails the Heartbeats answered within `fail_heartbeats(s)` (counted in `heartbeats_failed`).

    With `listening=False` its port is bound but refuses connections until `listen()`: a broker that is
    not up yet."""

    def __init__(self, upstream: str, *, listening: bool = True) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.remaining = 0
        self.dropped = 0
        self.heartbeats_failed = 0
        self._fail_heartbeats_until = 0.0
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.bootstrap = f"127.0.0.1:{self.port}"
        # (client, upstream, the api keys of the requests the client sent on it) per connection
        self._connections: list[tuple[socket.socket, socket.socket, set[int]]] = []
        self._closed = False
        if listening:
            self.listen()

    def listen(self) -> None:
        """Accept connections from now on."""
        self._server.listen()
        threading.Thread(target=self._accept, name="kafka-proxy", daemon=True).start()

    def drop_next(self, n: int) -> None:
        """Lose the next `n` Produce responses."""
        with self._lock:
            self.remaining = n

    def fail_heartbeats(self, seconds: float) -> None:
        """Answer every Heartbeat with NOT_COORDINATOR for the next `seconds`."""
        with self._lock:
            self._fail_heartbeats_until = time.monotonic() + seconds

    def disconnect(self, api_key: int) -> int:
        """Close the open connections that have carried a request of `api_key` (how many); new
        connections are accepted as before."""
        with self._lock:
            chosen = [(c, u) for c, u, sent in self._connections if api_key in sent and c.fileno() != -1]
        for client, upstream in chosen:
            self._close(client, upstream)
        return len(chosen)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:  # the broker is gone (teardown): the client sees a closed connection
                self._close(client)
                continue
            sent: set[int] = set()
            with self._lock:
                self._connections.append((client, upstream, sent))
            requests: dict[int, tuple[int, int]] = {}  # correlation id → (api_key, api_version)
            threading.Thread(
                target=self._requests, args=(client, upstream, requests, sent), daemon=True
            ).start()
            threading.Thread(target=self._responses, args=(upstream, client, requests), daemon=True).start()

    def _requests(
        self, client: socket.socket, upstream: socket.socket, requests: dict, sent: set[int]
    ) -> None:
        while (frame := _read_frame(client)) is not None:
            api_key, api_version, correlation_id = struct.unpack_from(">hhi", frame)
            requests[correlation_id] = (api_key, api_version)
            sent.add(api_key)
            try:
                upstream.sendall(struct.pack(">i", len(frame)) + frame)
            except OSError:
                break
        self._close(client, upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket, requests: dict) -> None:
        while (frame := _read_frame(upstream)) is not None:
            (correlation_id,) = struct.unpack_from(">i", frame)
            api_key, api_version = requests.pop(correlation_id, (-1, -1))
            if api_key == PRODUCE:
                with self._lock:
                    drop = self.remaining > 0
                    if drop:
                        self.remaining -= 1
                        self.dropped += 1
                if drop:  # the broker has appended the batch; the client never learns it did
                    break
            if api_key == METADATA:
                frame = rewrite_metadata_ports(frame, api_version, self.port)
            if api_key == FIND_COORDINATOR:
                frame = rewrite_coordinator_port(frame, *self.upstream, self.port)
            if api_key == HEARTBEAT and time.monotonic() < self._fail_heartbeats_until:
                frame = heartbeat_failed(frame, api_version)
                self.heartbeats_failed += 1
            try:
                client.sendall(struct.pack(">i", len(frame)) + frame)
            except OSError:
                break
        self._close(client, upstream)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            connections = list(self._connections)
        for client, upstream, _ in connections:
            self._close(client, upstream)

    def __enter__(self) -> FaultyKafkaProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
