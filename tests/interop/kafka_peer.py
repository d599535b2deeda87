#!/usr/bin/env python3
"""A Kafka client that is not switchyard's, for the interoperability tests.

It uses the confluent-kafka package (a separate librdkafka build) and speaks
the CloudEvents Kafka binding on its own.

Usage:
    kafka_peer.py produce BOOTSTRAP TOPIC USER_ID
        Produce one binary-mode `user.created` CloudEvent (ce_* headers)
        and one structured-mode one, keyed by user id, and wait for both
        delivery reports.
    kafka_peer.py consume BOOTSTRAP TOPIC COUNT
        Read COUNT records from the start of every partition and print each
        as one JSON line: partition, offset, key, headers, value.
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

TIMEOUT_SECONDS = 30


def produce(bootstrap, topic, user_id):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    failures = []

    def report(error, _message):
        if error is not None:
            failures.append(str(error))

    data = {"userId": user_id, "email": f"{user_id}@example.com", "name": "Peer"}
    binary_headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", b"/python-peer"),
        ("ce_type", b"user.created"),
        ("content-type", b"application/json"),
    ]
    producer.produce(topic, key=user_id, value=json.dumps(data), headers=binary_headers,
                     on_delivery=report)
    structured = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/python-peer",
        "type": "user.created",
        "datacontenttype": "application/json",
        "data": dict(data, userId=user_id + "-structured"),
    }
    producer.produce(topic, key=user_id, value=json.dumps(structured),
                     headers=[("content-type", b"application/cloudevents+json")],
                     on_delivery=report)
    remaining = producer.flush(TIMEOUT_SECONDS)
    if remaining or failures:
        sys.exit(f"produce failed: {remaining} undelivered, errors {failures}")


def consume(bootstrap, topic, count):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"python-peer-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    deadline = time.monotonic() + TIMEOUT_SECONDS
    seen = 0
    while seen < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            sys.exit(f"consume failed: {message.error()}")
        headers = {key: value.decode("utf-8", "replace")
                   for key, value in (message.headers() or [])}
        key = message.key()
        print(json.dumps({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "headers": headers,
            "value": message.value().decode("utf-8", "replace"),
        }), flush=True)
        seen += 1
    consumer.close()
    if seen < count:
        sys.exit(f"read {seen} records of {count} within {TIMEOUT_SECONDS} s")


def main(arguments):
    if len(arguments) != 4 or arguments[0] not in ("produce", "consume"):
        sys.exit(__doc__)
    command, bootstrap, topic, value = arguments
    if command == "produce":
        produce(bootstrap, topic, value)
    else:
        consume(bootstrap, topic, int(value))


if __name__ == "__main__":
    main(sys.argv[1:])
