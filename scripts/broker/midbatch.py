#!/usr/bin/env python3
"""Deterministic check of tansu's fetch path when the fetch offset is inside a
record batch (e.g. a committed offset in the middle of a batch), and of
ListOffsets(LATEST) after multi-record batches.

  1. produce ONE batch of 5 records   -> offsets 0..4
  2. produce ONE batch of 1 record    -> offset 5
  3. ListOffsets(LATEST) (get_watermark_offsets(cached=False)): expect 6
  4. consumer assigned at offset 0 / 2 / 5: expect offsets start..5 exactly once
  5. produce ONE batch of 3 records   -> offsets 6..8; ListOffsets(LATEST): expect 9

Usage: scripts/broker/midbatch.py BOOTSTRAP (needs: pip install confluent-kafka)
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

b = sys.argv[1]
t = "probe-midbatch-" + uuid.uuid4().hex[:8]
admin = AdminClient({"bootstrap.servers": b})
admin.create_topics([NewTopic(t, 1, 1)])[t].result()
time.sleep(0.5)

p = Producer({"bootstrap.servers": b, "linger.ms": 200, "enable.idempotence": True})
dr = []
for i in range(5):
    p.produce(t, value=f"v{i}".encode(), on_delivery=lambda e, m: dr.append((m.offset(), e)))
p.flush()
p.produce(t, value=b"v5", on_delivery=lambda e, m: dr.append((m.offset(), e)))
p.flush()
print("topic", t)
print("delivery reports (offset, err):", dr)

iso = {}
for level in ("read_uncommitted", "read_committed"):
    c = Consumer({"bootstrap.servers": b, "group.id": "mb-wm-" + uuid.uuid4().hex[:6],
                  "isolation.level": level})
    try:
        iso[level] = c.get_watermark_offsets(TopicPartition(t, 0), timeout=5, cached=False)
    except Exception as e:
        iso[level] = "ERROR " + str(e)
    c.close()
print("ListOffsets (low, high) per isolation level, expected (0, 6):", iso)

for start in (0, 2, 5):
    c = Consumer({"bootstrap.servers": b, "group.id": "mb-" + uuid.uuid4().hex[:6],
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(t, 0, start)])
    got, hw = [], None
    deadline = time.time() + 10
    eof = False
    while time.time() < deadline and not eof:
        for m in c.consume(100, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof = True
                continue
            got.append((m.offset(), m.value().decode()))
    hw = c.get_watermark_offsets(TopicPartition(t, 0), cached=True)
    c.close()
    exp = [(o, f"v{o}") for o in range(start, 6)]
    print(f"fetch from offset {start}: got {got}  expected {exp}  -> {'OK' if got == exp else 'WRONG'}"
          f"  (fetch-response HWM={hw[1]})")

for i in range(6, 9):
    p.produce(t, value=f"v{i}".encode(), on_delivery=lambda e, m: dr.append((m.offset(), e)))
p.flush()
print("after a 3-record batch, delivery reports:", dr[-3:])
c = Consumer({"bootstrap.servers": b, "group.id": "mb-wm-" + uuid.uuid4().hex[:6],
              "isolation.level": "read_uncommitted"})
print("ListOffsets (low, high), expected (0, 9):",
      c.get_watermark_offsets(TopicPartition(t, 0), timeout=5, cached=False))
c.close()
