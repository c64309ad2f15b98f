"""End to end and ingest figures of the distributed services (SPEC §8, issue 7).

Run through `infrastructure/bench.sh e2e|ingest`, which builds the binary and starts the shared
servers. Starts the four services as the soak does (`soak.Distributed`: unique topics and
database on the shared Kafka, MongoDB and registry, a moto S3 server of its own), then:

- e2e: POSTs products to the product collector at a fixed rate against an image server with a
  fixed latency; a product counts as visible when its document appears in the complete-products
  collection that `GET /api/v1/complete-products/{id}` reads (seen through a change stream, so
  the measurement adds no load of its own). Latency = visible − POST sent − image latency.
- ingest: wrk against `POST /api/v1/products` of the product collector.

Prints a markdown table and `RESULT distributed_e2e …` / `RESULT distributed_ingest …` lines.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from soak import Distributed, ImageServer

# wrk's request generator, shared with the standalone bench.
WRK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench", "products.lua")


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def end_to_end(services, image_server, rate, seconds, latency, settle):
    import pymongo

    view = pymongo.MongoClient(services.env["MONGODB_URI"])[services.database]["complete_products"]
    seen = {}
    ready = threading.Event()
    stop = threading.Event()

    def watch():
        with view.watch([{"$match": {"operationType": {"$in": ["insert", "replace", "update"]}}}],
                        full_document="updateLookup", max_await_time_ms=200) as stream:
            ready.set()
            while not stop.is_set():
                change = stream.try_next()
                if change is None:
                    continue
                key = change.get("documentKey", {}).get("_id", {})
                seen.setdefault((key.get("mallId"), key.get("productId")), time.time())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(30)

    sent = {}
    failures = []
    lock = threading.Lock()
    local = threading.local()

    def post(i, at):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        key = ("e2e", f"p-{i}")
        body = {"mallId": key[0], "productId": key[1], "title": f"Product {i}", "content": "bench",
                "price": "1.00", "imageUrl": image_server.url(key[1])}
        try:
            response = session.post(f"{services.url('product-collector')}/api/v1/products",
                                    json=body, timeout=30)
            ok = response.status_code in (200, 201)
        except requests.RequestException:
            ok = False
        with lock:
            if ok:
                sent[key] = at
            else:
                failures.append(key)

    total = int(rate * seconds)
    started = time.time()
    # Open loop: each POST leaves at its slot from a pool, whatever the earlier ones take, and
    # its latency counts from the slot (no coordinated omission).
    with ThreadPoolExecutor(64) as pool:
        for i in range(total):
            at = started + i / rate
            time.sleep(max(0.0, at - time.time()))
            pool.submit(post, i, at)
    failures = len(failures)
    achieved = len(sent) / max(time.time() - started, 1e-9)
    deadline = time.time() + settle
    while time.time() < deadline and not all(key in seen for key in sent):
        time.sleep(0.2)
    stop.set()
    watcher.join(5)
    latencies = [(seen[key] - at - latency) * 1000 for key, at in sent.items() if key in seen]
    return {"products": len(sent), "visible": len(latencies), "failures": failures,
            "achieved": achieved, "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99)}


def ingest(services, image_server, threads, connections, seconds):
    env = dict(os.environ, IMAGE_BASE=f"http://127.0.0.1:{image_server.port}")
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", WRK_SCRIPT,
         services.url("product-collector")],
        env=env, check=True, capture_output=True, text=True).stdout
    rps = p99 = float("nan")
    non_2xx = 0
    for line in output.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(words[1])
        elif words[:1] == ["99%"]:
            p99 = wrk_ms(words[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            non_2xx = int(words[-1])
    return {"rps": rps, "p99": p99, "non_2xx": non_2xx}


def wrk_ms(text):
    for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("parts", nargs="*", default=["e2e", "ingest"], choices=["e2e", "ingest"])
    parser.add_argument("--rate", type=float, default=float(os.environ.get("E2E_RATE", 200)))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("E2E_SECONDS", 20)))
    parser.add_argument("--latency", type=float, default=0.010, help="image server latency, s")
    parser.add_argument("--settle", type=float, default=600.0)
    parser.add_argument("--wrk-seconds", type=int, default=int(os.environ.get("WRK_SECONDS", 15)))
    parser.add_argument("--binary", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--moto", required=True)
    parser.add_argument("--image", required=True)
    args = parser.parse_args()
    args.kills = 0

    work = tempfile.mkdtemp(prefix="catalog-bench-distributed-")
    binary = os.path.join(work, "catalog-stream")
    shutil.copy2(args.binary, binary)
    args.binary = binary
    image_server = ImageServer(args.image, latency=args.latency)
    services = Distributed(args, work)
    rows, results = [], []
    try:
        if "e2e" in args.parts:
            e2e = end_to_end(services, image_server, args.rate, args.seconds, args.latency,
                             args.settle)
            rows.append(f"| distributed end to end ({args.rate:.0f}/s asked, {e2e['achieved']:.0f}/s "
                        f"acknowledged, {e2e['products']} products, {e2e['visible']} visible, "
                        f"{e2e['failures']} failed POSTs), beyond the image server's "
                        f"{args.latency * 1000:.0f} ms | p50 {e2e['p50']:.1f} ms, "
                        f"p99 {e2e['p99']:.1f} ms | (standalone: p50 ≤ 20 ms, p99 ≤ 100 ms) |")
            results.append(f"RESULT distributed_e2e rate={args.rate:.0f} acked_rate={e2e['achieved']:.0f} "
                           f"products={e2e['products']} visible={e2e['visible']} "
                           f"p50_ms={e2e['p50']:.2f} p99_ms={e2e['p99']:.2f}")
        if "ingest" in args.parts:
            result = ingest(services, image_server, 2, 32, args.wrk_seconds)
            rows.append(f"| distributed ingest (wrk -t2 -c32, {result['non_2xx']} non-2xx) | "
                        f"{result['rps']:.0f} requests/s, p99 {result['p99']:.2f} ms | "
                        f"(standalone: ≥ 5,000/s, p99 < 20 ms) |")
            results.append(f"RESULT distributed_ingest rps={result['rps']:.0f} "
                           f"p99_ms={result['p99']:.2f} non_2xx={result['non_2xx']}")
    finally:
        services.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| benchmark | figure | target |")
    print("|---|---|---|")
    for row in rows:
        print(row)
    print()
    for line in results:
        print(line)
    sys.exit(0)


if __name__ == "__main__":
    main()
