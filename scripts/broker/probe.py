#!/usr/bin/env python3
"""Correctness probe for a Kafka-protocol broker (written for tansu 0.6.0).

* creates a fresh topic (AdminClient; tansu does not auto-create topics)
* N idempotent producers (one thread each, each its own connection) send
  --records keyed records in total; the value carries "<producer>:<seq>"
* concurrently a group consumer (enable.auto.commit=false) consumes in
  batches and synchronously commits last_offset+1 per partition after each
  batch (what rdkafka's commit of consumed offsets does)
* checks per partition: offsets strictly +1 (no gap, no duplicate, no
  going backwards), every value received exactly once, per producer/key
  order preserved, and that the high watermark is never below a delivered
  offset:
    - "fetch HWM": get_watermark_offsets(cached=True) = HWM of the last
      Fetch response seen by librdkafka
    - "list HWM":  get_watermark_offsets(cached=False) = ListOffsets(LATEST)
* finally re-reads every partition from offset 0 with a fresh, group-less
  consumer and checks contiguity/completeness again.

Usage: scripts/broker/probe.py --bootstrap 127.0.0.1:9092 --topic probe-x [--records 20000]
                      [--partitions 3] [--producers 1] [--linger-ms 5]
"""
import argparse
import collections
import json
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                             operation_timeout=10, request_timeout=15)
    for t, f in fs.items():
        f.result()
        log("created topic", t, "partitions", partitions)
    # wait until metadata shows the partitions
    for _ in range(50):
        md = admin.list_topics(topic=topic, timeout=5)
        tm = md.topics.get(topic)
        if tm is not None and tm.error is None and len(tm.partitions) == partitions:
            return
        time.sleep(0.2)
    raise RuntimeError("topic metadata never became ready")


class ProducerThread(threading.Thread):
    def __init__(self, args, pid, count, stats):
        super().__init__(daemon=True)
        self.args, self.pid, self.count, self.stats = args, pid, count, stats
        self.delivered = {}  # value -> (partition, offset)
        self.errors = []
        self.done_at = None

    def run(self):
        p = Producer({
            "bootstrap.servers": self.args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": (self.args.linger0_ms if (self.pid == 0 and self.args.linger0_ms is not None)
                          else self.args.linger_ms),
            "client.id": f"probe-producer-{self.pid}",
        })

        def cb(err, msg):
            v = ":".join(msg.value().decode().split(":")[:2])
            if err is not None:
                self.errors.append((v, str(err)))
            else:
                self.delivered[v] = (msg.partition(), msg.offset())

        t_start = time.time()
        for seq in range(self.count):
            if self.args.rate > 0 and seq % 50 == 0:
                target = t_start + seq / self.args.rate
                while time.time() < target:  # poll() returns early on events
                    p.poll(max(0.0, target - time.time()))
            key = f"key-{seq % 97}"
            val = f"p{self.pid}:{seq}"
            if self.pid == 0 and self.args.pad0:
                val += ":" + "x" * self.args.pad0
            while True:
                try:
                    p.produce(self.args.topic, key=key.encode(), value=val.encode(), on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        left = p.flush(120)
        self.done_at = time.time()
        if left:
            self.errors.append(("flush", f"{left} messages not delivered after flush(120)"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default=None)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--pad0", type=int, default=0,
                    help="extra value bytes for producer 0 only (mix large and small batches)")
    ap.add_argument("--linger0-ms", type=int, default=None, help="linger.ms for producer 0 only")
    ap.add_argument("--fetch-wait-ms", type=int, default=500, help="consumer fetch.wait.max.ms")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="records/s per producer thread (0 = as fast as possible)")
    ap.add_argument("--batch", type=int, default=500, help="max messages per consume() batch")
    ap.add_argument("--idle-timeout", type=float, default=30.0)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--wm-isolation", default="read_committed",
                    choices=["read_committed", "read_uncommitted"],
                    help="isolation.level of the client used for ListOffsets(LATEST) watermark queries")
    args = ap.parse_args()
    if args.topic is None:
        args.topic = "probe-" + uuid.uuid4().hex[:10]

    log("args", vars(args))
    create_topic(args.bootstrap, args.topic, args.partitions)

    group = "probe-group-" + uuid.uuid4().hex[:10]
    c = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": args.fetch_wait_ms,
        "client.id": "probe-consumer",
    })
    c.subscribe([args.topic])
    # wait for assignment before producing
    t_assign = time.time()
    while not c.assignment() and time.time() - t_assign < 30:
        c.poll(0.2)
    log("assignment", [(tp.topic, tp.partition) for tp in c.assignment()])

    # separate client for ListOffsets-based watermark queries (its own isolation level)
    def wm_client(iso):
        return Consumer({"bootstrap.servers": args.bootstrap, "group.id": "probe-wm-" + uuid.uuid4().hex[:8],
                         "enable.auto.commit": False, "isolation.level": iso, "client.id": "probe-wm-" + iso})
    preflight = {}
    for iso in ("read_committed", "read_uncommitted"):
        wc = wm_client(iso)
        try:
            preflight[iso] = str(wc.get_watermark_offsets(TopicPartition(args.topic, 0), timeout=5, cached=False))
        except Exception as e:
            preflight[iso] = "ERROR: " + str(e)
        wc.close()
    log("ListOffsets preflight", preflight)
    wm = wm_client(args.wm_isolation)

    per = [args.records // args.producers] * args.producers
    per[0] += args.records - sum(per)
    stats = {}
    producers = [ProducerThread(args, i, per[i], stats) for i in range(args.producers)]
    t0 = time.time()
    for pt in producers:
        pt.start()

    last_off = {}                    # partition -> last delivered offset
    anomalies = []                   # (kind, partition, prev, got, value)
    seen = collections.Counter()     # value -> times received
    where = {}                       # value -> (partition, offset) first seen
    last_seq = {}                    # (producer, key) -> last seq seen (order check)
    order_violations = []
    hwm_violations = []              # (source, partition, hwm, max_delivered)
    list_hwm_checks = 0
    commits = 0
    commit_errors = []
    consumer_errors = []
    received = 0
    first_rx = last_rx = None
    last_progress = time.time()
    unique_target = args.records

    while True:
        msgs = c.consume(num_messages=args.batch, timeout=0.5)
        now = time.time()
        batch_max = {}
        for m in msgs:
            if m.error():
                consumer_errors.append(str(m.error()))
                continue
            part, off = m.partition(), m.offset()
            v = ":".join(m.value().decode().split(":")[:2])
            received += 1
            first_rx = first_rx or now
            last_rx = now
            prev = last_off.get(part, -1)
            if off == prev + 1:
                pass
            elif off > prev + 1:
                anomalies.append(("gap", part, prev, off, v))
            elif off == prev:
                anomalies.append(("duplicate-offset", part, prev, off, v))
            else:
                anomalies.append(("backwards", part, prev, off, v))
            last_off[part] = max(prev, off)
            if seen[v] == 0:
                where[v] = (part, off)
            seen[v] += 1
            pid_s, seq_s = v.split(":")[:2]
            seq = int(seq_s)
            k = (pid_s, m.key().decode())
            if k in last_seq and seq <= last_seq[k]:
                order_violations.append((k, last_seq[k], seq, part, off))
            last_seq[k] = max(seq, last_seq.get(k, -1))
            batch_max[part] = max(batch_max.get(part, -1), off)
        if batch_max:
            last_progress = now
            tps = [TopicPartition(args.topic, p, o + 1) for p, o in batch_max.items()]
            try:
                res = c.commit(offsets=tps, asynchronous=False)
                commits += 1
                for r in res or []:
                    if r.error:
                        commit_errors.append((r.partition, str(r.error)))
            except Exception as e:  # KafkaException
                commit_errors.append(("commit", str(e)))
            for p, o in batch_max.items():
                tp = TopicPartition(args.topic, p)
                lo, hi = c.get_watermark_offsets(tp, cached=True)
                if hi >= 0 and hi <= last_off[p]:
                    hwm_violations.append(("fetch", p, hi, last_off[p]))
                try:
                    lo2, hi2 = wm.get_watermark_offsets(tp, timeout=5, cached=False)
                    list_hwm_checks += 1
                    if hi2 <= last_off[p]:
                        hwm_violations.append(("listoffsets", p, hi2, last_off[p]))
                except Exception as e:
                    hwm_violations.append(("listoffsets-error", p, str(e), last_off[p]))
        if len(seen) >= unique_target and all(not pt.is_alive() for pt in producers):
            break
        if now - last_progress > args.idle_timeout and all(not pt.is_alive() for pt in producers):
            log("idle timeout: no new messages for", args.idle_timeout, "s")
            break
    t_end = time.time()

    # committed offsets as stored by the broker
    committed = c.committed([TopicPartition(args.topic, p) for p in range(args.partitions)], timeout=10)
    committed = {tp.partition: tp.offset for tp in committed}
    final_wm = {}
    for p in range(args.partitions):
        try:
            final_wm[p] = wm.get_watermark_offsets(TopicPartition(args.topic, p), timeout=5, cached=False)
        except Exception as e:
            final_wm[p] = "ERROR: " + str(e)
    c.close()
    wm.close()

    for pt in producers:
        pt.join()
    prod_end = max(pt.done_at for pt in producers)
    delivered = {}
    prod_errors = []
    for pt in producers:
        delivered.update(pt.delivered)
        prod_errors.extend(pt.errors)

    # re-read every partition from 0, no group
    rc = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "probe-reread-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    rc.assign([TopicPartition(args.topic, p, 0) for p in range(args.partitions)])
    eof = set()
    reread = collections.defaultdict(list)
    t_rr = time.time()
    while len(eof) < args.partitions and time.time() - t_rr < 120:
        for m in rc.consume(num_messages=1000, timeout=1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            reread[m.partition()].append((m.offset(), ":".join(m.value().decode().split(":")[:2])))
    rc.close()
    reread_anoms = []
    reread_values = collections.Counter()
    for p, lst in reread.items():
        for i, (off, v) in enumerate(lst):
            reread_values[v] += 1
            if off != i:
                reread_anoms.append((p, i, off))
                break
    # delivery report offsets vs. re-read offsets
    pos = {(p, off): v for p, lst in reread.items() for off, v in lst}
    dr_mismatch = [(v, po) for v, po in delivered.items() if pos.get(po) != v]

    missing = [f"p{pt.pid}:{s}" for pt in producers for s in range(pt.count) if seen[f"p{pt.pid}:{s}"] == 0]
    dup_values = {v: n for v, n in seen.items() if n > 1}
    gaps_committed_past = []
    for kind, p, prev, got, v in anomalies:
        if kind == "gap" and committed.get(p, -1) > prev + 1:
            gaps_committed_past.append((p, prev + 1, got - 1, committed.get(p)))

    result = {
        "bootstrap": args.bootstrap, "topic": args.topic, "group": group,
        "wm_isolation": args.wm_isolation, "listoffsets_preflight": preflight,
        "records": args.records, "partitions": args.partitions, "producers": args.producers,
        "produce_seconds": round(prod_end - t0, 2),
        "produce_rate_rps": round(args.records / max(prod_end - t0, 1e-9)),
        "consume_seconds_end_to_end": round((last_rx or t_end) - t0, 2),
        "consume_rate_rps_end_to_end": round(len(seen) / max((last_rx or t_end) - t0, 1e-9)),
        "messages_received": received, "unique_values_received": len(seen),
        "missing_values": len(missing), "missing_sample": missing[:10],
        "duplicate_values": len(dup_values), "duplicate_sample": list(dup_values.items())[:10],
        "offset_anomalies": len(anomalies),
        "offset_anomaly_counts": dict(collections.Counter(a[0] for a in anomalies)),
        "offset_anomaly_sample": anomalies[:20],
        "gaps_committed_past": gaps_committed_past[:20],
        "key_order_violations": len(order_violations), "key_order_sample": order_violations[:10],
        "hwm_checks_listoffsets": list_hwm_checks,
        "hwm_violations": len(hwm_violations),
        "hwm_violation_counts": dict(collections.Counter(h[0] for h in hwm_violations)),
        "hwm_violation_sample": hwm_violations[:20],
        "commits": commits, "commit_errors": commit_errors[:10],
        "consumer_errors": consumer_errors[:10],
        "producer_errors": len(prod_errors), "producer_error_sample": prod_errors[:10],
        "committed_offsets": committed,
        "final_watermarks_listoffsets": final_wm,
        "last_delivered_offset": last_off,
        "reread_counts": {p: len(v) for p, v in reread.items()},
        "reread_contiguity_anomalies": reread_anoms,
        "reread_unique_values": len(reread_values),
        "reread_duplicate_values": sum(1 for n in reread_values.values() if n > 1),
        "delivery_report_offset_mismatches": len(dr_mismatch),
        "delivery_report_mismatch_sample": dr_mismatch[:10],
    }
    verdict_ok = (not missing and not dup_values and not anomalies and not order_violations
                  and not hwm_violations and not reread_anoms and not dr_mismatch and not prod_errors)
    result["verdict"] = "OK" if verdict_ok else "PROBLEMS"
    print(json.dumps(result, indent=1, default=str), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0 if verdict_ok else 1


if __name__ == "__main__":
    sys.exit(main())
