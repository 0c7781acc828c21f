/*
 * Stand-in Asterisk: the Stasis subset, like main/stasis.c and
 * main/stasis_message.c for what a module publishing on the system topic
 * meets:
 *
 * - Message types are ao2 objects holding a copy of the name and the vtable
 *   POINTER (the vtable must outlive the type, as in Asterisk). A name listed
 *   in stasis.conf [declined_message_types] (decline => name) is declined.
 * - Messages are ao2 objects holding a reference to their data (an ao2
 *   object) and, unlike Asterisk, to their type (a message never outlives it
 *   here).
 * - stasis_publish() takes a reference and queues the message; one
 *   dispatcher thread delivers it later, in order, as Asterisk's subscribers
 *   do on their own threads: to manager (to_ami: the blob becomes an AMI
 *   event, as manager's forwarding of the system topic does) and to the
 *   stand-in's recording subscription (to_json: one line "<type> <json>" in
 *   <astlogdir>/stasis and in memory for `stasis show messages`, a test-only
 *   command). Then it drops the reference, so the data's destructor runs on
 *   the dispatcher unless the publisher still holds the message.
 * - The dispatcher holds no lock while it calls into a module, so it keeps
 *   delivering while a module unloads (an unload may wait for its messages).
 *   At shutdown it stops taking messages (later ones are dropped, their data
 *   released by their publisher), delivers what is queued and exits, all
 *   before the modules are unloaded.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "stub.h"

struct stasis_topic {
	const char *name;
};

struct stasis_message_type {
	char *name;
	struct stasis_message_vtable *vtable;
};

struct stasis_message {
	struct timeval timestamp;
	struct stasis_message_type *type;
	struct ast_eid eid;
	void *data;
};

static struct stasis_topic system_topic = { "ast_system" };

/* ---- declined types (stasis.conf) ---- */

static char **declined;
static size_t n_declined;

static void load_declined(void)
{
	struct ast_flags flags = { CONFIG_FLAG_NOCACHE };
	struct ast_config *cfg = ast_config_load2("stasis.conf", "stasis", flags);
	struct ast_variable *v;

	if (!cfg || cfg == CONFIG_STATUS_FILEINVALID || cfg == CONFIG_STATUS_FILEMISSING
		|| cfg == CONFIG_STATUS_FILEUNCHANGED) {
		return;
	}
	for (v = ast_variable_browse(cfg, "declined_message_types"); v; v = v->next) {
		if (!strcasecmp(v->name, "decline")) {
			declined = realloc(declined, (n_declined + 1) * sizeof(*declined));
			declined[n_declined++] = strdup(v->value);
		}
	}
	ast_config_destroy(cfg);
}

static int type_declined(const char *name)
{
	size_t i;

	for (i = 0; i < n_declined; i++) {
		if (!strcmp(declined[i], name)) {
			return 1;
		}
	}
	return 0;
}

/* ---- types and messages ---- */

static struct stasis_message_vtable null_vtable;

static void type_dtor(void *obj)
{
	struct stasis_message_type *type = obj;

	free(type->name);
}

enum stasis_message_type_result stasis_message_type_create(const char *name,
	struct stasis_message_vtable *vtable, struct stasis_message_type **result)
{
	struct stasis_message_type *type;

	if (name && type_declined(name)) {
		return STASIS_MESSAGE_TYPE_DECLINED;
	}
	if (!name || !(type = ao2_alloc_options(sizeof(*type), type_dtor, AO2_ALLOC_OPT_LOCK_NOLOCK))) {
		return STASIS_MESSAGE_TYPE_ERROR;
	}
	if (!(type->name = strdup(name))) {
		ao2_cleanup(type);
		return STASIS_MESSAGE_TYPE_ERROR;
	}
	type->vtable = vtable ? vtable : &null_vtable;
	*result = type;
	return STASIS_MESSAGE_TYPE_SUCCESS;
}

const char *stasis_message_type_name(const struct stasis_message_type *type)
{
	return type ? type->name : NULL;
}

static void message_dtor(void *obj)
{
	struct stasis_message *msg = obj;

	ao2_cleanup(msg->data);
	ao2_cleanup(msg->type);
}

struct stasis_message *stasis_message_create(struct stasis_message_type *type, void *data)
{
	struct stasis_message *msg;

	if (!type || !data) {
		return NULL;
	}
	if (!(msg = ao2_alloc_options(sizeof(*msg), message_dtor, AO2_ALLOC_OPT_LOCK_NOLOCK))) {
		return NULL;
	}
	gettimeofday(&msg->timestamp, NULL);
	ao2_ref(type, +1);
	msg->type = type;
	ao2_ref(data, +1);
	msg->data = data;
	msg->eid = ast_eid_default;
	return msg;
}

struct stasis_message_type *stasis_message_type(const struct stasis_message *msg)
{
	return msg ? msg->type : NULL;
}

void *stasis_message_data(const struct stasis_message *msg)
{
	return msg ? msg->data : NULL;
}

struct stasis_topic *ast_system_topic(void)
{
	return &system_topic;
}

/* ---- the recording subscription (test-only) ---- */

struct record {
	char *line;
	struct record *next;
};

#define MAX_RECORDS 10000

static pthread_mutex_t rec_lock = PTHREAD_MUTEX_INITIALIZER;
static struct record *rec_head, *rec_tail;
static int rec_count;

static void record_json(const char *type_name, const char *json)
{
	struct record *r = calloc(1, sizeof(*r));
	char path[4200];
	int fd, len;

	if (!r || (len = asprintf(&r->line, "%s %s\n", type_name, json)) < 0) {
		free(r);
		return;
	}
	pthread_mutex_lock(&rec_lock);
	if (rec_tail) {
		rec_tail->next = r;
	} else {
		rec_head = r;
	}
	rec_tail = r;
	if (++rec_count > MAX_RECORDS) {
		struct record *old = rec_head;
		rec_head = old->next;
		free(old->line);
		free(old);
		rec_count--;
	}
	snprintf(path, sizeof(path), "%s/stasis", stub_log_dir);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) >= 0) {
		stub_cli_write(fd, r->line, (size_t)len);
		close(fd);
	}
	pthread_mutex_unlock(&rec_lock);
}

/* ---- the queue and the dispatcher ---- */

struct queued {
	struct stasis_message *msg;
	struct queued *next;
};

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static struct queued *q_head, *q_tail;
static int q_len;
static int accepting, running;
static unsigned long delivered, dropped;
static pthread_t dispatcher;

void stasis_publish(struct stasis_topic *topic, struct stasis_message *message)
{
	struct queued *q;

	if (!topic || !message) {
		STUB_LOG(LOG_ERROR, "stasis_publish() with a NULL %s\n", topic ? "message" : "topic");
		return;
	}
	if (!(q = calloc(1, sizeof(*q)))) {
		return;
	}
	pthread_mutex_lock(&q_lock);
	if (!accepting) {
		dropped++;
		pthread_mutex_unlock(&q_lock);
		free(q);
		STUB_LOG(LOG_DEBUG, "Stasis is stopped: message of type %s dropped\n", message->type->name);
		return;
	}
	ao2_ref(message, +1);
	q->msg = message;
	if (q_tail) {
		q_tail->next = q;
	} else {
		q_head = q;
	}
	q_tail = q;
	q_len++;
	pthread_cond_signal(&q_cond);
	pthread_mutex_unlock(&q_lock);
}

static void deliver(struct stasis_message *msg)
{
	struct stasis_message_vtable *vt = msg->type->vtable;

	/* Manager: the system topic is forwarded to manager's topic, where a
	 * message with to_ami becomes an event. */
	if (vt->to_ami) {
		struct ast_manager_event_blob *blob = vt->to_ami(msg);
		if (blob) {
			__ast_manager_event_multichan(blob->event_flags, blob->manager_event, 0, NULL,
				__FILE__, __LINE__, __func__, "%s", blob->extra_fields ? blob->extra_fields : "");
			ao2_cleanup(blob);
		}
	}
	if (vt->to_json) {
		struct ast_json *json = vt->to_json(msg, NULL);
		if (json) {
			char *text = ast_json_dump_string_format(json, AST_JSON_COMPACT);
			if (text) {
				record_json(msg->type->name, text);
				ast_json_free(text);
			}
			ast_json_unref(json);
		}
	}
}

static void *dispatch_loop(void *arg)
{
	UNUSED(arg);
	pthread_mutex_lock(&q_lock);
	for (;;) {
		struct queued *q;

		while (!q_head && running) {
			pthread_cond_wait(&q_cond, &q_lock);
		}
		if (!(q = q_head)) {
			break;
		}
		if (!(q_head = q->next)) {
			q_tail = NULL;
		}
		pthread_mutex_unlock(&q_lock);
		deliver(q->msg);
		ao2_ref(q->msg, -1);
		free(q);
		pthread_mutex_lock(&q_lock);
		q_len--;
		delivered++;
	}
	pthread_mutex_unlock(&q_lock);
	return NULL;
}

/* ---- CLI ---- */

static char *cli_show_messages(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct record *r;
	unsigned long n_delivered, n_dropped;
	int n_queued;

	switch (cmd) {
	case CLI_INIT:
		e->command = "stasis show messages";
		e->usage = "Usage: stasis show messages\n"
			"       Prints the messages delivered with a JSON form (to_json), one line each,\n"
			"       \"<type> <compact JSON>\", then how many were delivered and are queued.\n"
			"       (Stand-in only.)\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	pthread_mutex_lock(&rec_lock);
	for (r = rec_head; r; r = r->next) {
		ast_cli(a->fd, "%s", r->line);
	}
	pthread_mutex_unlock(&rec_lock);
	pthread_mutex_lock(&q_lock);
	n_delivered = delivered;
	n_queued = q_len;
	n_dropped = dropped;
	pthread_mutex_unlock(&q_lock);
	ast_cli(a->fd, "%lu messages delivered, %d queued, %lu dropped\n", n_delivered, n_queued, n_dropped);
	return CLI_SUCCESS;
}

static struct ast_cli_entry stasis_cli[] = {
	{ .handler = cli_show_messages, .summary = "Show the Stasis messages delivered (stand-in only)" },
};

int stub_stasis_init(void)
{
	load_declined();
	pthread_mutex_lock(&q_lock);
	accepting = running = 1;
	pthread_mutex_unlock(&q_lock);
	if (pthread_create(&dispatcher, NULL, dispatch_loop, NULL)) {
		STUB_LOG(LOG_ERROR, "Unable to start the Stasis dispatcher\n");
		return -1;
	}
	ast_cli_register_multiple(stasis_cli, ARRAY_LEN(stasis_cli));
	return 0;
}

void stub_stasis_shutdown(void)
{
	int was_running;

	pthread_mutex_lock(&q_lock);
	was_running = running;
	accepting = running = 0;
	pthread_cond_broadcast(&q_cond);
	pthread_mutex_unlock(&q_lock);
	if (was_running) {
		pthread_join(dispatcher, NULL);
		STUB_LOG(LOG_NOTICE, "Stasis stopped after delivering %lu messages\n", delivered);
	}
}
