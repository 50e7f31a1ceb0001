#!/usr/bin/env python3
"""Kafka helpers for the bench/ harnesses (confluent-kafka only; runs in any venv with it).

Subcommands (all take --brokers):

  wait-broker                         wait until the broker answers metadata requests
  create  NAME:PARTITIONS[:compact] … create topics with retention.ms (and retention.bytes)
                                      set explicitly: tansu 0.6 reports no retention.ms for
                                      topics it auto-creates, and Quix Streams needs it
  count   TOPIC …                     records per topic: sum of the partitions' high watermarks
                                      (minus low watermarks); prints `topic count` lines
  wait-consumed --group G --topic T   poll G's committed offsets on T every --interval until
                                      they reach the high watermarks (taken once at the start);
                                      prints the seconds waited; exit 1 on --timeout or
                                      when the consumer's --pid has exited
  mean-size --topic T                 mean value size in bytes of the first --sample records
  raw-produce --topic T               produce records of --size bytes as fast as the broker
                                      takes them for --seconds (idempotent, acks=all, the
                                      settings ingest uses); prints records, seconds, records/s
"""

import argparse
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

RETENTION_MS = str(7 * 24 * 3600 * 1000)


def admin(brokers):
    return AdminClient({"bootstrap.servers": brokers})


def partitions(brokers, topic, timeout=10.0):
    md = admin(brokers).list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return []
    return sorted(t.partitions)


def watermarks(consumer, topic, parts):
    out = {}
    for p in parts:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0, cached=False)
        out[p] = (lo, hi)
    return out


def plain_consumer(brokers, group="chatpipe-bench-watermarks"):
    return Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})


def cmd_wait_broker(a):
    deadline = time.time() + a.timeout
    while True:
        try:
            admin(a.brokers).list_topics(timeout=1.0)
            return 0
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            if time.time() > deadline:
                print(f"broker {a.brokers} did not answer within {a.timeout} s", file=sys.stderr)
                return 1
            time.sleep(0.2)


def cmd_create(a):
    new = []
    for spec in a.topics:
        parts = spec.split(":")
        name, n = parts[0], int(parts[1])
        config = {"retention.ms": RETENTION_MS, "retention.bytes": "-1"}
        if len(parts) > 2 and parts[2] == "compact":
            config["cleanup.policy"] = "compact"
        new.append(NewTopic(name, num_partitions=n, replication_factor=1, config=config))
    client = admin(a.brokers)  # kept alive until every future resolved
    for name, fut in client.create_topics(new, operation_timeout=30, request_timeout=30).items():
        try:
            fut.result()
        except Exception as e:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                print(f"creating {name}: {e}", file=sys.stderr)
                return 1
    return 0


def cmd_count(a):
    c = plain_consumer(a.brokers)
    for topic in a.topics:
        parts = partitions(a.brokers, topic)
        wm = watermarks(c, topic, parts)
        print(f"{topic} {sum(hi - lo for lo, hi in wm.values())}")
    c.close()
    return 0


def alive(pid):
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmd_wait_consumed(a):
    c = plain_consumer(a.brokers, a.group)
    parts = partitions(a.brokers, a.topic)
    if not parts:
        print(f"topic {a.topic} not found", file=sys.stderr)
        return 1
    end = {p: hi for p, (_, hi) in watermarks(c, a.topic, parts).items()}
    tps = [TopicPartition(a.topic, p) for p in parts]
    start = time.time()
    deadline = start + a.timeout
    last_print = start
    while True:
        try:
            committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10.0)}
        except Exception as e:  # noqa: BLE001 - group coordinator not ready yet
            committed = {}
            err = e
        else:
            err = None
        behind = sum(max(0, end[p] - max(committed.get(p, 0), 0)) for p in parts)
        now = time.time()
        if behind == 0:
            print(f"{now - start:.2f}")
            c.close()
            return 0
        if a.progress and now - last_print >= a.progress:
            last_print = now
            note = f" ({err})" if err else ""
            print(f"  … {now - start:6.1f} s: {behind} records not yet committed by {a.group}{note}", file=sys.stderr)
        if a.pid and not alive(a.pid):
            print(f"process {a.pid} exited; group {a.group} still {behind} records behind", file=sys.stderr)
            c.close()
            return 1
        if now > deadline:
            print(f"group {a.group} still {behind} records behind after {a.timeout} s", file=sys.stderr)
            c.close()
            return 1
        time.sleep(a.interval)


def cmd_mean_size(a):
    c = Consumer(
        {
            "bootstrap.servers": a.brokers,
            "group.id": "chatpipe-bench-mean-size",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([a.topic])
    sizes = []
    deadline = time.time() + 60
    while len(sizes) < a.sample and time.time() < deadline:
        for m in c.consume(num_messages=1000, timeout=1.0):
            if m.error() is None and m.value() is not None:
                sizes.append(len(m.value()))
    c.close()
    if not sizes:
        print(f"no records read from {a.topic}", file=sys.stderr)
        return 1
    print(round(sum(sizes) / len(sizes)))
    return 0


def cmd_raw_produce(a):
    p = Producer(
        {
            "bootstrap.servers": a.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "queue.buffering.max.messages": 20_000,  # bounded: the flush at the end stays short
        }
    )
    errors = [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors[0] += 1

    value = os.urandom(a.size)
    keys = [str(1_000_000 + i).encode() for i in range(a.keys)]
    n = 0
    start = time.time()
    deadline = start + a.seconds
    while time.time() < deadline:
        for _ in range(1000):
            while True:
                try:
                    p.produce(a.topic, value, keys[n % len(keys)], on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.01)
            n += 1
        p.poll(0)
    p.flush(60)
    secs = time.time() - start
    print(f"{n} {secs:.2f} {n / secs:.0f} {errors[0]}")
    return 0 if errors[0] == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("wait-broker")
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("create")
    s.add_argument("topics", nargs="+")
    s = sub.add_parser("count")
    s.add_argument("topics", nargs="+")
    s = sub.add_parser("wait-consumed")
    s.add_argument("--group", required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--interval", type=float, default=0.2)
    s.add_argument("--timeout", type=float, default=3600)
    s.add_argument("--progress", type=float, default=10, help="seconds between progress lines (0: none)")
    s.add_argument("--pid", type=int, help="give up when this process (the consumer) has exited")
    s = sub.add_parser("mean-size")
    s.add_argument("--topic", required=True)
    s.add_argument("--sample", type=int, default=5000)
    s = sub.add_parser("raw-produce")
    s.add_argument("--topic", required=True)
    s.add_argument("--size", type=int, default=300)
    s.add_argument("--keys", type=int, default=300)
    s.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    return {
        "wait-broker": cmd_wait_broker,
        "create": cmd_create,
        "count": cmd_count,
        "wait-consumed": cmd_wait_consumed,
        "mean-size": cmd_mean_size,
        "raw-produce": cmd_raw_produce,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
