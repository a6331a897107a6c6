#!/usr/bin/env python3
"""Publish and subscribe over kateway's WebSocket routes with a third-party client (websockets).

Round trip (default):
  .venv-test/bin/python tests/clients/ws_pubsub.py --base ws://127.0.0.1:9191 \
      --app app1 --topic t1 --ver v1 --count 100 [--group G] [--create 4]
  1. publishes COUNT messages over one connection to /v1/ws/msgs/:topic/:ver?appid=APP, all sent
     before any ack is read (pipelined); checks COUNT acks arrive, each {"partition","offset"},
     and that offsets strictly increase within each partition;
  2. subscribes over a second connection to /v1/ws/msgs/:appid/:topic/:ver?group=G&appid=SUB
     with credit=16, granting more credit as it consumes, and checks it receives exactly the
     COUNT payloads (base64 "value"), each at the partition and offset its ack named.
  Messages left in the topic by earlier runs (a new group starts at the oldest offset) are
  skipped: every payload of a run starts with a run id.

  With --lease, the subscribe is leased (ack=lease): every message must carry a receipt and an
  attempt; the first message of the run is nacked with {"settle":"nack"} and must come back as
  attempt 2; every other delivery is acked with {"settle":"ack"}; nothing may come back after.

Limits:
  ... ws_pubsub.py --base ws://127.0.0.1:9191 --app app1 --topic t1 --ver v1 \
      --send-oversize 600000 --expect-close-code 1009
  sends one message of that many bytes on the publish route and checks that the server closes
  the connection with that close code.

Exit status 0 on success; 1 with a line starting 'FAIL:' on any failure; 2 on bad usage.
Every wait is bounded (--timeout per step, --deadline for the whole run).
"""

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


from common import Failure, Progress, create_topic, in_test_venv, q

try:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect
except ImportError:
    in_test_venv("websockets")

PROGRESS = Progress("ws_pubsub")
log = PROGRESS.log
set_stage = PROGRESS.set_stage


def http_base(ws_base):
    u = urllib.parse.urlsplit(ws_base)
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme, u.scheme)
    return urllib.parse.urlunsplit((scheme, u.netloc, u.path.rstrip("/"), "", ""))


# --insecure: accept the gateway's certificate unverified (a test certificate over wss://).
INSECURE = False


def ws_connect(url, timeout, max_size=2**24):
    extra = {}
    if INSECURE and url.startswith("wss://"):
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        extra["ssl"] = ctx
    try:
        return connect(url, open_timeout=timeout, close_timeout=timeout, compression=None,
                       max_size=max_size, max_queue=None, ping_interval=None, **extra)
    except InvalidStatus as e:
        body = e.response.body[:500].decode("utf-8", "replace") if e.response.body else ""
        raise Failure(f"{url}: handshake answered {e.response.status_code} {body!r}")
    except InvalidHandshake as e:
        raise Failure(f"{url}: handshake failed: {e}")
    except (OSError, TimeoutError) as e:
        raise Failure(f"{url}: cannot connect: {e}")


def recv_json(ws, timeout, what):
    try:
        frame = ws.recv(timeout=timeout)
    except TimeoutError:
        raise Failure(f"{what}: nothing within {timeout}s")
    except ConnectionClosed as e:
        raise Failure(f"{what}: the server closed the connection ({close_desc(e)})")
    if isinstance(frame, bytes):
        raise Failure(f"{what}: a binary frame ({len(frame)} bytes); expected a JSON text frame")
    try:
        return json.loads(frame)
    except ValueError:
        raise Failure(f"{what}: not JSON: {frame[:300]!r}")


def close_desc(e):
    if e.rcvd is not None:
        return f"close code {e.rcvd.code}, reason {e.rcvd.reason!r}"
    return "no close frame received"


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def publish(args, run_id):
    url = f"{args.base}/v1/ws/msgs/{q(args.topic)}/{q(args.ver)}?appid={q(args.app)}&ack={args.ack}"
    if args.key:
        url += f"&key={q(args.key)}"
    set_stage(f"publishing {args.count} messages to {url}")
    payloads = [f"{run_id}-{i:06d}-" + "x" * args.pad for i in range(args.count)]
    acks = []
    with ws_connect(url, args.timeout) as ws:
        for i, p in enumerate(payloads):
            try:
                # Alternate text and binary frames: both are one message each.
                ws.send(p if i % 2 == 0 else p.encode())
            except ConnectionClosed as e:
                raise Failure(f"publish: connection closed after {i} of {args.count} sends "
                              f"({close_desc(e)})")
        set_stage(f"reading {args.count} acks")
        last = {}
        for i in range(args.count):
            a = recv_json(ws, args.timeout, f"ack {i + 1} of {args.count}")
            if "error" in a:
                raise Failure(f"publish: message {i} failed: {a['error']}")
            p, o = a.get("partition"), a.get("offset")
            if not (is_int(p) and is_int(o)) or p < 0 or o < 0:
                raise Failure(f"publish: ack {i} is not {{partition, offset}}: {a}")
            if p in last and o <= last[p]:
                raise Failure(f"publish: ack {i} offset {o} on partition {p} does not follow "
                              f"offset {last[p]} (acks out of order?)")
            last[p] = o
            acks.append((p, o))
        try:
            extra = ws.recv(timeout=0.2)
            raise Failure(f"publish: an extra frame after {args.count} acks: {extra[:200]!r}")
        except TimeoutError:
            pass
        except ConnectionClosed as e:
            raise Failure(f"publish: the server closed the connection after the acks ({close_desc(e)})")
    parts = sorted(last)
    log(f"{args.count} acks in order on partitions {parts}")
    return payloads, acks


def subscribe(args, run_id, payloads, acks):
    sub_app = args.sub_app or args.app
    credit = args.credit
    url = (f"{args.base}/v1/ws/msgs/{q(args.app)}/{q(args.topic)}/{q(args.ver)}"
           f"?group={q(args.group)}&appid={q(sub_app)}&credit={credit}")
    if args.sub_ack:
        url += "&ack=1"
    if args.lease:
        url += "&ack=lease&visibility=30s"
    nacked = None
    set_stage(f"subscribing at {url}")
    want = {ack: payloads[i] for i, ack in enumerate(acks)}
    got = {}
    foreign = 0
    last = {}
    consumed_since_grant = 0
    grant = max(1, credit // 2)
    outstanding = credit
    deadline = time.monotonic() + args.timeout
    with ws_connect(url, args.timeout) as ws:
        while len(got) < len(want):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(want) - set(got))
                raise Failure(f"subscribe: {len(got)} of {len(want)} messages within {args.timeout}s "
                              f"(no progress); first missing (partition, offset): {missing[:5]}")
            m = recv_json(ws, left, f"subscribe: message {len(got) + 1} of {len(want)}")
            if "error" in m or "results" in m:
                raise Failure(f"subscribe: the server sent an error: {m}")
            deadline = time.monotonic() + args.timeout  # progress: the timeout counts from here
            outstanding -= 1
            if outstanding < 0:
                raise Failure(f"subscribe: the server sent more messages than the credit granted "
                              f"({credit} at first, then {grant} at a time)")
            p, o, v = m.get("partition"), m.get("offset"), m.get("value")
            if not (is_int(p) and is_int(o) and is_int(m.get("timestamp")) and isinstance(v, str)):
                raise Failure(f"subscribe: not {{partition, offset, timestamp, value}}: {m}")
            try:
                value = base64.b64decode(v, validate=True).decode("utf-8", "replace")
            except ValueError:
                raise Failure(f"subscribe: value is not base64: {v[:100]!r}")
            receipt, attempt = m.get("receipt"), m.get("attempt")
            if args.lease:
                if not (isinstance(receipt, str) and is_int(attempt)):
                    raise Failure(f"subscribe: a leased message without receipt and attempt: {m}")
                if attempt > 1 and (p, o) != nacked:
                    raise Failure(f"subscribe: ({p}, {o}) came back as attempt {attempt} unnacked")
            if p in last and o <= last[p] and not (args.lease and attempt > 1):
                raise Failure(f"subscribe: partition {p} offset {o} after offset {last[p]}")
            if not (args.lease and attempt > 1):
                last[p] = o
            if args.lease and value.startswith(run_id) and nacked is None:
                # Nacked once: it must come back, as attempt 2.
                nacked = (p, o)
                ws.send(json.dumps({"settle": "nack", "receipts": [receipt], "delay": "0s"}))
                consumed_since_grant += 1
                continue
            if args.lease and (p, o) == nacked and attempt != 2:
                raise Failure(f"subscribe: the nacked message came back as attempt {attempt}")
            if value.startswith(run_id):
                if (p, o) not in want:
                    raise Failure(f"subscribe: this run's payload {value[:40]!r} at ({p}, {o}), "
                                  f"which no ack named")
                if want[(p, o)] != value:
                    raise Failure(f"subscribe: at ({p}, {o}) payload {value[:40]!r}, the ack "
                                  f"named {want[(p, o)][:40]!r}")
                if (p, o) in got:
                    raise Failure(f"subscribe: ({p}, {o}) delivered twice")
                if args.key and m.get("key") != args.key:
                    raise Failure(f"subscribe: key {m.get('key')!r} at ({p}, {o}), published {args.key!r}")
                got[(p, o)] = value
            else:
                foreign += 1
            if args.sub_ack:
                ws.send(json.dumps({"ack": [p, o]}))
            if args.lease:
                ws.send(json.dumps({"settle": "ack", "receipts": [receipt]}))
            consumed_since_grant += 1
            if consumed_since_grant >= grant:
                ws.send(json.dumps({"credit": consumed_since_grant}))
                outstanding += consumed_since_grant
                consumed_since_grant = 0
        # Nothing of this run may follow: wait a moment for a duplicate.
        settle_end = time.monotonic() + args.settle
        while True:
            left = settle_end - time.monotonic()
            if left <= 0:
                break
            try:
                frame = ws.recv(timeout=left)
            except TimeoutError:
                break
            except ConnectionClosed as e:
                raise Failure(f"subscribe: the server closed the connection ({close_desc(e)})")
            try:
                m = json.loads(frame)
                value = base64.b64decode(m.get("value", "")).decode("utf-8", "replace")
            except (ValueError, TypeError, AttributeError):
                raise Failure(f"subscribe: unexpected frame {frame[:200]!r}")
            if value.startswith(run_id):
                raise Failure(f"subscribe: a message of this run after all {len(want)}: {m}")
    log(f"received all {len(want)} payloads" + (f" (skipped {foreign} of earlier runs)" if foreign else ""))


def oversize(args):
    url = f"{args.base}/v1/ws/msgs/{q(args.topic)}/{q(args.ver)}?appid={q(args.app)}&ack={args.ack}"
    set_stage(f"sending one {args.send_oversize}-byte message to {url}")
    payload = os.urandom(args.send_oversize) if args.oversize_kind == "binary" else "o" * args.send_oversize
    with ws_connect(url, args.timeout) as ws:
        try:
            ws.send(payload)
        except (ConnectionClosed, OSError) as e:
            log(f"the send was cut short: {e!r}")
        set_stage("waiting for the server to close")
        deadline = time.monotonic() + args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"oversize: the server did not close within {args.timeout}s")
            try:
                frame = ws.recv(timeout=left)
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
            raise Failure(f"oversize: expected a close with code {args.expect_close_code}, got a "
                          f"frame: {frame[:300]!r}")
        code, reason = ws.close_code, ws.close_reason
        if code != args.expect_close_code:
            # 1006: no close frame (the TCP connection ended without one).
            raise Failure(f"oversize: close code {code} (reason {reason!r}), expected "
                          f"{args.expect_close_code}")
        log(f"closed with {code} (reason {reason!r}) as expected")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="ws://127.0.0.1:9191", help="ws://HOST:PORT (or wss://)")
    ap.add_argument("--app", required=True, help="the publishing app, owner of the topic")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--ver", default="v1")
    ap.add_argument("--insecure", action="store_true", help="do not verify a wss:// certificate")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--group", help="subscriber group (default: a new one per run)")
    ap.add_argument("--sub-app", help="the subscribing app (default: --app)")
    ap.add_argument("--credit", type=int, default=16, help="initial subscribe credit (default 16)")
    ap.add_argument("--sub-ack", action="store_true", help="subscribe with ack=1 and ack each message")
    ap.add_argument("--lease", action="store_true",
                    help="subscribe with ack=lease: nack the first message once, ack every delivery")
    ap.add_argument("--ack", choices=["all", "local"], default="all", help="publish durability")
    ap.add_argument("--key", help="partition key for every message")
    ap.add_argument("--pad", type=int, default=16, help="bytes of padding per payload")
    ap.add_argument("--create", type=int, metavar="PARTITIONS",
                    help="create the topic first over HTTP (a 409 'exists' is fine)")
    ap.add_argument("--timeout", type=float, default=10, help="seconds any one step may wait (10)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to watch for duplicates after the last message (0.5)")
    ap.add_argument("--deadline", type=float, default=120, help="seconds for the whole run (120)")
    ap.add_argument("--send-oversize", type=int, metavar="BYTES",
                    help="limits mode: send one message of BYTES bytes")
    ap.add_argument("--expect-close-code", type=int, metavar="CODE",
                    help="limits mode: the close code the server must answer with (1009)")
    ap.add_argument("--oversize-kind", choices=["binary", "text"], default="binary")
    args = ap.parse_args()
    global INSECURE
    INSECURE = args.insecure
    if (args.send_oversize is None) != (args.expect_close_code is None):
        ap.error("--send-oversize and --expect-close-code go together")
    if args.count < 1 or args.credit < 1:
        ap.error("--count and --credit must be at least 1")
    args.base = args.base.rstrip("/")
    PROGRESS.watchdog(args.deadline)
    run_id = f"r{os.getpid()}x{int(time.time() * 1000) % 10**9}"
    if not args.group:
        args.group = f"ws-{run_id}"
    try:
        if args.create:
            create_topic(http_base(args.base), args, log)
        if args.send_oversize is not None:
            oversize(args)
            log(f"PASS: a {args.send_oversize}-byte message closed the connection with {args.expect_close_code}")
        else:
            payloads, acks = publish(args, run_id)
            subscribe(args, run_id, payloads, acks)
            log(f"PASS: {args.count} messages published over WebSocket and received over WebSocket "
                f"(group {args.group})")
    except Failure as e:
        print(f"FAIL: {PROGRESS.prog}: {e}", flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - any surprise is a failure with a reason
        print(f"FAIL: {PROGRESS.prog}: unexpected {type(e).__name__} in '{PROGRESS.stage}': {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
