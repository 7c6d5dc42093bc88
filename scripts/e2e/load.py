"""Steady V1 traffic for the canary soak on kind, run inside the cluster (run.sh passes this file to `python -c` in a
pod of the rollout image, so it needs nothing but the standard library).

usage: python load.py STABLE_URL CANARY_URL CANARY_PERCENT RPS SECONDS

Why: the rollout's analysis judges the canary on Prometheus series of real requests and rolls back a canary that
served fewer than `min_canary_requests` (steps/rollout/policy.py); in production users are the load, on kind this
is. And it is the traffic split too: KServe 0.20 runs a RawDeployment canary (`spec.canary`) as its own Deployment
and Service `<isvc>-<name>-predictor` beside the stable one and routes nothing to it by itself (the stable Service
selects the stable pods only; KServe's HTTPRoute weights need the Gateway API, not installed on kind), so
CANARY_PERCENT of the requests go to CANARY_URL, the rest to STABLE_URL. A canary Service that does not exist yet
(before the rollout deploys it, after it is promoted) fails fast and is counted, nothing more.
One request at a time at RPS per second until SECONDS have passed (0: until the pod is deleted); every 100
requests one line: sent, answered 2xx, failed, sent to the canary.
"""
import json
import sys
import time
import urllib.error
import urllib.request

REVIEWS = [
    "A wonderful, moving film with a cast at the top of its game.",
    "Dull, predictable and far too long; I checked my watch twice.",
    "The soundtrack carried it, but the plot never went anywhere.",
    "One of the best thrillers of the decade: tense from the first minute.",
]


def to_canary(n: int, percent: float) -> bool:
    """Request n (1, 2, ...) goes to the canary: exactly `percent` of every 100, evenly spread."""
    return int(n * percent / 100) != int((n - 1) * percent / 100)


def main(stable: str, canary: str, percent: float, rps: float, seconds: float) -> int:
    sent = ok = failed = canaried = 0
    start = time.monotonic()
    while seconds <= 0 or time.monotonic() - start < seconds:
        body = json.dumps({"instances": [REVIEWS[sent % len(REVIEWS)]]}).encode()
        sent += 1
        url = canary if to_canary(sent, percent) else stable
        canaried += url == canary
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                ok += 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            failed += 1  # a pod replaced mid-rollout; the analysis, not this loop, judges errors
        if sent % 100 == 0:
            print(f"load: sent {sent}, 2xx {ok}, failed {failed}, to the canary {canaried}", flush=True)
        time.sleep(max(0.0, sent / rps - (time.monotonic() - start)))
    print(f"load: done: sent {sent}, 2xx {ok}, failed {failed}, to the canary {canaried}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        stable_url, canary_url, share, rate, duration = sys.argv[1:]
        sys.exit(main(stable_url, canary_url, float(share), float(rate), float(duration)))
    except ValueError:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
