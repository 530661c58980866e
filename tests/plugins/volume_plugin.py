#!/usr/bin/env python3
"""A volume plugin speaking Docker's plugin protocol (JSON over HTTP/1.1 on a unix
socket), for shoal's tests: it keeps each volume as a directory under --root, and writes
every call it gets, with its body, as one JSON line to --log. --crash-on CALL makes it exit
when CALL arrives (after logging it); --hang-on CALL makes it never answer CALL.

Standard library only: python3 volume_plugin.py --socket S --root DIR --log FILE
"""

import argparse
import http.server
import json
import os
import shutil
import socketserver
import sys
import threading
import time

LOCK = threading.Lock()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_handler(args):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # the socket has no client address to log
            pass

        def answer(self, status, body):
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self):
            call = self.path.lstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                body = {"unparsed": raw.decode(errors="replace")}
            with LOCK:
                with open(args.log, "a") as f:
                    f.write(json.dumps({"call": call, "body": body,
                                        "accept": self.headers.get("Accept", "")}) + "\n")
            if call == args.crash_on:
                os._exit(3)
            if call == args.hang_on:
                time.sleep(3600)
            name = body.get("Name", "")
            path = os.path.join(args.root, name) if name else ""
            if call == "Plugin.Activate":
                return self.answer(200, {"Implements": ["VolumeDriver"]})
            if call == "VolumeDriver.Capabilities":
                return self.answer(200, {"Capabilities": {"Scope": args.scope}})
            if call == "VolumeDriver.Create":
                os.makedirs(path, exist_ok=True)
                return self.answer(200, {"Err": ""})
            if call == "VolumeDriver.Remove":
                shutil.rmtree(path, ignore_errors=True)
                return self.answer(200, {"Err": ""})
            if call in ("VolumeDriver.Mount", "VolumeDriver.Path"):
                if not os.path.isdir(path):
                    return self.answer(500, {"Err": "no such volume: " + name})
                return self.answer(200, {"Mountpoint": path, "Err": ""})
            if call == "VolumeDriver.Unmount":
                return self.answer(200, {"Err": ""})
            if call == "VolumeDriver.Get":
                if not os.path.isdir(path):
                    return self.answer(200, {"Err": "no such volume: " + name})
                return self.answer(200, {"Volume": {"Name": name, "Mountpoint": path, "Status": {}}, "Err": ""})
            if call == "VolumeDriver.List":
                vols = [{"Name": n, "Mountpoint": os.path.join(args.root, n)}
                        for n in sorted(os.listdir(args.root))]
                return self.answer(200, {"Volumes": vols, "Err": ""})
            return self.answer(404, {"Err": "unknown call " + call})

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--scope", default="local")
    p.add_argument("--crash-on", default="")
    p.add_argument("--hang-on", default="")
    args = p.parse_args()
    os.makedirs(args.root, exist_ok=True)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = Server(args.socket, make_handler(args))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
