"""Soak of SPEC §9: products through the pipeline while it is killed with SIGKILL and restarted.

Run through infrastructure/soak.sh, which builds the binary and starts the shared servers. Every
figure is counted outside the process under test: acknowledged POSTs by the client, uploads by
the S3 server's own request log (distributed) or the collector's upload log lines (standalone,
whose object store is a local directory), collected products and orphans by reading the view and
listing the stored objects.
"""

import argparse
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env(path):
    values = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                key, value = line.strip().split("=", 1)
                values[key] = value
    return values


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class ImageServer:
    """Serves the same PNG for every path, on loopback, after `latency` seconds."""

    def __init__(self, image, latency=0.0):
        with open(image, "rb") as f:
            body = f.read()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if latency:
                    time.sleep(latency)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # A client killed mid-response (the process under test) is expected here.
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}.png"


class Process:
    """A child process whose output goes to a log file (appended across restarts)."""

    def __init__(self, name, args, log_path, env=None):
        self.name, self.args, self.log_path, self.env = name, args, log_path, env
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def post_products(base_url, count, image_server, prefix, stop_when=None):
    """POSTs `count` distinct products with 16 clients, retrying refused connections (the
    process may be down); returns the acknowledged (mallId, productId) pairs."""
    acked = set()
    lock = threading.Lock()

    def post(i):
        mall, product = f"{prefix}-mall-{i % 10}", f"p-{i}"
        body = {"mallId": mall, "productId": product, "title": f"Product {i}",
                "content": "soak", "price": str(i), "imageUrl": image_server.url(product)}
        for _ in range(600):
            try:
                r = requests.post(f"{base_url}/api/v1/products", json=body, timeout=10)
                if r.status_code in (200, 201):
                    with lock:
                        acked.add((mall, product))
                    return
                if r.status_code < 500:
                    raise RuntimeError(f"POST refused: {r.status_code} {r.text}")
            except requests.RequestException:
                pass
            time.sleep(0.1)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, range(count)))
    return acked


def kill_loop(process, kills, window, restart_delay=0.5, on_restart=None):
    """Kills `process` with SIGKILL `kills` times at random points of `window` seconds."""
    points = sorted(random.uniform(0.5, window) for _ in range(kills))
    started = time.time()
    for point in points:
        time.sleep(max(0.0, point - (time.time() - started)))
        process.kill9()
        time.sleep(restart_delay)
        process.start()
        if on_restart:
            on_restart()


def report(name, products, collected, duplicate_uploads, orphans, extra=""):
    lost = products - collected
    line = (f"products={products} collected={collected} lost={lost} "
            f"duplicate_uploads={duplicate_uploads} orphan_objects={orphans}")
    print(f"[{name}] {line}{extra}")
    return lost == 0 and duplicate_uploads == 0 and orphans == 0


def settings_yaml(path, listen, env, database, bucket, moto_url, topics, state_dir, group_id):
    settings = {
        "listen": listen,
        # A killed member holds its partitions until its session times out; the broker's
        # minimum (6 s) keeps each kill's pause short. Static membership (group.instance.id)
        # is the production alternative for pods with stable names.
        "kafka": {"bootstrap": env["KAFKA_BOOTSTRAP"],
                  "properties": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
                  "group_id": group_id},
        "schema_registry_url": env["SCHEMA_REGISTRY_URL"],
        "mongodb": {"uri": env["MONGODB_URI"], "database": database},
        "s3": {"bucket": bucket, "endpoint": moto_url, "create_bucket": True,
               "region": "us-east-1", "access_key_id": "testing", "secret_access_key": "testing"},
        "topics": topics,
        "state_dir": state_dir,
        "fetch": {"allowlist": ["127.0.0.1/32"]},
    }
    if os.environ.get("SOAK_KAFKA_DEBUG"):
        settings["kafka"]["properties"]["debug"] = os.environ["SOAK_KAFKA_DEBUG"]
    with open(path, "w") as f:
        json.dump(settings, f)  # JSON is YAML


class Distributed:
    """The four distributed services on the shared Kafka, MongoDB and registry (unique topics
    and database), with a moto S3 server of their own, whose request log counts the uploads."""

    SERVICES = ["cdc-source", "product-collector", "image-pipeline", "complete-products"]

    def __init__(self, args, work):
        from confluent_kafka.admin import AdminClient, NewTopic

        env = read_env(args.env)
        self.env = env
        run_id = uuid.uuid4().hex[:8]
        self.run_id = run_id
        self.database, self.bucket = f"soak_{run_id}", f"soak-{run_id}"
        database = self.database
        topics = {"cdc": f"soak{run_id}.{database}.products", "upserts": f"soak-{run_id}-upserts",
                  "deletes": f"soak-{run_id}-deletes", "image_events": f"soak-{run_id}-image-events"}
        admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP"]})
        for future in admin.create_topics([NewTopic(t, 4, 1) for t in topics.values()]).values():
            future.result()

        moto_port = free_port()
        self.moto_log = os.path.join(work, "moto.log")
        self.moto = Process("moto", [args.moto, "-H", "127.0.0.1", "-p", str(moto_port)], self.moto_log)
        self.moto.start()
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        wait_http(f"{self.moto_url}/moto-api/")

        self.processes = {}
        self.ports = {}
        for service in self.SERVICES:
            self.ports[service] = free_port()
            config = os.path.join(work, f"{service}.yaml")
            settings_yaml(config, f"127.0.0.1:{self.ports[service]}", env, database, self.bucket,
                          self.moto_url, topics, os.path.join(work, f"state-{service}"),
                          f"soak-{run_id}-{service}")
            child_env = dict(os.environ, RUST_LOG=os.environ.get("SOAK_RUST_LOG", "warn"))
            self.processes[service] = Process(service, [args.binary, service, "--config", config],
                                              os.path.join(work, f"{service}.log"), child_env)
            self.processes[service].start()
        for service, port in self.ports.items():
            wait_http(f"http://127.0.0.1:{port}/healthz")

    def url(self, service):
        return f"http://127.0.0.1:{self.ports[service]}"

    def stop(self):
        for process in self.processes.values():
            process.stop()
        self.moto.stop()


def run_distributed(args, work):
    import boto3
    import pymongo

    image_server = ImageServer(args.image)
    services = Distributed(args, work)
    bucket = services.bucket

    killer = threading.Thread(target=kill_loop,
                              args=(services.processes["image-pipeline"], args.kills, args.window))
    started = time.time()
    killer.start()
    acked = post_products(services.url("product-collector"), args.products, image_server,
                          services.run_id)
    killer.join()

    mongo = pymongo.MongoClient(services.env["MONGODB_URI"])[services.database]
    deadline = time.time() + args.settle
    collected = 0
    last_progress = 0.0
    while time.time() < deadline:
        collected = mongo["complete_products"].count_documents({})
        if collected >= len(acked):
            break
        if time.time() - last_progress >= 15:
            last_progress = time.time()
            print(f"[distributed] settling: {collected} of {len(acked)} in the view after "
                  f"{time.time() - started:.0f} s", flush=True)
        time.sleep(1)
    elapsed = time.time() - started
    referenced = {doc["image"]["key"] for doc in mongo["complete_products"].find({}, {"image.key": 1})}
    collected_ids = {(d["mallId"], d["productId"]) for d in mongo["complete_products"].find({}, {"mallId": 1, "productId": 1})}
    collected = len(acked & collected_ids)

    s3 = boto3.client("s3", endpoint_url=services.moto_url, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    stored = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        stored.extend(obj["Key"] for obj in page.get("Contents", []))
    orphans = len(set(stored) - referenced)

    put = re.compile(r'"(?:\x1b\[[0-9;]*m)*PUT /' + re.escape(bucket) + r'/([^ ?]+)[^"]*" 200')
    with open(services.moto_log, errors="replace") as f:
        uploads = Counter(m.group(1) for m in map(put.search, f) if m)
    duplicates = sum(n - 1 for n in uploads.values() if n > 1)

    services.stop()
    return report("distributed", len(acked), collected, duplicates, orphans,
                  f" kills={args.kills} uploads={sum(uploads.values())} seconds={elapsed:.1f}")


def run_standalone(args, work):
    data_dir = os.path.join(work, "standalone-data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    image_server = ImageServer(args.image)
    log_path = os.path.join(work, "standalone.log")
    child_env = dict(os.environ, RUST_LOG="warn,catalog_stream::pipeline=debug")
    process = Process("standalone", [args.binary, "--listen", f"127.0.0.1:{port}",
                                     "--data-dir", data_dir], log_path, child_env)
    process.start()
    wait_http(f"{base}/healthz")

    killer = threading.Thread(target=kill_loop, args=(process, args.kills, args.window, 0.5,
                                                      lambda: wait_http(f"{base}/healthz")))
    started = time.time()
    killer.start()
    acked = post_products(base, args.products, image_server, "standalone")
    killer.join()

    deadline = time.time() + args.settle
    listed = {}
    while time.time() < deadline:
        listed = {}
        cursor = None
        while True:
            params = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = requests.get(f"{base}/api/v1/complete-products", params=params, timeout=10).json()
            for item in page["data"]:
                listed[(item["mallId"], item["productId"])] = item["image"]["uri"]
            cursor = page.get("nextCursor")
            if not cursor:
                break
        if len(acked & set(listed)) >= len(acked):
            break
        time.sleep(1)
    elapsed = time.time() - started
    collected = len(acked & set(listed))
    images_dir = os.path.join(data_dir, "images")
    stored = set()
    for root, _, files in os.walk(images_dir):
        for name in files:
            if not name.startswith("."):
                stored.add(os.path.relpath(os.path.join(root, name), images_dir))
    referenced = {uri.split("/images/", 1)[-1] for uri in listed.values()}
    orphans = len(stored - referenced)
    stored_line = re.compile(r'stored image object key=(\S+)')
    with open(log_path, errors="replace") as f:
        uploads = Counter(m.group(1) for m in map(stored_line.search, f) if m)
    duplicates = sum(n - 1 for n in uploads.values() if n > 1)
    process.stop()
    return report("standalone", len(acked), collected, duplicates, orphans,
                  f" kills={args.kills} uploads={sum(uploads.values())} seconds={elapsed:.1f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="all", choices=["distributed", "standalone", "all"])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--window", type=float, default=20.0, help="seconds in which the kills fall")
    parser.add_argument("--settle", type=float, default=1200.0,
                        help="seconds allowed to finish (the view lags behind the uploads on a busy machine)")
    parser.add_argument("--binary", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--moto", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    ok = True
    work = tempfile.mkdtemp(prefix="catalog-soak-")
    print(f"work directory: {work}", file=sys.stderr)
    # A private copy: a concurrent cargo build must not swap the binary under a restart.
    binary = os.path.join(work, "catalog-stream")
    shutil.copy2(args.binary, binary)
    args.binary = binary
    try:
        try:
            if args.mode in ("distributed", "all"):
                ok &= run_distributed(args, work)
            if args.mode in ("standalone", "all"):
                ok &= run_standalone(args, work)
        except Exception:
            for name in sorted(os.listdir(work)):
                if name.endswith(".log"):
                    with open(os.path.join(work, name), errors="replace") as f:
                        tail = f.readlines()[-15:]
                    print(f"--- {name}\n{''.join(tail)}", file=sys.stderr)
            raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
