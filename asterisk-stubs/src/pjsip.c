/*
 * Stand-in Asterisk: the res_pjsip publish API subset of ../src/pjsip/sip_api.h
 * (res_pjsip_outbound_publish, res_pjsip_pubsub's inbound PUBLISH), carried as real
 * SIP text over one UDP transport on loopback. Written for the stand-in from the
 * behaviour of Asterisk's modules; no pjproject.
 *
 * <astetcdir>/pjsip.conf: type=transport (protocol=udp, bind=ip:port), type=endpoint,
 * type=outbound-publish (server_uri, from_uri, to_uri, event, expiration) and
 * type=inbound-publication (endpoint, event_<name>=<configuration>).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "stub.h"
#include "sip_api.h"

#define SIP_T1_MS 500
#define SIP_T2_MS 4000
#define SIP_TIMEOUT_MS (64 * SIP_T1_MS)
#define DEFAULT_PUBLISH_EXPIRES 3600
#define REFRESH_MARGIN 5          /* as PJSIP_PUBLISHC_DELAY_BEFORE_REFRESH */
#define MAX_DATAGRAM 65535
#define UAS_CACHE_MS 32000        /* a server transaction absorbs retransmissions this long */

/* ---- sorcery-like objects: every one starts with this header ---- */

struct sorcery_hdr {
	char *id;
};

const char *ast_sorcery_object_get_id(const void *object)
{
	return object ? ((const struct sorcery_hdr *)object)->id : NULL;
}

struct ast_sip_endpoint {
	struct sorcery_hdr hdr;
};

struct ast_sip_outbound_publish {
	struct sorcery_hdr hdr;
	char *server_uri, *from_uri, *to_uri, *event;
	int expiration;
	struct sockaddr_in dest;
	int dest_ok;
	struct ast_sip_outbound_publish_client *client;   /* running one, or NULL (pj_lock) */
	struct ast_sip_event_publisher_handler *handler;  /* that started it */
};

struct event_conf {
	char *event, *value;
	struct event_conf *next;
};

struct inbound_publication {
	char *name, *endpoint;
	struct event_conf *events;
	struct inbound_publication *next;
};

/* ---- messages ---- */

struct pjsip_media_type {
	char *type;
	char *subtype;
};

struct pjsip_msg_body {
	struct pjsip_media_type content_type;   /* first, as ast_sip_is_content_type needs */
	const char *data;
	size_t len;
};

struct sip_hdr {
	char *name, *value;
};

struct sip_msg {
	int is_request;
	char *method, *uri;       /* request */
	int code;                 /* response */
	struct sip_hdr *hdrs;
	int nhdrs;
	const char *body;
	size_t body_len;
	char *raw;                /* the datagram (owns the body bytes) */
};

/* ---- outbound clients ---- */

struct queued_body {
	char *type, *subtype, *text;
	struct queued_body *next;
};

struct ast_sip_outbound_publish_client {
	struct ast_sip_outbound_publish *publish;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct queued_body *head, *tail;
	struct queued_body *last;          /* the body last accepted, for a 412 on a refresh */
	int stopping;
	pthread_t thread;
	char call_id[64], from_tag[32];
	unsigned int cseq;
	char etag[128];
	int granted;                       /* expires of the last 2xx */
	struct timespec refresh_at;        /* CLOCK_MONOTONIC; valid when etag set */
	/* the transaction in flight */
	int waiting;
	unsigned int wait_cseq;
	char wait_branch[64];
	int got_code;
	char got_etag[128];
	int got_expires;
	struct ast_sip_outbound_publish_client *next;   /* all_clients (pj_lock) */
};

/* ---- inbound ---- */

struct handler_reg {
	struct ast_sip_publish_handler *handler;
	int inuse;
	struct handler_reg *next;
};

struct ast_sip_publication {
	struct ast_sip_publish_handler *handler;
	struct ast_sip_endpoint *endpoint;
	char *resource, *event_configuration;
	int entity_tag;
	unsigned int expires;
	struct timespec expire_at;
	struct ast_sip_publication *next;   /* publications (pj_lock); the list holds a reference */
};

struct uas_entry {
	char *key;         /* branch + call-id + cseq */
	char *response;
	size_t len;
	struct sockaddr_in to;
	struct timespec at;
	struct uas_entry *next;
};

/* ---- state ---- */

static pthread_mutex_t pj_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pj_cond = PTHREAD_COND_INITIALIZER;
static int present;
static int sock = -1;
static struct sockaddr_in bind_addr;
static char local_hostport[300];
static pthread_t rx_thread;
static int rx_running, rx_stop;
static int logger_on;

static struct ast_sip_endpoint **endpoints;
static int nendpoints;
static struct ast_sip_outbound_publish **publishes;
static int npublishes;
static struct inbound_publication *inbound_pubs;

static struct ast_sip_event_publisher_handler *publisher_handlers[64];
static int npublisher_handlers;
static struct ast_sip_outbound_publish_client *all_clients;
static struct handler_reg *publish_handlers;
static struct ast_sip_publication *publications;
static int etag_counter = 1;
static struct uas_entry *uas_cache;

static void client_stop(struct ast_sip_outbound_publish_client *client);

/* ---- helpers ---- */

static void now_mono(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

static long long ms_until(const struct timespec *t)
{
	struct timespec n;

	now_mono(&n);
	return (long long)(t->tv_sec - n.tv_sec) * 1000 + (t->tv_nsec - n.tv_nsec) / 1000000;
}

static void add_ms(struct timespec *t, long long ms)
{
	t->tv_sec += ms / 1000;
	t->tv_nsec += (ms % 1000) * 1000000;
	if (t->tv_nsec >= 1000000000) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000;
	}
}

/* A deadline `ms` from now for pthread_cond_timedwait on a CLOCK_MONOTONIC cond. */
static struct timespec deadline_ms(long long ms)
{
	struct timespec t;

	now_mono(&t);
	add_ms(&t, ms);
	return t;
}

static void init_mono_cond(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

static void random_token(char *buf, size_t len)
{
	static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char r[64];
	size_t i, n = len - 1 < sizeof(r) ? len - 1 : sizeof(r);
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);

	if (fd < 0 || read(fd, r, n) != (ssize_t)n) {
		for (i = 0; i < n; i++) {
			r[i] = (unsigned char)random();
		}
	}
	if (fd >= 0) {
		close(fd);
	}
	for (i = 0; i < n; i++) {
		buf[i] = chars[r[i] % (sizeof(chars) - 1)];
	}
	buf[n] = '\0';
}

static const char *addr_str(const struct sockaddr_in *a, char *buf, size_t len)
{
	char ip[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
	snprintf(buf, len, "%s:%d", ip, ntohs(a->sin_port));
	return buf;
}

/* host:port of a sip: URI ("sip:user@host:port;params"); 0 on success. */
static int uri_dest(const char *uri, struct sockaddr_in *out)
{
	const char *p = uri, *at, *end;
	char host[256];
	int port = 5060;
	struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_DGRAM }, *res = NULL;
	size_t l;

	if (!strncasecmp(p, "sip:", 4)) {
		p += 4;
	}
	end = p + strcspn(p, ";>?");
	at = memchr(p, '@', (size_t)(end - p));
	if (at) {
		p = at + 1;
	}
	l = (size_t)(end - p);
	if (l == 0 || l >= sizeof(host)) {
		return -1;
	}
	memcpy(host, p, l);
	host[l] = '\0';
	{
		char *colon = strrchr(host, ':');
		if (colon) {
			*colon = '\0';
			port = atoi(colon + 1);
		}
	}
	if (getaddrinfo(host, NULL, &hints, &res) || !res) {
		return -1;
	}
	memcpy(out, res->ai_addr, sizeof(*out));
	out->sin_port = htons((uint16_t)port);
	freeaddrinfo(res);
	return 0;
}

/* The user part of the first sip:/sips: URI in `s`, malloc'd, or NULL. */
static char *uri_user(const char *s)
{
	const char *p = strcasestr(s, "sip:");
	const char *end;

	if (!p) {
		return NULL;
	}
	p += 4;
	end = p + strcspn(p, "@;>? ");
	if (*end != '@' || end == p) {
		return NULL;
	}
	return strndup(p, (size_t)(end - p));
}

/* ---- parsing ---- */

static const char *compact_name(const char *name)
{
	static const struct {
		char c;
		const char *full;
	} forms[] = {
		{ 'v', "Via" }, { 'f', "From" }, { 't', "To" }, { 'i', "Call-ID" }, { 'l', "Content-Length" },
		{ 'c', "Content-Type" }, { 'o', "Event" }, { 'm', "Contact" }, { 'k', "Supported" },
	};
	size_t i;

	if (strlen(name) != 1) {
		return name;
	}
	for (i = 0; i < ARRAY_LEN(forms); i++) {
		if (tolower((unsigned char)name[0]) == forms[i].c) {
			return forms[i].full;
		}
	}
	return name;
}

static void msg_free(struct sip_msg *m)
{
	int i;

	if (!m) {
		return;
	}
	for (i = 0; i < m->nhdrs; i++) {
		free(m->hdrs[i].name);
		free(m->hdrs[i].value);
	}
	free(m->hdrs);
	free(m->method);
	free(m->uri);
	free(m->raw);
	free(m);
}

static const char *hdr(const struct sip_msg *m, const char *name)
{
	int i;

	for (i = 0; i < m->nhdrs; i++) {
		if (!strcasecmp(m->hdrs[i].name, name)) {
			return m->hdrs[i].value;
		}
	}
	return NULL;
}

/* Takes `raw` (NUL-terminated at len). NULL if it is not a SIP message. */
static struct sip_msg *msg_parse(char *raw, size_t len)
{
	struct sip_msg *m = calloc(1, sizeof(*m));
	char *p = raw, *hdr_end, *line, *next;
	const char *cl;
	size_t body_off;

	m->raw = raw;
	hdr_end = strstr(raw, "\r\n\r\n");
	if (hdr_end) {
		body_off = (size_t)(hdr_end - raw) + 4;
	} else if ((hdr_end = strstr(raw, "\n\n"))) {
		body_off = (size_t)(hdr_end - raw) + 2;
	} else {
		hdr_end = raw + len;
		body_off = len;
	}
	*hdr_end = '\0';
	line = p;
	next = strchr(line, '\n');
	if (next) {
		*next++ = '\0';
	}
	line = stub_trim(line);
	if (!strncmp(line, "SIP/2.0 ", 8)) {
		m->code = atoi(line + 8);
		if (m->code < 100 || m->code > 699) {
			goto bad;
		}
	} else {
		char *sp1 = strchr(line, ' '), *sp2;
		if (!sp1 || !(sp2 = strchr(sp1 + 1, ' ')) || strncmp(sp2 + 1, "SIP/2.0", 7)) {
			goto bad;
		}
		m->is_request = 1;
		m->method = strndup(line, (size_t)(sp1 - line));
		m->uri = strndup(sp1 + 1, (size_t)(sp2 - sp1 - 1));
	}
	while (next && *next) {
		char *colon;
		line = next;
		next = strchr(line, '\n');
		if (next) {
			*next++ = '\0';
		}
		/* folded continuation lines */
		while (next && (*next == ' ' || *next == '\t')) {
			char *n2 = strchr(next, '\n');
			char *cr = strchr(line, '\r');
			if (cr) {
				*cr = ' ';
			}
			next[-1] = ' ';
			if (n2) {
				*n2 = '\0';
				next = n2 + 1;
			} else {
				next = NULL;
			}
		}
		line = stub_trim(line);
		if (!*line || !(colon = strchr(line, ':'))) {
			continue;
		}
		*colon = '\0';
		m->hdrs = realloc(m->hdrs, (size_t)(m->nhdrs + 1) * sizeof(*m->hdrs));
		m->hdrs[m->nhdrs].name = strdup(compact_name(stub_trim(line)));
		m->hdrs[m->nhdrs].value = strdup(stub_trim(colon + 1));
		m->nhdrs++;
	}
	m->body = raw + body_off;
	m->body_len = len - body_off;
	if ((cl = hdr(m, "Content-Length"))) {
		size_t want = (size_t)strtoul(cl, NULL, 10);
		if (want < m->body_len) {
			m->body_len = want;
		}
	}
	return m;
bad:
	m->raw = NULL;
	msg_free(m);
	return NULL;
}

/* The value of parameter `name` (e.g. "branch", "tag") in a header value, malloc'd. */
static char *hdr_param(const char *value, const char *name)
{
	const char *p = value;
	size_t l = strlen(name);

	if (!value) {
		return NULL;
	}
	/* parameters after the name-addr's '>' if there is one */
	if (strchr(p, '>')) {
		p = strchr(p, '>');
	}
	while ((p = strchr(p, ';'))) {
		p++;
		while (*p == ' ') {
			p++;
		}
		if (!strncasecmp(p, name, l) && p[l] == '=') {
			const char *v = p + l + 1;
			return strndup(v, strcspn(v, ";, \t"));
		}
	}
	return NULL;
}

/* ---- sending and logging ---- */

static void sip_log(const char *what, const char *dir, const struct sockaddr_in *peer, const char *text, size_t len)
{
	char a[64];

	if (!__atomic_load_n(&logger_on, __ATOMIC_SEQ_CST)) {
		return;
	}
	__ast_verbose(__FILE__, __LINE__, "pjsip_logger", 0, "<--- %s (%zu bytes) %s UDP:%s --->\n%.*s\n", what, len,
		dir, addr_str(peer, a, sizeof(a)), (int)len, text);
}

static void send_text(const char *what, const struct sockaddr_in *to, const char *text, size_t len)
{
	sip_log(what, "to", to, text, len);
	if (sendto(sock, text, len, 0, (const struct sockaddr *)to, sizeof(*to)) < 0) {
		STUB_LOG(LOG_WARNING, "Unable to send SIP message (%zu bytes): %s\n", len, strerror(errno));
	}
}

static const char *reason_phrase(int code)
{
	switch (code) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 412: return "Conditional Request Failed";
	case 489: return "Bad Event";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	default:
		if (code >= 200 && code < 300) {
			return "OK";
		}
		return code < 500 ? "Client Error" : "Server Error";
	}
}

static char *uas_key(const struct sip_msg *req)
{
	char *branch = hdr_param(hdr(req, "Via"), "branch");
	char *key = NULL;

	if (asprintf(&key, "%s|%s|%s", branch ? branch : "", hdr(req, "Call-ID") ? hdr(req, "Call-ID") : "",
		hdr(req, "CSeq") ? hdr(req, "CSeq") : "") < 0) {
		key = NULL;
	}
	free(branch);
	return key;
}

/* Responds to `req` from `from`; `extra` holds more header lines (each ending in CRLF). */
static void respond(const struct sip_msg *req, const struct sockaddr_in *from, int code, const char *extra)
{
	size_t cap = 4096 + (extra ? strlen(extra) : 0), len = 0;
	char *out = malloc(cap);
	char tag[16];
	int i;
	const char *to = hdr(req, "To");
	char *key;

#define ADD(...) len += (size_t)snprintf(out + len, cap > len ? cap - len : 0, __VA_ARGS__)
	for (i = 0; i < req->nhdrs; i++) {
		cap += strlen(req->hdrs[i].value) + 32;
	}
	out = realloc(out, cap);
	ADD("SIP/2.0 %d %s\r\n", code, reason_phrase(code));
	for (i = 0; i < req->nhdrs; i++) {
		if (!strcasecmp(req->hdrs[i].name, "Via")) {
			ADD("Via: %s\r\n", req->hdrs[i].value);
		}
	}
	if (hdr(req, "From")) {
		ADD("From: %s\r\n", hdr(req, "From"));
	}
	if (to) {
		char *t = hdr_param(to, "tag");
		if (t) {
			ADD("To: %s\r\n", to);
			free(t);
		} else {
			random_token(tag, sizeof(tag));
			ADD("To: %s;tag=%s\r\n", to, tag);
		}
	}
	if (hdr(req, "Call-ID")) {
		ADD("Call-ID: %s\r\n", hdr(req, "Call-ID"));
	}
	if (hdr(req, "CSeq")) {
		ADD("CSeq: %s\r\n", hdr(req, "CSeq"));
	}
	if (extra) {
		ADD("%s", extra);
	}
	ADD("Server: Asterisk PBX (stand-in)\r\nContent-Length: 0\r\n\r\n");
#undef ADD
	send_text("Transmitting SIP response", from, out, len);
	/* Kept so that a retransmission of the request gets the same answer. */
	if ((key = uas_key(req))) {
		struct uas_entry *e = calloc(1, sizeof(*e));
		e->key = key;
		e->response = out;
		e->len = len;
		e->to = *from;
		now_mono(&e->at);
		pthread_mutex_lock(&pj_lock);
		e->next = uas_cache;
		uas_cache = e;
		pthread_mutex_unlock(&pj_lock);
	} else {
		free(out);
	}
}

/* 1 if `req` is a retransmission already answered (the answer is sent again). */
static int uas_absorb(const struct sip_msg *req)
{
	char *key = uas_key(req);
	struct uas_entry *e;
	char *resp = NULL;
	size_t len = 0;
	struct sockaddr_in to;

	if (!key) {
		return 0;
	}
	pthread_mutex_lock(&pj_lock);
	for (e = uas_cache; e; e = e->next) {
		if (!strcmp(e->key, key)) {
			resp = malloc(e->len);
			memcpy(resp, e->response, e->len);
			len = e->len;
			to = e->to;
			break;
		}
	}
	pthread_mutex_unlock(&pj_lock);
	free(key);
	if (!resp) {
		return 0;
	}
	send_text("Transmitting SIP response", &to, resp, len);
	free(resp);
	return 1;
}

/* ---- configuration ---- */

static void endpoint_destroy(void *obj)
{
	struct ast_sip_endpoint *e = obj;

	free(e->hdr.id);
}

static struct ast_sip_endpoint *find_endpoint(const char *name)
{
	int i;

	for (i = 0; name && i < nendpoints; i++) {
		if (!strcmp(endpoints[i]->hdr.id, name)) {
			return endpoints[i];
		}
	}
	return NULL;
}

static int load_config(void)
{
	char path[4200];
	struct ast_flags flags = { CONFIG_FLAG_NOCACHE };
	struct ast_config *cfg;
	const char *cat = NULL;
	int have_transport = 0;

	snprintf(path, sizeof(path), "%s/pjsip.conf", stub_etc_dir);
	cfg = ast_config_load2(path, "res_pjsip", flags);
	if (!cfg || cfg == CONFIG_STATUS_FILEINVALID || cfg == CONFIG_STATUS_FILEMISSING) {
		return 0;
	}
	while ((cat = ast_category_browse(cfg, cat))) {
		struct ast_variable *v;
		const char *type = NULL;

		for (v = ast_variable_browse(cfg, cat); v; v = v->next) {
			if (!strcasecmp(v->name, "type")) {
				type = v->value;
			}
		}
		if (!type) {
			continue;
		}
		if (!strcasecmp(type, "transport")) {
			const char *bind = "0.0.0.0:5060", *protocol = "udp";
			char host[256];
			char *colon;
			int port = 5060;

			for (v = ast_variable_browse(cfg, cat); v; v = v->next) {
				if (!strcasecmp(v->name, "bind")) {
					bind = v->value;
				} else if (!strcasecmp(v->name, "protocol")) {
					protocol = v->value;
				}
			}
			if (strcasecmp(protocol, "udp")) {
				STUB_LOG(LOG_WARNING, "Transport '%s': only protocol=udp is in the stand-in\n", cat);
				continue;
			}
			if (have_transport) {
				STUB_LOG(LOG_WARNING, "Transport '%s': the stand-in uses only the first transport\n", cat);
				continue;
			}
			snprintf(host, sizeof(host), "%s", bind);
			if ((colon = strrchr(host, ':'))) {
				*colon = '\0';
				port = atoi(colon + 1);
			}
			memset(&bind_addr, 0, sizeof(bind_addr));
			bind_addr.sin_family = AF_INET;
			bind_addr.sin_port = htons((uint16_t)port);
			if (inet_pton(AF_INET, host, &bind_addr.sin_addr) != 1) {
				STUB_LOG(LOG_ERROR, "Transport '%s': bind '%s' is not an IPv4 address\n", cat, bind);
				continue;
			}
			snprintf(local_hostport, sizeof(local_hostport), "%s:%d",
				strcmp(host, "0.0.0.0") ? host : "127.0.0.1", port);
			have_transport = 1;
		} else if (!strcasecmp(type, "endpoint")) {
			struct ast_sip_endpoint *e = __ao2_alloc(sizeof(*e), endpoint_destroy, 0, NULL, __FILE__, __LINE__, __func__);
			e->hdr.id = strdup(cat);
			endpoints = realloc(endpoints, (size_t)(nendpoints + 1) * sizeof(*endpoints));
			endpoints[nendpoints++] = e;
		} else if (!strcasecmp(type, "outbound-publish")) {
			struct ast_sip_outbound_publish *p = calloc(1, sizeof(*p));
			p->hdr.id = strdup(cat);
			p->expiration = DEFAULT_PUBLISH_EXPIRES;
			for (v = ast_variable_browse(cfg, cat); v; v = v->next) {
				if (!strcasecmp(v->name, "server_uri")) {
					free(p->server_uri);
					p->server_uri = strdup(v->value);
				} else if (!strcasecmp(v->name, "from_uri")) {
					free(p->from_uri);
					p->from_uri = strdup(v->value);
				} else if (!strcasecmp(v->name, "to_uri")) {
					free(p->to_uri);
					p->to_uri = strdup(v->value);
				} else if (!strcasecmp(v->name, "event")) {
					free(p->event);
					p->event = strdup(v->value);
				} else if (!strcasecmp(v->name, "expiration")) {
					p->expiration = atoi(v->value);
				}
			}
			if (!p->server_uri || !p->event) {
				STUB_LOG(LOG_ERROR, "Outbound publish '%s' needs server_uri and event\n", cat);
				free(p->server_uri);
				free(p->from_uri);
				free(p->to_uri);
				free(p->event);
				free(p->hdr.id);
				free(p);
				continue;
			}
			if (!p->from_uri) {
				p->from_uri = strdup(p->server_uri);
			}
			if (!p->to_uri) {
				p->to_uri = strdup(p->server_uri);
			}
			p->dest_ok = !uri_dest(p->server_uri, &p->dest);
			if (!p->dest_ok) {
				STUB_LOG(LOG_ERROR, "Outbound publish '%s': cannot resolve server_uri '%s'\n", cat, p->server_uri);
			}
			publishes = realloc(publishes, (size_t)(npublishes + 1) * sizeof(*publishes));
			publishes[npublishes++] = p;
		} else if (!strcasecmp(type, "inbound-publication")) {
			struct inbound_publication *ip = calloc(1, sizeof(*ip));
			struct event_conf **tail = &ip->events;
			ip->name = strdup(cat);
			for (v = ast_variable_browse(cfg, cat); v; v = v->next) {
				if (!strcasecmp(v->name, "endpoint")) {
					free(ip->endpoint);
					ip->endpoint = strdup(v->value);
				} else if (!strncasecmp(v->name, "event_", 6) && v->name[6]) {
					struct event_conf *ec = calloc(1, sizeof(*ec));
					ec->event = strdup(v->name + 6);
					ec->value = strdup(v->value);
					*tail = ec;
					tail = &ec->next;
				}
			}
			ip->next = inbound_pubs;
			inbound_pubs = ip;
		}
	}
	ast_config_destroy(cfg);
	return have_transport;
}

/* ---- outbound publish ---- */

static void body_free(struct queued_body *q)
{
	if (q) {
		free(q->type);
		free(q->subtype);
		free(q->text);
		free(q);
	}
}

static void client_destroy(void *obj)
{
	struct ast_sip_outbound_publish_client *c = obj;
	struct queued_body *q;

	while ((q = c->head)) {
		c->head = q->next;
		body_free(q);
	}
	body_free(c->last);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
}

/* Builds the PUBLISH text. Called with client->lock held. */
static char *build_publish(struct ast_sip_outbound_publish_client *c, const struct queued_body *body, int expires,
	const char *branch, size_t *len_out)
{
	struct ast_sip_outbound_publish *p = c->publish;
	size_t blen = body ? strlen(body->text) : 0;
	size_t cap = 2048 + strlen(p->server_uri) + strlen(p->from_uri) + strlen(p->to_uri) + strlen(p->event) + blen
		+ (body ? strlen(body->type) + strlen(body->subtype) : 0);
	char *out = malloc(cap);
	size_t len = 0;

#define ADD(...) len += (size_t)snprintf(out + len, cap > len ? cap - len : 0, __VA_ARGS__)
	ADD("PUBLISH %s SIP/2.0\r\n", p->server_uri);
	ADD("Via: SIP/2.0/UDP %s;rport;branch=%s\r\n", local_hostport, branch);
	ADD("From: <%s>;tag=%s\r\n", p->from_uri, c->from_tag);
	ADD("To: <%s>\r\n", p->to_uri);
	ADD("Call-ID: %s\r\n", c->call_id);
	ADD("CSeq: %u PUBLISH\r\n", c->cseq);
	ADD("Event: %s\r\n", p->event);
	ADD("Expires: %d\r\n", expires);
	if (c->etag[0]) {
		ADD("SIP-If-Match: %s\r\n", c->etag);
	}
	ADD("Max-Forwards: 70\r\n");
	ADD("User-Agent: Asterisk PBX (stand-in)\r\n");
	if (body) {
		ADD("Content-Type: %s/%s\r\n", body->type, body->subtype);
	}
	ADD("Content-Length: %zu\r\n\r\n", blen);
#undef ADD
	if (body && len + blen < cap) {
		memcpy(out + len, body->text, blen);
		len += blen;
	}
	*len_out = len;
	return out;
}

/*
 * One non-INVITE client transaction. Called and returns with client->lock held (released
 * while waiting). The final status, 0 on timeout, -1 when the client is stopping (unless
 * `ignore_stop`).
 */
static int transact(struct ast_sip_outbound_publish_client *c, const struct queued_body *body, int expires,
	int ignore_stop, long long max_ms)
{
	char branch[48] = "z9hG4bKPj";
	char *text;
	size_t len;
	long long interval = SIP_T1_MS;
	struct timespec give_up = deadline_ms(max_ms), next;
	int code = 0;

	random_token(branch + 9, sizeof(branch) - 9);
	c->cseq++;
	text = build_publish(c, body, expires, branch, &len);
	c->waiting = 1;
	c->wait_cseq = c->cseq;
	snprintf(c->wait_branch, sizeof(c->wait_branch), "%s", branch);
	c->got_code = 0;
	c->got_etag[0] = '\0';
	c->got_expires = -1;
	pthread_mutex_unlock(&c->lock);
	send_text("Transmitting SIP request", &c->publish->dest, text, len);
	pthread_mutex_lock(&c->lock);
	next = deadline_ms(interval);
	for (;;) {
		if (c->got_code >= 200) {
			code = c->got_code;
			break;
		}
		if (c->stopping && !ignore_stop) {
			code = -1;
			break;
		}
		if (ms_until(&give_up) <= 0) {
			code = 0;
			break;
		}
		if (ms_until(&next) <= 0) {
			/* Timer E: retransmit, doubling up to T2. */
			pthread_mutex_unlock(&c->lock);
			send_text("Transmitting SIP request", &c->publish->dest, text, len);
			pthread_mutex_lock(&c->lock);
			interval = interval * 2 > SIP_T2_MS ? SIP_T2_MS : interval * 2;
			next = deadline_ms(interval);
			continue;
		}
		{
			struct timespec until = ms_until(&next) < ms_until(&give_up) ? next : give_up;
			pthread_cond_timedwait(&c->cond, &c->lock, &until);
		}
	}
	c->waiting = 0;
	free(text);
	return code;
}

static void *client_thread(void *arg)
{
	struct ast_sip_outbound_publish_client *c = arg;
	const char *name = c->publish->hdr.id;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct queued_body *msg;
		int code, refresh = 0;

		while (!c->stopping && !c->head) {
			if (c->etag[0]) {
				if (ms_until(&c->refresh_at) <= 0) {
					refresh = 1;
					break;
				}
				pthread_cond_timedwait(&c->cond, &c->lock, &c->refresh_at);
			} else {
				pthread_cond_wait(&c->cond, &c->lock);
			}
		}
		if (c->stopping) {
			break;
		}
		msg = refresh ? NULL : c->head;
		code = transact(c, msg, c->publish->expiration, 0, SIP_TIMEOUT_MS);
		if (code < 0) {
			break;
		}
		if (code >= 200 && code < 300) {
			int granted = c->got_expires > 0 ? c->got_expires : c->publish->expiration;
			long long delay = granted - REFRESH_MARGIN;
			if (c->publish->expiration && delay > c->publish->expiration) {
				delay = c->publish->expiration;
			}
			if (delay < REFRESH_MARGIN) {
				delay = REFRESH_MARGIN;
			}
			snprintf(c->etag, sizeof(c->etag), "%s", c->got_etag);
			c->granted = granted;
			c->refresh_at = deadline_ms(delay * 1000);
		} else if (code == 412) {
			/* As a new publish client: the same body again as an initial PUBLISH. */
			c->etag[0] = '\0';
			random_token(c->call_id, sizeof(c->call_id));
			random_token(c->from_tag, sizeof(c->from_tag));
			c->cseq = 0;
			if (!msg && c->last) {
				/* A refresh: publish the last body again. */
				struct queued_body *again = calloc(1, sizeof(*again));
				again->type = strdup(c->last->type);
				again->subtype = strdup(c->last->subtype);
				again->text = strdup(c->last->text);
				again->next = c->head;
				c->head = again;
				if (!c->tail) {
					c->tail = again;
				}
			}
			continue;
		} else if (code == 401 || code == 407) {
			STUB_LOG(LOG_ERROR, "Outbound publish '%s' was challenged (%d); the stand-in has no authentication\n",
				name, code);
		} else if (code == 0) {
			STUB_LOG(LOG_NOTICE, "No response received for outbound publish '%s'\n", name);
		}
		if (msg && c->head == msg) {
			c->head = msg->next;
			if (!c->head) {
				c->tail = NULL;
			}
			msg->next = NULL;
			if (code >= 200 && code < 300) {
				body_free(c->last);
				c->last = msg;
			} else {
				body_free(msg);
			}
		}
	}
	/* Unpublish what was published, as real does when a client goes away. */
	if (c->etag[0]) {
		transact(c, NULL, 0, 1, 2000);
		c->etag[0] = '\0';
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

static struct ast_sip_outbound_publish_client *client_start(struct ast_sip_outbound_publish *p)
{
	struct ast_sip_outbound_publish_client *c = __ao2_alloc(sizeof(*c), client_destroy, 0, NULL, __FILE__, __LINE__,
		__func__);

	c->publish = p;
	pthread_mutex_init(&c->lock, NULL);
	init_mono_cond(&c->cond);
	random_token(c->call_id, sizeof(c->call_id));
	random_token(c->from_tag, sizeof(c->from_tag));
	__ao2_ref(c, +1, NULL, __FILE__, __LINE__, __func__);   /* the thread's */
	if (pthread_create(&c->thread, NULL, client_thread, c)) {
		__ao2_ref(c, -2, NULL, __FILE__, __LINE__, __func__);
		return NULL;
	}
	return c;
}

/* Stops the thread and waits for it; drops the thread's reference. */
static void client_stop(struct ast_sip_outbound_publish_client *c)
{
	pthread_mutex_lock(&c->lock);
	c->stopping = 1;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	__ao2_ref(c, -1, NULL, __FILE__, __LINE__, __func__);
}

int ast_sip_register_event_publisher_handler(struct ast_sip_event_publisher_handler *handler)
{
	int i;

	if (!handler || !handler->event_name) {
		return -1;
	}
	pthread_mutex_lock(&pj_lock);
	for (i = 0; i < npublisher_handlers; i++) {
		if (publisher_handlers[i] == handler || !strcmp(publisher_handlers[i]->event_name, handler->event_name)) {
			pthread_mutex_unlock(&pj_lock);
			STUB_LOG(LOG_ERROR, "Handler already registered for %s\n", handler->event_name);
			return -1;
		}
	}
	if (npublisher_handlers == (int)ARRAY_LEN(publisher_handlers)) {
		pthread_mutex_unlock(&pj_lock);
		return -1;
	}
	publisher_handlers[npublisher_handlers++] = handler;
	pthread_mutex_unlock(&pj_lock);
	if (!present) {
		return 0;
	}
	for (i = 0; i < npublishes; i++) {
		struct ast_sip_outbound_publish *p = publishes[i];
		struct ast_sip_outbound_publish_client *c;

		if (strcmp(p->event, handler->event_name) || !p->dest_ok) {
			continue;
		}
		if (!(c = client_start(p))) {
			continue;
		}
		pthread_mutex_lock(&pj_lock);
		p->client = c;
		p->handler = handler;
		c->next = all_clients;
		all_clients = c;
		pthread_mutex_unlock(&pj_lock);
		if (handler->start_publishing && handler->start_publishing(p, c)) {
			STUB_LOG(LOG_ERROR, "Failed to start outbound publish '%s' for event '%s'\n", p->hdr.id, p->event);
		}
	}
	return 0;
}

void ast_sip_unregister_event_publisher_handler(struct ast_sip_event_publisher_handler *handler)
{
	int i;

	pthread_mutex_lock(&pj_lock);
	for (i = 0; i < npublisher_handlers; i++) {
		if (publisher_handlers[i] == handler) {
			memmove(&publisher_handlers[i], &publisher_handlers[i + 1],
				(size_t)(npublisher_handlers - i - 1) * sizeof(*publisher_handlers));
			npublisher_handlers--;
			break;
		}
	}
	pthread_mutex_unlock(&pj_lock);
	for (i = 0; i < npublishes; i++) {
		struct ast_sip_outbound_publish *p = publishes[i];
		struct ast_sip_outbound_publish_client *c, **pp;

		pthread_mutex_lock(&pj_lock);
		c = p->handler == handler ? p->client : NULL;
		if (c) {
			p->client = NULL;
			p->handler = NULL;
		}
		pthread_mutex_unlock(&pj_lock);
		if (!c) {
			continue;
		}
		if (handler->stop_publishing) {
			handler->stop_publishing(c);
		}
		/* Still in all_clients while it stops, so that the unpublish gets its answer. */
		client_stop(c);
		pthread_mutex_lock(&pj_lock);
		for (pp = &all_clients; *pp && *pp != c; pp = &(*pp)->next) {
		}
		if (*pp) {
			*pp = c->next;
		}
		pthread_mutex_unlock(&pj_lock);
		__ao2_ref(c, -1, NULL, __FILE__, __LINE__, __func__);   /* p->client's */
	}
}

struct ast_sip_outbound_publish_client *ast_sip_publish_client_get(const char *name)
{
	struct ast_sip_outbound_publish_client *c = NULL;
	int i;

	pthread_mutex_lock(&pj_lock);
	for (i = 0; name && i < npublishes; i++) {
		if (!strcmp(publishes[i]->hdr.id, name) && publishes[i]->client) {
			c = publishes[i]->client;
			__ao2_ref(c, +1, NULL, __FILE__, __LINE__, __func__);
			break;
		}
	}
	pthread_mutex_unlock(&pj_lock);
	return c;
}

/* Only the client's own publisher (user "") is supported: a stopped client is
 * replaced by a new one here, so there is never a spent publisher to remove. */
int ast_sip_publish_client_user_send(struct ast_sip_outbound_publish_client *client,
	const char *user, const struct ast_sip_body *body)
{
	if (user && *user) {
		return -1;
	}
	return ast_sip_publish_client_send(client, body);
}

void ast_sip_publish_client_remove(struct ast_sip_outbound_publish_client *client, const char *user)
{
}

int ast_sip_publish_client_send(struct ast_sip_outbound_publish_client *client, const struct ast_sip_body *body)
{
	struct queued_body *q;

	if (!client || !body || !body->type || !body->subtype) {
		return -1;
	}
	q = calloc(1, sizeof(*q));
	q->type = strdup(body->type);
	q->subtype = strdup(body->subtype);
	q->text = strdup(body->body_text ? body->body_text : "");
	pthread_mutex_lock(&client->lock);
	if (client->stopping) {
		pthread_mutex_unlock(&client->lock);
		free(q->type);
		free(q->subtype);
		free(q->text);
		free(q);
		return -1;
	}
	if (client->tail) {
		client->tail->next = q;
	} else {
		client->head = q;
	}
	client->tail = q;
	pthread_cond_broadcast(&client->cond);
	pthread_mutex_unlock(&client->lock);
	return 0;
}

/* A response: to the client waiting on that Call-ID, CSeq and branch. */
static void handle_response(struct sip_msg *m)
{
	const char *call_id = hdr(m, "Call-ID"), *cseq = hdr(m, "CSeq");
	char *branch = hdr_param(hdr(m, "Via"), "branch");
	struct ast_sip_outbound_publish_client *c;

	if (!call_id || !cseq || !branch) {
		free(branch);
		return;
	}
	pthread_mutex_lock(&pj_lock);
	for (c = all_clients; c; c = c->next) {
		if (!strcmp(c->call_id, call_id)) {
			__ao2_ref(c, +1, NULL, __FILE__, __LINE__, __func__);
			break;
		}
	}
	pthread_mutex_unlock(&pj_lock);
	if (!c) {
		free(branch);
		return;
	}
	pthread_mutex_lock(&c->lock);
	if (c->waiting && (unsigned int)strtoul(cseq, NULL, 10) == c->wait_cseq && !strcmp(branch, c->wait_branch)
		&& m->code >= 200 && !c->got_code) {
		const char *etag = hdr(m, "SIP-ETag"), *exp = hdr(m, "Expires");
		c->got_code = m->code;
		snprintf(c->got_etag, sizeof(c->got_etag), "%s", etag ? etag : "");
		c->got_expires = exp ? atoi(exp) : -1;
		pthread_cond_broadcast(&c->cond);
	}
	pthread_mutex_unlock(&c->lock);
	__ao2_ref(c, -1, NULL, __FILE__, __LINE__, __func__);
	free(branch);
}

/* ---- inbound publications (res_pjsip_pubsub) ---- */

int ast_sip_register_publish_handler(struct ast_sip_publish_handler *handler)
{
	struct handler_reg *r;

	if (!handler || !handler->event_name || !handler->new_publication || !handler->publication_state_change) {
		STUB_LOG(LOG_ERROR, "Handler does not provide the required callbacks\n");
		return -1;
	}
	pthread_mutex_lock(&pj_lock);
	for (r = publish_handlers; r; r = r->next) {
		if (r->handler == handler || !strcmp(r->handler->event_name, handler->event_name)) {
			pthread_mutex_unlock(&pj_lock);
			STUB_LOG(LOG_ERROR, "Handler already registered for %s\n", handler->event_name);
			return -1;
		}
	}
	r = calloc(1, sizeof(*r));
	r->handler = handler;
	r->next = publish_handlers;
	publish_handlers = r;
	/* Not an ao2 container in the stand-in: only non-NULL, to be left alone. */
	handler->publications = (struct ao2_container *)r;
	pthread_mutex_unlock(&pj_lock);
	return 0;
}

static void publication_destroy(void *obj)
{
	struct ast_sip_publication *pub = obj;

	if (pub->endpoint) {
		__ao2_ref(pub->endpoint, -1, NULL, __FILE__, __LINE__, __func__);
	}
	free(pub->resource);
	free(pub->event_configuration);
}

void ast_sip_unregister_publish_handler(struct ast_sip_publish_handler *handler)
{
	struct handler_reg *r, **pp;
	struct ast_sip_publication *pub, **pq, *dropped = NULL;

	pthread_mutex_lock(&pj_lock);
	for (pp = &publish_handlers; *pp && (*pp)->handler != handler; pp = &(*pp)->next) {
	}
	if (!(r = *pp)) {
		pthread_mutex_unlock(&pj_lock);
		return;
	}
	*pp = r->next;
	/* Wait for a callback into the handler that is running, unless this is it. */
	while (r->inuse > 0 && !(rx_running && pthread_equal(pthread_self(), rx_thread))) {
		pthread_cond_wait(&pj_cond, &pj_lock);
	}
	for (pq = &publications; (pub = *pq);) {
		if (pub->handler == handler) {
			*pq = pub->next;
			pub->handler = NULL;
			pub->next = dropped;
			dropped = pub;
		} else {
			pq = &pub->next;
		}
	}
	handler->publications = NULL;
	pthread_mutex_unlock(&pj_lock);
	free(r);
	while ((pub = dropped)) {
		dropped = pub->next;
		__ao2_ref(pub, -1, NULL, __FILE__, __LINE__, __func__);
	}
}

const char *ast_sip_publication_get_event_configuration(const struct ast_sip_publication *pub)
{
	return pub ? pub->event_configuration : NULL;
}

const char *ast_sip_publication_get_resource(const struct ast_sip_publication *pub)
{
	return pub ? pub->resource : NULL;
}

int ast_sip_is_content_type(pjsip_media_type *content_type, char *type, char *subtype)
{
	if (!content_type || !content_type->type || !content_type->subtype || !type || !subtype) {
		return 0;
	}
	return !strcasecmp(content_type->type, type) && !strcasecmp(content_type->subtype, subtype);
}

int pjsip_print_text_body(pjsip_msg_body *msg_body, char *buf, size_t size)
{
	if (!msg_body || !buf || msg_body->len > size) {
		return -1;
	}
	memcpy(buf, msg_body->data, msg_body->len);
	return (int)msg_body->len;
}

/* The registration for `event`, marked in use (pj_lock held). */
static struct handler_reg *use_handler(const char *event)
{
	struct handler_reg *r;

	for (r = publish_handlers; r; r = r->next) {
		if (!strcmp(r->handler->event_name, event)) {
			r->inuse++;
			return r;
		}
	}
	return NULL;
}

static void release_handler(struct handler_reg *r)
{
	pthread_mutex_lock(&pj_lock);
	r->inuse--;
	pthread_cond_broadcast(&pj_cond);
	pthread_mutex_unlock(&pj_lock);
}

static void handle_publish(struct sip_msg *m, const struct sockaddr_in *from)
{
	const char *from_hdr = hdr(m, "From"), *event_hdr = hdr(m, "Event"), *if_match = hdr(m, "SIP-If-Match");
	const char *exp_hdr = hdr(m, "Expires"), *ctype = hdr(m, "Content-Type");
	char *user = from_hdr ? uri_user(from_hdr) : NULL;
	struct ast_sip_endpoint *endpoint = find_endpoint(user);
	char event[64], extra[128];
	struct handler_reg *reg;
	struct ast_sip_publish_handler *handler;
	unsigned int expires = exp_hdr ? (unsigned int)strtoul(exp_hdr, NULL, 10) : DEFAULT_PUBLISH_EXPIRES;
	struct pjsip_msg_body body_storage, *body = NULL;
	char ctype_type[128] = "", ctype_sub[128] = "";
	struct ast_sip_publication *pub = NULL;

	free(user);
	if (!endpoint) {
		char a[64];
		char *shown = strndup(from_hdr ? from_hdr : "", from_hdr && strchr(from_hdr, '>')
			? (size_t)(strchr(from_hdr, '>') - from_hdr + 1) : strcspn(from_hdr ? from_hdr : "", ";"));
		inet_ntop(AF_INET, &from->sin_addr, a, sizeof(a));
		STUB_LOG(LOG_NOTICE, "Request '%s' from '%s' failed for '%s:%d' (callid: %s) - No matching endpoint found\n",
			m->method, shown, a, ntohs(from->sin_port), hdr(m, "Call-ID") ? hdr(m, "Call-ID") : "");
		free(shown);
		respond(m, from, 403, NULL);
		return;
	}
	if (!event_hdr) {
		STUB_LOG(LOG_WARNING, "Incoming PUBLISH request from %s with no Event header\n", endpoint->hdr.id);
		respond(m, from, 489, NULL);
		return;
	}
	snprintf(event, sizeof(event), "%.*s", (int)strcspn(event_hdr, "; \t"), event_hdr);
	pthread_mutex_lock(&pj_lock);
	reg = use_handler(event);
	pthread_mutex_unlock(&pj_lock);
	if (!reg) {
		STUB_LOG(LOG_WARNING, "No registered publish handler for event %s from %s\n", event, endpoint->hdr.id);
		respond(m, from, 489, NULL);
		return;
	}
	handler = reg->handler;
	if (m->body_len > 0) {
		if (ctype) {
			const char *slash = strchr(ctype, '/');
			size_t tl = slash ? (size_t)(slash - ctype) : strcspn(ctype, ";");
			snprintf(ctype_type, sizeof(ctype_type), "%.*s", (int)tl, ctype);
			if (slash) {
				snprintf(ctype_sub, sizeof(ctype_sub), "%.*s", (int)strcspn(slash + 1, "; \t"), slash + 1);
			}
		}
		stub_trim(ctype_type);
		body_storage.content_type.type = ctype_type;
		body_storage.content_type.subtype = ctype_sub;
		body_storage.data = m->body;
		body_storage.len = m->body_len;
		body = &body_storage;
	}

	if (if_match) {
		int tag;
		struct ast_sip_publication **pp;

		if (sscanf(if_match, "%30d", &tag) != 1) {
			respond(m, from, 400, NULL);
			goto done;
		}
		pthread_mutex_lock(&pj_lock);
		for (pp = &publications; *pp; pp = &(*pp)->next) {
			if ((*pp)->handler == handler && (*pp)->entity_tag == tag) {
				pub = *pp;
				*pp = pub->next;   /* the list's reference is now ours */
				pub->next = NULL;
				break;
			}
		}
		if (pub) {
			pub->entity_tag = etag_counter++;
			pub->expires = expires;
		}
		pthread_mutex_unlock(&pj_lock);
		if (!pub) {
			respond(m, from, 412, NULL);
			goto done;
		}
		if (!expires) {
			handler->publication_state_change(pub, body, AST_SIP_PUBLISH_STATE_TERMINATED);
		} else if (handler->publication_state_change(pub, body, AST_SIP_PUBLISH_STATE_ACTIVE)) {
			expires = 0;
			pub->expires = 0;
		}
	} else {
		char *resource;
		struct inbound_publication *ip;
		struct event_conf *ec = NULL;
		int resp;

		if (!expires || !body) {
			respond(m, from, 400, NULL);
			goto done;
		}
		resource = uri_user(m->uri);
		if (!resource) {
			resource = strdup("");
		}
		for (ip = inbound_pubs; ip && strcmp(ip->name, resource); ip = ip->next) {
		}
		if (!ip) {
			free(resource);
			respond(m, from, 404, NULL);
			goto done;
		}
		if (ip->endpoint && *ip->endpoint && strcmp(ip->endpoint, endpoint->hdr.id)) {
			free(resource);
			respond(m, from, 403, NULL);
			goto done;
		}
		for (ec = ip->events; ec && strcmp(ec->event, handler->event_name); ec = ec->next) {
		}
		if (!ec) {
			free(resource);
			respond(m, from, 404, NULL);
			goto done;
		}
		resp = handler->new_publication(endpoint, resource, ec->value);
		if (resp < 200 || resp > 299) {
			free(resource);
			respond(m, from, resp >= 300 && resp <= 699 ? resp : 500, NULL);
			goto done;
		}
		pub = __ao2_alloc(sizeof(*pub), publication_destroy, 0, NULL, __FILE__, __LINE__, __func__);
		pub->handler = handler;
		pub->endpoint = endpoint;
		__ao2_ref(endpoint, +1, NULL, __FILE__, __LINE__, __func__);
		pub->resource = resource;
		pub->event_configuration = strdup(ec->value);
		pub->expires = expires;
		pthread_mutex_lock(&pj_lock);
		pub->entity_tag = etag_counter++;
		pthread_mutex_unlock(&pj_lock);
		if (handler->publication_state_change(pub, body, AST_SIP_PUBLISH_STATE_INITIALIZED)) {
			respond(m, from, 500, NULL);
			__ao2_ref(pub, -1, NULL, __FILE__, __LINE__, __func__);
			goto done;
		}
	}
	snprintf(extra, sizeof(extra), "SIP-ETag: %d\r\nExpires: %u\r\n", pub->entity_tag, expires);
	if (expires) {
		/* Kept (the list takes our reference) until refreshed, removed or expired. */
		pthread_mutex_lock(&pj_lock);
		now_mono(&pub->expire_at);
		add_ms(&pub->expire_at, (long long)expires * 1000);
		if (pub->handler == handler) {
			pub->next = publications;
			publications = pub;
			pub = NULL;
		}
		pthread_mutex_unlock(&pj_lock);
	}
	respond(m, from, 200, extra);
	if (pub) {
		__ao2_ref(pub, -1, NULL, __FILE__, __LINE__, __func__);
	}
done:
	release_handler(reg);
}

/* Drops publications past their expiry (publish_expire first) and old UAS answers. */
static void sweep(void)
{
	struct ast_sip_publication *pub, **pp;
	struct uas_entry *e, **pe;

	for (;;) {
		struct handler_reg *r = NULL;

		pthread_mutex_lock(&pj_lock);
		for (pp = &publications; (pub = *pp); pp = &pub->next) {
			if (ms_until(&pub->expire_at) <= 0) {
				*pp = pub->next;
				pub->next = NULL;
				for (r = publish_handlers; r && r->handler != pub->handler; r = r->next) {
				}
				if (r) {
					r->inuse++;
				}
				break;
			}
		}
		pthread_mutex_unlock(&pj_lock);
		if (!pub) {
			break;
		}
		if (r) {
			if (r->handler->publish_expire) {
				r->handler->publish_expire(pub);
			}
			release_handler(r);
		}
		__ao2_ref(pub, -1, NULL, __FILE__, __LINE__, __func__);
	}
	pthread_mutex_lock(&pj_lock);
	for (pe = &uas_cache; (e = *pe);) {
		if (-ms_until(&e->at) > UAS_CACHE_MS) {
			*pe = e->next;
			free(e->key);
			free(e->response);
			free(e);
		} else {
			pe = &e->next;
		}
	}
	pthread_mutex_unlock(&pj_lock);
}

static void *rx_loop(void *arg)
{
	char *buf = malloc(MAX_DATAGRAM + 1);
	struct timespec last_sweep;

	UNUSED(arg);
	now_mono(&last_sweep);
	while (!__atomic_load_n(&rx_stop, __ATOMIC_SEQ_CST)) {
		struct pollfd pfd = { .fd = sock, .events = POLLIN };
		struct sockaddr_in from;
		socklen_t flen = sizeof(from);
		ssize_t n;

		if (-ms_until(&last_sweep) >= 200) {
			sweep();
			now_mono(&last_sweep);
		}
		if (poll(&pfd, 1, 100) <= 0) {
			continue;
		}
		n = recvfrom(sock, buf, MAX_DATAGRAM, 0, (struct sockaddr *)&from, &flen);
		if (n <= 0) {
			continue;
		}
		buf[n] = '\0';
		{
			char *raw = malloc((size_t)n + 1);
			struct sip_msg *m;

			memcpy(raw, buf, (size_t)n + 1);
			if (!(m = msg_parse(raw, (size_t)n))) {
				free(raw);
				continue;
			}
			sip_log(m->is_request ? "Received SIP request" : "Received SIP response", "from", &from, buf, (size_t)n);
			if (!m->is_request) {
				handle_response(m);
			} else if (uas_absorb(m)) {
				/* a retransmission */
			} else if (!strcmp(m->method, "PUBLISH")) {
				handle_publish(m, &from);
			} else if (strcmp(m->method, "ACK")) {
				respond(m, &from, 501, NULL);
			}
			msg_free(m);
		}
	}
	free(buf);
	return NULL;
}

/* ---- CLI ---- */

static char *cli_logger(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "pjsip set logger {on|off}";
		e->usage = "Usage: pjsip set logger {on|off}\n       Enables or disables logging of SIP packets.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	if (!strcasecmp(a->argv[3], "on")) {
		__atomic_store_n(&logger_on, 1, __ATOMIC_SEQ_CST);
		ast_cli(a->fd, "PJSIP Logging enabled\n");
	} else if (!strcasecmp(a->argv[3], "off")) {
		__atomic_store_n(&logger_on, 0, __ATOMIC_SEQ_CST);
		ast_cli(a->fd, "PJSIP Logging disabled\n");
	} else {
		return CLI_SHOWUSAGE;
	}
	return CLI_SUCCESS;
}

static struct ast_cli_entry pjsip_cli[] = {
	{ .handler = cli_logger, .summary = "Enable/Disable PJSIP Logger Output" },
};

/* ---- start and stop ---- */

int stub_pjsip_init(void)
{
	int size = 4 * 1024 * 1024;

	if (!load_config()) {
		return 0;
	}
	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		STUB_LOG(LOG_ERROR, "Unable to create the SIP socket: %s\n", strerror(errno));
		return -1;
	}
	setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	if (bind(sock, (struct sockaddr *)&bind_addr, sizeof(bind_addr))) {
		STUB_LOG(LOG_ERROR, "Unable to bind the SIP transport to %s: %s\n", local_hostport, strerror(errno));
		close(sock);
		sock = -1;
		return -1;
	}
	present = 1;
	if (pthread_create(&rx_thread, NULL, rx_loop, NULL)) {
		return -1;
	}
	rx_running = 1;
	ast_cli_register_multiple(pjsip_cli, ARRAY_LEN(pjsip_cli));
	stub_loader_add_builtin("res_pjsip.so", "Basic SIP resource");
	stub_loader_add_builtin("res_pjsip_pubsub.so", "PJSIP event resource");
	stub_loader_add_builtin("res_pjsip_outbound_publish.so", "SIP resource for outbound publish support");
	STUB_LOG(LOG_NOTICE, "PJSIP transport UDP bound to %s\n", local_hostport);
	return 0;
}

void stub_pjsip_shutdown(void)
{
	struct ast_sip_outbound_publish_client *c;
	struct ast_sip_publication *pub;

	if (!present) {
		return;
	}
	/* Clients whose handler was never unregistered (a module that did not clean up). */
	for (;;) {
		int i;
		pthread_mutex_lock(&pj_lock);
		c = all_clients;
		if (c) {
			for (i = 0; i < npublishes; i++) {
				if (publishes[i]->client == c) {
					publishes[i]->client = NULL;
				}
			}
		}
		pthread_mutex_unlock(&pj_lock);
		if (!c) {
			break;
		}
		client_stop(c);
		pthread_mutex_lock(&pj_lock);
		all_clients = c->next;
		pthread_mutex_unlock(&pj_lock);
		__ao2_ref(c, -1, NULL, __FILE__, __LINE__, __func__);
	}
	__atomic_store_n(&rx_stop, 1, __ATOMIC_SEQ_CST);
	if (rx_running) {
		pthread_join(rx_thread, NULL);
		rx_running = 0;
	}
	close(sock);
	sock = -1;
	pthread_mutex_lock(&pj_lock);
	while ((pub = publications)) {
		publications = pub->next;
		pub->next = NULL;
		__ao2_ref(pub, -1, NULL, __FILE__, __LINE__, __func__);
	}
	pthread_mutex_unlock(&pj_lock);
	present = 0;
}
