#!/usr/bin/env python3
"""A stand-in smart plug with a REST API, for the connector's `http` plugin.

Standard library only. Serves, on 127.0.0.1 (port 8081, or the first
argument):

  GET  /status   {"apower": 42.5, "on": true}     (power drawn, relay state)
  POST /relay    {"on": true}  ->  {"was_on": false}

With PLUG_PASSWORD set, /relay wants basic auth as `admin` with that
password, like a real plug with its web login on.
"""

import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"on": False}


class Plug(BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/status":
            return self.answer(404, "no such page")
        watts = round(40.0 + 5.0 * (time.time() % 3), 1) if STATE["on"] else 0.0
        self.answer(200, {"apower": watts, "on": STATE["on"]})

    def do_POST(self):
        if self.path.split("?")[0] != "/relay":
            return self.answer(404, "no such page")
        password = os.environ.get("PLUG_PASSWORD")
        if password:
            wanted = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
            if self.headers.get("Authorization") != wanted:
                return self.answer(401, "log in first")
        length = int(self.headers.get("Content-Length", "0"))
        try:
            on = json.loads(self.rfile.read(length))["on"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, 'send {"on": true} or {"on": false}')
        if not isinstance(on, bool):
            return self.answer(400, '`on` must be true or false')
        was_on, STATE["on"] = STATE["on"], on
        self.answer(200, {"was_on": was_on})

    def log_message(self, format, *args):
        sys.stderr.write("plug: " + format % args + "\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    print(f"stand-in plug on http://127.0.0.1:{port}", flush=True)
    try:
        ThreadingHTTPServer(("127.0.0.1", port), Plug).serve_forever()
    except KeyboardInterrupt:
        pass
