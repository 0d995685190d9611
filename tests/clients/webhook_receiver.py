"""A Standard Webhooks receiver for tests/audit_engine.rs, verifying with the independent
`standardwebhooks` package (PyPI, pinned in scripts/setup).

    webhook_receiver.py PORT SECRET OTHER_SECRET LOG

Each POST is verified with SECRET (the collector signs with it and an older one: a rotation) and,
as a check that verification means something, with OTHER_SECRET, which must fail. One JSON line a
delivery goes to LOG. A question that says "later" is answered 202 without a verdict; any other
gets a verdict in a 200. Prints "ready" once it listens.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

port, secret, other, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
right, wrong = Webhook(secret), Webhook(other)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = dict(self.headers.items())
        entry = {"path": self.path, "id": self.headers.get("webhook-id")}
        try:
            payload = right.verify(body, headers)
            entry["verified"] = True
        except WebhookVerificationError as e:
            payload, entry["verified"], entry["error"] = None, False, str(e)
        try:
            wrong.verify(body, headers)
            entry["other_secret_verified"] = True
        except WebhookVerificationError:
            entry["other_secret_verified"] = False
        entry["payload"] = payload
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if payload is None:
            self.send_response(401)
            self.end_headers()
            return
        question = payload["data"]["audit"].get("question") or ""
        if "later" in question:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        verdict = json.dumps({
            "score": 0.9, "grade": "A", "hallucination": False,
            "claims": [{"claim": "Paris is the capital of France.", "status": "supported",
                        "confidence": 0.95, "evidence": ["Paris is the capital of France."]}],
            "reasoning": "Supported by france.txt.", "audit_id": "wh-" + entry["id"],
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(verdict)))
        self.end_headers()
        self.wfile.write(verdict)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
