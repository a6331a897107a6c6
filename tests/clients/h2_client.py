#!/usr/bin/env python3
"""HTTP/2 checks against a running gateway with the sans-I/O `h2` library (hyper-h2) and raw
frames from `hyperframe`: a client no one on the project wrote.

  h2_client.py ADDR multiplex --app A --sub S --topic T
      A long poll parks on stream 1; a publish on stream 3 of the same connection is answered
      while it waits, and wakes it with that very message.
  h2_client.py ADDR parked --app A --sub S --topic T
      Opens a long poll (wait=60s), prints "parked", and waits: the caller drains the gateway;
      the poll must be answered 204, and GOAWAY must arrive before the connection closes.
  h2_client.py ADDR partial-bodies --app A --topic T [--streams N --body-kib K --expect-status S]
      Many publish streams whose bodies arrive but never end: the core's request budget must
      refuse some (503) rather than hold them all.
  h2_client.py ADDR rapid-reset|continuation|hpack-bomb|settings-flood|ping-flood|ping-ack-flood
  h2_client.py ADDR idle-after-request
      One request, then silence: GOAWAY and close must follow the idle timeout.
      Attacks; each must end with the connection closed (GOAWAY or EOF) or the attack answered
      without the gateway buffering it, within the timeout. Prints what the gateway did.

Exit 0 on success, 1 with a reason on failure.
"""
import argparse
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hyperframe.frame import (ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame,
                              SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def request(c, sid, method, path, headers=(), body=None):
    h = [(":method", method), (":scheme", "http"), (":authority", "gw"), (":path", path)]
    h += list(headers)
    c.send_headers(sid, h, end_stream=body is None)
    if body is not None:
        c.send_data(sid, body, end_stream=True)


def pump(s, c, until, timeout=20):
    """Reads events until `until(events_so_far)` is true; returns all events."""
    seen = []
    deadline = time.time() + timeout
    while not until(seen):
        left = deadline - time.time()
        if left <= 0:
            fail(f"timed out; events so far: {seen}")
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            fail(f"timed out; events so far: {seen}")
        if not data:
            seen.append("EOF")
            return seen
        for ev in c.receive_data(data):
            seen.append(ev)
            if isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    return seen


def ended(sid):
    return lambda evs: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid
                           for e in evs) or "EOF" in evs


def status_of(evs, sid):
    for e in evs:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
            return dict(e.headers)[b":status"].decode()
    return None


def body_of(evs, sid):
    return b"".join(e.data for e in evs
                    if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)


def idle_after_request(a):
    """One GET /alive, then silence: the gateway must send GOAWAY and close the connection
    after its idle timeout (the client answers nothing, not even the GOAWAY's PING)."""
    s, c = connect(a.addr)
    request(c, 1, "GET", "/alive")
    s.sendall(c.data_to_send())
    evs = pump(s, c, ended(1))
    if status_of(evs, 1) != "200":
        fail(f"GET /alive: {evs}")
    t0 = time.time()
    goaway = False
    s.settimeout(30)
    while True:
        try:
            data = s.recv(65536)
        except socket.timeout:
            fail("the connection was still open 30 s after its last stream ended")
        if not data:
            break
        # After the GOAWAY the gateway may still send its PING: only EOF is awaited then.
        if not goaway:
            try:
                evs = c.receive_data(data)
            except h2.exceptions.ProtocolError:
                evs = []
            goaway = any(isinstance(ev, h2.events.ConnectionTerminated) for ev in evs)
    if not goaway:
        fail("closed without GOAWAY")
    print(f"idle-after-request: GOAWAY and close {time.time() - t0:.1f} s after the last stream")


def multiplex(a):
    s, c = connect(a.addr)
    poll = f"/v1/msgs/{a.app}/{a.topic}/v1?group=mx&wait=30s&reset=oldest"
    request(c, 1, "GET", poll, [("appid", a.sub)])
    s.sendall(c.data_to_send())
    time.sleep(0.5)  # the poll parks (nothing published yet)
    request(c, 3, "POST", f"/v1/msgs/{a.topic}/v1", [("appid", a.app)], b"over-stream-3")
    s.sendall(c.data_to_send())
    evs = pump(s, c, lambda e: ended(1)(e) and ended(3)(e))
    if status_of(evs, 3) != "201":
        fail(f"publish on stream 3: status {status_of(evs, 3)}")
    if status_of(evs, 1) != "200" or body_of(evs, 1) != b"over-stream-3":
        fail(f"poll on stream 1: {status_of(evs, 1)} {body_of(evs, 1)!r}")
    # Had the connection served one stream at a time, the publish would wait behind the poll,
    # the poll would end 204 after its 30 s wait, and pump() would have timed out at 20 s.
    print("ok: stream 3 answered while stream 1 was parked, and it woke stream 1")


def partial_bodies(a):
    """Opens `--streams` publish streams on one connection and sends `--body-kib` of each body
    without ending it; prints how many streams the gateway answered, and with what."""
    s, c = connect(a.addr)
    want = a.body_kib * 1024
    sent = {}
    for i in range(a.streams):
        sid = 1 + 2 * i
        request_headers = [(":method", "POST"), (":scheme", "http"), (":authority", "gw"),
                           (":path", f"/v1/msgs/{a.topic}/v1"), ("appid", a.app)]
        c.send_headers(sid, request_headers, end_stream=False)
        sent[sid] = 0
    s.sendall(c.data_to_send())
    statuses = {}
    deadline = time.time() + 20
    while time.time() < deadline:
        progressed = False
        for sid in sent:
            if sid in statuses or sent[sid] >= want:
                continue
            try:
                room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size)
            except Exception:
                continue
            n = min(room, want - sent[sid])
            if n > 0:
                c.send_data(sid, b"x" * n, end_stream=False)
                sent[sid] += n
                progressed = True
        out = c.data_to_send()
        if out:
            s.sendall(out)
        if all(v >= want for k, v in sent.items() if k not in statuses) and not progressed:
            s.settimeout(2)
        else:
            s.settimeout(0.2)
        try:
            data = s.recv(65536)
        except socket.timeout:
            if all(v >= want or k in statuses for k, v in sent.items()):
                break
            continue
        if not data:
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                statuses[ev.stream_id] = dict(ev.headers)[b":status"].decode()
        out = c.data_to_send()
        if out:
            s.sendall(out)
    counts = {}
    for v in statuses.values():
        counts[v] = counts.get(v, 0) + 1
    print(f"answered {len(statuses)} of {a.streams} streams: {counts}")
    if a.expect_status and counts.get(a.expect_status, 0) == 0:
        fail(f"no stream was answered {a.expect_status}")


def frames(data):
    """The frames in `data`: (type, flags, stream id, payload)."""
    out, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        sid = int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF
        out.append((data[i + 3], data[i + 4], sid, data[i + 9:i + 9 + length]))
        i += 9 + length
    return out


def parked(a):
    s, c = connect(a.addr)
    poll = f"/v1/msgs/{a.app}/{a.topic}/v1?group=pk&wait=60s&reset=newest"
    request(c, 1, "GET", poll, [("appid", a.sub)])
    s.sendall(c.data_to_send())
    print("parked", flush=True)
    # Read raw until the gateway closes: a graceful shutdown is GOAWAY, PING, the last
    # answers, GOAWAY again, which hyper-h2's state machine (closed at the first GOAWAY)
    # would refuse to follow.
    data = b""
    s.settimeout(40)
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    dec = hpack.Decoder()
    status, goaway_after = None, False
    for ftype, flags, sid, payload in frames(data):
        if ftype == 1 and sid == 1:  # HEADERS (no padding or priority from the gateway)
            status = dict(dec.decode(payload)).get(":status")
        elif ftype == 1:
            dec.decode(payload)
        elif ftype == 7 and status is not None:
            goaway_after = True
    if status != "204":
        fail(f"the parked poll got {status}, not 204: {frames(data)}")
    if not goaway_after:
        fail(f"no GOAWAY after the answer: {frames(data)}")
    print("ok: 204 for the parked poll, then GOAWAY and close")


def raw_attack(a, frames_fn):
    """Sends the preface and what frames_fn yields (as bytes) until the connection closes;
    returns (what the gateway sent, bytes sent). The gateway's bytes are read while the attack
    is sent: a server that closes a connection whose client is still sending makes the kernel
    reset it, which would discard a GOAWAY not read yet."""
    import threading
    host, port = a.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    got = bytearray()

    def read():
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    return
                got.extend(d)
        except (socket.timeout, OSError):
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    s.sendall(PREFACE + SettingsFrame(0).serialize())
    sent = 0
    deadline = time.time() + 30
    try:
        for chunk in frames_fn():
            s.sendall(chunk)
            sent += len(chunk)
            if time.time() > deadline:
                break
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    try:
        # Done sending: a gateway that kept the connection open closes it at this EOF.
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    reader.join(timeout=12)
    s.close()
    return bytes(got), sent


def goaway_code(data):
    """The error code of the first GOAWAY frame in `data`, or None."""
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        ftype = data[i + 3]
        if ftype == 7 and i + 9 + 8 <= len(data):
            return int.from_bytes(data[i + 13:i + 17], "big")
        i += 9 + length
    return None


def headers_block(path="/alive", extra=()):
    e = hpack.Encoder()
    return e.encode([(":method", "GET"), (":scheme", "http"), (":authority", "gw"),
                     (":path", path)] + list(extra))


def attack(a):
    block = headers_block()

    def rapid_reset():
        for sid in range(1, 200001, 2):
            h = HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            yield h + RstStreamFrame(sid, error_code=8).serialize()

    def continuation():
        yield HeadersFrame(1, block[:3]).serialize()
        filler = b"\x40\x01x\x01y" * 3000  # literal headers, over and over, never END_HEADERS
        for _ in range(20000):
            yield ContinuationFrame(1, filler).serialize()

    def hpack_bomb():
        # One large header inserted into the dynamic table, then referenced many times.
        big = hpack.Encoder()
        first = big.encode([(":method", "GET"), (":scheme", "http"), (":authority", "gw"),
                            (":path", "/alive"), ("x-bomb", "a" * 4000)])
        yield HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]).serialize()
        ref = bytes([0x80 | 62]) * 16000  # index 62: the newest dynamic entry, 16,000 times
        for sid in range(3, 4003, 2):
            yield HeadersFrame(sid, block + ref, flags=["END_HEADERS", "END_STREAM"]).serialize()

    def settings_flood():
        for _ in range(200000):
            yield SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize()

    def ping_flood():
        for i in range(200000):
            yield PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize()

    def ping_ack_flood():
        # Acks of pings the gateway never sent: nothing to answer, and nothing worth a log line.
        for i in range(20000):
            yield PingFrame(0, opaque_data=i.to_bytes(8, "big"), flags=["ACK"]).serialize()

    fn = {"rapid-reset": rapid_reset, "continuation": continuation, "hpack-bomb": hpack_bomb,
          "settings-flood": settings_flood, "ping-flood": ping_flood,
          "ping-ack-flood": ping_ack_flood}[a.mode]
    got, sent = raw_attack(a, fn)
    code = goaway_code(got)
    print(f"{a.mode}: sent {sent} bytes; gateway sent {len(got)} bytes; GOAWAY code {code}")
    if a.expect_goaway is not None and code != a.expect_goaway:
        fail(f"expected GOAWAY with code {a.expect_goaway}, got {code}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("mode")
    p.add_argument("--app")
    p.add_argument("--sub")
    p.add_argument("--topic")
    p.add_argument("--expect-goaway", type=int)
    p.add_argument("--streams", type=int, default=30)
    p.add_argument("--body-kib", type=int, default=60)
    p.add_argument("--expect-status")
    a = p.parse_args()
    if a.mode == "multiplex":
        multiplex(a)
    elif a.mode == "idle-after-request":
        idle_after_request(a)
    elif a.mode == "parked":
        parked(a)
    elif a.mode == "partial-bodies":
        partial_bodies(a)
    else:
        attack(a)


if __name__ == "__main__":
    main()
