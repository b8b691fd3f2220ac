/* The ceiling for FanFlow's AMQP wrapper: the same work done with direct rabbitmq-c calls.
   Confirmed persistent publishes into a quorum queue with a window of messages in flight, then
   consume with prefetch 500 and a `multiple` ack per 50 messages.
   Usage: amqp_ceiling HOST PORT SECONDS INFLIGHT BODYSIZE
   Prints: raw_confirmed_publish_per_s N / raw_consume_ack_per_s N */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die_on(amqp_rpc_reply_t r, const char *what) {
    if (r.reply_type != AMQP_RESPONSE_NORMAL) { fprintf(stderr, "%s failed\n", what); exit(1); }
}

static amqp_connection_state_t open_connection(const char *host, int port) {
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, host, port)) { fprintf(stderr, "connect failed\n"); exit(1); }
    die_on(amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
    amqp_channel_open(conn, 1);
    die_on(amqp_get_rpc_reply(conn), "channel.open");
    return conn;
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s HOST PORT SECONDS INFLIGHT BODYSIZE\n", argv[0]); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double seconds = atof(argv[3]);
    long inflight = atol(argv[4]);
    size_t body_size = (size_t)atol(argv[5]);
    char queue[64];
    snprintf(queue, sizeof queue, "bench.raw.%d", (int)getpid());

    amqp_connection_state_t pub = open_connection(host, port);
    amqp_confirm_select(pub, 1);
    die_on(amqp_get_rpc_reply(pub), "confirm.select");
    amqp_table_entry_t arg = { amqp_cstring_bytes("x-queue-type"), { .kind = AMQP_FIELD_KIND_UTF8 } };
    arg.value.value.bytes = amqp_cstring_bytes("quorum");
    amqp_table_t args = { 1, &arg };
    amqp_queue_declare(pub, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    die_on(amqp_get_rpc_reply(pub), "queue.declare");

    char *body = malloc(body_size);
    memset(body, 'x', body_size);
    amqp_bytes_t message = { body_size, body };
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    props.delivery_mode = 2;
    props.message_id = amqp_cstring_bytes("bench");

    uint64_t published = 0, confirmed = 0;
    double start = now(), deadline = start + seconds;
    while (now() < deadline || confirmed < published) {
        while (now() < deadline && published - confirmed < (uint64_t)inflight) {
            if (amqp_basic_publish(pub, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &props, message)) {
                fprintf(stderr, "publish failed\n");
                return 1;
            }
            published++;
        }
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(pub, &frame) != AMQP_STATUS_OK) { fprintf(stderr, "read failed\n"); return 1; }
        if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *ack = frame.payload.method.decoded;
            confirmed = ack->delivery_tag; /* acks arrive in order; `multiple` covers all before */
        }
        amqp_maybe_release_buffers(pub);
    }
    double elapsed = now() - start;
    printf("raw_confirmed_publish_per_s %.0f\n", confirmed / elapsed);

    amqp_connection_state_t con = open_connection(host, port);
    amqp_basic_qos(con, 1, 0, 500, 0);
    amqp_basic_consume(con, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    die_on(amqp_get_rpc_reply(con), "basic.consume");
    uint64_t received = 0;
    start = now();
    while (received < confirmed) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(con);
        amqp_rpc_reply_t r = amqp_consume_message(con, &envelope, NULL, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) { fprintf(stderr, "consume failed\n"); return 1; }
        received++;
        if (received % 50 == 0 || received == confirmed) amqp_basic_ack(con, 1, envelope.delivery_tag, 1);
        amqp_destroy_envelope(&envelope);
    }
    printf("raw_consume_ack_per_s %.0f\n", received / (now() - start));
    amqp_queue_delete(pub, 1, amqp_cstring_bytes(queue), 0, 0);
    return 0;
}
