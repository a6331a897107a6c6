#!/usr/bin/env python3
"""The live dashboard (/ui) in a real browser (headless Debian Chromium driven by selenium through
chromedriver), against a running kateway with authentication on.

  .venv-test/bin/python tests/clients/dashboard.py --ui http://127.0.0.1:9193 --key OPERATOR_KEY \
      --api http://127.0.0.1:9191 --pub-key K --sub-key K --app app1 --topic t --group g \
      [--screenshot /tmp/dashboard.png]

The topic (one partition) must exist, and the group must have consumed from it once. Then:
  1. the page opens at --ui (the operator listener) with the operator key in its fragment and
     connects its event stream: the topic's row appears, and the group's lag row;
  2. this script publishes over plain HTTP (urllib, a bearer publish key) for a few seconds: the
     page must show a publish rate above zero, the published total reaching what was sent, the
     group's lag growing, and requests per second on a core; the screenshot is taken then, under
     load;
  3. the script consumes everything with the group: the page's lag for it must reach 0;
  4. the message browser peeks the partition's latest 5 messages: they must be the last 5 sent,
     in order.
Any SEVERE entry in the browser console fails the run.

Exit status 0 on success, 1 with a line starting 'FAIL:' on failure.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from common import Failure, Progress, in_test_venv, q

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:
    in_test_venv("selenium")

PROGRESS = Progress("dashboard")
log = PROGRESS.log
holder = {}


def cleanup():
    svc = holder.get("service")
    proc = getattr(svc, "process", None) if svc else None
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


def request(method, url, key, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def start_browser(args, profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", f"--user-data-dir={profile}", "--disable-dev-shm-usage",
              "--disable-gpu", "--no-first-run", "--disable-extensions", "--window-size=1280,1000"):
        opts.add_argument(a)
    port = urllib.parse.urlsplit(args.ui).port
    if port:
        opts.add_argument(f"--explicitly-allowed-ports={port}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")
    service = Service(executable_path=args.chromedriver, popen_kw={"start_new_session": True})
    holder["service"] = service
    try:
        drv = webdriver.Chrome(options=opts, service=service)
    except WebDriverException as e:
        raise Failure(f"starting {args.chromium} through {args.chromedriver}: {e.msg or e}")
    drv.set_page_load_timeout(args.timeout)
    return drv


def check_console(drv):
    entries = drv.get_log("browser")
    errors = [e for e in entries if e.get("level") == "SEVERE"]
    for e in entries:
        if e.get("level") != "SEVERE":
            log(f"console {e.get('level')}: {e.get('message')}")
    if errors:
        raise Failure("browser console errors:\n  " + "\n  ".join(e.get("message", str(e)) for e in errors))


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def texts(drv, css):
    """The text of every element matching css, read in one script (the page redraws its tables
    every second: an element found by one call may be gone by the next)."""
    return drv.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent)", css)


def cell(drv, css):
    """The number in the first element matching css, or None."""
    found = texts(drv, css)
    return number(found[0]) if found else None


def wait_for(drv, what, fn, timeout):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        check_console(drv)
        if time.monotonic() > end:
            summary = texts(drv, "#summary")
            raise Failure(f"{what}: not within {timeout}s (page says: {summary})")
        time.sleep(0.2)


def run(args, drv):
    name = f"{args.app}.{args.topic}.{args.ver}"
    row = f'#topics tr[data-topic="{name}"]'
    group = f"{args.app}.{args.group}"
    lag = f'#lags tr[data-topic="{name}"][data-group="{group}"][data-partition="0"] .lag'
    PROGRESS.set_stage("page")
    drv.get(f"{args.ui}/ui#key={q(args.key)}")
    wait_for(drv, "the event stream connects", lambda: texts(drv, "#state.live"), args.timeout)
    wait_for(drv, "the topic's row", lambda: cell(drv, f"{row} .published") is not None, args.timeout)
    wait_for(drv, "the group's lag row", lambda: cell(drv, lag) is not None, args.timeout)
    published_before = cell(drv, f"{row} .published")
    lag_before = cell(drv, lag)
    log(f"before: published {published_before}, lag {lag_before}")

    PROGRESS.set_stage("publish")
    sent = []
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set():
            body = f"dashboard message {i}".encode()
            request("POST", f"{args.api}/v1/msgs/{q(args.topic)}/{q(args.ver)}?ack=local", args.pub_key, body)
            sent.append(body)
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        rate = wait_for(drv, "a publish rate above 0", lambda: (cell(drv, f"{row} .pub-rate") or 0) > 0 and cell(drv, f"{row} .pub-rate"), args.timeout)
        log(f"publish rate on the page: {rate}/s")
        wait_for(drv, "the group's lag growing", lambda: (cell(drv, lag) or 0) > lag_before, args.timeout)
        wait_for(drv, "requests per second on a core", lambda: any((number(t) or 0) > 0 for t in texts(drv, "#cores .req-rate")), args.timeout)
        time.sleep(1.5)
        if args.screenshot:
            drv.save_screenshot(args.screenshot)
            log(f"screenshot under load: {args.screenshot}")
    finally:
        stop.set()
        t.join()
    total = published_before + len(sent)
    wait_for(drv, f"the published total reaching {total}", lambda: cell(drv, f"{row} .published") == total, args.timeout)
    wait_for(drv, "the publish rate back to 0", lambda: cell(drv, f"{row} .pub-rate") == 0, args.timeout)
    log(f"published {len(sent)}; the page counts {total}")

    PROGRESS.set_stage("consume")
    while True:
        status, _ = request("GET", f"{args.api}/v1/msgs/{q(args.app)}/{q(args.topic)}/{q(args.ver)}?group={q(args.group)}&batch=1000&wait=1s", args.sub_key)
        if status == 204:
            break
    wait_for(drv, "the group's lag back to 0", lambda: cell(drv, lag) == 0, args.timeout)

    PROGRESS.set_stage("browse")
    Select(drv.find_element(By.ID, "peek-topic")).select_by_value(name)
    drv.find_element(By.ID, "peek-n").clear()
    drv.find_element(By.ID, "peek-n").send_keys("5")

    def values():
        cells = texts(drv, "#messages td.v")
        return cells if len(cells) == 5 else None

    def peeked():
        # Asked again until it answers (a Kafka consumer group may take a moment to form).
        if drv.find_element(By.ID, "peek-state").text != "reading…":
            drv.find_element(By.CSS_SELECTOR, "#peek button").click()
            time.sleep(1)
        return values()

    got = wait_for(drv, "5 messages in the browser", peeked, args.timeout)
    want = [b.decode() for b in sent[-5:]]
    if got != want:
        raise Failure(f"the browser shows {got}, the last 5 sent were {want}")
    check_console(drv)
    log("the browser shows the last 5 messages, in order")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ui", required=True, help="http://HOST:PORT serving /ui and the operator API")
    ap.add_argument("--key", required=True, help="the operator key")
    ap.add_argument("--api", required=True, help="http://HOST:PORT of the API (publish, subscribe)")
    ap.add_argument("--pub-key", required=True)
    ap.add_argument("--sub-key", required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--ver", default="v1")
    ap.add_argument("--group", required=True)
    ap.add_argument("--screenshot")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--deadline", type=float, default=240)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = ap.parse_args()
    PROGRESS.watchdog(args.deadline, cleanup)
    profile = tempfile.mkdtemp(prefix="kateway-dashboard-")
    drv = None
    try:
        drv = start_browser(args, profile)
        run(args, drv)
    except Failure as e:
        if drv is not None and args.screenshot:
            try:
                drv.save_screenshot(args.screenshot)
            except WebDriverException:
                pass
        print(f"FAIL: {e}", flush=True)
        return 1
    finally:
        if drv is not None:
            try:
                drv.quit()
            except WebDriverException:
                cleanup()
        shutil.rmtree(profile, ignore_errors=True)
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
