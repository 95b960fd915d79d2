/*
 * A minimal librdkafka producer for benches/kafka.sh: sends COUNT records
 * of 100 bytes to one partition with acks=all and waits until every one is
 * acknowledged, then prints "records_per_s=N acked=N failed=N".
 *
 * kcat reads and splits lines before each produce call; this sends from a
 * buffer it fills once, so what it measures is librdkafka and the broker.
 *
 * Build: cc -O2 -o kafka_producer benches/kafka_producer.c -lrdkafka
 * Usage: kafka_producer BROKERS TOPIC PARTITION COUNT [BATCH_MESSAGES] [LINGER_MS]
 */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long acked = 0;
static long failed = 0;

static void on_delivery(rd_kafka_t *producer, const rd_kafka_message_t *message, void *opaque) {
    (void)producer;
    (void)opaque;
    if (message->err) {
        if (failed++ < 5) {
            fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(message->err));
        }
    } else {
        acked++;
    }
}

static double now_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static void set(rd_kafka_conf_t *conf, const char *key, const char *value) {
    char error[512];
    if (rd_kafka_conf_set(conf, key, value, error, sizeof error) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "%s = %s: %s\n", key, value, error);
        exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s BROKERS TOPIC PARTITION COUNT [BATCH_MESSAGES] [LINGER_MS]\n", argv[0]);
        return 2;
    }
    const char *brokers = argv[1];
    const char *topic = argv[2];
    int partition = atoi(argv[3]);
    long count = atol(argv[4]);
    const char *batch = argc > 5 ? argv[5] : "1000";
    const char *linger = argc > 6 ? argv[6] : "5";

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    set(conf, "bootstrap.servers", brokers);
    set(conf, "acks", "all");
    set(conf, "batch.num.messages", batch);
    set(conf, "linger.ms", linger);
    set(conf, "queue.buffering.max.messages", "1000000");
    set(conf, "queue.buffering.max.kbytes", "1048576");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    char error[512];
    rd_kafka_t *producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (!producer) {
        fprintf(stderr, "cannot create the producer: %s\n", error);
        return 2;
    }
    rd_kafka_topic_t *handle = rd_kafka_topic_new(producer, topic, NULL);

    char value[100];
    memset(value, 'x', sizeof value);
    double started = now_seconds();
    for (long i = 0; i < count; i++) {
        /* An 8-digit sequence number, then padding: unique values. */
        char digits[16];
        snprintf(digits, sizeof digits, "%08ld", i % 100000000L);
        memcpy(value, digits, 8);
        while (rd_kafka_produce(handle, partition, RD_KAFKA_MSG_F_COPY, value, sizeof value,
                                NULL, 0, NULL) == -1) {
            if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "produce: %s\n", rd_kafka_err2str(rd_kafka_last_error()));
                return 1;
            }
            rd_kafka_poll(producer, 1);
        }
        if ((i & 1023) == 0) {
            rd_kafka_poll(producer, 0);
        }
    }
    while (acked + failed < count) {
        rd_kafka_poll(producer, 10);
    }
    double elapsed = now_seconds() - started;
    printf("records_per_s=%.0f acked=%ld failed=%ld\n", (double)count / elapsed, acked, failed);
    rd_kafka_topic_destroy(handle);
    rd_kafka_destroy(producer);
    return failed == 0 ? 0 : 1;
}
