/* A transport plugin in C, built by tests/plugin_loader.rs with different
 * -D switches into well-formed and deliberately broken plugins. Its
 * `open` fails with a message (or, with OPEN_NO_OBJECT, claims success
 * without an object): enough to check the loader and the error path. */
#include "dragon_transport.h"
#include <string.h>

#ifndef ENTRY
#define ENTRY dragon_transport_v1
#endif
#ifndef MAJOR
#define MAJOR DRAGON_TRANSPORT_ABI_MAJOR
#endif
#ifndef MINOR
#define MINOR DRAGON_TRANSPORT_ABI_MINOR
#endif
#ifndef SIZE
#define SIZE sizeof(DragonTransportTable)
#endif
#ifndef NAME
#define NAME "cstub"
#endif
#ifndef CAPS
#define CAPS (DRAGON_CAP_LOCAL | DRAGON_CAP_CREATE)
#endif

static void say(char *err, size_t cap, const char *msg) {
    if (err == NULL || cap == 0) return;
    size_t n = strlen(msg);
    if (n > cap - 1) n = cap - 1;
    memcpy(err, msg, n);
    err[n] = '\0';
}

static int32_t stub_open(const char *config, size_t len, DragonTransport **out, char *err, size_t cap) {
    (void)config; (void)len;
#ifdef OPEN_NO_OBJECT
    (void)err; (void)cap;
    *out = NULL;
    return DRAGON_OK;
#else
    (void)out;
    say(err, cap, "the C stub transport opens nothing");
    return DRAGON_ENOTSUP;
#endif
}

static int32_t stub_close(DragonTransport *t, char *err, size_t cap) {
    (void)t; say(err, cap, "no transport"); return DRAGON_EINVAL;
}
static int32_t stub_create(DragonTransport *t, const DragonChannelAttrs *a, DragonChannel **out, char *err, size_t cap) {
    (void)t; (void)a; (void)out; say(err, cap, "no transport"); return DRAGON_EINVAL;
}
static int32_t stub_attach(DragonTransport *t, const uint8_t *h, size_t n, DragonChannel **out, char *err, size_t cap) {
    (void)t; (void)h; (void)n; (void)out; say(err, cap, "no transport"); return DRAGON_EINVAL;
}
static int32_t stub_handle(DragonChannel *c, uint8_t *b, size_t n, size_t *len, char *err, size_t cap) {
    (void)c; (void)b; (void)n; (void)len; say(err, cap, "no channel"); return DRAGON_EINVAL;
}
static int32_t stub_chop(DragonChannel *c, char *err, size_t cap) {
    (void)c; say(err, cap, "no channel"); return DRAGON_EINVAL;
}
#ifndef NULL_SEND
static int32_t stub_send(DragonChannel *c, const uint8_t *d, size_t n, uint64_t t, char *err, size_t cap) {
    (void)c; (void)d; (void)n; (void)t; say(err, cap, "no channel"); return DRAGON_EINVAL;
}
#endif
static int32_t stub_recv(DragonChannel *c, uint8_t *b, size_t n, size_t *len, uint64_t t, char *err, size_t cap) {
    (void)c; (void)b; (void)n; (void)len; (void)t; say(err, cap, "no channel"); return DRAGON_EINVAL;
}
static int32_t stub_poll(DragonChannel *c, uint32_t ev, uint64_t t, uint32_t *rev, char *err, size_t cap) {
    (void)c; (void)ev; (void)t; (void)rev; say(err, cap, "no channel"); return DRAGON_EINVAL;
}
static int32_t stub_len(DragonChannel *c, uint64_t *len, char *err, size_t cap) {
    (void)c; (void)len; say(err, cap, "no channel"); return DRAGON_EINVAL;
}

static const DragonTransportTable TABLE = {
    .size = SIZE,
    .abi_major = MAJOR,
    .abi_minor = MINOR,
    .name = NAME,
    .capabilities = CAPS,
    .open = stub_open,
    .close = stub_close,
    .channel_create = stub_create,
    .channel_attach = stub_attach,
    .channel_handle = stub_handle,
    .channel_close = stub_chop,
    .channel_destroy = stub_chop,
#ifdef NULL_SEND
    .send = NULL,
#else
    .send = stub_send,
#endif
    .recv = stub_recv,
    .recv_msg = NULL,
    .message_free = NULL,
    .poll = stub_poll,
    .len = stub_len,
};

const DragonTransportTable *ENTRY(void) {
#ifdef NULL_TABLE
    (void)TABLE;
    return NULL;
#else
    return &TABLE;
#endif
}
