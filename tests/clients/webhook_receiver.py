#!/usr/bin/env python3
"""A webhook endpoint for kateway's push subscriptions, written against the Standard Webhooks
signature scheme with Python's own hmac (independently of the gateway's code).

Every request is verified (`webhook-signature: v1,<base64 HMAC-SHA256(secret, id.ts.body)>`,
the secret being the base64 after `whsec_`, read from --secret-file at each request) and
logged as one JSON line to --out: id, timestamp, key, body, whether the signature verified,
the status answered, and whether the answer was held back past the client's timeout.

With --cert and --key it serves HTTPS. It fails a share of requests at random (--fail-rate: answered 500), holds a share past
--hang seconds (--timeout-rate: the gateway gives up first), and always answers 500 to bodies
that start with --poison. With --status N it answers N to everything; with --interim N it sends
the interim answer N (103, 100) before each final one. Standard library only.

    webhook_receiver.py --port 8080 --secret-file /tmp/secret --out /tmp/log.jsonl
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import random
import threading
import time

lock = threading.Lock()


def verify(secret_text, msg_id, ts, body, header):
    key = base64.b64decode(secret_text.split("_", 1)[1])
    signed = f"{msg_id}.{ts}.".encode() + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for part in (header or "").split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, want):
            return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--timeout-rate", type=float, default=0.0)
    ap.add_argument("--hang", type=float, default=3.0)
    ap.add_argument("--poison", default="poison")
    ap.add_argument("--status", type=int, default=0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--interim", type=int, default=0,
                    help="send this 1xx interim answer (103 Early Hints, 100 Continue) before each final one")
    ap.add_argument("--cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--key", help="and this private key (PEM)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = open(a.out, "a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(n)
            msg_id = self.headers.get("webhook-id")
            ts = self.headers.get("webhook-timestamp")
            try:
                secret = open(a.secret_file).read().strip()
                ok = verify(secret, msg_id, ts, body, self.headers.get("webhook-signature"))
            except (OSError, ValueError, IndexError):
                ok = False
            with lock:
                roll = rng.random()
            hang = False
            if a.status:
                status = a.status
            elif body.startswith(a.poison.encode()):
                status = 500
            elif roll < a.timeout_rate:
                status, hang = 200, True
            elif roll < a.timeout_rate + a.fail_rate:
                status = 500
            else:
                status = 200
            line = {"id": msg_id, "ts": ts, "key": self.headers.get("kateway-key"),
                    "attempt": self.headers.get("kateway-attempt"),
                    "body": body.decode("utf-8", "replace"), "sig_ok": ok, "status": status,
                    "hung": hang, "at": time.time()}
            with lock:
                out.write(json.dumps(line) + "\n")
            if hang:
                time.sleep(a.hang)
            reply = b"ok" if status < 300 else b"failed on purpose"
            try:
                if a.interim:
                    self.send_response_only(a.interim)
                    self.send_header("link", "</style.css>; rel=preload; as=style")
                    self.end_headers()
                    self.wfile.flush()
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    if a.cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"listening on {a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
