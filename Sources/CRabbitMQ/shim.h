#ifndef FANFLOW_CRABBITMQ_SHIM_H
#define FANFLOW_CRABBITMQ_SHIM_H
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

/* amqp_login is variadic, which Swift cannot call: PLAIN login only needs user and password. */
static inline amqp_rpc_reply_t fanflow_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                                        int channel_max, int frame_max, int heartbeat,
                                                        const char *user, const char *password) {
    return amqp_login(state, vhost, channel_max, frame_max, heartbeat, AMQP_SASL_METHOD_PLAIN, user, password);
}

/* A send that cannot complete within the limit fails the connection instead of stalling its thread forever
   (a blocked broker stops reading; publishers must answer an error, not hang). */
static inline int fanflow_set_send_timeout(int fd, long milliseconds) {
    struct timeval tv;
    tv.tv_sec = milliseconds / 1000;
    tv.tv_usec = (milliseconds % 1000) * 1000;
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Small frames (confirms, acks) must leave at once, not wait for Nagle. */
static inline int fanflow_set_no_delay(int fd) {
    int on = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

/* While corked, the kernel holds partial packets: publishes made back to back leave together when
   the cork is removed, instead of one packet per message for the broker to read. */
static inline int fanflow_set_cork(int fd, int on) {
    return setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

/* Method ids are macros with casts, which Swift does not import. */
static const amqp_method_number_t FANFLOW_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t FANFLOW_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t FANFLOW_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t FANFLOW_BASIC_DELIVER = AMQP_BASIC_DELIVER_METHOD;
static const amqp_method_number_t FANFLOW_BASIC_CANCEL = AMQP_BASIC_CANCEL_METHOD;
static const amqp_method_number_t FANFLOW_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t FANFLOW_CHANNEL_CLOSE_OK = AMQP_CHANNEL_CLOSE_OK_METHOD;
static const amqp_method_number_t FANFLOW_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const amqp_method_number_t FANFLOW_CONNECTION_CLOSE_OK = AMQP_CONNECTION_CLOSE_OK_METHOD;
static const amqp_method_number_t FANFLOW_CONNECTION_BLOCKED = AMQP_CONNECTION_BLOCKED_METHOD;
static const amqp_method_number_t FANFLOW_CONNECTION_UNBLOCKED = AMQP_CONNECTION_UNBLOCKED_METHOD;
#endif
