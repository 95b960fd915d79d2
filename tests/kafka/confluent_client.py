#!/usr/bin/env python3
"""confluent-kafka (librdkafka) as a client of millrace's Kafka listener,
driven by tests/kafka_clients.rs.

Every command prints JSON lines on stdout, one object per line:
- a consumed record, shaped like `kcat -J`:
  {"topic", "partition", "offset", "key", "payload"}
- anything else has a "type": "ack" (a delivery report: partition, offset,
  payload), "fail" (a failed delivery: payload, error), "client_error"
  (librdkafka's error callback), "assigned"/"revoked" (a group member's
  partitions), "commit" (a synchronous commit's outcome), "paused", "closed",
  "committed" (offsets read back with OffsetFetch), "done" (the last line).

Commands (BOOTSTRAP is host:port, TOPIC a topic name):
  produce BOOTSTRAP TOPIC COUNT PREFIX [--rate N] [--set key=value ...]
      COUNT records, value PREFIX-NNNNNN, key k(N % 16); acks=all. With
      --rate, about N records per second (so faults can happen meanwhile);
      each delivery report is flushed as it comes.
  consume BOOTSTRAP TOPIC PARTITIONS
      Reads partitions 0..PARTITIONS from the beginning without a group
      (assign), until the end of every partition.
  member BOOTSTRAP TOPIC GROUP NAME [--pause-after N]
      A group member: subscribes, processes each batch (prints its
      records), then commits it synchronously. Reads commands on stdin
      between batches: "stop" closes it (LeaveGroup) and exits. With
      --pause-after N it stops polling once it has processed N records,
      prints "paused", and waits for "leave" (or "continue") on stdin.
  committed BOOTSTRAP TOPIC GROUP PARTITIONS
      A fresh consumer of GROUP (it does not join) prints the committed
      offsets of partitions 0..PARTITIONS (OffsetFetch).

Exit status 0 when the command did what it was asked; 3 when
confluent-kafka is not installed (the message names what to install).
"""

import json
import select
import sys
import time

try:
    import confluent_kafka
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
except ImportError as error:  # the test turns this into a clear failure
    sys.stderr.write(
        "confluent-kafka is not installed for %s (%s): run "
        "`python3 -m pip install confluent-kafka` (or .ci/run)\n" % (sys.executable, error)
    )
    sys.exit(3)

OUT = sys.stdout


def emit(obj, flush=False):
    OUT.write(json.dumps(obj, separators=(",", ":")))
    OUT.write("\n")
    if flush:
        OUT.flush()


def text(data):
    return None if data is None else data.decode("utf-8", "replace")


def settings(args):
    """--set key=value pairs (librdkafka properties) from the argument list."""
    extra = {}
    rest = []
    i = 0
    while i < len(args):
        if args[i] == "--set":
            key, _, value = args[i + 1].partition("=")
            extra[key] = value
            i += 2
        else:
            rest.append(args[i])
            i += 1
    return extra, rest


def on_client_error(error):
    emit({"type": "client_error", "error": str(error), "fatal": error.fatal()}, flush=True)


def produce(bootstrap, topic, count, prefix, extra, rate=None):
    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": max(100000, count),
        "queue.buffering.max.kbytes": 1048576,
        "message.timeout.ms": 60000,
        "error_cb": on_client_error,
    }
    conf.update(extra)
    producer = Producer(conf)
    stats = {"delivered": 0, "failed": 0}

    def report(error, message):
        payload = text(message.value())
        if error is not None:
            stats["failed"] += 1
            emit({"type": "fail", "payload": payload, "error": str(error)})
        else:
            stats["delivered"] += 1
            emit(
                {
                    "type": "ack",
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "payload": payload,
                }
            )

    started = time.monotonic()
    for n in range(count):
        if rate and n % 100 == 0:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                producer.poll(ahead)
            OUT.flush()
        value = "%s-%06d" % (prefix, n)
        key = "k%d" % (n % 16)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    emit({"type": "done", "delivered": stats["delivered"], "failed": stats["failed"], "unflushed": left}, flush=True)
    return 0 if left == 0 and stats["failed"] == 0 else 1


def consume(bootstrap, topic, partitions, extra):
    conf = {
        "bootstrap.servers": bootstrap,
        # Required by confluent-kafka; no group is joined (assign only).
        "group.id": "millrace-test-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
        "error_cb": on_client_error,
    }
    conf.update(extra)
    consumer = Consumer(conf)
    consumer.assign(
        [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in range(partitions)]
    )
    at_end = set()
    count = 0
    while len(at_end) < partitions:
        for message in consumer.consume(num_messages=10000, timeout=1.0):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    emit({"type": "client_error", "error": str(error), "fatal": error.fatal()}, flush=True)
                continue
            at_end.discard(message.partition())
            count += 1
            emit(
                {
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": text(message.key()),
                    "payload": text(message.value()),
                }
            )
    consumer.close()
    emit({"type": "done", "consumed": count}, flush=True)
    return 0


def stdin_command(wait):
    """A line from stdin if one is ready (or, with wait, once one is)."""
    if not wait:
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if not ready:
            return None
    line = sys.stdin.readline()
    return line.strip() if line else "eof"


def member(bootstrap, topic, group, name, pause_after, extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": name,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        # Longer than the test's phase deadline (60 s): a member that left
        # without LeaveGroup would hold its partitions past it.
        "session.timeout.ms": 180000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
        "error_cb": on_client_error,
    }
    conf.update(extra)
    consumer = Consumer(conf)

    def on_assign(_consumer, partitions):
        emit({"type": "assigned", "member": name, "partitions": sorted(p.partition for p in partitions)}, flush=True)

    def on_revoke(_consumer, partitions):
        emit({"type": "revoked", "member": name, "partitions": sorted(p.partition for p in partitions)}, flush=True)

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    processed = 0
    paused = False
    while True:
        command = stdin_command(wait=paused)
        if command in ("stop", "leave", "eof"):
            break
        if command == "continue":
            paused = False
        if paused:
            continue
        batch = consumer.consume(num_messages=500, timeout=0.2)
        last = {}
        for message in batch:
            error = message.error()
            if error is not None:
                emit({"type": "client_error", "error": str(error), "fatal": error.fatal()}, flush=True)
                continue
            # Processing a record = printing it.
            emit(
                {
                    "member": name,
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": text(message.key()),
                    "payload": text(message.value()),
                }
            )
            last[message.partition()] = message.offset()
            processed += 1
        if last:
            offsets = [TopicPartition(topic, p, o + 1) for p, o in sorted(last.items())]
            try:
                result = consumer.commit(offsets=offsets, asynchronous=False)
                errors = {str(tp.partition): str(tp.error) for tp in result if tp.error is not None}
                emit(
                    {
                        "type": "commit",
                        "member": name,
                        "ok": not errors,
                        "offsets": {str(tp.partition): tp.offset for tp in offsets},
                        "errors": errors,
                    },
                    flush=True,
                )
            except KafkaException as error:
                emit(
                    {
                        "type": "commit",
                        "member": name,
                        "ok": False,
                        "offsets": {str(tp.partition): tp.offset for tp in offsets},
                        "errors": {"*": str(error)},
                    },
                    flush=True,
                )
        OUT.flush()
        if pause_after is not None and processed >= pause_after and not paused:
            paused = True
            emit({"type": "paused", "member": name, "processed": processed}, flush=True)
    consumer.close()  # LeaveGroup
    emit({"type": "closed", "member": name, "processed": processed}, flush=True)
    return 0


def committed(bootstrap, topic, group, partitions, extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "error_cb": on_client_error,
    }
    conf.update(extra)
    consumer = Consumer(conf)
    result = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    emit(
        {
            "type": "committed",
            "offsets": {str(tp.partition): tp.offset for tp in result},
            "errors": {str(tp.partition): str(tp.error) for tp in result if tp.error is not None},
        }
    )
    consumer.close()
    emit({"type": "done"}, flush=True)
    return 0


def main(argv):
    extra, args = settings(argv[1:])
    if not args:
        sys.stderr.write(__doc__)
        return 2
    command, args = args[0], args[1:]
    if command == "produce":
        rate = None
        if "--rate" in args:
            index = args.index("--rate")
            rate = float(args[index + 1])
            del args[index : index + 2]
        return produce(args[0], args[1], int(args[2]), args[3], extra, rate)
    if command == "consume":
        return consume(args[0], args[1], int(args[2]), extra)
    if command == "member":
        pause_after = None
        if "--pause-after" in args:
            index = args.index("--pause-after")
            pause_after = int(args[index + 1])
            args = args[:index] + args[index + 2 :]
        return member(args[0], args[1], args[2], args[3], pause_after, extra)
    if command == "committed":
        return committed(args[0], args[1], args[2], int(args[3]), extra)
    sys.stderr.write("unknown command %r\n%s" % (command, __doc__))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
