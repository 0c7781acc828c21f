/*
 * Stand-in Asterisk: AMI. Events are kept in memory and appended to
 * <astlogdir>/events; `manager show eventlog` prints them. Manager actions
 * from the CLI: `manager action DBPut Family=f Key=k Val=v` etc.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "stub.h"

struct event {
	char *text;
	struct event *next;
};

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static struct event *ev_head, *ev_tail;
static int ev_count;

#define MAX_EVENTS 10000

/* The privilege names, in Asterisk's order; "all" matches any flag. */
static const struct {
	int num;
	const char *label;
} perms[] = {
	{ EVENT_FLAG_SYSTEM, "system" },
	{ EVENT_FLAG_CALL, "call" },
	{ EVENT_FLAG_LOG, "log" },
	{ EVENT_FLAG_VERBOSE, "verbose" },
	{ EVENT_FLAG_COMMAND, "command" },
	{ EVENT_FLAG_AGENT, "agent" },
	{ EVENT_FLAG_USER, "user" },
	{ EVENT_FLAG_CONFIG, "config" },
	{ EVENT_FLAG_DTMF, "dtmf" },
	{ EVENT_FLAG_REPORTING, "reporting" },
	{ 1 << 10, "cdr" },
	{ 1 << 11, "dialplan" },
	{ 1 << 12, "originate" },
	{ 1 << 13, "agi" },
	{ 1 << 15, "cc" },
	{ 1 << 16, "aoc" },
	{ 1 << 17, "test" },
	{ 1 << 18, "security" },
	{ 1 << 30, "message" },
	{ INT_MAX, "all" },
};

const char *stub_manager_authority(int authority, char *buf, size_t len)
{
	size_t i, used = 0;

	buf[0] = '\0';
	for (i = 0; i < ARRAY_LEN(perms); i++) {
		if (authority & perms[i].num) {
			int n = snprintf(buf + used, len - used, "%s%s", used ? "," : "", perms[i].label);
			if (n < 0 || (size_t)n >= len - used) {
				break;
			}
			used += (size_t)n;
		}
	}
	if (!buf[0]) {
		snprintf(buf, len, "<none>");
	}
	return buf;
}

int __ast_manager_event_multichan(int category, const char *event, int chancount,
	struct ast_channel **chans, const char *file, int line, const char *func,
	const char *contents, ...)
{
	char *body = NULL, *text = NULL;
	struct event *ev;
	char path[4200], privilege[256];
	va_list ap;
	int fd, len;

	UNUSED(chancount);
	UNUSED(chans);
	va_start(ap, contents);
	if (vasprintf(&body, contents, ap) < 0) {
		va_end(ap);
		return -1;
	}
	va_end(ap);
	/* Normalise line ends to "\n" and make sure the body ends with one. */
	{
		char *r = body, *w = body;
		for (; *r; r++) {
			if (*r != '\r') {
				*w++ = *r;
			}
		}
		*w = '\0';
	}
	len = asprintf(&text, "Event: %s\nPrivilege: %s\n%s%s", event,
		stub_manager_authority(category, privilege, sizeof(privilege)), body,
		(*body && body[strlen(body) - 1] != '\n') ? "\n" : "");
	free(body);
	if (len < 0) {
		return -1;
	}
	ev = calloc(1, sizeof(*ev));
	ev->text = text;
	pthread_mutex_lock(&ev_lock);
	if (ev_tail) {
		ev_tail->next = ev;
	} else {
		ev_head = ev;
	}
	ev_tail = ev;
	if (++ev_count > MAX_EVENTS) {
		struct event *old = ev_head;
		ev_head = old->next;
		free(old->text);
		free(old);
		ev_count--;
	}
	snprintf(path, sizeof(path), "%s/events", stub_log_dir);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) >= 0) {
		stub_cli_write(fd, text, (size_t)len);
		stub_cli_write(fd, "\n", 1);
		close(fd);
	}
	pthread_mutex_unlock(&ev_lock);
	STUB_LOG(LOG_DEBUG, "Manager event %s from %s:%d %s\n", event, file ? file : "?", line, func ? func : "?");
	return 0;
}

static char *cli_eventlog(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct event *ev;

	switch (cmd) {
	case CLI_INIT:
		e->command = "manager show eventlog";
		e->usage = "Usage: manager show eventlog\n       Prints the manager events raised so far.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	pthread_mutex_lock(&ev_lock);
	for (ev = ev_head; ev; ev = ev->next) {
		ast_cli(a->fd, "%s\n", ev->text);
	}
	pthread_mutex_unlock(&ev_lock);
	return CLI_SUCCESS;
}

/* ---- event blobs (a message type's to_ami) ---- */

static void blob_dtor(void *obj)
{
	struct ast_manager_event_blob *blob = obj;

	free(blob->extra_fields);
}

struct ast_manager_event_blob *ast_manager_event_blob_create(int event_flags,
	const char *manager_event, const char *extra_fields_fmt, ...)
{
	struct ast_manager_event_blob *blob;
	va_list ap;
	int res;

	if (!manager_event || !extra_fields_fmt) {
		STUB_LOG(LOG_ERROR, "ast_manager_event_blob_create() without %s\n",
			manager_event ? "a format" : "an event name");
		return NULL;
	}
	if (!(blob = ao2_alloc_options(sizeof(*blob), blob_dtor, AO2_ALLOC_OPT_LOCK_NOLOCK))) {
		return NULL;
	}
	blob->event_flags = event_flags;
	blob->manager_event = manager_event;
	va_start(ap, extra_fields_fmt);
	res = vasprintf(&blob->extra_fields, extra_fields_fmt, ap);
	va_end(ap);
	if (res < 0) {
		blob->extra_fields = NULL;
		ao2_ref(blob, -1);
		return NULL;
	}
	return blob;
}

static char *cli_action(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	const char *names[64] = {0}, *values[64] = {0};
	char *copies[64];
	int i, n = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "manager action";
		e->usage = "Usage: manager action <Action> [Header=value ...]\n"
			"       Runs a core manager action (DBGet, DBGetTree, DBPut, DBDel, DBDelTree).\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 3) {
		return CLI_SHOWUSAGE;
	}
	for (i = 3; i < a->argc && n < 64; i++) {
		char *eq;
		copies[n] = strdup(a->argv[i]);
		if (!(eq = strchr(copies[n], '='))) {
			ast_cli(a->fd, "Response: Error\nMessage: Malformed header '%s'\n", a->argv[i]);
			free(copies[n]);
			while (n--) {
				free(copies[n]);
			}
			return CLI_FAILURE;
		}
		*eq = '\0';
		names[n] = stub_trim(copies[n]);
		values[n] = eq + 1;
		n++;
	}
	stub_astdb_manager_action(a->fd, a->argv[2], n, names, values);
	for (i = 0; i < n; i++) {
		free(copies[i]);
	}
	return CLI_SUCCESS;
}

static struct ast_cli_entry manager_cli[] = {
	{ .handler = cli_eventlog, .summary = "Show the manager events raised" },
	{ .handler = cli_action, .summary = "Run a manager action" },
};

void stub_manager_init(void)
{
	ast_cli_register_multiple(manager_cli, ARRAY_LEN(manager_cli));
}
