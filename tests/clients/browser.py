#!/usr/bin/env python3
"""Server-Sent Events and WebSocket publishing in a real browser (headless Debian Chromium driven by
selenium through chromedriver), against a running kateway.

  .venv-test/bin/python tests/clients/browser.py --http http://127.0.0.1:9191 \
      --app app1 --topic t1 --ver v1 [--group G] [--create 1] [--screenshot /tmp/browser.png]

The page (about:blank, scripted through selenium):
  1. opens an EventSource to GET /v1/msgs/:appid/:topic/:ver?group=G&appid=SUB (the app in the
     query: EventSource cannot set headers) and collects its 'message' events;
  2. opens a WebSocket to /v1/ws/msgs/:topic/:ver?appid=APP&key=K and publishes 5 text messages,
     collecting the acks {"partition","offset"}.
Meanwhile this script publishes messages over plain HTTP (urllib, Appid header) and waits until
the page has received all of them and the 5 of the WebSocket over SSE, each with an id
'partition:offset' that matches its JSON. Then:
  3. resume by query: the page closes its EventSource, this script publishes more, and the page
     opens a new EventSource with &lastEventId=<last id seen>: the first event of the run's
     partition must be the next offset, then the new messages, in order, with no repeat;
  4. resume by header: this script publishes one more message and reads the stream itself with
     'Last-Event-ID: <id>', <id> being --rewind (2) messages before the last one the page saw (as
     if those had been lost in flight; the group has moved past them): the stream starts with
     'retry: 1000', then come exactly those 2 messages again and the new one;
  5. optionally waits for a heartbeat comment ': hb' on that stream (--heartbeat-wait).
Any error in the browser console fails the run. All messages of a run carry one key, so they are
on one partition and ordered; events of earlier runs in the topic are skipped.

Exit status 0 on success, 1 with a line starting 'FAIL:' on failure, 2 on bad usage.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request


from common import Failure, Progress, create_topic, in_test_venv, q

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
except ImportError:
    in_test_venv("selenium")

PROGRESS = Progress("browser")
log = PROGRESS.log
set_stage = PROGRESS.set_stage
driver_holder = {}


def cleanup():
    """What the watchdog does before it ends a stuck run: the browser and its profile go."""
    kill_browser()
    if driver_holder.get("profile"):
        time.sleep(0.5)
        shutil.rmtree(driver_holder["profile"], ignore_errors=True)


def kill_browser():
    svc = driver_holder.get("service")
    proc = getattr(svc, "process", None) if svc else None
    if proc is not None and proc.poll() is None:
        try:
            # chromedriver was started in a session of its own: its Chromium goes with it.
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------- plain HTTP side (urllib)

def http_publish(args, payload):
    url = f"{args.http}/v1/msgs/{q(args.topic)}/{q(args.ver)}?key={q(args.key)}"
    req = urllib.request.Request(url, data=payload.encode(), method="POST",
                                 headers={"Appid": args.app, "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        hint = " (does the topic exist? --create N makes it)" if e.code == 404 else ""
        raise Failure(f"HTTP publish: {url} answered {e.code} {e.read()[:300]!r}{hint}")
    except OSError as e:
        raise Failure(f"HTTP publish: {url}: {e}")
    if status != 201:
        raise Failure(f"HTTP publish: {url} answered {status}, expected 201")
    try:
        a = json.loads(body)
        return int(a["partition"]), int(a["offset"])
    except (ValueError, KeyError, TypeError):
        raise Failure(f"HTTP publish: not {{partition, offset}}: {body[:300]!r}")


def sse_url(args):
    return (f"{args.http}/v1/msgs/{q(args.app)}/{q(args.topic)}/{q(args.ver)}"
            f"?group={q(args.group)}&appid={q(args.sub_app)}")


def read_sse_with_header(args, last_id, want, run_id):
    """Reads the SSE stream itself with a Last-Event-ID header: checks that 'retry: 1000' comes
    first, that this run's events are exactly `want` [(id, payload)] in order, nothing more, and
    (optionally) that a heartbeat comment arrives."""
    url = sse_url(args)
    set_stage(f"resume by header: GET {url} with Last-Event-ID: {last_id}")
    req = urllib.request.Request(url, headers={"Accept": "text/event-stream", "Last-Event-ID": last_id})
    try:
        r = urllib.request.urlopen(req, timeout=args.timeout)
    except urllib.error.HTTPError as e:
        raise Failure(f"SSE: {url} answered {e.code} {e.read()[:300]!r}")
    except OSError as e:
        raise Failure(f"SSE: {url}: {e}")
    with r:
        ctype = r.headers.get("Content-Type", "")
        if r.status != 200 or not ctype.startswith("text/event-stream"):
            raise Failure(f"SSE: status {r.status}, Content-Type {ctype!r}; expected 200 text/event-stream")
        first_line = True
        event = {}
        got = []
        heartbeat = False
        end = time.monotonic() + args.timeout
        while time.monotonic() < end:
            try:
                line = r.readline()
            except (TimeoutError, OSError) as e:
                raise Failure(f"SSE: reading the stream: {e!r} (no line for {args.timeout}s?); "
                              f"events so far: {got}")
            if not line:
                raise Failure(f"SSE: the server ended the stream; events so far: {got}")
            line = line.decode("utf-8", "replace").rstrip("\r\n")
            if first_line and line:
                first_line = False
                if line != "retry: 1000":
                    raise Failure(f"SSE: the stream starts with {line!r}, expected 'retry: 1000'")
                continue
            if line.startswith(":"):
                if line.strip() == ": hb":
                    heartbeat = True
                    if len(got) >= len(want):
                        break
                continue
            if line:
                field, _, value = line.partition(":")
                event[field] = value[1:] if value.startswith(" ") else value
                continue
            ev, event = event, {}
            if "data" not in ev:
                continue  # a blank line after 'retry' or a comment
            _, _, value = parse_event(ev)
            if not value.startswith(run_id):
                continue  # an earlier run's message on another partition
            got.append((ev["id"], value))
            if got != want[:len(got)]:
                kind = ""
                if len(got) == 1:
                    kind = " (a repeat)" if value in [v for _, v in want] else " (a gap?)"
                raise Failure(f"resume by header: after {last_id} got {got}{kind}, expected {want}")
            if len(got) == len(want):
                log(f"resume by header: {len(want)} events from {want[0][0]} on, as expected")
                if args.heartbeat_wait <= 0 or heartbeat:
                    # Nothing more of this run may follow: watch the stream for --settle seconds.
                    end = time.monotonic() + args.settle
                else:
                    end = time.monotonic() + args.heartbeat_wait
                    set_stage(f"waiting up to {args.heartbeat_wait}s for a ': hb' heartbeat")
        if len(got) < len(want):
            raise Failure(f"resume by header: after {last_id} only {got} within {args.timeout}s, "
                          f"expected {want}")
        if args.heartbeat_wait > 0:
            if not heartbeat:
                raise Failure(f"SSE: no ': hb' heartbeat within {args.heartbeat_wait}s")
            log("heartbeat ': hb' seen")


def parse_event(ev):
    """(partition, offset, decoded value) of an SSE event {id, event, data}, checked."""
    try:
        d = json.loads(ev["data"])
        p, o = d["partition"], d["offset"]
        value = base64.b64decode(d["value"], validate=True).decode("utf-8", "replace")
    except (ValueError, KeyError, TypeError) as e:
        raise Failure(f"SSE: event data is not {{partition, offset, value(base64)}}: {ev} ({e})")
    if not isinstance(d.get("timestamp"), int):
        raise Failure(f"SSE: event without a numeric timestamp: {ev['data'][:300]}")
    if ev.get("id") != f"{p}:{o}":
        raise Failure(f"SSE: event id {ev.get('id')!r} does not match its data ({p}:{o})")
    if ev.get("event", "message") != "message":
        raise Failure(f"SSE: event type {ev.get('event')!r}, expected 'message'")
    return p, o, value


# ---------------------------------------------------------------- the page

PAGE_SETUP = r"""
window.events = []; window.esLog = []; window.acks = []; window.wsLog = [];
document.title = 'kateway browser test';
document.body.innerHTML = '<h3>kateway browser test</h3>' +
  '<pre id="status" style="white-space: pre-wrap; word-break: break-all"></pre><pre id="recent"></pre>';
window.render = function () {
  const last = window.events.length ? window.events[window.events.length - 1].id : '-';
  document.getElementById('status').textContent =
    'SSE events: ' + window.events.length + ' (last id ' + last + ')\n' +
    'SSE log: ' + window.esLog.join(', ') + '\n' +
    'WebSocket acks: ' + window.acks.join(' ') + '\n' +
    'WebSocket log: ' + window.wsLog.join(', ');
  document.getElementById('recent').textContent = 'Latest SSE events:\n' + window.events.slice(-20).map((e) => {
    try { return e.id + '  ' + atob(JSON.parse(e.data).value); } catch (x) { return e.id + '  ?'; }
  }).join('\n');
};
window.openSSE = function (url) {
  if (window.es) window.es.close();
  const es = new EventSource(url);
  window.esLog.push('open ' + url.split('?')[1]);
  es.onopen = () => { window.esLog.push('opened'); render(); };
  es.onerror = () => { window.esLog.push('error(readyState ' + es.readyState + ')'); render(); };
  es.addEventListener('message', (e) => {
    if (es !== window.es) return;
    window.events.push({id: e.lastEventId, type: e.type, data: e.data});
    render();
  });
  window.es = es;
};
window.closeSSE = function () { if (window.es) { window.es.close(); window.es = null; window.esLog.push('closed'); } };
window.wsPublish = function (url, messages) {
  const ws = new WebSocket(url);
  ws.onopen = () => { window.wsLog.push('open'); for (const m of messages) ws.send(m); render(); };
  ws.onmessage = (e) => {
    window.acks.push(e.data);
    if (window.acks.length === messages.length) ws.close(1000, 'done');
    render();
  };
  ws.onerror = () => { window.wsLog.push('error'); render(); };
  ws.onclose = (e) => { window.wsLog.push('close ' + e.code + (e.reason ? ' ' + e.reason : '')); render(); };
  window.ws = ws;
};
render();
"""


def start_browser(args, profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-web-security", f"--user-data-dir={profile}",
              "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-extensions",
              "--window-size=1000,700"):
        opts.add_argument(a)
    port = urllib.parse.urlsplit(args.http).port
    if port:
        # Chromium refuses its 'unsafe' ports (6000, 6665-6669, 10080, ...) unless allowed.
        opts.add_argument(f"--explicitly-allowed-ports={port}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium-manager download a driver
    service = Service(executable_path=args.chromedriver, popen_kw={"start_new_session": True})
    driver_holder["service"] = service
    try:
        drv = webdriver.Chrome(options=opts, service=service)
    except WebDriverException as e:
        raise Failure(f"starting {args.chromium} through {args.chromedriver}: {e.msg or e}")
    driver_holder["driver"] = drv
    drv.set_page_load_timeout(args.timeout)
    drv.set_script_timeout(args.timeout)
    caps = drv.capabilities
    log(f"Chromium {caps.get('browserVersion')}, chromedriver "
        f"{caps.get('chrome', {}).get('chromedriverVersion', '?').split(' ')[0]}")
    return drv


console_seen = []


def check_console(drv):
    """Fails on any SEVERE entry of the browser console (errors, failed loads)."""
    entries = drv.get_log("browser")
    console_seen.extend(entries)
    errors = [e for e in entries if e.get("level") == "SEVERE"]
    for e in entries:
        if e.get("level") != "SEVERE":
            log(f"console {e.get('level')}: {e.get('message')}")
    if errors:
        raise Failure("browser console errors:\n  " + "\n  ".join(e.get("message", str(e)) for e in errors))


def wait_for(drv, what, fn, timeout, interval=0.1):
    """Polls fn() (which returns a true value when done) until timeout."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            state = drv.execute_script("return document.getElementById('status').textContent")
            raise Failure(f"{what}: not within {timeout}s; page status:\n{state}")
        time.sleep(interval)


def run_events(drv, run_id, start):
    """The page's events from index `start` on, parsed, only this run's: [(p, o, value, id)]."""
    raw = drv.execute_script("return window.events.slice(arguments[0])", start)
    out = []
    for ev in raw:
        p, o, value = parse_event(ev)
        if value.startswith(run_id):
            out.append((p, o, value, ev["id"]))
    return out


def run(args, drv, run_id):
    set_stage("opening about:blank and setting up the page")
    drv.get("about:blank")
    drv.execute_script(PAGE_SETUP)
    url = sse_url(args)
    set_stage(f"EventSource {url}")
    drv.execute_script("openSSE(arguments[0])", url)

    ws_url = (args.http.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
              + f"/v1/ws/msgs/{q(args.topic)}/{q(args.ver)}?appid={q(args.app)}&key={q(args.key)}")
    ws_payloads = [f"{run_id}-ws-{i}" for i in range(5)]
    set_stage(f"WebSocket publish of 5 messages from the page to {ws_url}")
    drv.execute_script("wsPublish(arguments[0], arguments[1])", ws_url, ws_payloads)

    set_stage(f"publishing {args.count} messages over HTTP")
    http_payloads = [f"{run_id}-http-{i}" for i in range(args.count)]
    http_acks = [http_publish(args, p) for p in http_payloads]

    set_stage("waiting for the 5 WebSocket acks in the page")
    acks = wait_for(drv, "5 WebSocket acks",
                    lambda: (lambda a: a if len(a) >= 5 else None)(drv.execute_script("return window.acks")),
                    args.timeout)
    last = {}
    for i, a in enumerate(acks):
        try:
            d = json.loads(a)
        except ValueError:
            raise Failure(f"WebSocket ack {i} is not JSON: {a[:300]!r}")
        if "error" in d:
            raise Failure(f"WebSocket publish {i} failed: {d['error']}")
        p, o = d.get("partition"), d.get("offset")
        if not isinstance(p, int) or not isinstance(o, int):
            raise Failure(f"WebSocket ack {i} is not {{partition, offset}}: {d}")
        if p in last and o <= last[p]:
            raise Failure(f"WebSocket acks out of order: {acks}")
        last[p] = o
    if len(acks) != 5:
        raise Failure(f"{len(acks)} WebSocket acks for 5 messages: {acks}")
    log(f"WebSocket acks: {', '.join(acks)}")

    expected = set(ws_payloads) | set(http_payloads)
    set_stage(f"waiting for all {len(expected)} messages over SSE in the page")
    def all_seen():
        evs = run_events(drv, run_id, 0)
        return evs if {v for _, _, v, _ in evs} >= expected else None
    try:
        evs = wait_for(drv, f"the {len(expected)} messages over SSE", all_seen, args.timeout)
    except Failure as e:
        seen = {v for _, _, v, _ in run_events(drv, run_id, 0)}
        raise Failure(f"{e}\nmissing over SSE: {sorted(expected - seen)}")
    check_run_events(evs, "SSE")
    if len(evs) != len(expected):
        raise Failure(f"SSE: {len(evs)} events of this run for {len(expected)} messages (repeats?)")
    for (p, o), payload in zip(http_acks, http_payloads):
        if (p, o, payload) not in {(a, b, c) for a, b, c, _ in evs}:
            raise Failure(f"SSE: {payload!r} not at ({p}, {o}) where its HTTP publish put it")
    check_console(drv)
    log(f"SSE delivered all {len(expected)} messages (5 from the page's WebSocket, {args.count} over HTTP)")

    # Resume by query: everything published while no EventSource is open must follow the last id.
    last_p, last_o, _, last_id = evs[-1]
    set_stage(f"closing the EventSource at {last_id}; publishing {args.resume_count} more over HTTP")
    drv.execute_script("closeSSE()")
    mark = drv.execute_script("return window.events.length")
    more = [f"{run_id}-resume-{i}" for i in range(args.resume_count)]
    more_acks = [http_publish(args, p) for p in more]
    if more_acks[0] != (last_p, last_o + 1):
        raise Failure(f"the first message after {last_id} was published at {more_acks[0]}, expected "
                      f"({last_p}, {last_o + 1}): is the topic being written by someone else?")
    set_stage(f"new EventSource with &lastEventId={last_id}")
    drv.execute_script("openSSE(arguments[0])", f"{url}&lastEventId={q(last_id)}")
    def resumed():
        e = run_events(drv, run_id, mark)
        return e if len(e) >= len(more) or (e and e[0][:2] != (last_p, last_o + 1)) else None
    try:
        wait_for(drv, f"the {len(more)} messages after resuming at {last_id}", resumed, args.timeout)
    except Failure as e:
        log(str(e))  # what did arrive is compared below
    time.sleep(args.settle)  # a repeat or an extra would arrive now
    new = run_events(drv, run_id, mark)
    got = [(p, o, v) for p, o, v, _ in new]
    want = [(p, o, v) for (p, o), v in zip(more_acks, more)]
    if got != want:
        first = got[0] if got else None
        if first and (first[0], first[1]) != (last_p, last_o + 1):
            kind = "a repeat" if first[1] <= last_o else "a gap"
            raise Failure(f"resume by query: after {last_id} the first event is {first[0]}:{first[1]} "
                          f"({kind}), expected {last_p}:{last_o + 1}; got {got}")
        raise Failure(f"resume by query: after {last_id} got {got}, expected {want}")
    check_console(drv)
    log(f"resume by query: {len(more)} events from {last_p}:{last_o + 1} on, no gap, no repeat")
    drv.execute_script("closeSSE()")

    # Resume by header, read by this script, from --rewind messages before the last one the page
    # saw: as if they had been lost in flight (the group has moved past them), so they come again.
    one = f"{run_id}-header"
    p, o = http_publish(args, one)
    timeline = [(f"{a}:{b}", v) for a, b, v, _ in evs] + [(f"{a}:{b}", v) for a, b, v in got]
    timeline.append((f"{p}:{o}", one))
    rewind = min(args.rewind, len(timeline) - 2)
    from_id = timeline[-2 - rewind][0]
    read_sse_with_header(args, from_id, timeline[-1 - rewind:], run_id)
    check_console(drv)


def check_run_events(evs, what):
    last = {}
    for p, o, v, _ in evs:
        if p in last and o <= last[p]:
            raise Failure(f"{what}: partition {p} offset {o} after {last[p]} ({v!r})")
        last[p] = o


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", default="http://127.0.0.1:9191", help="http://HOST:PORT of the gateway")
    ap.add_argument("--app", required=True, help="the publishing app, owner of the topic")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--ver", default="v1")
    ap.add_argument("--group", help="the SSE subscriber group (default: a new one per run)")
    ap.add_argument("--sub-app", help="the subscribing app, given as ?appid= (default: --app)")
    ap.add_argument("--key", help="partition key of all the run's messages (default: the run id)")
    ap.add_argument("--count", type=int, default=5, help="messages published over HTTP (5)")
    ap.add_argument("--resume-count", type=int, default=3, help="messages published while disconnected (3)")
    ap.add_argument("--create", type=int, metavar="PARTITIONS",
                    help="create the topic first (a 409 'exists' is fine)")
    ap.add_argument("--screenshot", help="save a PNG of the page here (also on failure)")
    ap.add_argument("--timeout", type=float, default=15, help="seconds any one step may wait (15)")
    ap.add_argument("--rewind", type=int, default=2,
                    help="resume by header this many messages before the last one seen (2)")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds to watch for repeats (0.5)")
    ap.add_argument("--heartbeat-wait", type=float, default=10,
                    help="seconds to wait for a ': hb' heartbeat on the SSE stream; 0 skips it (10)")
    ap.add_argument("--deadline", type=float, default=180, help="seconds for the whole run (180)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = ap.parse_args()
    if args.count < 1 or args.resume_count < 1 or args.rewind < 0:
        ap.error("--count and --resume-count must be at least 1, --rewind at least 0")
    args.http = args.http.rstrip("/")
    args.sub_app = args.sub_app or args.app
    run_id = f"b{os.getpid()}x{int(time.time() * 1000) % 10**9}"
    args.group = args.group or f"sse-{run_id}"
    args.key = args.key or run_id
    PROGRESS.watchdog(args.deadline, cleanup)
    profile = tempfile.mkdtemp(prefix="kateway-chromium-")
    driver_holder["profile"] = profile
    drv = None
    rc = 1
    try:
        if args.create:
            create_topic(args.http, args, log)
        set_stage("starting headless Chromium")
        drv = start_browser(args, profile)
        run(args, drv, run_id)
        log(f"PASS: SSE and WebSocket in Chromium, resume by lastEventId and Last-Event-ID "
            f"(group {args.group})")
        rc = 0
    except Failure as e:
        print(f"FAIL: {PROGRESS.prog}: {e}", flush=True)
    except WebDriverException as e:
        print(f"FAIL: {PROGRESS.prog}: webdriver error in '{PROGRESS.stage}': {e.msg or e}", flush=True)
    except Exception as e:  # noqa: BLE001 - any surprise is a failure with a reason
        print(f"FAIL: {PROGRESS.prog}: unexpected {type(e).__name__} in '{PROGRESS.stage}': {e}", flush=True)
    finally:
        if drv is not None:
            if rc != 0:
                try:
                    for e in drv.get_log("browser"):
                        log(f"console {e.get('level')}: {e.get('message')}")
                except Exception:  # noqa: BLE001 - the browser may be gone
                    pass
            if args.screenshot:
                try:
                    drv.save_screenshot(args.screenshot)
                    log(f"screenshot: {args.screenshot}")
                except WebDriverException as e:
                    log(f"no screenshot: {e.msg or e}")
            try:
                drv.quit()
            except Exception:  # noqa: BLE001
                kill_browser()
        shutil.rmtree(profile, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
