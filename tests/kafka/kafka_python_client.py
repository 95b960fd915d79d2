#!/usr/bin/env python3
"""kafka-python (a pure-Python client) as a client of millrace's Kafka
listener, driven by tests/kafka_clients.rs.

Prints JSON lines on stdout, in the same shapes as confluent_client.py:
consumed records like `kcat -J` ({"topic", "partition", "offset", "key",
"payload"}); everything else has a "type" ("ack", "fail", "done").

Commands:
  produce BOOTSTRAP TOPIC COUNT PREFIX
      COUNT records, value PREFIX-NNNNNN, key k(N % 16); acks=all.
  consume BOOTSTRAP TOPIC PARTITIONS
      Reads partitions 0..PARTITIONS from the beginning without a group
      (assign), up to the end offsets (ListOffsets) read at the start.

Exit status 0 when the command did what it was asked; 3 when kafka-python
is not installed (the message names what to install).
"""

import json
import sys

try:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
except ImportError as error:  # the test turns this into a clear failure
    sys.stderr.write(
        "kafka-python is not installed for %s (%s): run "
        "`python3 -m pip install kafka-python` (or .ci/run)\n" % (sys.executable, error)
    )
    sys.exit(3)

OUT = sys.stdout


def emit(obj):
    OUT.write(json.dumps(obj, separators=(",", ":")))
    OUT.write("\n")


def text(data):
    return None if data is None else data.decode("utf-8", "replace")


def produce(bootstrap, topic, count, prefix):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=16 * 1024,
        delivery_timeout_ms=60000,
    )
    stats = {"delivered": 0, "failed": 0}

    def delivered(value):
        def on_success(metadata):
            stats["delivered"] += 1
            emit({"type": "ack", "partition": metadata.partition, "offset": metadata.offset, "payload": value})

        return on_success

    def failed(value):
        def on_error(error):
            stats["failed"] += 1
            emit({"type": "fail", "payload": value, "error": repr(error)})

        return on_error

    for n in range(count):
        value = "%s-%06d" % (prefix, n)
        key = "k%d" % (n % 16)
        future = producer.send(topic, key=key.encode(), value=value.encode())
        future.add_callback(delivered(value))
        future.add_errback(failed(value))
    producer.flush(timeout=120)
    producer.close(timeout=30)
    emit({"type": "done", "delivered": stats["delivered"], "failed": stats["failed"]})
    OUT.flush()
    return 0 if stats["failed"] == 0 and stats["delivered"] == count else 1


def consume(bootstrap, topic, partitions):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_poll_records=10000,
    )
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    end = consumer.end_offsets(assigned)
    count = 0
    while any(consumer.position(tp) < end[tp] for tp in assigned):
        for tp, messages in consumer.poll(timeout_ms=1000).items():
            for message in messages:
                count += 1
                emit(
                    {
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                        "key": text(message.key),
                        "payload": text(message.value),
                    }
                )
    consumer.close()
    emit({"type": "done", "consumed": count, "end_offsets": {str(tp.partition): end[tp] for tp in assigned}})
    OUT.flush()
    return 0


def main(argv):
    args = argv[1:]
    if not args:
        sys.stderr.write(__doc__)
        return 2
    command, args = args[0], args[1:]
    if command == "produce":
        return produce(args[0], args[1], int(args[2]), args[3])
    if command == "consume":
        return consume(args[0], args[1], int(args[2]))
    sys.stderr.write("unknown command %r\n%s" % (command, __doc__))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
