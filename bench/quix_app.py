#!/usr/bin/env python3
"""The Quix Streams side of bench/quix: a 1-minute tumbling-window count per key.

Reads the input topic from its start as opaque bytes (the count needs no value parsing;
Kafka message timestamps are the event time), counts records per key and 1-minute window,
emits each window once it closes (`.final()`) as JSON to the output topic. State lives in
RocksDB under --state-dir with Quix's changelog topic (its defaults). Runs until killed;
bench/quix watches the consumer group's committed offsets to know when it is done.

fetch.wait.max.ms is 50 ms, as in every chatpipe consumer: tansu 0.6 holds a fetch for
that long even when data is there (docs/ARCHITECTURE.md), and librdkafka's 500 ms would
measure the broker's wait, not Quix.
"""

import argparse
from datetime import timedelta

from quixstreams import Application
from quixstreams.kafka.consumer import BaseConsumer

# Quix asks the changelog's watermarks with a 10 s timeout when a partition is assigned.
# tansu 0.6 answers requests of one connection in order, and the consumer's first fetches
# from a 1M-record SQLite topic keep it busy 5–15 s, so the call times out and the
# application stops ("Error during partition assignment"). A longer timeout for that call
# only; processing is unchanged.
_get_watermark_offsets = BaseConsumer.get_watermark_offsets


def _patient_get_watermark_offsets(self, partition, timeout=None, cached=False):
    if timeout is not None and timeout >= 0:
        timeout = max(timeout, 120)
    return _get_watermark_offsets(self, partition, timeout=timeout, cached=cached)


BaseConsumer.get_watermark_offsets = _patient_get_watermark_offsets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--input", default="chat.events")
    ap.add_argument("--output", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--commit-interval", type=float, default=5.0, help="Quix's default: 5 s")
    a = ap.parse_args()

    app = Application(
        broker_address=a.brokers,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        state_dir=a.state_dir,
        commit_interval=a.commit_interval,
        consumer_extra_config={"fetch.wait.max.ms": 50},
        loglevel="WARNING",
    )
    src = app.topic(a.input, key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(a.output, key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.tumbling_window(timedelta(minutes=1)).count().final()
    sdf.to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
