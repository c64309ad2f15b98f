"""Turns bench-harness MEASURE lines into the markdown table and RESULT lines (medians).

Lines with a `scenario=` field (`bench.sh stateful`) make the stateful table, one row per
scenario and partition count; lines without one make the engine table."""

import statistics
import sys
from collections import defaultdict

CONTENDERS = ["ours", "rdkafka", "kafka_streams", "quix"]


def parse(path, stateful=False):
    """Runs per (label, partitions), or per (scenario, label, partitions) when `stateful`."""
    runs = defaultdict(list)
    for line in open(path):
        if not line.startswith("MEASURE "):
            continue
        kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if "failed" in kv or "rate" not in kv or ("scenario" in kv) != stateful:
            continue
        key = (kv["label"], int(kv["partitions"]))
        if stateful:
            key = (kv["scenario"],) + key
        runs[key].append((float(kv["rate"]), int(kv["rss_kib"]), kv.get("verify", "ok")))
    return runs


def median(runs, key, i):
    vals = [r[i] for r in runs.get(key, [])]
    return statistics.median(vals) if vals else None


def fmt_rate(v):
    return "n/a" if v is None else f"{v:,.0f}/s"


def fmt_rss(v):
    return "n/a" if v is None else f"{v / 1024:.0f} MiB"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


STATEFUL_CONTENDERS = ["ours", "kafka_streams"]


def stateful_main(runs):
    print()
    print("| figure | ours | Kafka Streams | ours ÷ Kafka Streams |")
    print("|---|---|---|---|")
    results = []
    for scenario, p in sorted({(s, p) for s, _, p in runs}):
        figure = f"stateful_{scenario.replace('-', '_')}_{p}p"
        rates = {c: median(runs, (scenario, c, p), 0) for c in STATEFUL_CONTENDERS}
        rss = {c: median(runs, (scenario, c, p), 1) for c in STATEFUL_CONTENDERS}
        n = {c: len(runs.get((scenario, c, p), [])) for c in STATEFUL_CONTENDERS}
        cells = [f"{fmt_rate(rates[c])} · {fmt_rss(rss[c])} (n={n[c]})" for c in STATEFUL_CONTENDERS]
        r = ratio(rates["ours"], rates["kafka_streams"])
        print(f"| {figure} | " + " | ".join(cells) + " | " + ("n/a" if r is None else f"{r:.2f}×") + " |")
        fields = " ".join(f"{c}={rates[c]:.0f}" if rates[c] else f"{c}=nan" for c in STATEFUL_CONTENDERS)
        rss_fields = " ".join(
            f"rss_{c}_kib={rss[c]:.0f}" if rss[c] else f"rss_{c}_kib=nan" for c in STATEFUL_CONTENDERS
        )
        ratio_field = f"ratio_kafka_streams={r:.2f}" if r is not None else "ratio_kafka_streams=nan"
        results.append(f"RESULT {figure} {fields} {ratio_field} {rss_fields}")
    print()
    print("engine_*_passthrough: the engine copying key and value bytes (the pipe's work, no Avro).")
    print("Cells: median input records/s from the contender's start until the last count per key sums to the input's records · median peak RSS (VmHWM) of the contender's process (n = runs).")
    print()
    for r in results:
        print(r)


def main():
    stateful = parse(sys.argv[1], stateful=True)
    if stateful:
        stateful_main(stateful)
        return
    runs = parse(sys.argv[1])
    partitions = sorted({p for _, p in runs})
    print()
    print("| figure | ours | rdkafka pipe | Kafka Streams | Quix Streams | ours ÷ rdkafka (≥ 0.8) | ours ÷ Kafka Streams (≥ 1.5) | ours ÷ Quix (≥ 10) |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for p in partitions:
        for variant in ("ours", "ours_tuned", "ours_passthrough"):
            if (variant, p) not in runs:
                continue
            figure = f"engine_{p}p" + ("" if variant == "ours" else variant.removeprefix("ours"))
            rates = {c: median(runs, (variant if c == "ours" else c, p), 0) for c in CONTENDERS}
            rss = {c: median(runs, (variant if c == "ours" else c, p), 1) for c in CONTENDERS}
            n = {c: len(runs.get((variant if c == "ours" else c, p), [])) for c in CONTENDERS}
            cells = [f"{fmt_rate(rates[c])} · {fmt_rss(rss[c])} (n={n[c]})" for c in CONTENDERS]
            rs = [ratio(rates["ours"], rates[c]) for c in CONTENDERS[1:]]
            print(f"| {figure} | " + " | ".join(cells) + " | "
                  + " | ".join("n/a" if r is None else f"{r:.2f}×" for r in rs) + " |")
            fields = " ".join(f"{c}={rates[c]:.0f}" if rates[c] else f"{c}=nan" for c in CONTENDERS)
            rss_fields = " ".join(f"rss_{c}_kib={rss[c]:.0f}" if rss[c] else f"rss_{c}_kib=nan" for c in CONTENDERS)
            ratios = " ".join(
                f"ratio_{c}={r:.2f}" if r is not None else f"ratio_{c}=nan"
                for c, r in zip(CONTENDERS[1:], rs)
            )
            results.append(f"RESULT {figure} {fields} {ratios} {rss_fields}")
    print()
    print("engine_*_passthrough: the engine copying key and value bytes (the pipe's work, no Avro).")
    print("Cells: median input records/s between first and last output · median peak RSS (VmHWM) of the contender's process (n = runs).")
    print()
    for r in results:
        print(r)


if __name__ == "__main__":
    main()
