"""What the client scripts share: running again under the test virtualenv, the failure type,
progress lines that remember the current stage, a whole-run watchdog, and topic creation.
Standard library only, so that it imports before the virtualenv is in use."""
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request


def in_test_venv(package):
    """Runs the script again with .venv-test/bin/python (scripts/deps makes it); called when
    importing `package` failed. Exits 1 when there is no such virtualenv."""
    venv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".venv-test")
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and not os.environ.get("KATEWAY_TEST_VENV"):
        os.environ["KATEWAY_TEST_VENV"] = "1"
        os.execv(python, [python] + sys.argv)
    print(f"FAIL: the {package} package is missing; run scripts/deps (it makes .venv-test)",
          file=sys.stderr)
    sys.exit(1)


class Failure(Exception):
    pass


class Progress:
    """Prints `prog: ...` lines and remembers the stage the run is in."""

    def __init__(self, prog):
        self.prog = prog
        self.stage = "start"

    def log(self, msg):
        print(f"{self.prog}: {msg}", flush=True)

    def set_stage(self, s):
        self.stage = s
        self.log(s)

    def watchdog(self, seconds, cleanup=None):
        """Ends the process if the whole run takes longer than `seconds`, whatever it is
        blocked on (after `cleanup`, if given)."""
        def fire():
            print(f"FAIL: {self.prog}: the run took over {seconds}s (stuck in: {self.stage})",
                  flush=True)
            if cleanup:
                cleanup()
            os._exit(1)
        t = threading.Timer(seconds, fire)
        t.daemon = True
        t.start()


def q(s):
    return urllib.parse.quote(s, safe="")


def create_topic(http, args, log):
    """Creates `args.topic` of `args.app` with `args.create` partitions at `http`
    (http://HOST:PORT); a topic that exists (409) is fine."""
    url = f"{http}/v1/topics/{q(args.app)}/{q(args.topic)}/{q(args.ver)}?partitions={args.create}"
    req = urllib.request.Request(url, data=b"", method="POST", headers={"Appid": args.app})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as r:
            log(f"created topic: {r.status}")
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise Failure(f"creating the topic: {url} answered {e.code} {e.read()[:300]!r}")
        log("topic exists (409)")
    except OSError as e:
        raise Failure(f"creating the topic: {url}: {e}")
