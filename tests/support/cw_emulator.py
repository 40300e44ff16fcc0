#!/usr/bin/env python3
"""CloudWatch emulator for the tests: moto's server plus a loopback translator in front of it.

aws-sdk-cloudwatch >= 1.100 speaks Smithy RPC v2 CBOR
(POST /service/GraniteServiceVersion20100801/operation/<Op>, Content-Type: application/cbor,
smithy-protocol: rpc-v2-cbor, gzip above 10 KiB); moto speaks the JSON protocol
(X-Amz-Target: GraniteServiceVersion20100801.<Op>, Content-Type: application/x-amz-json-1.0).
The translator converts CBOR requests to JSON and the answers back, passes every other request (STS,
moto's own API) through unchanged, records each request, and injects faults on PutMetricData.

Control API (JSON):
  POST /__control/faults   {"faults": [{"status": 400, "code": "Throttling", "metric": null}, ...]}
                            queued faults, one per PutMetricData; with "metric", only a request that
                            holds a datum of that MetricName fails (and consumes the fault only if "once").
  POST /__control/outage   {"status": 503, "code": "ServiceUnavailable"} or {} to end it
  POST /__control/reject   {"metric": "name"} reject (InvalidParameterValue) every request holding it; {} ends
  GET  /__control/requests the recorded requests
  GET  /__control/moto     {"port": moto's port} (read data back from moto directly)
  POST /__control/ec2_faults {"faults": [{"status": 503, "code": "RequestLimitExceeded", "action": "..."}]} queued faults,
                            one per call of that EC2 action (DescribeSubnets if none; EC2's XML error body)
  POST /__control/ec2_outage {"status": 403, "code": "UnauthorizedOperation", "actions": [...]} every call of
                            those actions (DescribeSubnets if none); {} ends

Usage: cw_emulator.py  -> prints "READY <translator port> <moto port>" on stdout.
"""

import base64
import datetime
import gzip
import json
import logging
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

TARGET_PREFIX = "GraniteServiceVersion20100801."
TIMESTAMP_KEYS = {"Timestamp", "Timestamps", "StartTime", "EndTime", "StateUpdatedTimestamp",
                  "AlarmConfigurationUpdatedTimestamp", "StateTransitionedTimestamp", "LastModified"}

lock = threading.Lock()
state = {"faults": [], "outage": None, "reject": None, "requests": [], "ec2_faults": [], "ec2_outage": None}
moto_port = 0


def to_json(v):
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_json(x) for x in v]
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return v.timestamp()
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


def to_cbor_obj(v, key=None):
    if isinstance(v, dict):
        return {k: to_cbor_obj(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [to_cbor_obj(x, key) for x in v]
    if key in TIMESTAMP_KEYS and isinstance(v, (int, float)):
        return cbor2.CBORTag(1, float(v))
    if key in TIMESTAMP_KEYS and isinstance(v, str):
        try:
            return cbor2.CBORTag(1, datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return v
    return v


def access_key(headers):
    auth = headers.get("Authorization", "")
    if "Credential=" in auth:
        return auth.split("Credential=", 1)[1].split("/", 1)[0]
    return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status, obj):
        self.reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/__control/requests":
            with lock:
                return self.reply_json(200, state["requests"])
        if self.path == "/__control/moto":
            return self.reply_json(200, {"port": moto_port})
        self.passthrough(b"")

    def do_PUT(self):
        self.passthrough(self.read_body())

    def do_POST(self):
        raw = self.read_body()
        if self.path.startswith("/__control/"):
            return self.control(json.loads(raw or b"{}"))
        if self.headers.get("smithy-protocol") == "rpc-v2-cbor":
            return self.cbor(raw)
        fault = None
        with lock:
            action = ""
            if raw.startswith(b"Action=") or b"&Action=" in raw:
                action = raw.split(b"Action=", 1)[1].split(b"&", 1)[0].decode(errors="replace")
            # A fault or an outage names the EC2 actions it hits ("action"/"actions"; DescribeSubnets if not).
            outage = state["ec2_outage"]
            if outage and action in outage.get("actions", ["DescribeSubnets"]):
                fault = outage
            else:
                for i, f in enumerate(state["ec2_faults"]):
                    if f.get("action", "DescribeSubnets") == action:
                        fault = state["ec2_faults"].pop(i)
                        break
            state["requests"].append({"op": "passthrough", "path": self.path, "action": action,
                                      "access_key": access_key(self.headers), "fault": fault["code"] if fault else None})
        if fault:
            body = ('<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>%s</Code><Message>%s</Message>'
                    '</Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>'
                    % (fault["code"], fault.get("message", "injected fault"))).encode()
            return self.reply(int(fault["status"]), body, {"Content-Type": "text/xml;charset=UTF-8"})
        self.passthrough(raw)

    def control(self, body):
        with lock:
            if self.path == "/__control/faults":
                state["faults"].extend(body.get("faults", []))
            elif self.path == "/__control/outage":
                state["outage"] = body or None
            elif self.path == "/__control/reject":
                state["reject"] = body.get("metric")
            elif self.path == "/__control/ec2_faults":
                state["ec2_faults"].extend(body.get("faults", []))
            elif self.path == "/__control/ec2_outage":
                state["ec2_outage"] = body or None
            else:
                return self.reply_json(404, {"error": "unknown control"})
        self.reply_json(200, {"ok": True})

    def cbor(self, raw):
        op = self.path.rsplit("/", 1)[-1]
        gz = self.headers.get("Content-Encoding", "") == "gzip"
        body = gzip.decompress(raw) if gz else raw
        obj = cbor2.loads(body) if body else {}
        metrics = [d.get("MetricName") for d in obj.get("MetricData", [])] if isinstance(obj, dict) else []
        dims = [len(d.get("Dimensions", [])) for d in obj.get("MetricData", [])] if isinstance(obj, dict) else []
        fault = None
        with lock:
            if op == "PutMetricData":
                if state["reject"] and state["reject"] in metrics:
                    fault = {"status": 400, "code": "InvalidParameterValue",
                             "message": f"The value for {state['reject']} is invalid"}
                elif state["outage"]:
                    fault = state["outage"]
                elif state["faults"]:
                    fault = state["faults"].pop(0)
            state["requests"].append({
                "op": op, "bytes": len(raw), "decoded_bytes": len(body), "gzip": gz,
                "datums": len(metrics), "metrics": metrics, "max_dimensions": max(dims or [0]),
                "access_key": access_key(self.headers), "fault": fault["code"] if fault else None,
                "timestamps": sorted({to_json(d.get("Timestamp")) for d in obj.get("MetricData", [])})
                if isinstance(obj, dict) else [],
            })
        cbor_headers = {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"}
        if fault:
            err = {"__type": fault["code"], "message": fault.get("message", "injected fault")}
            return self.reply(int(fault["status"]), cbor2.dumps(err), cbor_headers)
        req = urllib.request.Request(
            f"http://127.0.0.1:{moto_port}/", data=json.dumps(to_json(obj)).encode(), method="POST",
            headers={"X-Amz-Target": TARGET_PREFIX + op, "Content-Type": "application/x-amz-json-1.0",
                     "Authorization": self.headers.get("Authorization", ""),
                     "X-Amz-Date": self.headers.get("X-Amz-Date", "")})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {"__type": "InternalFailure", "message": payload.decode(errors="replace")[:500]}
        if status >= 400 and isinstance(answer, dict) and "__type" in answer:
            answer["__type"] = answer["__type"].split("#")[-1]
        self.reply(status, cbor2.dumps(to_cbor_obj(answer)), cbor_headers)

    def passthrough(self, raw):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        req = urllib.request.Request(f"http://127.0.0.1:{moto_port}{self.path}", data=raw or None,
                                     method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload, rh = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            status, payload, rh = e.code, e.read(), e.headers
        out = {k: v for k, v in rh.items() if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date")}
        self.reply(status, payload, out)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that went away (a killed aggregator) is not an emulator failure.
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main():
    global moto_port
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    moto_port = moto.get_host_and_port()[1]
    server = QuietServer(("127.0.0.1", 0), Handler)
    print(f"READY {server.server_address[1]} {moto_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
