/*
 * iotdefender's Mosquitto plugin (plugin API v5, Mosquitto 2.0): the device policy and the broker
 * events the service needs, applied inside the broker so that no message has to cross into Python
 * to be authorised or counted.
 *
 * It is the whole MQTT policy (brokers/gatekeeper.py holds its settings and counts the refusals
 * this plugin reports):
 *  - identity: the client id must be non-empty and equal the identity (username for
 *    auth=password, certificate common name for auth=cert, nothing else for auth=none); under
 *    auth=cert the username becomes the certificate's common name;
 *  - ACL: a `$` topic may be published only if it is a Device Defender report topic, subscribed
 *    only if it is a reply filter, under the client's own thing unless acl=any; retained messages
 *    on `$` topics are refused; a Last Will is checked like a PUBLISH when it is about to be sent;
 *    other (application) topics are free for authenticated clients, unless app_acl=file: then
 *    Mosquitto's own acl_file decides their PUBLISH and delivery (see app_topic_check). A refused
 *    PUBLISH closes the connection (as AWS IoT does, once the PUBACK is out); a refused SUBSCRIBE
 *    gets a failure code. Deliveries are checked too (READ), so that a subscription restored from
 *    mosquitto.db (persistent sessions) gets only what the policy of this start allows.
 *  - subscriptions: with max_subscriptions > 0, a connection holds at most that many topic
 *    filters (AWS IoT Core: 50; see subscription_allowed); a SUBSCRIBE past them gets a failure
 *    code (MQTT 5: 0x87), counted (M records), not an authorization failure.
 *  - rate: with publish_rate > 0, a connection's PUBLISHes beyond that many a second (a bucket of
 *    one second's worth) are dropped, as AWS IoT Core drops a connection's publishes beyond its
 *    100 a second; the connection stays. One device flooding used to push the service's own
 *    connection past its queue, and other devices' reports, acknowledged, were never answered.
 *  - answers: a thing may have at most report_window reports handed to the service and not yet
 *    answered; a report beyond them is answered here, `rejected` Throttled (with its reportId when
 *    the report has one, within a budget of bytes read a second: see report_id), and counted (O records). The service answers every
 *    report it gets, so an honest device has one report waiting at most. A few devices flooding
 *    their report topics used to fill the service's connection faster than the service could read
 *    it, and Mosquitto dropped whole batches past max_queued_messages, other devices' reports among
 *    them: acknowledged, never answered, counted nowhere (an outside-in test). Counts of a thing
 *    whose answers were lost (the service's connection broke) start over after AWAITING_STALE_MS.
 *  - while the service's connection is away (from its disconnection, or a new connection of
 *    its, until that one says "ready"), devices' CONNECTs are refused as at start-up, a report is
 *    answered here `rejected` ServiceUnavailable (retryable; U records) and events are held: handed
 *    to a connection that is gone they reached nobody, acknowledged and never answered.
 *  - the service's own connection (service_id + a per-start secret) may do anything; it alone
 *    may publish on the control topic and it receives the event batches.
 *
 * Events (cloud-side metrics, refusals) are appended to a buffer as NUL-separated fields and sent
 * to the service every flush_ms (or when the buffer is large) with mosquitto_broker_publish: at
 * 5,000 reports/s there are more than 10,000 events/s and one message per event would double the
 * broker's work. Record layouts (first field is the type):
 *   C client ip ok reason   connection attempt (ok "1"/"0"; reason when refused)
 *   A client topic reason   refused PUBLISH/SUBSCRIBE (authorization failure)
 *   L client count          PUBLISHes dropped since the last batch: the connection was past
 *                           publish_rate (not a failure)
 *   D client                disconnect of an authenticated client
 *   S client bytes topic    PUBLISH from a client (message sent)
 *   R client topic          delivery to a client (message received)
 *   T milliseconds          when the records after it happened (CLOCK_REALTIME since the epoch):
 *                           first in every batch, again whenever the millisecond changes
 *   N count                 the clients connected now, each owning its client id (the service's
 *                           own connection not counted): in the batch after any change, and after
 *                           every "ready" (the batches sent while the service's connection was
 *                           down are lost: the count, unlike a set kept from C and D, heals at once)
 *   O thing count           reports of the thing answered here, not handed to the service (see
 *                           "answers" above), since the last batch
 *   U thing count           reports of the thing answered here ServiceUnavailable, since the
 *                           last batch: the service's connection was away
 *   M client count          topic filters refused past max_subscriptions since the last batch
 *   I thing count           reports past report_window of a thing name over 128 bytes: not
 *                           answered (no valid thing to answer on), since the last batch
 *   B thing count           reports of the thing answered here ServiceOverloaded, since the last
 *                           batch: reports_held_bytes were held back for the service (see "flow")
 *   P service number        the last reply message published here: the service process's number
 *                           and the message's (see "Replies" below), within flush_ms of it
 *   Q instance sequence     first in every batch: this plugin instance's number (random at load)
 *                           and the batch's, from 0, so that the service counts the batches it
 *                           never got (dropped by Mosquitto, or sent while its connection was down)
 * No field can contain NUL: MQTT forbids U+0000 in client ids and topics, and Mosquitto checks
 * (packet__read_string validates UTF-8 and refuses control characters).
 *
 * Reports: every authorised PUBLISH on `$aws/things/T/defender/metrics/(json|cbor)` is appended to
 * a second buffer, sent to the service as one message on REPORTS_TOPIC at the end of each pass of
 * Mosquitto's main loop (TICK), or at once when the buffer is large (both subject to "flow").
 * Nothing subscribes to the report topics themselves. The batch starts with u32 instance (as in Q),
 * u32 its number (from 0) and u32 the number of reports this instance put in batches before it
 * (modulo 2^32), so that the service counts the reports it never got; then u32 u32 the last reply
 * message published here, as in a P record, written as the batch leaves (see "Replies"). Then
 * frames, integers big-endian:
 *   u8 encoding ('j' json, 'c' cbor)  u16 thing length  u32 payload length
 *   u64 received (microseconds since the epoch, CLOCK_REALTIME)  thing  payload
 * The receive time is the one the service's throttle measures the gap between a thing's reports
 * with: measured at the service instead, a report that waited there (a busy event loop, a busy
 * machine) was followed within the limit by the next one, sent a whole interval later.
 * Replies: the service sends the replies of one event-loop iteration as one message on
 * REPLIES_TOPIC, frames
 *   u8 qos  u16 topic length  u32 payload length  topic  payload
 * and each is published here (mosquitto_broker_publish_copy), to whoever is subscribed, through
 * the normal read ACL. Measured on the fleet benchmark: one MQTT message per report and per reply
 * on the service's connection made the service's MQTT client (Python) the pipeline's limit; one
 * message per loop pass each way removes most of that per-message work, and adds no wait (a pass
 * ends as soon as the ready sockets are served).
 * A frame of "qos" COMMAND_FRAME and topic length 0 holds a command, as on CONTROL_TOPIC (below).
 * A frame of "qos" TAKEN_FRAME, topic length 0 and payload length 12 is the service's TAKEN: u32
 * instance, u32 the number of the report batch it expects next, u32 that of the event batch (see
 * "flow").
 * Each message starts with a frame of "qos" SEQUENCE_FRAME, topic length 0 and payload length 8:
 * u32 the service process's number (random at its start), u32 the message's number. A message
 * whose number is not past the last one published here (of the same service process) was
 * published already and is skipped whole; the last number is told back in the head of the next
 * report batch, or in the events (a P record, within flush_ms) if no report batch leaves first.
 * A message that ends with a frame of "qos" CONFIRM_FRAME (topic and payload length 0) fills the
 * service's window: it is told back at once, in an event batch, since a burst of reports that has
 * ended sends no report batch to carry it (answers waited for Mosquitto's idle pass, ~100 ms).
 * The service keeps at most a few reply messages unconfirmed (frames.REPLY_MESSAGES_IN_FLIGHT) and
 * gathers the replies that come meanwhile into its next one: Mosquitto reads one message of the
 * service's (plain) socket a pass of its loop, and a pass grows to hundreds of milliseconds under
 * a storm of TLS handshakes; a message per event-loop iteration then queued up in the socket, and
 * every device's answers waited seconds behind each other (and the commands, see below). A message
 * sent on a connection that broke before it arrived is sent again on the next one: the service
 * keeps what was not told back and sends it again once connected
 * (frames.py). Before, the replies to the reports the service had read when its connection broke
 * went into the broken connection: the reports were stored and never answered, counted nowhere (an
 * outside-in test: 131 and 440 of 6,000 reports, the service's connection cut while it was stopped).
 *
 * Flow: at most batches_in_flight report batches (config.py: 64), and as many event batches, are
 * sent to the service and not yet read by it (its TAKEN says which it has read: the service tells
 * it with its next replies, or alone after an eighth of them); meanwhile reports wait here,
 * in batches that grow to REPORTS_FLUSH_BYTES and are then held in order, and events in their
 * buffer. Mosquitto bounds what it queues for any client by one setting for all
 * (max_queued_messages) and drops the rest; without this the service's connection needed a bound
 * of 100,000 messages (a batch per loop pass under load, thousands a second), and so did every
 * device: one that subscribed to its replies and never read them had 100,000 answers queued (ten
 * such devices flooding their report topics took Mosquitto from 8 to 606 MB). Now the service's
 * connection needs some hundred messages queued, whatever its pauses, and devices get Mosquitto's
 * usual bound (config.py). Past reports_held_bytes held (the service reads slower than reports
 * come, for long), a report is answered here `rejected` ServiceOverloaded, as the service answers
 * past its own queue (B records), rather than held on to wait longer. A slow service also makes
 * batches larger (fewer messages, less work per report) instead of more numerous.
 *
 * Control commands from the service, payload "verb\0client": in COMMAND frames of its reply messages,
 * in order with the replies, but on CONTROL_TOPIC, ahead of them, what each new connection of the
 * service sends first (the lists below, then "ready"). A message of their own each, a bulk
 * revocation's hundred commands a second took Mosquitto's reads of the service's connection (one
 * message a pass of its loop) from the replies, and the answers to every device waited seconds:
 *   kick    disconnect the client now;
 *   refuse  disconnect it and refuse its CONNECTs until "allow";
 *   allow   accept it again;
 *   deny-certificates   targets, each after a NUL: a certificate id (64 hex digits, the SHA-256 of
 *           its DER encoding) then the client id it names (its common name): refuse every CONNECT
 *           made with that certificate, and close that client's connection if it was made with it;
 *   allow-certificates  targets, each after a NUL: a certificate id: no longer refused for its
 *           status, nor accepted as registered (with certificates=registered it is then refused
 *           as any unregistered one);
 *   accept-certificates targets, each after a NUL: a certificate id registered ACTIVE: with
 *           certificates=registered, only these connect (as on AWS IoT, where a certificate must
 *           be registered and ACTIVE); no longer refused for its status.
 *   certificate-things  targets, each after a NUL: a certificate id, the names of the things it is
 *           attached to (AttachThingPrincipal) joined by commas (none: attached to none), a '/',
 *           then its common name. Under --mqtt-auth cert a certificate attached to things connects
 *           only with one of their names as its client id, as AWS IoT takes a connection's thing
 *           from the attachment; one attached to none keeps the common-name rule, except for a
 *           thing some certificate is attached to: that thing is theirs (AWS's
 *           iot:Connection.Thing.IsAttached). A connection made with a certificate under a client
 *           id it no longer allows is closed.
 *   Many to a message: the list is sent whole at each (re)connection of the service, where one
 *   QoS 1 message a certificate ran out of the service's 65,535 packet ids at 100,000 of them;
 *   and Mosquitto reads one of the service's messages a pass of its loop.
 *   ready   the service's client has subscribed to what this plugin hands it: devices may connect.
 */
#include <argon2.h>
#include <cbor.h>
#include <dlfcn.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define EVENTS_TOPIC "$iotdefender/events"
#define CONTROL_TOPIC "$iotdefender/control"
#define REPORTS_TOPIC "$iotdefender/reports"
#define REPLIES_TOPIC "$iotdefender/replies"
#define FLUSH_BYTES (256 * 1024)
#define REPORTS_FLUSH_BYTES (1024 * 1024)
#define REPORT_BATCH_HEAD 20 /* instance, number, reports before, replies_of, replies_done: u32 each */
#define TAKEN_FRAME 0xff     /* the "qos" of the frame by which the service says what it has read */
#define SEQUENCE_FRAME 0xfe  /* the "qos" of the frame that numbers the service's reply message */
#define COMMAND_FRAME 0xfd   /* the "qos" of a frame holding a command, as on CONTROL_TOPIC */
#define CONFIRM_FRAME 0xfc   /* the "qos" of the frame asking that the message be confirmed at once */

/* ---- a small string-keyed hash table (Mosquitto exports no map to plugins) ------------------ */

struct entry {
	char *key;
	void *value;
	struct entry *next;
};

struct table {
	struct entry **buckets;
	size_t size;
	size_t count;
};

static uint64_t hash_key(const char *key)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for(; *key; key++){
		h = (h ^ (unsigned char)*key) * 1099511628211ULL;
	}
	return h;
}

static struct entry **table_slot(struct table *t, const char *key)
{
	struct entry **slot = &t->buckets[hash_key(key) & (t->size - 1)];
	while(*slot && strcmp((*slot)->key, key)){
		slot = &(*slot)->next;
	}
	return slot;
}

static void table_grow(struct table *t)
{
	size_t old_size = t->size, i;
	struct entry **old = t->buckets;
	struct entry **fresh = calloc(old_size ? old_size * 2 : 1024, sizeof(*fresh));
	if(!fresh) return;
	t->buckets = fresh;
	t->size = old_size ? old_size * 2 : 1024;
	for(i = 0; i < old_size; i++){
		struct entry *e = old[i], *next;
		for(; e; e = next){
			next = e->next;
			struct entry **slot = &t->buckets[hash_key(e->key) & (t->size - 1)];
			e->next = *slot;
			*slot = e;
		}
	}
	free(old);
}

static void *table_get(struct table *t, const char *key)
{
	if(!t->size) return NULL;
	struct entry *e = *table_slot(t, key);
	return e ? e->value : NULL;
}

static void table_put(struct table *t, const char *key, void *value)
{
	if(t->count >= t->size) table_grow(t);
	if(!t->size) return;
	struct entry **slot = table_slot(t, key);
	if(*slot){
		(*slot)->value = value;
		return;
	}
	struct entry *e = malloc(sizeof(*e));
	if(!e) return;
	e->key = strdup(key);
	if(!e->key){ free(e); return; }
	e->value = value;
	e->next = NULL;
	*slot = e;
	t->count++;
}

static void table_del(struct table *t, const char *key)
{
	if(!t->size) return;
	struct entry **slot = table_slot(t, key);
	struct entry *e = *slot;
	if(!e) return;
	*slot = e->next;
	free(e->key);
	free(e);
	t->count--;
}

static void table_clear(struct table *t)
{
	size_t i;
	for(i = 0; i < t->size; i++){
		struct entry *e = t->buckets[i], *next;
		for(; e; e = next){
			next = e->next;
			free(e->key);
			free(e->value == (void *)1 ? NULL : e->value);
			free(e);
		}
	}
	free(t->buckets);
	memset(t, 0, sizeof(*t));
}

/* ---- state ---------------------------------------------------------------------------------- */

enum auth_mode { AUTH_NONE, AUTH_PASSWORD, AUTH_CERT };

static mosquitto_plugin_id_t *plugin_id;
static char *service_id;
static bool service_ready = false; /* see on_basic_auth; false again while the service reconnects */
static const struct mosquitto *service_client; /* the service's current connection */
static char *service_secret;
static enum auth_mode auth_mode = AUTH_NONE;
static bool acl_any = false;
static bool report_traffic = true; /* S and R events (off with --no-cloud-metrics) */

/* Mosquitto's own ACL check (src/security.c), which runs every ACL_CHECK callback in registration
 * order and stops at the first that does not defer. Ours is registered before the acl_file's (plugins
 * load before Mosquitto's default security), so answering SUCCESS for an application topic would
 * skip the acl_file altogether; deferring would let it decide without us learning the verdict, which
 * the events (messages received, authorization failures) and the disconnect need. So, with
 * app_acl=file, the callback asks Mosquitto once more and defers while that nested check runs.
 * Not in the plugin API: the same signature in every 2.0.x, exported by Debian's build, looked up at
 * start so that a build without it fails at start rather than at the first message. */
typedef int (*broker_acl_check_fn)(struct mosquitto *client, const char *topic, uint32_t payloadlen,
		void *payload, uint8_t qos, bool retain, int access);
static broker_acl_check_fn broker_acl_check; /* non-NULL when app_acl=file */
static bool asking_broker;                   /* inside that nested check (Mosquitto is single-threaded) */
static long flush_ns = 50L * 1000 * 1000;
static double publish_rate = 0; /* PUBLISHes a second per connection (0: no limit), see publish_allowed */

static struct table passwords;     /* username -> secret (plain or $argon2 PHC string) */
static struct table authenticated; /* client id -> its current authenticated connection */
static struct table refused;       /* client id -> (void *)1 while refused */
static struct table denied_certificates; /* certificate id -> (void *)1: not ACTIVE (see certificate_id) */
static struct table accepted_certificates; /* certificate id -> (void *)1: registered ACTIVE */
/* certificates=registered: a certificate connects only if registered ACTIVE (accepted_certificates),
 * as on AWS IoT; else (signed) any the CA signed connects unless registered in another status. */
static bool registered_only;
static struct table certificate_things; /* certificate id -> "thing,thing" (char *): see certificate-things */
static struct table attached_things; /* thing -> the certificates attached to it (unsigned long *), while any */
static struct table client_certificates; /* client id -> the certificate id of its connection (char *) */
static struct table buckets;       /* client id -> its struct bucket, while it is connected */
static struct table awaiting;      /* thing -> its struct awaiting, while the service owes it answers */
static struct table shed;          /* thing -> reports answered here since the last event batch (unsigned long *) */
static struct table throttled;     /* client id -> PUBLISHes dropped for publish_rate since then (unsigned long *) */
static struct table unavailable;   /* thing -> reports answered here while the service was away (unsigned long *) */
static struct table subscriptions; /* client id -> the struct table of its topic filters (values (void *)1) */
static struct table oversubscribed; /* client id -> filters refused past max_subscriptions since then (unsigned long *) */
static struct table unnamed;       /* thing -> reports of a name over 128 bytes not handed to the service: not answered */
static struct table overloaded;    /* thing -> reports answered here past reports_held_max since then (unsigned long *) */
static unsigned max_subscriptions = 0; /* topic filters a connection may hold (0: no limit) */
static unsigned report_window = 0; /* reports a thing may have waiting for the service's answer (0: no limit) */
static uint32_t instance;          /* this plugin's number, random at load (Q records, report batches) */
static uint32_t replies_of;        /* the service process whose reply messages were published last */
static uint32_t replies_done;      /* the number of the last of them */
static bool replies_untold;        /* replies_done not yet told to the service (a P record) */
static uint32_t reports_handed;    /* reports put in report batches so far, modulo 2^32 */
static uint32_t report_batches;    /* report batches begun so far (each one's number) */
static uint32_t report_batches_sent;  /* ... handed to the service's connection */
static uint32_t report_batches_taken; /* the service has read the batches numbered below this */
static uint32_t event_batches;     /* event batches sent so far */
static uint32_t event_batches_taken;  /* the service has read the event batches numbered below this */
static size_t reports_held_max = 64 * 1024 * 1024; /* bytes of reports held back (see "flow") */
static uint32_t batches_in_flight = 64; /* report (and event) batches sent to the service and not read yet */

/* Reports of one thing handed to the service and not answered yet. */
struct awaiting {
	unsigned count;
	long long since_ms; /* CLOCK_MONOTONIC: the last answer, or the report that made count 1 */
};
/* A count that has not moved for this long lost its answers (the service's connection broke and
 * the service never got the reports): it starts over rather than refuse the thing for good. The
 * service answers in milliseconds, or within its database's timeouts while that is slow. */
#define AWAITING_STALE_MS 30000LL

/* A connection's PUBLISH allowance: tokens refill at publish_rate a second, up to one second's worth. */
struct bucket {
	double tokens;
	double at; /* CLOCK_MONOTONIC seconds of the last refill */
};

/* Connections to close at the next flush, after a refused PUBLISH (see on_acl_check). */
struct kick {
	char *client_id;
	struct mosquitto *client;
};
static struct kick *kicks;
static size_t kicks_len, kicks_cap;

/* A growable byte buffer: the event batch and the report batch. */
struct buffer {
	char *data;
	size_t len, cap;
};

static struct buffer events;
static struct buffer reports; /* the report batch being filled */

/* Report batches filled while the service had batches_in_flight unread: sent, in order, as it reads. */
struct held_batch {
	struct held_batch *next;
	struct buffer batch;
};
static struct held_batch *held_first, *held_last;
static size_t held_bytes;
static long last_flush_s, last_flush_ns;
static long count_told = -1; /* the last N record's count; -1: tell it at the next flush */

/* ---- batches to the service ----------------------------------------------------------------- */

static bool buffer_reserve(struct buffer *b, size_t n)
{
	if(b->len + n <= b->cap) return true;
	size_t cap = b->cap ? b->cap * 2 : 64 * 1024;
	while(cap < b->len + n) cap *= 2;
	char *grown = realloc(b->data, cap);
	if(!grown) return false;
	b->data = grown;
	b->cap = cap;
	return true;
}

static void buffer_append(struct buffer *b, const void *bytes, size_t n)
{
	if(!buffer_reserve(b, n)) return;
	memcpy(b->data + b->len, bytes, n);
	b->len += n;
}

/* Send the buffer to the service alone (QoS 0 on its local connection) and empty it. */
static void send_to_service(struct buffer *b, const char *topic)
{
	if(!b->len) return;
	mosquitto_broker_publish_copy(service_id, topic, (int)b->len, b->data, 0, false, NULL);
	b->len = 0;
}

/* Whether one more batch of a kind may go to the service: its connection is ready and has read all
 * but fewer than batches_in_flight of those sent (see "flow" at the top). */
static bool may_send(uint32_t sent, uint32_t taken)
{
	return service_ready && (uint32_t)(sent - taken) < batches_in_flight;
}

/* Events are held while the service reconnects (sent to its gone connection they would reach
 * nobody) or reads slowly, up to EVENTS_HELD_BYTES; past that the batch goes anyway, and if it is
 * lost the service counts it. */
#define EVENTS_HELD_BYTES (16 * 1024 * 1024)

static void flush_events(void)
{
	if(!events.len || (!may_send(event_batches, event_batches_taken) && events.len < EVENTS_HELD_BYTES)) return;
	send_to_service(&events, EVENTS_TOPIC);
	event_batches++;
}

static void append_field(const char *field)
{
	buffer_append(&events, field, strlen(field) + 1);
}

/* A "T" record (milliseconds since the epoch, CLOCK_REALTIME) before the first record of a batch
 * and of each millisecond: the service counts each event in the window of when it happened here,
 * not of when its batch reached it (up to flush_ms and the service's event loop later, which moved
 * a message sent just before a window's end into the next window). */
static long long last_stamp_ms = -1;

static void stamp(void)
{
	struct timespec now;
	char text[24];
	clock_gettime(CLOCK_REALTIME, &now);
	long long ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	if(events.len && ms == last_stamp_ms) return;
	snprintf(text, sizeof(text), "%lld", ms);
	append_field("T");
	append_field(text);
	last_stamp_ms = ms;
}

static void record(const char *type, const char *a, const char *b, const char *c, const char *d)
{
	if(!events.len){
		char text[16];
		append_field("Q");
		snprintf(text, sizeof(text), "%u", instance);
		append_field(text);
		snprintf(text, sizeof(text), "%u", event_batches);
		append_field(text);
	}
	stamp();
	append_field(type);
	append_field(a);
	if(b) append_field(b);
	if(c) append_field(c);
	if(d) append_field(d);
	if(events.len >= FLUSH_BYTES) flush_events();
}

/* An N record when the number of connected clients changed since the last one told. */
static void tell_count(void)
{
	char text[24];
	if((long)authenticated.count == count_told) return;
	count_told = (long)authenticated.count; /* first: record() may flush, which must not come back here */
	snprintf(text, sizeof(text), "%ld", count_told);
	record("N", text, NULL, NULL, NULL);
}

/* Count one more event of `key` in `counts` (key -> unsigned long *), told at the next flush: a
 * record each would be one per message of a flood, each decoded in Python (L records were 285,000 a
 * second from 10 flooding devices, and took the service's whole core). */
static void count_event(struct table *counts, const char *key)
{
	unsigned long *count = table_get(counts, key);
	if(!count){
		count = calloc(1, sizeof(*count));
		if(!count) return;
		table_put(counts, key, count);
		if(table_get(counts, key) != count){ free(count); return; }
	}
	(*count)++;
}

/* One `type key count` record per key counted since the last flush; the counts start again. */
static void tell_counts(struct table *counts, const char *type)
{
	size_t i;
	char text[24];
	if(!counts->count) return;
	for(i = 0; i < counts->size; i++){
		struct entry *e;
		for(e = counts->buckets[i]; e; e = e->next){
			snprintf(text, sizeof(text), "%lu", *(unsigned long *)e->value);
			record(type, e->key, text, NULL, NULL);
		}
	}
	table_clear(counts);
}

static void schedule_kick(const char *client_id, struct mosquitto *client)
{
	if(kicks_len == kicks_cap){
		size_t cap = kicks_cap ? kicks_cap * 2 : 64;
		struct kick *grown = realloc(kicks, cap * sizeof(*grown));
		if(!grown) return;
		kicks = grown;
		kicks_cap = cap;
	}
	kicks[kicks_len].client_id = strdup(client_id);
	if(!kicks[kicks_len].client_id) return;
	kicks[kicks_len].client = client;
	kicks_len++;
}

/* Close each scheduled connection that still owns its client id (not one that took it over). */
static void run_kicks(void)
{
	size_t i;
	for(i = 0; i < kicks_len; i++){
		if(table_get(&authenticated, kicks[i].client_id) == kicks[i].client){
			mosquitto_kick_client_by_clientid(kicks[i].client_id, false);
		}
		free(kicks[i].client_id);
	}
	kicks_len = 0;
}

static bool is_service(const char *client_id)
{
	return client_id && !strcmp(client_id, service_id);
}

/* ---- policy --------------------------------------------------------------------------------- */

/* The thing name of `$aws/things/<thing>/defender/metrics/<rest>` (copied into thing), and rest;
 * NULL when the topic has another shape. */
static const char *defender_topic(const char *topic, char *thing, size_t thing_size)
{
	static const char prefix[] = "$aws/things/";
	static const char middle[] = "/defender/metrics/";
	if(strncmp(topic, prefix, sizeof(prefix) - 1)) return NULL;
	const char *name = topic + sizeof(prefix) - 1;
	const char *slash = strchr(name, '/');
	if(!slash || slash == name || (size_t)(slash - name) >= thing_size) return NULL;
	if(strncmp(slash, middle, sizeof(middle) - 1)) return NULL;
	memcpy(thing, name, (size_t)(slash - name));
	thing[slash - name] = '\0';
	return slash + sizeof(middle) - 1;
}

/* `$aws/things/T/defender/metrics/(json|cbor)` (gatekeeper.REPORT_TOPIC in Python). */
static bool report_topic(const char *topic, char *thing, size_t thing_size)
{
	const char *rest = defender_topic(topic, thing, thing_size);
	return rest && (!strcmp(rest, "json") || !strcmp(rest, "cbor"));
}

/* `$aws/things/T/defender/metrics/(json|cbor|+)[/(accepted|rejected|+)]` with no `#` in T:
 * the filters AWS IoT agents subscribe to. */
static bool reply_filter(const char *topic, char *thing, size_t thing_size)
{
	const char *rest = defender_topic(topic, thing, thing_size);
	if(!rest || strchr(thing, '#')) return false;
	const char *slash = strchr(rest, '/');
	size_t format_len = slash ? (size_t)(slash - rest) : strlen(rest);
	bool format = (format_len == 4 && (!strncmp(rest, "json", 4) || !strncmp(rest, "cbor", 4)))
		|| (format_len == 1 && rest[0] == '+');
	if(!format) return false;
	if(!slash) return true;
	const char *outcome = slash + 1;
	return !strcmp(outcome, "accepted") || !strcmp(outcome, "rejected") || !strcmp(outcome, "+");
}

/* Whether the topic's thing is the client's own (or any thing's, under acl any). A thing level that
 * is a wildcard is no one's own: a client whose id was `+` (a certificate's CN, say) was granted
 * `$aws/things/+/defender/metrics/+/+` in the SUBACK (an outside-in test; each delivery was still
 * checked, so nothing leaked). Topic names carry no wildcards: publishing is not affected. */
static bool own_or_any(const char *thing, const char *client_id)
{
	return acl_any || (!strcmp(thing, client_id) && !strchr(thing, '+'));
}

static bool password_ok(const char *username, const char *password)
{
	if(!username || !password) return false;
	const char *stored = table_get(&passwords, username);
	if(!stored) return false;
	size_t given_len = strlen(password);
	if(!strncmp(stored, "$argon2", 7)){
		argon2_type type = !strncmp(stored, "$argon2id$", 10) ? Argon2_id
			: !strncmp(stored, "$argon2i$", 9) ? Argon2_i : Argon2_d;
		return argon2_verify(stored, password, given_len, type) == ARGON2_OK;
	}
	/* Constant time over the stored secret's length (gatekeeper uses hmac.compare_digest). */
	size_t stored_len = strlen(stored), i;
	unsigned char diff = (unsigned char)(stored_len != given_len);
	for(i = 0; i < stored_len; i++){
		diff |= (unsigned char)(stored[i] ^ (i < given_len ? password[i] : 0));
	}
	return diff == 0;
}

/* The subject common name of the client's verified certificate (malloc'd), or NULL. */
static char *certificate_name(struct mosquitto *client)
{
	X509 *cert = mosquitto_client_certificate(client);
	char *name = NULL;
	if(!cert) return NULL;
	X509_NAME *subject = X509_get_subject_name(cert);
	int index = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
	if(index >= 0){
		unsigned char *utf8 = NULL;
		ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
		int len = ASN1_STRING_to_UTF8(&utf8, data);
		if(len >= 0 && memchr(utf8, '\0', (size_t)len) == NULL){
			name = strndup((const char *)utf8, (size_t)len);
		}
		OPENSSL_free(utf8);
	}
	X509_free(cert);
	return name;
}

/* The id of the client's verified certificate into ``id`` (65 bytes): the lowercase hex SHA-256 of
 * its DER encoding, which is how AWS IoT names a certificate (certificateId) and how the service's
 * certificates table keys it. False when the client has none (only --mqtt-auth cert asks for one). */
static bool certificate_id(struct mosquitto *client, char id[65])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0, i;
	X509 *cert = mosquitto_client_certificate(client);
	bool ok;
	if(!cert) return false;
	ok = X509_digest(cert, EVP_sha256(), md, &len) == 1 && len == 32;
	X509_free(cert);
	if(!ok) return false;
	for(i = 0; i < len; i++){
		id[2 * i] = hex[md[i] >> 4];
		id[2 * i + 1] = hex[md[i] & 15];
	}
	id[64] = '\0';
	return true;
}

/* Whether ``name`` is one of the comma-separated ``names`` (thing names hold no comma). */
static bool listed(const char *names, const char *name)
{
	size_t len = strlen(name);
	const char *at = names;
	while(at && *at){
		const char *comma = strchr(at, ',');
		size_t item = comma ? (size_t)(comma - at) : strlen(at);
		if(item == len && !strncmp(at, name, len)) return true;
		at = comma ? comma + 1 : NULL;
	}
	return false;
}

/* The connection that owns client_id was made with certificate ``id`` (NULL: with none). */
static void remember_certificate(const char *client_id, const char *id)
{
	char *old = table_get(&client_certificates, client_id);
	char *copy = id ? strdup(id) : NULL;
	if(copy) table_put(&client_certificates, client_id, copy);
	if(!copy || table_get(&client_certificates, client_id) != copy){
		free(copy);
		table_del(&client_certificates, client_id);
	}
	if(old != copy) free(old);
}

/* ---- subscriptions per connection (max_subscriptions) ---------------------------------------- */

/* The client's session starts or ends clean: the filters it held are gone with it. */
static void forget_subscriptions(const char *client_id)
{
	struct table *filters = table_get(&subscriptions, client_id);
	if(!filters) return;
	table_del(&subscriptions, client_id);
	table_clear(filters); /* its values are (void *)1: not freed */
	free(filters);
}

/* Whether the client may hold one more filter; recorded if so. A filter it holds already is no
 * more (a SUBSCRIBE again replaces it). AWS IoT Core refuses more than 50 a connection; without a
 * bound one connection held 100,000 (an outside-in test), each in Mosquitto's tree.
 * The filters are followed here from SUBSCRIBEs and UNSUBSCRIBEs; Mosquitto's count of the client's
 * subscription slots (sub_count: never below the filters it holds, as an UNSUBSCRIBE empties a slot
 * that the next SUBSCRIBE reuses) tells when they are stale: a session that ended without a clean
 * start or end (an MQTT 5 session of expiry 0) left them here, and its device was locked out (an
 * outside-in test). A session restored from mosquitto.db after a restart is not followed: such a
 * client may add up to max_subscriptions more. */
static bool subscription_allowed(struct mosquitto *client, const char *client_id, const char *filter)
{
	struct table *filters;
	if(!max_subscriptions) return true;
	filters = table_get(&subscriptions, client_id);
	if(filters && filters->count > (size_t)mosquitto_client_sub_count(client)) forget_subscriptions(client_id);
	filters = table_get(&subscriptions, client_id);
	if(!filters){
		filters = calloc(1, sizeof(*filters));
		if(!filters) return true;
		table_put(&subscriptions, client_id, filters);
		if(table_get(&subscriptions, client_id) != filters){ free(filters); return true; }
	}
	if(table_get(filters, filter)) return true;
	if(filters->count >= max_subscriptions) return false;
	table_put(filters, filter, (void *)1);
	return true;
}

static void unsubscribed(const char *client_id, const char *filter)
{
	struct table *filters = table_get(&subscriptions, client_id);
	if(filters) table_del(filters, filter);
}


/* ---- callbacks ------------------------------------------------------------------------------ */

/* BASIC_AUTH: every CONNECT (the plugin is the only authority; allow_anonymous is irrelevant).
 * Counted as a connection attempt with the source address, refused or not. */
static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	const char *address = mosquitto_client_address(ed->client);
	const char *reason = NULL;
	char *cert_name = NULL;
	char cert_id[65];
	bool has_cert = false;
	(void)event; (void)userdata;

	if(!client_id || !client_id[0]){
		return MOSQ_ERR_AUTH; /* not reachable: allow_zero_length_clientid is false */
	}
	if(is_service(client_id)){
		bool ok = ed->username && ed->password && !strcmp(ed->username, service_id)
			&& !strcmp(ed->password, service_secret);
		if(ok){
			/* A new connection of the service's has not subscribed yet: devices wait for its "ready". */
			service_client = ed->client;
			service_ready = false;
			return MOSQ_ERR_SUCCESS;
		}
		reason = "auth_bad_password";
	}else if(!service_ready){
		/* Mosquitto listens before the service's own client has subscribed: a device's report
		 * then was acknowledged (PUBACK) and handed to nobody, never stored nor answered (every
		 * start, ~35 ms; 23 of 56,430 reports in a trial of 2,400 devices reconnecting). Refused
		 * until the service says "ready", not counted as an attempt: its client connects again. */
		return MOSQ_ERR_AUTH;
	}else if(table_get(&refused, client_id)){
		reason = "auth_refused_client";
	}else if((has_cert = certificate_id(ed->client, cert_id)) && table_get(&denied_certificates, cert_id)){
		/* Registered through the API in another status than ACTIVE (UpdateCertificate): refused
		 * as AWS IoT refuses it, whatever the rest of the checks would say. */
		reason = "auth_certificate_not_active";
	}else if(registered_only && has_cert && !table_get(&accepted_certificates, cert_id)){
		reason = "auth_certificate_not_registered"; /* signed by the CA, never registered */
	}else if(auth_mode == AUTH_PASSWORD){
		if(!password_ok(ed->username, ed->password)) reason = "auth_bad_password";
		else if(strcmp(ed->username, client_id)) reason = "auth_client_id_mismatch";
	}else if(auth_mode == AUTH_CERT){
		/* Attached to things (AttachThingPrincipal), the certificate names them, not its common name. */
		const char *things = has_cert ? table_get(&certificate_things, cert_id) : NULL;
		cert_name = certificate_name(ed->client);
		if(things){
			if(!listed(things, client_id)) reason = "auth_certificate_not_attached";
		}else if(!cert_name) reason = has_cert ? "auth_certificate_no_common_name" : "auth_no_certificate";
		else if(strcmp(cert_name, client_id)) reason = "auth_client_id_mismatch";
		else if(table_get(&attached_things, client_id)) reason = "auth_certificate_not_attached"; /* its thing's certificates are attached */
		/* The username a device sends is not verified in this mode (the AWS SDKs send "?SDK=..."):
		 * the verified identity (the client id, now the common name or an attached thing) replaces
		 * it, so that an ACL file's `%u` and `user` blocks name it, as Mosquitto's
		 * use_identity_as_username would. */
		if(!reason && mosquitto_set_username(ed->client, client_id) != MOSQ_ERR_SUCCESS) reason = "auth_internal_error";
	}
	free(cert_name);
	record("C", client_id, address ? address : "", reason ? "0" : "1", reason ? reason : "");
	if(reason) return MOSQ_ERR_AUTH;
	/* The connection that now owns this client id: a DISCONNECT is reported only for it, so a
	 * refused CONNECT, or the older connection closed by a takeover, is not a disconnect. */
	table_put(&authenticated, client_id, ed->client);
	remember_certificate(client_id, has_cert ? cert_id : NULL);
	if(mosquitto_client_clean_session(ed->client)) forget_subscriptions(client_id);
	return MOSQ_ERR_SUCCESS;
}

/* An application (non-`$`) topic's PUBLISH or delivery: free unless app_acl=file, then the verdict
 * of Mosquitto's acl_file, taken through the nested check (see broker_acl_check). */
static int app_topic_check(struct mosquitto_evt_acl_check *ed)
{
	int rc;
	if(!broker_acl_check) return MOSQ_ERR_SUCCESS;
	asking_broker = true;
	rc = broker_acl_check(ed->client, ed->topic, ed->payloadlen, (void *)ed->payload, ed->qos, ed->retain,
			ed->access);
	asking_broker = false;
	return rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

/* Whether the client may publish one more message now (publish_rate). Only the connection that owns
 * its client id has a bucket (a Will sent after its disconnect is not limited: its bucket is gone). */
static bool publish_allowed(const char *client_id, struct mosquitto *client)
{
	struct timespec now;
	double seconds;
	struct bucket *b;
	if(publish_rate <= 0 || table_get(&authenticated, client_id) != client) return true;
	clock_gettime(CLOCK_MONOTONIC, &now);
	seconds = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
	b = table_get(&buckets, client_id);
	if(!b){
		b = malloc(sizeof(*b));
		if(!b) return true;
		b->tokens = publish_rate;
		b->at = seconds;
		table_put(&buckets, client_id, b);
		if(table_get(&buckets, client_id) != b){ free(b); return true; }
	}
	b->tokens += (seconds - b->at) * publish_rate;
	if(b->tokens > publish_rate) b->tokens = publish_rate;
	b->at = seconds;
	if(b->tokens < 1.0) return false;
	b->tokens -= 1.0;
	return true;
}

static void forget_bucket(const char *client_id)
{
	struct bucket *b = table_get(&buckets, client_id);
	if(!b) return;
	table_del(&buckets, client_id);
	free(b);
}

/* ACL_CHECK: every PUBLISH from a client (and its Will when it is about to be sent), every
 * SUBSCRIBE, and every delivery to a client (READ). */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	char thing[256];
	(void)event; (void)userdata;

	if(asking_broker) return MOSQ_ERR_PLUGIN_DEFER; /* our own nested question: the acl_file answers */
	if(!client_id) return MOSQ_ERR_ACL_DENIED;
	if(is_service(client_id)) return MOSQ_ERR_SUCCESS;

	switch(ed->access){
		case MOSQ_ACL_READ:
			/* A `+` reply filter also matches the report topic, and nobody but the service may
			 * read the service's topics: such deliveries are dropped without counting them. */
			if(ed->topic[0] == '$' && (report_topic(ed->topic, thing, sizeof(thing))
					|| !strncmp(ed->topic, "$iotdefender/", 13))){
				return MOSQ_ERR_ACL_DENIED;
			}
			/* Another thing's reply, under acl=own: its SUBSCRIBE was refused, but a persistent
			 * session restored from mosquitto.db keeps what an earlier start allowed (acl=any). */
			if(ed->topic[0] == '$' && defender_topic(ed->topic, thing, sizeof(thing)) && !own_or_any(thing, client_id)){
				return MOSQ_ERR_ACL_DENIED;
			}
			/* Another device's topic the acl_file does not let this one read: not delivered, and
			 * not counted (the subscription itself was allowed, as Mosquitto allows them all). */
			if(ed->topic[0] != '$' && app_topic_check(ed) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_ACL_DENIED;
			if(report_traffic) record("R", client_id, ed->topic, NULL, NULL);
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_WRITE:
			if(!publish_allowed(client_id, ed->client)){
				count_event(&throttled, client_id);
				return MOSQ_ERR_ACL_DENIED; /* dropped, not a failure: no kick, not counted as one */
			}
			if(ed->topic[0] != '$'){
				if(app_topic_check(ed) == MOSQ_ERR_SUCCESS) return MOSQ_ERR_SUCCESS;
			}else if(!ed->retain && report_topic(ed->topic, thing, sizeof(thing)) && own_or_any(thing, client_id)){
				return MOSQ_ERR_SUCCESS;
			}
			record("A", client_id, ed->topic, "publish_denied", NULL);
			/* Dropped (a QoS 1 PUBLISH is still acknowledged, so the client does not send it again
			 * after reconnecting), and the connection is closed at the next flush, once the PUBACK
			 * is out, as AWS IoT closes it on an unauthorised publish. A refused Will is not sent;
			 * its connection is already gone. */
			schedule_kick(client_id, ed->client);
			return MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
			if(ed->topic[0] == '$' && !(reply_filter(ed->topic, thing, sizeof(thing)) && own_or_any(thing, client_id))){
				record("A", client_id, ed->topic, "subscribe_denied", NULL);
				return MOSQ_ERR_ACL_DENIED;
			}
			if(!subscription_allowed(ed->client, client_id, ed->topic)){
				count_event(&oversubscribed, client_id);
				return MOSQ_ERR_ACL_DENIED; /* refused (SUBACK failure), not an authorization failure */
			}
			return MOSQ_ERR_SUCCESS;
		default: /* UNSUBSCRIBE */
			unsubscribed(client_id, ed->topic);
			return MOSQ_ERR_SUCCESS;
	}
}

static void put_u16(unsigned char *at, size_t value)
{
	at[0] = (unsigned char)(value >> 8);
	at[1] = (unsigned char)value;
}

static void put_u32(unsigned char *at, size_t value)
{
	put_u16(at, value >> 16);
	put_u16(at + 2, value & 0xffff);
}

static size_t get_u16(const unsigned char *at)
{
	return ((size_t)at[0] << 8) | at[1];
}

static size_t get_u32(const unsigned char *at)
{
	return (get_u16(at) << 16) | get_u16(at + 2);
}

/* A report batch to the service, its head telling the last reply message published here as it
 * leaves (see "Replies" at the top): what lets the service send its next one. */
static void send_report_batch(struct buffer *batch)
{
	put_u32((unsigned char *)batch->data + 12, replies_of);
	put_u32((unsigned char *)batch->data + 16, replies_done);
	replies_untold = false;
	send_to_service(batch, REPORTS_TOPIC);
	report_batches_sent++;
}

/* The held report batches, oldest first, while the service may take more; then the batch being
 * filled, unless batches are held or the service has batches_in_flight unread: then it is held once
 * it is REPORTS_FLUSH_BYTES (until then it takes the reports that come meanwhile). */
static void flush_reports(void)
{
	while(held_first && may_send(report_batches_sent, report_batches_taken)){
		struct held_batch *h = held_first;
		held_first = h->next;
		if(!held_first) held_last = NULL;
		held_bytes -= h->batch.len;
		send_report_batch(&h->batch);
		free(h->batch.data);
		free(h);
	}
	if(!reports.len) return;
	if(!held_first && may_send(report_batches_sent, report_batches_taken)){
		send_report_batch(&reports);
	}else if(reports.len >= REPORTS_FLUSH_BYTES){
		struct held_batch *h = malloc(sizeof(*h));
		if(!h) return; /* filled on: it is sent once the service reads */
		h->next = NULL;
		h->batch = reports; /* its bytes move to the held batch; the next batch starts empty */
		memset(&reports, 0, sizeof(reports));
		if(held_last) held_last->next = h;
		else held_first = h;
		held_last = h;
		held_bytes += h->batch.len;
	}
}

/* Whether the reports held back for the service have reached reports_held_max (see "flow"). */
static bool reports_held_full(void)
{
	return held_bytes + reports.len >= reports_held_max;
}

/* The service has read the batches numbered below `reports_next` and `events_next` (a TAKEN frame
 * of its reply batch): as many more may go. A number outside those sent and not yet taken is stale
 * (from before "ready", or another plugin instance's) and ignored. */
static void batches_taken(uint32_t of_instance, uint32_t reports_next, uint32_t events_next)
{
	if(of_instance != instance) return;
	if((uint32_t)(reports_next - report_batches_taken) <= (uint32_t)(report_batches_sent - report_batches_taken)){
		report_batches_taken = reports_next;
	}
	if((uint32_t)(events_next - event_batches_taken) <= (uint32_t)(event_batches - event_batches_taken)){
		event_batches_taken = events_next;
	}
	flush_reports();
	if(events.len >= FLUSH_BYTES) flush_events();
}

/* One report frame (layout at the top of this file), after the batch's head if it is the first. */
static void append_report(const char *topic, const char *thing, const void *payload, uint32_t payloadlen)
{
	unsigned char head[15];
	size_t thing_len = strlen(thing);
	const char *encoding = strrchr(topic, '/') + 1;
	struct timespec now;
	uint64_t micros;
	if(!buffer_reserve(&reports, REPORT_BATCH_HEAD + sizeof(head) + thing_len + payloadlen)) return;
	if(!reports.len){
		unsigned char batch_head[REPORT_BATCH_HEAD] = {0}; /* the last 8 bytes: written as it leaves */
		put_u32(batch_head, instance);
		put_u32(batch_head + 4, report_batches++);
		put_u32(batch_head + 8, reports_handed);
		buffer_append(&reports, batch_head, sizeof(batch_head));
	}
	clock_gettime(CLOCK_REALTIME, &now);
	micros = (uint64_t)now.tv_sec * 1000000u + (uint64_t)(now.tv_nsec / 1000);
	head[0] = encoding[0] == 'c' ? 'c' : 'j';
	put_u16(head + 1, thing_len);
	put_u32(head + 3, payloadlen);
	put_u32(head + 7, (size_t)(micros >> 32));
	put_u32(head + 11, (size_t)(micros & 0xffffffffu));
	buffer_append(&reports, head, sizeof(head));
	buffer_append(&reports, thing, thing_len);
	buffer_append(&reports, payload, payloadlen);
	reports_handed++;
	if(reports.len >= REPORTS_FLUSH_BYTES) flush_reports();
}

/* ---- answers the service owes ---------------------------------------------------------------- */

static long long monotonic_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Whether the thing's report may go to the service (report_window); counted as awaiting if so. */
static bool report_admitted(const char *thing)
{
	struct awaiting *a;
	long long now;
	if(!report_window) return true;
	now = monotonic_ms();
	a = table_get(&awaiting, thing);
	if(!a){
		a = malloc(sizeof(*a));
		if(!a) return true;
		a->count = 0;
		table_put(&awaiting, thing, a);
		if(table_get(&awaiting, thing) != a){ free(a); return true; }
	}
	if(a->count >= report_window){
		if(now - a->since_ms < AWAITING_STALE_MS) return false;
		a->count = 0; /* its answers were lost: start over */
	}
	if(!a->count) a->since_ms = now;
	a->count++;
	return true;
}

/* The service answered one of the thing's reports (a reply it asked us to publish). */
static void report_answered(const char *topic)
{
	char thing[256];
	const char *rest = defender_topic(topic, thing, sizeof(thing));
	struct awaiting *a;
	if(!report_window || !rest || (strcmp(rest, "json/accepted") && strcmp(rest, "json/rejected")
			&& strcmp(rest, "cbor/accepted") && strcmp(rest, "cbor/rejected"))) return;
	a = table_get(&awaiting, thing);
	if(!a) return;
	if(a->count > 1){
		a->count--;
		a->since_ms = monotonic_ms();
		return;
	}
	table_del(&awaiting, thing);
	free(a);
}

/* Forget the counts that have not moved for AWAITING_STALE_MS (their answers were lost), every
 * AWAITING_STALE_MS: a thing that never reports again would otherwise keep its entry for good. */
static void sweep_awaiting(void)
{
	static long long last_sweep;
	long long now = monotonic_ms();
	size_t i;
	if(now - last_sweep < AWAITING_STALE_MS) return;
	last_sweep = now;
	for(i = 0; i < awaiting.size; i++){
		struct entry *e = awaiting.buckets[i], *next;
		for(; e; e = next){
			next = e->next;
			struct awaiting *a = e->value;
			if(now - a->since_ms >= AWAITING_STALE_MS){
				table_del(&awaiting, e->key); /* frees e: next was read first */
				free(a);
			}
		}
	}
}

/* The head of a CBOR item (RFC 8949 §3): its argument in the shortest of the five forms. */
static size_t cbor_head(unsigned char *at, unsigned major, uint64_t value)
{
	if(value < 24){ at[0] = (unsigned char)(major << 5 | value); return 1; }
	if(value < 256){ at[0] = (unsigned char)(major << 5 | 24); at[1] = (unsigned char)value; return 2; }
	if(value < 65536){ at[0] = (unsigned char)(major << 5 | 25); put_u16(at + 1, (size_t)value); return 3; }
	if(value <= 0xffffffffu){ at[0] = (unsigned char)(major << 5 | 26); put_u32(at + 1, (size_t)value); return 5; }
	at[0] = (unsigned char)(major << 5 | 27);
	put_u32(at + 1, (size_t)(value >> 32));
	put_u32(at + 5, (size_t)(value & 0xffffffffu));
	return 9;
}

static size_t cbor_text(unsigned char *at, const char *text)
{
	size_t len = strlen(text), head = cbor_head(at, 3, len);
	memcpy(at + head, text, len);
	return head + len;
}

static const char THROTTLED_MESSAGE[] = "Too many of this thing's reports are waiting for their answers; "
	"this one was not processed (a device sends one report per interval)";
static const char UNAVAILABLE_MESSAGE[] = "The service is reconnecting to the broker; the report was not "
	"processed: retry later";
static const char OVERLOADED_MESSAGE[] = "The service is behind in reading reports; this one was not "
	"processed: retry later";

/* A report id as the service echoes it (ingest/replies.py, reply_payload): an integer from -2^63
 * to 2^64 - 1, written as CBOR writes it: -1 - argument when negative. */
struct report_id {
	bool negative;
	uint64_t argument; /* at most 2^63 - 1 when negative */
};

/* The bytes of a definite string (text or bytes) or of each chunk of an indefinite one, in turn:
 * cbor2 reads both as one string. Returns false as soon as ``visit`` does. */
static bool cbor_string_pieces(cbor_item_t *item, bool (*visit)(const unsigned char *, size_t, void *), void *state)
{
	bool text = cbor_isa_string(item);
	size_t i, n;
	cbor_item_t **chunks;
	if(text ? cbor_string_is_definite(item) : cbor_bytestring_is_definite(item)){
		return text ? visit(cbor_string_handle(item), cbor_string_length(item), state)
			: visit(cbor_bytestring_handle(item), cbor_bytestring_length(item), state);
	}
	n = text ? cbor_string_chunk_count(item) : cbor_bytestring_chunk_count(item);
	chunks = text ? cbor_string_chunks_handle(item) : cbor_bytestring_chunks_handle(item);
	for(i = 0; i < n; i++) if(!cbor_string_pieces(chunks[i], visit, state)) return false;
	return true;
}

struct text_match { const char *rest; size_t left; };

static bool match_piece(const unsigned char *at, size_t len, void *state)
{
	struct text_match *m = state;
	if(len > m->left || memcmp(at, m->rest, len)) return false;
	m->rest += len;
	m->left -= len;
	return true;
}

static bool count_piece(const unsigned char *at, size_t len, void *state)
{
	(void)at;
	*(size_t *)state += len;
	return true;
}

/* A big-endian magnitude of at most 64 significant bits: leading zero bytes are skipped. */
struct magnitude { uint64_t value; bool too_big; };

static bool magnitude_piece(const unsigned char *at, size_t len, void *state)
{
	struct magnitude *m = state;
	size_t i;
	for(i = 0; i < len; i++){
		if(m->value >> 56){ m->too_big = true; return false; }
		m->value = m->value << 8 | at[i];
	}
	return true;
}

static size_t cbor_string_size(cbor_item_t *item)
{
	size_t size = 0;
	cbor_string_pieces(item, count_piece, &size);
	return size;
}

/* Whether ``item`` is the text string ``key``, definite or in chunks. */
static bool cbor_text_is(cbor_item_t *item, const char *key)
{
	struct text_match m = {key, strlen(key)};
	return cbor_isa_string(item) && cbor_string_pieces(item, match_piece, &m) && m.left == 0;
}

/* The value of ``key`` in a CBOR map, or NULL; of the last pair with it, as cbor2's dict keeps. */
static cbor_item_t *cbor_member(cbor_item_t *map, const char *key)
{
	size_t i, n;
	struct cbor_pair *pairs;
	cbor_item_t *found = NULL;
	if(!map || !cbor_isa_map(map)) return NULL;
	n = cbor_map_size(map);
	pairs = cbor_map_handle(map);
	for(i = 0; i < n; i++) if(cbor_text_is(pairs[i].key, key)) found = pairs[i].value;
	return found;
}

/* Whether Python reads the item as false (``x or y`` takes y): missing, null, false, 0, empty. */
static bool cbor_falsy(cbor_item_t *item)
{
	if(!item) return true;
	if(cbor_isa_map(item)) return cbor_map_size(item) == 0;
	if(cbor_isa_array(item)) return cbor_array_size(item) == 0;
	if(cbor_isa_string(item) || cbor_isa_bytestring(item)) return cbor_string_size(item) == 0;
	if(cbor_isa_uint(item)) return cbor_get_int(item) == 0;
	if(cbor_isa_float_ctrl(item)){
		if(cbor_float_ctrl_is_ctrl(item)) return cbor_ctrl_value(item) != CBOR_CTRL_TRUE;
		return cbor_float_get_float(item) == 0.0;
	}
	return false;
}

/* An integer item as cbor2 reads it: unsigned, negative, or a bignum (tags 2 and 3, RFC 8949
 * §3.4.3) of a byte string; within the ids the service echoes. */
static bool cbor_integer(cbor_item_t *item, struct report_id *id)
{
	if(cbor_isa_uint(item) || cbor_isa_negint(item)){
		id->negative = cbor_isa_negint(item);
		id->argument = cbor_get_int(item);
	}else if(cbor_isa_tag(item) && (cbor_tag_value(item) == 2 || cbor_tag_value(item) == 3)){
		struct magnitude m = {0, false};
		cbor_item_t *content = cbor_tag_item(item); /* a new reference */
		cbor_decref(&content); /* held by the tag */
		if(!cbor_isa_bytestring(content) || !cbor_string_pieces(content, magnitude_piece, &m) || m.too_big) return false;
		id->negative = cbor_tag_value(item) == 3;
		id->argument = m.value;
	}else{
		return false;
	}
	return !id->negative || id->argument <= (uint64_t)INT64_MAX;
}

static bool cbor_report_id(const unsigned char *payload, size_t len, struct report_id *id)
{
	struct cbor_load_result result;
	cbor_item_t *root = cbor_load(payload, len, &result), *document, *header, *rid;
	bool found;
	if(!root) return false;
	document = root;
	while(cbor_isa_tag(document) && cbor_tag_value(document) == 55799){ /* "this is CBOR": the report is inside */
		cbor_item_t *inner = cbor_tag_item(document); /* a new reference */
		cbor_decref(&inner); /* held by the tag, which root holds */
		document = inner;
	}
	header = cbor_member(document, "header");
	if(cbor_falsy(header)) header = cbor_member(document, "hed");
	rid = cbor_member(header, "report_id");
	if(!rid) rid = cbor_member(header, "rid");
	found = rid && cbor_integer(rid, id);
	cbor_decref(&root);
	return found;
}

/* As cbor_falsy, for a JSON item. */
static bool json_falsy(const json_t *item)
{
	if(!item || json_is_null(item) || json_is_false(item)) return true;
	if(json_is_object(item)) return json_object_size(item) == 0;
	if(json_is_array(item)) return json_array_size(item) == 0;
	if(json_is_integer(item)) return json_integer_value(item) == 0;
	if(json_is_real(item)) return json_real_value(item) == 0.0;
	if(json_is_string(item)) return json_string_length(item) == 0;
	return false;
}

/* Jansson reads as the service's msgspec does where the id is concerned: an integer only when
 * written as one (`5.0` is a real), exactly to 64 bits, the last of duplicate keys, nothing after
 * the document; NULs in strings allowed, as JSON allows them. It refuses what it cannot hold exactly
 * (an integer from 2^63 on, anywhere in the report): no id then, rather than another. */
static bool json_report_id(const void *payload, size_t len, struct report_id *id)
{
	json_error_t error;
	json_t *root = json_loadb(payload, len, JSON_ALLOW_NUL, &error), *header, *rid;
	json_int_t value;
	bool found = false;
	if(!root) return false;
	header = json_object_get(root, "header");
	if(json_falsy(header)) header = json_object_get(root, "hed");
	rid = json_object_get(header, "report_id"); /* NULL when header is not an object */
	if(!rid) rid = json_object_get(header, "rid");
	if(json_is_integer(rid)){
		value = json_integer_value(rid);
		id->negative = value < 0;
		id->argument = value < 0 ? (uint64_t)(-(value + 1)) : (uint64_t)value;
		found = true;
	}
	json_decref(root);
	return found;
}

/* How many bytes of reports answered here are read for their id a second, and at most at once:
 * reading costs about 25 ns a byte of JSON (Jansson builds the whole document; measured on a
 * 170 KB report of ports and connections) and 20 of CBOR (libcbor does too), so a few connections
 * flooding 256 KB reports at their publish_rate would cost the broker's one thread far more than
 * receiving them. Within it, at most ~50 ms of that thread a second; past it, answers go without
 * the id. A service reconnecting while 10,000 devices report every 5 minutes asks for ~70 KB a
 * second. */
#define ID_READ_BYTES_PER_S (2.0 * 1024 * 1024)
static double id_read_budget = ID_READ_BYTES_PER_S, id_read_at;

static bool id_read_allowed(size_t len)
{
	struct timespec t;
	double now;
	clock_gettime(CLOCK_MONOTONIC, &t);
	now = (double)t.tv_sec + (double)t.tv_nsec / 1e9;
	if(id_read_at > 0) id_read_budget = fmin(ID_READ_BYTES_PER_S, id_read_budget + (now - id_read_at) * ID_READ_BYTES_PER_S);
	id_read_at = now;
	if((double)len > id_read_budget) return false;
	id_read_budget -= (double)len;
	return true;
}

/* The report's id as the service reads it (ingest/report.py, _report_id_of): header's report_id
 * (or hed's, or rid), an integer. A rejected answer echoes it, as AWS's does when the report
 * parses (reference 4.4): agents match answers to their reports by it and drop the others (AWS's
 * embedded C defender demo checks it), so an answer without it told the device nothing. Parsed
 * with Jansson and libcbor rather than by hand, and only for the reports answered here. */
static bool report_id(bool cbor, const void *payload, size_t len, struct report_id *id)
{
	if(!payload || !len || !id_read_allowed(len)) return false;
	return cbor ? cbor_report_id(payload, len, id) : json_report_id(payload, len, id);
}

/* Answer a report not handed to the service, as the service answers (ingest/replies.py): `rejected`
 * with `code`, in the report's encoding, on the thing's reply topic. */
static void answer_rejected(const char *topic, const char *thing, const void *payload, size_t payload_len,
		const char *code, const char *message)
{
	char reply_topic[512];
	unsigned char body[1024];
	size_t len = 0, i;
	struct timespec now;
	long long ms;
	struct report_id id = {false, 0};
	bool cbor = !strcmp(strrchr(topic, '/') + 1, "cbor");
	bool has_id = report_id(cbor, payload, payload_len, &id);
	clock_gettime(CLOCK_REALTIME, &now);
	ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	snprintf(reply_topic, sizeof(reply_topic), "%s/rejected", topic);
	if(cbor){
		body[len++] = has_id ? 0xa5 : 0xa4;
		len += cbor_text(body + len, "thingName");
		len += cbor_text(body + len, thing);
		if(has_id){
			len += cbor_text(body + len, "reportId");
			len += cbor_head(body + len, id.negative ? 1 : 0, id.argument);
		}
		len += cbor_text(body + len, "status");
		len += cbor_text(body + len, "REJECTED");
		len += cbor_text(body + len, "statusDetails");
		body[len++] = 0xa2;
		len += cbor_text(body + len, "ErrorCode");
		len += cbor_text(body + len, code);
		len += cbor_text(body + len, "ErrorMessage");
		len += cbor_text(body + len, message);
		len += cbor_text(body + len, "timestamp");
		len += cbor_head(body + len, 0, (uint64_t)ms);
	}else{
		/* Mosquitto refuses control characters in topics: only '"' and '\' need escaping. */
		len += (size_t)snprintf((char *)body, sizeof(body), "{\"thingName\":\"");
		for(i = 0; thing[i]; i++){
			if(thing[i] == '"' || thing[i] == '\\') body[len++] = '\\';
			body[len++] = (unsigned char)thing[i];
		}
		body[len++] = '"';
		if(has_id){ /* -1 - argument: the sign, then argument + 1 (at most 2^63) */
			len += (size_t)snprintf((char *)body + len, sizeof(body) - len, ",\"reportId\":%s%llu",
					id.negative ? "-" : "", (unsigned long long)(id.negative ? id.argument + 1 : id.argument));
		}
		len += (size_t)snprintf((char *)body + len, sizeof(body) - len, ",\"status\":\"REJECTED\","
				"\"statusDetails\":{\"ErrorCode\":\"%s\",\"ErrorMessage\":\"%s\"},\"timestamp\":%lld}",
				code, message, ms);
	}
	mosquitto_broker_publish_copy(NULL, reply_topic, (int)len, body, 1, false, NULL);
}

static void run_command(const char *payload, size_t len);
static void tell_replies_done(void);

/* Publish every reply frame of the service's batch, run its commands and apply its TAKEN frame, in
 * their order; a malformed tail is ignored. Whether it holds a CONFIRM frame: the service's window
 * is full, and the word it waits for is to go now, not with a report batch that may never come. */
static bool publish_replies(const unsigned char *at, size_t len)
{
	bool confirm = false;
	char topic[1024];
	if(len >= 15 && at[0] == SEQUENCE_FRAME && get_u16(at + 1) == 0 && get_u32(at + 3) == 8){
		uint32_t of = (uint32_t)get_u32(at + 7), number = (uint32_t)get_u32(at + 11);
		if(of == replies_of && (int32_t)(number - replies_done) <= 0){
			/* Published already: sent again because the service did not hear so (the word was lost
			 * with its connection), and it sends no more replies until it does. */
			replies_untold = true;
			return true;
		}
		replies_of = of;
		replies_done = number;
		replies_untold = true;
		at += 15;
		len -= 15;
	}
	while(len >= 7){
		int qos = at[0];
		size_t topic_len = get_u16(at + 1), payload_len = get_u32(at + 3);
		if(qos == TAKEN_FRAME && topic_len == 0 && payload_len == 12 && len >= 19){
			batches_taken((uint32_t)get_u32(at + 7), (uint32_t)get_u32(at + 11), (uint32_t)get_u32(at + 15));
			at += 19;
			len -= 19;
			continue;
		}
		if(qos == CONFIRM_FRAME && topic_len == 0 && payload_len == 0){
			confirm = true;
			at += 7;
			len -= 7;
			continue;
		}
		if(qos == COMMAND_FRAME && topic_len == 0 && 7 + payload_len <= len){
			run_command((const char *)at + 7, payload_len);
			at += 7 + payload_len;
			len -= 7 + payload_len;
			continue;
		}
		if(qos > 2 || topic_len == 0 || 7 + topic_len + payload_len > len) return confirm;
		if(topic_len < sizeof(topic)){ /* a longer one is skipped alone, not the replies after it */
			memcpy(topic, at + 7, topic_len);
			topic[topic_len] = '\0';
			mosquitto_broker_publish_copy(NULL, topic, (int)payload_len, at + 7 + topic_len, qos, false, NULL);
			report_answered(topic);
		}
		at += 7 + topic_len + payload_len;
		len -= 7 + topic_len + payload_len;
	}
	return confirm;
}

enum certificate_verb { CERTIFICATES_DENY, CERTIFICATES_ALLOW, CERTIFICATES_ACCEPT, CERTIFICATES_THINGS };

/* ``fn(name, arg)`` for each name of the comma-separated ``names`` (NULL: none). */
static void each_name(const char *names, void (*fn)(const char *name, void *arg), void *arg)
{
	const char *at = names;
	while(at && *at){
		const char *comma = strchr(at, ',');
		char *name = strndup(at, comma ? (size_t)(comma - at) : strlen(at));
		if(name) fn(name, arg);
		free(name);
		at = comma ? comma + 1 : NULL;
	}
}

/* Close ``client_id``'s connection if it was made with certificate ``id``. */
static void kick_if_made_with(const char *client_id, const char *id)
{
	char *in_use = table_get(&client_certificates, client_id);
	if(in_use && !strcmp(in_use, id)) mosquitto_kick_client_by_clientid(client_id, false);
}

struct kept { const char *id, *keep; };

static void kick_unless_kept(const char *thing, void *arg)
{
	struct kept *k = arg;
	if(!(k->keep && listed(k->keep, thing))) kick_if_made_with(thing, k->id);
}

/* Each thing of the comma-separated ``things`` whose connection was made with ``id``, closed
 * unless ``keep`` (comma-separated, or NULL) still lists it. */
static void kick_things(const char *things, const char *id, const char *keep)
{
	struct kept k = { id, keep };
	each_name(things, kick_unless_kept, &k);
}

static void count_one(const char *thing, void *arg)
{
	int delta = *(int *)arg;
	unsigned long *count = table_get(&attached_things, thing);
	if(delta > 0){
		if(!count && (count = calloc(1, sizeof(*count)))){
			table_put(&attached_things, thing, count);
			if(table_get(&attached_things, thing) != count){ free(count); count = NULL; }
		}
		if(count) (*count)++;
	}else if(count && --(*count) == 0){
		table_del(&attached_things, thing);
		free(count);
	}
}

/* Count ``delta`` (+1 or -1) certificates attached to each of the comma-separated ``things``. */
static void count_attached(const char *things, int delta)
{
	each_name(things, count_one, &delta);
}

struct claim { const char *old, *id; };

static void claim_one(const char *thing, void *arg)
{
	struct claim *c = arg;
	char *in_use;
	const char *its_things;
	if(c->old && listed(c->old, thing)) return;
	in_use = table_get(&client_certificates, thing);
	its_things = in_use ? table_get(&certificate_things, in_use) : NULL;
	if(in_use && strcmp(in_use, c->id) && !(its_things && listed(its_things, thing))){
		mosquitto_kick_client_by_clientid(thing, false);
	}
}

/* Each thing of ``things`` newly attached to certificate ``id``: a connection under its name made
 * with a certificate not attached to it is closed (the thing is now its attached certificates'). */
static void claim_things(const char *things, const char *old, const char *id)
{
	struct claim c = { old, id };
	each_name(things, claim_one, &c);
}

/* certificate-things: one target (see run_command and certificate_commands). */
static void certificate_things_command(const char *target, size_t len)
{
	char id[65], *things, *name;
	const char *slash;
	char *old;
	if(len < 65) return;
	memcpy(id, target, 64);
	id[64] = '\0';
	slash = memchr(target + 64, '/', len - 64);
	if(!slash) return;
	things = strndup(target + 64, (size_t)(slash - target - 64));
	name = strndup(slash + 1, (size_t)(target + len - slash - 1));
	if(!things || !name){ free(things); free(name); return; }
	old = table_get(&certificate_things, id);
	count_attached(old, -1);
	count_attached(things, +1);
	if(things[0]){
		table_put(&certificate_things, id, things);
		if(table_get(&certificate_things, id) != things){ free(things); things = NULL; }
	}else{
		table_del(&certificate_things, id);
		free(things);
		things = NULL;
	}
	/* Connections it no longer allows: an attached thing it was detached from, or the common
	 * name's once it is attached to things that do not include it. */
	if(old) kick_things(old, id, things ? things : (name[0] ? name : NULL));
	if(things && name[0] && !listed(things, name) && !(old && listed(old, name))) kick_if_made_with(name, id);
	if(things) claim_things(things, old, id);
	if(old != things) free(old);
	free(name);
}

/* deny-, allow-, accept-certificates and certificate-things: each target after the verb's NUL
 * (see run_command). */
static void certificate_commands(enum certificate_verb verb, const char *at, const char *end)
{
	while(at < end){
		const char *next = memchr(at, '\0', (size_t)(end - at));
		size_t len = (size_t)((next ? next : end) - at);
		if(verb == CERTIFICATES_THINGS){
			certificate_things_command(at, len);
		}else if(len >= 64){
			char id[65], *owner;
			memcpy(id, at, 64);
			id[64] = '\0';
			if(verb == CERTIFICATES_DENY){
				table_put(&denied_certificates, id, (void *)1);
				table_del(&accepted_certificates, id);
				/* Its device is connected with it: closed now. Under --mqtt-auth cert a client id
				 * is its certificate's common name, so the one connection it can hold is that name's. */
				owner = strndup(at + 64, len - 64);
				if(owner) kick_if_made_with(owner, id);
				free(owner);
				/* Attached to things, it may be held under their names too. */
				kick_things(table_get(&certificate_things, id), id, NULL);
			}else if(verb == CERTIFICATES_ACCEPT){
				table_put(&accepted_certificates, id, (void *)1);
				table_del(&denied_certificates, id);
			}else{
				table_del(&denied_certificates, id);
				table_del(&accepted_certificates, id);
			}
		}
		at += len + 1;
	}
}

static void run_command(const char *payload, size_t len)
{
	const char *nul = memchr(payload, '\0', len);
	if(!nul || nul + 1 >= payload + len) return;
	if(!strcmp(payload, "deny-certificates")){
		certificate_commands(CERTIFICATES_DENY, nul + 1, payload + len);
		return;
	}
	if(!strcmp(payload, "allow-certificates")){
		certificate_commands(CERTIFICATES_ALLOW, nul + 1, payload + len);
		return;
	}
	if(!strcmp(payload, "accept-certificates")){
		certificate_commands(CERTIFICATES_ACCEPT, nul + 1, payload + len);
		return;
	}
	if(!strcmp(payload, "certificate-things")){
		certificate_commands(CERTIFICATES_THINGS, nul + 1, payload + len);
		return;
	}
	char *target = strndup(nul + 1, (size_t)(payload + len - nul - 1));
	if(!target) return;
	if(!strcmp(payload, "refuse")) table_put(&refused, target, (void *)1);
	if(!strcmp(payload, "allow")) table_del(&refused, target);
	if(!strcmp(payload, "ready")){
		service_ready = true;
		count_told = -1; /* the service's connection is new: what it missed includes the count */
		table_clear(&awaiting); /* and the reports it had not answered: it never will */
		report_batches_taken = report_batches_sent; /* nothing is in flight on a new connection */
		event_batches_taken = event_batches;
		flush_reports(); /* those held for the connection that went */
	}
	if(!strcmp(payload, "kick") || !strcmp(payload, "refuse")){
		mosquitto_kick_client_by_clientid(target, false);
	}
	free(target);
}

/* MESSAGE: an authorised PUBLISH from a client (message sent, with its size); the service's
 * commands arrive here too. */
static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	char thing[256];
	(void)event; (void)userdata;

	if(!client_id) return MOSQ_ERR_SUCCESS;
	if(is_service(client_id)){
		if(!strcmp(ed->topic, REPLIES_TOPIC) && publish_replies(ed->payload, ed->payloadlen)){
			tell_replies_done();
			flush_events();
		}
		else if(!strcmp(ed->topic, CONTROL_TOPIC) && ed->payloadlen > 0) run_command(ed->payload, ed->payloadlen);
		return MOSQ_ERR_SUCCESS;
	}
	if(report_traffic){
		char size[16];
		snprintf(size, sizeof(size), "%u", ed->payloadlen);
		record("S", client_id, size, ed->topic, NULL);
	}
	if(ed->topic[0] == '$' && report_topic(ed->topic, thing, sizeof(thing))){
		/* Handed to a connection that is gone (or has not subscribed yet), a report would reach
		 * nobody; held on while the service reads slower than reports come, for long, it would only
		 * wait longer. Either way, or past the thing's window, it is answered here. */
		bool away = !service_ready, full = !away && reports_held_full();
		if(!away && !full && report_admitted(thing)){
			append_report(ed->topic, thing, ed->payload, ed->payloadlen);
		}else if(strlen(thing) > 128){
			count_event(&unnamed, thing); /* no valid thing to answer, as the service (InvalidThingName) */
		}else if(away){
			answer_rejected(ed->topic, thing, ed->payload, ed->payloadlen, "ServiceUnavailable", UNAVAILABLE_MESSAGE);
			count_event(&unavailable, thing);
		}else if(full){
			answer_rejected(ed->topic, thing, ed->payload, ed->payloadlen, "ServiceOverloaded", OVERLOADED_MESSAGE);
			count_event(&overloaded, thing);
		}else{
			answer_rejected(ed->topic, thing, ed->payload, ed->payloadlen, "Throttled", THROTTLED_MESSAGE);
			count_event(&shed, thing);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* DISCONNECT: reported for the connection that owns its client id (see on_basic_auth). */
static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	(void)event; (void)userdata;

	if(ed->client == service_client){
		service_client = NULL;
		service_ready = false; /* until the service's next connection says "ready" */
		return MOSQ_ERR_SUCCESS;
	}
	if(!client_id || table_get(&authenticated, client_id) != ed->client) return MOSQ_ERR_SUCCESS;
	table_del(&authenticated, client_id);
	remember_certificate(client_id, NULL);
	forget_bucket(client_id);
	if(mosquitto_client_clean_session(ed->client)) forget_subscriptions(client_id);
	record("D", client_id, NULL, NULL, NULL);
	return MOSQ_ERR_SUCCESS;
}

/* TICK: every pass of Mosquitto's main loop (at least every 100 ms): send the reports of the pass,
 * and the event batch when due.
 * Mosquitto 2.0.11 leaves the event's time fields at 0, hence our own monotonic clock. */
/* A P record: the last reply message published here (the service forgets it and those before). */
static void tell_replies_done(void)
{
	char of[16], number[16];
	if(!replies_untold) return;
	snprintf(of, sizeof(of), "%u", replies_of);
	snprintf(number, sizeof(number), "%u", replies_done);
	record("P", of, number, NULL, NULL);
	replies_untold = false;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct timespec now;
	(void)event; (void)event_data; (void)userdata;
	flush_reports();
	clock_gettime(CLOCK_MONOTONIC, &now);
	long elapsed = (long)(now.tv_sec - last_flush_s) * 1000000000L + (now.tv_nsec - last_flush_ns);
	if(elapsed >= flush_ns){
		tell_count();
		tell_counts(&shed, "O");
		tell_counts(&unavailable, "U");
		tell_counts(&overloaded, "B");
		tell_counts(&oversubscribed, "M");
		tell_counts(&unnamed, "I");
		tell_counts(&throttled, "L");
		tell_replies_done();
		sweep_awaiting();
		flush_events();
		run_kicks();
		last_flush_s = (long)now.tv_sec;
		last_flush_ns = now.tv_nsec;
	}
	return MOSQ_ERR_SUCCESS;
}

/* ---- loading -------------------------------------------------------------------------------- */

static int load_passwords(const char *path)
{
	FILE *file = fopen(path, "r");
	char line[4096];
	if(!file){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotdefender: cannot open password file %s", path);
		return MOSQ_ERR_INVAL;
	}
	while(fgets(line, sizeof(line), file)){
		char *start = line, *end, *colon;
		while(*start == ' ' || *start == '\t') start++;
		if(*start == '#' || *start == '\n' || *start == '\r' || !*start) continue;
		colon = strchr(start, ':');
		if(!colon) continue; /* the service validated the file's format before starting us */
		*colon = '\0';
		char *secret = colon + 1;
		for(end = colon - 1; end >= start && (*end == ' ' || *end == '\t'); end--) *end = '\0';
		while(*secret == ' ' || *secret == '\t') secret++;
		for(end = secret + strlen(secret) - 1; end >= secret && strchr(" \t\r\n", *end); end--) *end = '\0';
		table_put(&passwords, start, strdup(secret));
	}
	fclose(file);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;
	(void)user_data;
	plugin_id = identifier;
	for(i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value;
		if(!strcmp(key, "service_id")) service_id = strdup(value);
		else if(!strcmp(key, "service_secret")) service_secret = strdup(value);
		else if(!strcmp(key, "auth")) auth_mode = !strcmp(value, "password") ? AUTH_PASSWORD
			: !strcmp(value, "cert") ? AUTH_CERT : AUTH_NONE;
		else if(!strcmp(key, "acl")) acl_any = !strcmp(value, "any");
		else if(!strcmp(key, "certificates")) registered_only = !strcmp(value, "registered");
		else if(!strcmp(key, "report_traffic")) report_traffic = strcmp(value, "0") != 0;
		else if(!strcmp(key, "app_acl") && !strcmp(value, "file")){
			broker_acl_check = (broker_acl_check_fn)dlsym(RTLD_DEFAULT, "mosquitto_acl_check");
			if(!broker_acl_check){
				mosquitto_log_printf(MOSQ_LOG_ERR, "iotdefender: this Mosquitto build does not export "
						"mosquitto_acl_check, which an ACL file for application topics needs");
				return MOSQ_ERR_INVAL;
			}
		}
		else if(!strcmp(key, "flush_ms")) flush_ns = atol(value) * 1000000L;
		else if(!strcmp(key, "publish_rate")) publish_rate = atof(value);
		else if(!strcmp(key, "report_window")) report_window = (unsigned)strtoul(value, NULL, 10);
		else if(!strcmp(key, "max_subscriptions")) max_subscriptions = (unsigned)strtoul(value, NULL, 10);
		else if(!strcmp(key, "reports_held_bytes")) reports_held_max = (size_t)strtoull(value, NULL, 10);
		else if(!strcmp(key, "batches_in_flight")) batches_in_flight = (uint32_t)strtoul(value, NULL, 10);
		else if(!strcmp(key, "password_file")){
			rc = load_passwords(value);
			if(rc) return rc;
		}
	}
	if(!service_id || !service_secret){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotdefender: plugin_opt_service_id and _service_secret are required");
		return MOSQ_ERR_INVAL;
	}
	{
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		instance = (uint32_t)(now.tv_nsec ^ (now.tv_sec << 20)) ^ (uint32_t)getpid() * 2654435761u;
	}
	mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *options, int option_count)
{
	(void)user_data; (void)options; (void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	table_clear(&passwords);
	table_clear(&refused);
	table_clear(&denied_certificates);
	table_clear(&accepted_certificates);
	table_clear(&certificate_things);
	table_clear(&attached_things);
	table_clear(&client_certificates);
	table_clear(&buckets);
	table_clear(&awaiting);
	table_clear(&shed);
	table_clear(&throttled);
	table_clear(&unavailable);
	table_clear(&oversubscribed);
	{
		size_t k;
		for(k = 0; k < subscriptions.size; k++){
			struct entry *e;
			for(e = subscriptions.buckets[k]; e; e = e->next) table_clear(e->value);
		}
		table_clear(&subscriptions); /* frees each filters table itself */
	}
	table_clear(&unnamed);
	table_clear(&overloaded);
	while(held_first){
		struct held_batch *h = held_first;
		held_first = h->next;
		free(h->batch.data);
		free(h);
	}
	/* authenticated holds Mosquitto's pointers: drop the entries, not what they point to. */
	{
		size_t k;
		for(k = 0; k < authenticated.size; k++){
			struct entry *e = authenticated.buckets[k], *next;
			for(; e; e = next){ next = e->next; free(e->key); free(e); }
		}
		free(authenticated.buckets);
		memset(&authenticated, 0, sizeof(authenticated));
	}
	for(size_t k = 0; k < kicks_len; k++) free(kicks[k].client_id);
	free(kicks);
	free(events.data);
	free(reports.data);
	free(service_id);
	free(service_secret);
	return MOSQ_ERR_SUCCESS;
}
