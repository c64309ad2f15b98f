"""Soak of SPEC §9: products through the pipeline while it is killed with SIGKILL and restarted;
and (mode `scale`) products created, updated twice with different image bytes and partly deleted
while image-pipeline instances are scaled 1 → 3 → 1 (one SIGKILLed, one SIGTERMed).

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
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
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


def distinct_png(base, path):
    """`base` (a PNG) with a tEXt chunk naming `path` before its IEND chunk: valid PNG bytes of
    their own, and so a sha256 of their own, for every path."""
    if base[-8:-4] != b"IEND":
        raise ValueError("the base image does not end with an IEND chunk")
    data = b"tEXt" + b"Comment\x00" + path.encode()
    chunk = struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)
    return base[:-12] + chunk + base[-12:]


class DistinctImageServer:
    """Serves `distinct_png(base, path)` for every path, on loopback; paths of later versions
    (`.../v2.png`, `.../v3.png`) after 0 to `max_latency` seconds (by path), so that updates are
    still being collected when an instance is stopped."""

    def __init__(self, image, max_latency=1.0):
        with open(image, "rb") as f:
            base = f.read()
        distinct_png(base, "/check")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not self.path.endswith("/v1.png"):
                    time.sleep(max_latency * (zlib.crc32(self.path.encode()) % 12) / 11)
                body = distinct_png(base, self.path)
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
                pass

        self.base = base
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def path(self, mall, product, version):
        return f"/img/{mall}/{product}/v{version}.png"

    def url(self, mall, product, version):
        return f"http://127.0.0.1:{self.port}{self.path(mall, product, version)}"

    def sha256(self, mall, product, version):
        import hashlib
        return hashlib.sha256(distinct_png(self.base, self.path(mall, product, version))).hexdigest()


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

    def __init__(self, args, work, partitions=4, services=None):
        from confluent_kafka.admin import AdminClient, NewTopic

        env = read_env(args.env)
        self.env, self.args, self.work = env, args, work
        run_id = uuid.uuid4().hex[:8]
        self.run_id = run_id
        self.database, self.bucket = f"soak_{run_id}", f"soak-{run_id}"
        database = self.database
        topics = {"cdc": f"soak{run_id}.{database}.products", "upserts": f"soak-{run_id}-upserts",
                  "deletes": f"soak-{run_id}-deletes", "image_events": f"soak-{run_id}-image-events"}
        self.topics = topics
        admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP"]})
        for future in admin.create_topics([NewTopic(t, partitions, 1) for t in topics.values()]).values():
            future.result()

        moto_port = free_port()
        self.moto_log = os.path.join(work, "moto.log")
        self.moto = Process("moto", [args.moto, "-H", "127.0.0.1", "-p", str(moto_port)], self.moto_log)
        self.moto.start()
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        wait_http(f"{self.moto_url}/moto-api/")

        self.processes = {}
        self.ports = {}
        for service in services or self.SERVICES:
            self.start_instance(service, service)
        for service, port in self.ports.items():
            wait_http(f"http://127.0.0.1:{port}/healthz")

    def start_instance(self, name, service):
        """Starts `catalog-stream <service>` as `name` (one of several instances of a service):
        its own port, state directory and log; the service's consumer group."""
        self.ports[name] = free_port()
        config = os.path.join(self.work, f"{name}.yaml")
        settings_yaml(config, f"127.0.0.1:{self.ports[name]}", self.env, self.database,
                      self.bucket, self.moto_url, self.topics,
                      os.path.join(self.work, f"state-{name}"), f"soak-{self.run_id}-{service}")
        child_env = dict(os.environ, RUST_LOG=os.environ.get("SOAK_RUST_LOG", "warn"))
        self.processes[name] = Process(name, [self.args.binary, service, "--config", config],
                                       os.path.join(self.work, f"{name}.log"), child_env)
        self.processes[name].start()

    def url(self, service):
        return f"http://127.0.0.1:{self.ports[service]}"

    def stop(self):
        for process in self.processes.values():
            process.stop()
        self.moto.stop()


def moto_puts(log_path, bucket):
    """PUTs of objects the S3 server answered 200, per key, from its own request log."""
    put = re.compile(r'"(?:\x1b\[[0-9;]*m)*PUT /' + re.escape(bucket) + r'/([^ ?]+)[^"]*" 200')
    with open(log_path, errors="replace") as f:
        return Counter(m.group(1) for m in map(put.search, f) if m)


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

    uploads = moto_puts(services.moto_log, bucket)
    duplicates = sum(n - 1 for n in uploads.values() if n > 1)

    services.stop()
    return report("distributed", len(acked), collected, duplicates, orphans,
                  f" kills={args.kills} uploads={sum(uploads.values())} seconds={elapsed:.1f}")


def call_all(jobs, threads=16):
    """Runs `jobs` (callables) on `threads` threads; re-raises the first failure."""
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


class Background:
    """`call_all(jobs)` on a thread of its own; `join` re-raises its failure."""

    def __init__(self, jobs):
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(jobs,), daemon=True)
        self.thread.start()

    def _run(self, jobs):
        try:
            call_all(jobs)
        except Exception as error:  # noqa: BLE001 - handed to join
            self.error = error

    def join(self):
        self.thread.join()
        if self.error:
            raise self.error


RETRIED = Counter()


def http_call(method, url, body=None, ok=(200, 201)):
    """One request, retried while the service does not answer or answers 5xx (for 60 s). A
    DELETE retried after an attempt without an answer may find that attempt did it: 404."""
    unanswered = False
    for _ in range(600):
        try:
            r = requests.request(method, url, json=body, timeout=10)
            if r.status_code in ok or (method == "DELETE" and unanswered and r.status_code == 404):
                return r
            if r.status_code < 500:
                raise RuntimeError(f"{method} {url}: {r.status_code} {r.text}")
        except requests.RequestException:
            unanswered = True
        RETRIED[method] += 1
        time.sleep(0.1)
    raise RuntimeError(f"{method} {url}: no answer")


def wait_for(name, what, check, timeout):
    """Polls `check` (returning (done, progress text)) until done; False after `timeout`."""
    started = time.time()
    last = started
    while True:
        done, progress = check()
        if done:
            return True
        if time.time() - started > timeout:
            print(f"[{name}] {what}: not within {timeout:.0f} s: {progress}", flush=True)
            return False
        if time.time() - last >= 15:
            last = time.time()
            print(f"[{name}] waiting for {what}: {progress}", flush=True)
        time.sleep(0.5)


def run_scale(args, work):
    """Products created, updated twice with different image bytes, a quarter deleted, while
    image-pipeline instances go 1 → 3 (two join during the first update) → 2 (SIGKILL) → 1
    (SIGTERM). Counted from outside: the view (MongoDB), the bucket's objects and the S3
    server's PUTs (its request log)."""
    images = DistinctImageServer(args.image, args.latency)
    services = Distributed(args, work, partitions=6,
                           services=["cdc-source", "product-collector", "complete-products"])
    try:
        return scale_scenario(args, services, images)
    finally:
        services.stop()


def scale_scenario(args, services, images):
    import boto3
    import pymongo

    name = "scale"
    pipelines = ["image-pipeline-1", "image-pipeline-2", "image-pipeline-3"]
    mongo = pymongo.MongoClient(services.env["MONGODB_URI"])[services.database]
    collector, view_api = services.url("product-collector"), services.url("complete-products")
    products = [(f"{services.run_id}-mall-{i % 10}", f"p-{i}") for i in range(args.scale_products)]
    deleted_early = {key for i, key in enumerate(products) if i % 8 == 0}
    deleted = {key for i, key in enumerate(products) if i % 4 == 0}
    live = [key for key in products if key not in deleted]
    ok = True

    def body(key, version):
        mall, product = key
        return {"mallId": mall, "productId": product, "title": f"Product {product} v{version}",
                "content": "soak", "price": "10", "imageUrl": images.url(mall, product, version)}

    def delete(key):
        mall, product = key
        http_call("DELETE", f"{view_api}/api/v1/complete-products/{product}?mallId={mall}",
                  ok=(200,))

    def at_version(version):
        n = mongo["complete_products"].count_documents(
            {"imageUrl": {"$regex": f"/v{version}\\.png$"}})
        return n

    def start_pipeline(pipeline):
        services.start_instance(pipeline, "image-pipeline")

    started = time.time()
    start_pipeline(pipelines[0])
    wait_http(f"{services.url(pipelines[0])}/healthz")

    # 1. Every product on one instance.
    call_all([lambda key=key: http_call("POST", f"{collector}/api/v1/products", body(key, 1))
              for key in products])
    ok &= wait_for(name, "v1 collected", lambda: (at_version(1) >= len(products),
                                                   f"{at_version(1)} of {len(products)}"),
                   args.settle)
    seconds_v1 = time.time() - started

    # 2. 1 → 3 instances while every product gets a new image (posted meanwhile).
    for pipeline in pipelines[1:]:
        start_pipeline(pipeline)
    posting = Background([lambda key=key: http_call("POST", f"{collector}/api/v1/products",
                                                    body(key, 2)) for key in products])
    for pipeline in pipelines[1:]:
        wait_http(f"{services.url(pipeline)}/healthz")
    ok &= wait_for(name, "a third of v2", lambda: (at_version(2) >= len(products) // 3,
                                                    f"{at_version(2)} of {len(products)}"),
                   args.settle)

    # 3. SIGKILL the first instance; a third image for everyone; half of the deletions.
    services.processes[pipelines[0]].kill9()
    v2_at_kill = at_version(2)
    print(f"[{name}] {pipelines[0]} SIGKILLed with {v2_at_kill} of {len(products)} at v2 "
          f"after {time.time() - started:.1f} s", flush=True)

    posting.join()

    def third(key):
        http_call("POST", f"{collector}/api/v1/products", body(key, 3))
        if key in deleted_early:
            delete(key)

    posting = Background([lambda key=key: third(key) for key in products])

    # 4. SIGTERM the second once some of the third round is through; the other deletions.
    ok &= wait_for(name, "a quarter of v3", lambda: (at_version(3) >= len(live) // 4,
                                                      f"{at_version(3)} of {len(live)}"),
                   args.settle)
    v3_at_term = at_version(3)
    terminated = time.time()
    services.processes[pipelines[1]].stop()
    sigterm_exit = services.processes[pipelines[1]].proc.returncode
    print(f"[{name}] {pipelines[1]} SIGTERMed with {v3_at_term} at v3: exit {sigterm_exit} "
          f"within {time.time() - terminated:.1f} s", flush=True)
    posting.join()
    call_all([lambda key=key: delete(key) for key in deleted - deleted_early])
    last_action = time.time()

    # 5. Convergence: exactly the live products, each with its latest image; the deleted ones
    # gone, their status `deleted`.
    expected = {key: images.sha256(*key, 3) for key in live}

    def view():
        return {(d["mallId"], d["productId"]): d for d in mongo["complete_products"].find(
            {}, {"mallId": 1, "productId": 1, "imageUrl": 1, "image.sha256": 1, "image.key": 1})}

    def converged():
        docs = view()
        wrong = sum(1 for key, sha in expected.items()
                    if docs.get(key, {}).get("image", {}).get("sha256") != sha
                    or docs.get(key, {}).get("imageUrl") != images.url(*key, 3))
        shown_deleted = sum(1 for key in deleted if key in docs)
        statuses = mongo["product_status"].count_documents({"state": "deleted"})
        done = wrong == 0 and shown_deleted == 0 and statuses >= len(deleted)
        return done, (f"{wrong} live products not at v3, {shown_deleted} deleted shown, "
                      f"{statuses} of {len(deleted)} deletions recorded")

    ok &= wait_for(name, "the view to converge", converged, args.settle)
    seconds_converge = time.time() - last_action

    # Quiescence on the survivor: every task here, nothing left to read.
    survivor = services.url(pipelines[2])

    def idle():
        text = requests.get(f"{survivor}/metrics", timeout=10).text
        lag = [line for line in text.splitlines() if line.startswith("topology_consumer_lag{")]
        running = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("topology_tasks{") and 'state="running"' in line)
        busy = [line for line in lag if float(line.rsplit(" ", 1)[1]) != 0]
        return (running == 6 and lag and not busy), f"{running} tasks running, lag {busy}"

    ok &= wait_for(name, "the survivor idle with all 6 tasks", idle, 120)
    seconds_total = time.time() - started

    # 6. The bucket, the uploads.
    docs = view()
    listed = len(docs)
    referenced = {d["image"]["key"] for d in docs.values()}
    s3 = boto3.client("s3", endpoint_url=services.moto_url, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    stored = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=services.bucket):
        stored.update(obj["Key"] for obj in page.get("Contents", []))
    orphans = stored - referenced
    dangling = referenced - stored
    deleted_objects = {k for k in stored for (mall, product) in deleted
                       if f"/{mall}/{product}/" in k}
    wrong_images = sum(1 for key, sha in expected.items()
                       if sha not in docs.get(key, {}).get("image", {}).get("key", ""))
    uploads = moto_puts(services.moto_log, services.bucket)
    duplicate_puts = sum(n - 1 for n in uploads.values() if n > 1)
    uploaded_sha = {k.rsplit("/", 1)[-1].split(".")[0] for k in uploads}
    never_uploaded = [(key, v) for key in products for v in ((1,) if key in deleted else (1, 2, 3))
                      if images.sha256(*key, v) not in uploaded_sha]
    line = (f"products={len(products)} live={len(live)} deleted={len(deleted)} listed={listed} "
            f"objects={len(stored)} orphan_objects={len(orphans)} "
            f"deleted_objects={len(deleted_objects)} dangling={len(dangling)} "
            f"wrong_images={wrong_images} s3_puts={sum(uploads.values())} "
            f"duplicate_puts={duplicate_puts} never_uploaded={len(never_uploaded)} "
            f"instances=1->3->1 v2_at_kill={v2_at_kill} v3_at_sigterm={v3_at_term} "
            f"sigterm_exit={sigterm_exit} retried_requests={sum(RETRIED.values())} "
            f"seconds_v1={seconds_v1:.1f} "
            f"seconds_to_converge={seconds_converge:.1f} seconds={seconds_total:.1f}")
    print(f"[{name}] {line}", flush=True)
    for what, bad in (("orphans", orphans), ("dangling", dangling),
                      ("objects of deleted products", deleted_objects),
                      ("never uploaded", never_uploaded),
                      ("uploaded twice", [k for k, n in uploads.items() if n > 1])):
        if bad:
            print(f"[{name}] {what}: {sorted(bad)[:10]}", flush=True)
    return (ok and listed == len(live) and len(stored) == len(live) and not orphans
            and not dangling and not deleted_objects and wrong_images == 0
            and duplicate_puts == 0 and not never_uploaded and sigterm_exit == 0)


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
    parser.add_argument("mode", nargs="?", default="all",
                        choices=["distributed", "standalone", "scale", "all"])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--scale-products", type=int, default=600,
                        help="products of the scale mode")
    parser.add_argument("--latency", type=float, default=1.0,
                        help="scale mode: the image host answers updates within 0 to this many seconds")
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
            if args.mode in ("scale", "all"):
                ok &= run_scale(args, work)
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
