#!/usr/bin/env python3
"""A smart plug written in Python, driven by the connector's `exec` plugin.

Standard library only. The connector runs it in two ways (config/exec.yaml):

  plug.py command   once per command: the command's body on stdin, the
                    endpoint in CONNECTOR_ENDPOINT; what it prints is the
                    reply, a non-zero exit an error reply.
  plug.py watch     as long as the device runs: every line it prints is an
                    event, `endpoint body`.

The plug's state lives in a small JSON file (PLUG_STATE_DIR, default the
system's temp directory), since each command is a process of its own.
"""

import json
import os
import sys
import tempfile
import time


def state_path():
    device = os.environ.get("CONNECTOR_DEVICE_ID", "plug")
    directory = os.environ.get("PLUG_STATE_DIR", tempfile.gettempdir())
    return os.path.join(directory, f"plug-{device}.json")


def load():
    try:
        with open(state_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"on": False}


def save(state):
    path = state_path()
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def command():
    endpoint = os.environ.get("CONNECTOR_ENDPOINT", "")
    body = sys.stdin.read().strip()
    state = load()
    if endpoint == "get":
        print(json.dumps(state))
    elif endpoint == "set":
        if body in ("on", "off"):
            state["on"] = body == "on"
        else:
            try:
                state["on"] = bool(json.loads(body)["on"])
            except (ValueError, KeyError, TypeError):
                print(f'set wants "on", "off" or {{"on": true}}, not {body!r}', file=sys.stderr)
                return 2
        save(state)
        print(json.dumps(state))
    else:
        print(f"unknown endpoint {endpoint!r}; this plug knows get and set", file=sys.stderr)
        return 2
    return 0


def watch():
    last = None
    while True:
        state = load()
        if state != last:
            print("state", json.dumps(state), flush=True)
            last = state
        watts = 40.0 + 5.0 * (time.time() % 3) if state["on"] else 0.0
        print(f"power {watts:.1f}", flush=True)
        time.sleep(float(os.environ.get("PLUG_WATCH_INTERVAL", "2")))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "command":
        sys.exit(command())
    if mode == "watch":
        try:
            watch()
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        sys.exit(0)
    print("usage: plug.py command|watch", file=sys.stderr)
    sys.exit(2)
