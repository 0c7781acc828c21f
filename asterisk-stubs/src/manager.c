/*
 * Stand-in Asterisk: AMI, like main/manager.c without the sockets. Events are
 * kept in memory and appended to <astlogdir>/events; `manager show eventlog`
 * prints them. Actions registered by modules (ast_manager_register2) and the
 * core DB actions run from the CLI as one request of an AMI session with all
 * privileges: `manager action DBPut Family=f Key=k Val=v` etc.; `manager show
 * commands|command|event` show them and their documentation.
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

/* ---- sessions and requests ---- */

#define MAX_HEADERS 128

/* One AMI session's output for one request; the CLI prints it. */
struct mansession {
	char *buf;
	size_t len, cap;
};

/* One request: "Name: value" lines, as Asterisk keeps them. */
struct message {
	int hdrcount;
	char *headers[MAX_HEADERS];
};

static void session_put(struct mansession *s, const char *text, size_t n)
{
	if (!s) {
		return;
	}
	if (s->len + n + 1 > s->cap) {
		size_t cap = s->cap ? s->cap : 1024;
		char *b;
		while (s->len + n + 1 > cap) {
			cap *= 2;
		}
		if (!(b = realloc(s->buf, cap))) {
			return;
		}
		s->buf = b;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, text, n);
	s->len += n;
	s->buf[s->len] = '\0';
}

void astman_append(struct mansession *s, const char *fmt, ...)
{
	char *text = NULL;
	va_list ap;
	int len;

	va_start(ap, fmt);
	len = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (len >= 0) {
		session_put(s, text, (size_t)len);
		free(text);
	}
}

const char *astman_get_header(const struct message *m, char *var)
{
	size_t l;
	int i;

	if (!m || !var) {
		return "";
	}
	l = strlen(var);
	for (i = 0; i < m->hdrcount; i++) {
		const char *h = m->headers[i];
		if (!strncasecmp(h, var, l) && h[l] == ':') {
			h += l + 1;
			while (*h == ' ' || *h == '\t') {
				h++;
			}
			return h;
		}
	}
	return "";
}

/* Response line, ActionID if the request had one, EventList, Message, blank line. */
static void send_response(struct mansession *s, const struct message *m, const char *resp,
	const char *msg, const char *listflag)
{
	const char *id = astman_get_header(m, "ActionID");

	astman_append(s, "Response: %s\r\n", resp);
	if (*id) {
		astman_append(s, "ActionID: %s\r\n", id);
	}
	if (listflag) {
		astman_append(s, "EventList: %s\r\n", listflag);
	}
	if (msg) {
		astman_append(s, "Message: %s\r\n", msg);
	}
	astman_append(s, "\r\n");
}

void astman_send_error(struct mansession *s, const struct message *m, char *error)
{
	send_response(s, m, "Error", error, NULL);
}

void astman_send_ack(struct mansession *s, const struct message *m, char *msg)
{
	send_response(s, m, "Success", msg, NULL);
}

void astman_send_listack(struct mansession *s, const struct message *m, char *msg, char *listflag)
{
	send_response(s, m, "Success", msg, listflag);
}

void astman_send_list_complete_start(struct mansession *s, const struct message *m,
	const char *event_name, int count)
{
	const char *id = astman_get_header(m, "ActionID");

	astman_append(s, "Event: %s\r\n", event_name);
	if (*id) {
		astman_append(s, "ActionID: %s\r\n", id);
	}
	astman_append(s, "EventList: Complete\r\nListItems: %d\r\n", count);
}

void astman_send_list_complete_end(struct mansession *s)
{
	astman_append(s, "\r\n");
}

/* ---- registered actions ---- */

/* The core DB actions are astdb.c's (printed straight to the CLI); they are
 * listed here so that the names are taken and shown, as in Asterisk. */
struct builtin_doc {
	const char *synopsis, *since, *syntax;
};

struct manager_action {
	const char *action;          /* the caller's pointer, as Asterisk keeps it */
	int authority;
	int (*func)(struct mansession *s, const struct message *m);
	struct ast_module *module;
	char *synopsis, *description; /* copies; both NULL: the XML documentation */
	const struct builtin_doc *builtin;
	int inuse;                   /* calls in progress */
	int orphaned;                /* unregistered while in use: the last call frees it */
	struct manager_action *next;
};

static pthread_mutex_t act_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t act_cond = PTHREAD_COND_INITIALIZER;
static struct manager_action *actions;   /* sorted by name, case-insensitively */
static __thread struct manager_action *running_here;

static const char builtin_args[] = "\nActionID\n    ActionID for this transaction. Will be returned.";

static const struct {
	const char *name;
	int authority;
	struct builtin_doc doc;
} builtins[] = {
	{ "DBDel", EVENT_FLAG_SYSTEM, { "Delete DB entry.", "1.6.0",
		"Action: DBDel\n[ActionID:] <value>\nFamily: <value>\nKey: <value>" } },
	{ "DBDelTree", EVENT_FLAG_SYSTEM, { "Delete DB Tree.", "1.6.0",
		"Action: DBDelTree\n[ActionID:] <value>\nFamily: <value>\n[Key:] <value>" } },
	{ "DBGet", EVENT_FLAG_SYSTEM | EVENT_FLAG_REPORTING, { "Get DB Entry.", "1.2.0",
		"Action: DBGet\n[ActionID:] <value>\nFamily: <value>\nKey: <value>" } },
	{ "DBGetTree", EVENT_FLAG_SYSTEM | EVENT_FLAG_REPORTING,
		{ "Get DB entries, optionally at a particular family/key", "19.6.0, 18.14.0, 16.28.0",
		"Action: DBGetTree\n[ActionID:] <value>\n[Family:] <value>\n[Key:] <value>" } },
	{ "DBPut", EVENT_FLAG_SYSTEM, { "Put DB entry.", "1.2.0",
		"Action: DBPut\n[ActionID:] <value>\nFamily: <value>\nKey: <value>\n[Val:] <value>" } },
};

static int insert_action(struct manager_action *act)
{
	struct manager_action **pp;

	pthread_mutex_lock(&act_lock);
	for (pp = &actions; *pp; pp = &(*pp)->next) {
		int cmp = strcasecmp((*pp)->action, act->action);
		if (cmp == 0) {
			pthread_mutex_unlock(&act_lock);
			STUB_LOG(LOG_WARNING, "Manager: Action '%s' already registered\n", act->action);
			return -1;
		}
		if (cmp > 0) {
			break;
		}
	}
	act->next = *pp;
	*pp = act;
	pthread_mutex_unlock(&act_lock);
	STUB_LOG(LOG_DEBUG, "Manager registered action %s\n", act->action);
	return 0;
}

int ast_manager_register2(const char *action, int authority,
	int (*func)(struct mansession *s, const struct message *m),
	struct ast_module *module, const char *synopsis, const char *description)
{
	struct manager_action *act;

	if (!action || !*action) {
		STUB_LOG(LOG_ERROR, "ast_manager_register2() without an action name\n");
		return -1;
	}
	if (!(act = calloc(1, sizeof(*act)))) {
		return -1;
	}
	act->action = action;
	act->authority = authority;
	act->func = func;
	act->module = module;
	/* As Asterisk: empty synopsis and description mean the XML documentation. */
	if ((synopsis && *synopsis) || (description && *description)) {
		act->synopsis = strdup(synopsis ? synopsis : "");
		act->description = strdup(description ? description : "");
	}
	if (insert_action(act)) {
		free(act->synopsis);
		free(act->description);
		free(act);
		return -1;
	}
	return 0;
}

int ast_manager_unregister(const char *action)
{
	struct manager_action **pp, *act = NULL;
	struct timespec deadline;

	if (!action) {
		return 0;
	}
	pthread_mutex_lock(&act_lock);
	for (pp = &actions; *pp; pp = &(*pp)->next) {
		if (!strcasecmp((*pp)->action, action)) {
			act = *pp;
			*pp = act->next;
			break;
		}
	}
	/* No new call can find it now; the calls in progress finish first (a
	 * handler unregistering its own action does not wait for itself). */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 30;
	while (act && act->inuse > (running_here == act ? 1 : 0)) {
		if (pthread_cond_timedwait(&act_cond, &act_lock, &deadline) == ETIMEDOUT) {
			STUB_LOG(LOG_WARNING, "Manager action '%s' still running after 30 s, unregistered anyway\n", action);
			break;
		}
	}
	if (act && act->inuse > 0) {
		act->orphaned = 1;
		act = NULL;
	}
	pthread_mutex_unlock(&act_lock);
	if (act) {
		STUB_LOG(LOG_DEBUG, "Manager unregistered action %s\n", action);
		free(act->synopsis);
		free(act->description);
		free(act);
	}
	return 0;
}

/* ---- CLI ---- */

static char *cli_action(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	const char *names[64] = {0}, *values[64] = {0};
	char *copies[64];
	struct manager_action *act;
	int i, n = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "manager action";
		e->usage = "Usage: manager action <Action> [Header=value ...]\n"
			"       Runs a manager action as one request of a session with all privileges\n"
			"       (the DB actions, and those registered by modules).\n";
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
	pthread_mutex_lock(&act_lock);
	for (act = actions; act && strcasecmp(act->action, a->argv[2]); act = act->next) {
	}
	if (act && act->builtin) {
		pthread_mutex_unlock(&act_lock);
		stub_astdb_manager_action(a->fd, a->argv[2], n, names, values);
	} else {
		struct message m = { 0 };
		struct mansession s = { 0 };

		if (act) {
			/* As Asterisk's module reference for the call: no unload meanwhile. */
			act->inuse++;
			stub_module_ref(act->module);
		}
		pthread_mutex_unlock(&act_lock);
		if (asprintf(&m.headers[m.hdrcount], "Action: %s", a->argv[2]) >= 0) {
			m.hdrcount++;
		}
		for (i = 0; i < n && m.hdrcount < MAX_HEADERS; i++) {
			if (asprintf(&m.headers[m.hdrcount], "%s: %s", names[i], values[i]) >= 0) {
				m.hdrcount++;
			}
		}
		if (act) {
			struct manager_action *outer = running_here;
			int res;

			running_here = act;
			res = act->func ? act->func(&s, &m) : 0;
			running_here = outer;
			if (res) {
				STUB_LOG(LOG_DEBUG, "Manager action '%s' returned %d: Asterisk would close the session\n",
					a->argv[2], res);
			}
			pthread_mutex_lock(&act_lock);
			stub_module_unref(act->module);
			if (--act->inuse == 0 && act->orphaned) {
				free(act->synopsis);
				free(act->description);
				free(act);
			}
			pthread_cond_broadcast(&act_cond);
			pthread_mutex_unlock(&act_lock);
		} else {
			char msg[512];
			snprintf(msg, sizeof(msg),
				"Invalid/unknown command: %s. Use Action: ListCommands to show available commands.", a->argv[2]);
			astman_send_error(&s, &m, msg);
		}
		/* The session's output with the CLI's line ends. */
		if (s.buf) {
			char *r, *w;
			for (r = w = s.buf; *r; r++) {
				if (*r != '\r' || r[1] != '\n') {
					*w++ = *r;
				}
			}
			stub_cli_write(a->fd, s.buf, (size_t)(w - s.buf));
		}
		free(s.buf);
		for (i = 0; i < m.hdrcount; i++) {
			free(m.headers[i]);
		}
	}
	for (i = 0; i < n; i++) {
		free(copies[i]);
	}
	return CLI_SUCCESS;
}

static char *complete_action(const char *word, int n)
{
	struct manager_action *act;
	size_t l = strlen(word);
	char *res = NULL;
	int i = 0;

	pthread_mutex_lock(&act_lock);
	for (act = actions; act; act = act->next) {
		if (!strncasecmp(act->action, word, l) && i++ == n) {
			res = strdup(act->action);
			break;
		}
	}
	pthread_mutex_unlock(&act_lock);
	return res;
}

/* The synopsis `manager show commands` lists: the registered one, else the XML's. */
static char *action_synopsis(const struct manager_action *act)
{
	struct stub_xmldoc *docs;
	char *syn;

	if (act->builtin) {
		return strdup(act->builtin->synopsis);
	}
	if (act->synopsis) {
		return strdup(act->synopsis);
	}
	if (stub_xmldoc_manager("manager", act->action, &docs) > 0) {
		syn = docs[0].synopsis ? strdup(docs[0].synopsis) : strdup("");
		stub_xmldoc_free(docs, 1);
		return syn;
	}
	return strdup("");
}

static char *cli_show_commands(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct manager_action *act;
	int name_len = 1, space;

	switch (cmd) {
	case CLI_INIT:
		e->command = "manager show commands";
		e->usage = "Usage: manager show commands\n"
			"	Prints a listing of all the available Asterisk manager interface commands.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	pthread_mutex_lock(&act_lock);
	for (act = actions; act; act = act->next) {
		int l = (int)strlen(act->action);
		if (l > name_len) {
			name_len = l;
		}
	}
	space = 80 - name_len - 4;
	if (space < 0) {
		space = 0;
	}
	ast_cli(a->fd, "  %-*.*s  %-.*s\n", name_len, name_len, "Action", space, "Synopsis");
	ast_cli(a->fd, "  %-*.*s  %-.*s\n", name_len, name_len, "------", space, "--------");
	for (act = actions; act; act = act->next) {
		char *syn = action_synopsis(act);
		ast_cli(a->fd, "  %-*.*s  %-.*s\n", name_len, name_len, act->action, space, syn ? syn : "");
		free(syn);
	}
	pthread_mutex_unlock(&act_lock);
	return CLI_SUCCESS;
}

static const char *or_na(const char *s)
{
	return s && *s ? s : "Not available";
}

static void print_action_doc(int fd, const char *name, const struct stub_xmldoc *doc, const char *privilege)
{
	ast_cli(fd, "\n  -= Info about Manager Command '%s' =- \n\n", name);
	ast_cli(fd, "[Synopsis]\n%s\n\n", or_na(doc->synopsis));
	ast_cli(fd, "[Provided By]\n%s\n\n", or_na(doc->provided_by));
	ast_cli(fd, "[Since]\n%s\n\n", or_na(doc->since));
	ast_cli(fd, "[Description]\n%s\n\n", or_na(doc->description));
	ast_cli(fd, "[Syntax]\n%s\n\n", or_na(doc->syntax));
	ast_cli(fd, "[Arguments]\n%s\n\n", or_na(doc->arguments));
	ast_cli(fd, "[Privilege]\n%s\n\n", or_na(privilege));
	ast_cli(fd, "[See Also]\n%s\n\n", or_na(doc->seealso));
	ast_cli(fd, "[List Responses]\nNone\n\n[End List Responses]\n");
	ast_cli(fd, "\n[Final Response]\nNone\n\n[End Final Response]\n");
}

static char *cli_show_command(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct manager_action *act;
	int i;

	switch (cmd) {
	case CLI_INIT:
		e->command = "manager show command";
		e->usage = "Usage: manager show command <actionname> [<actionname> [<actionname> [...]]]\n"
			"	Shows the detailed description for a specific Asterisk manager interface command.\n";
		return NULL;
	case CLI_GENERATE:
		return a->pos >= 3 ? complete_action(a->word, a->n) : NULL;
	}
	if (a->argc < 4) {
		return CLI_SHOWUSAGE;
	}
	pthread_mutex_lock(&act_lock);
	for (act = actions; act; act = act->next) {
		for (i = 3; i < a->argc; i++) {
			char privilege[256];

			if (strcasecmp(act->action, a->argv[i])) {
				continue;
			}
			stub_manager_authority(act->authority, privilege, sizeof(privilege));
			if (act->builtin) {
				struct stub_xmldoc doc = {
					.synopsis = (char *)act->builtin->synopsis,
					.since = (char *)act->builtin->since,
					.syntax = (char *)act->builtin->syntax,
					.arguments = (char *)builtin_args,
				};
				print_action_doc(a->fd, act->action, &doc, privilege);
			} else if (act->synopsis) {
				ast_cli(a->fd, "Action: %s\nSynopsis: %s\nPrivilege: %s\n%s\n",
					act->action, act->synopsis, privilege, act->description);
			} else {
				struct stub_xmldoc *docs = NULL, none = { 0 };
				int n = stub_xmldoc_manager("manager", act->action, &docs);
				char *syntax = NULL;
				if (!n && asprintf(&syntax, "Action: %s", act->action) >= 0) {
					none.syntax = syntax;
				}
				print_action_doc(a->fd, act->action, n ? &docs[0] : &none, privilege);
				free(syntax);
				stub_xmldoc_free(docs, n);
			}
		}
	}
	pthread_mutex_unlock(&act_lock);
	return CLI_SUCCESS;
}

static char *cli_show_event(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct stub_xmldoc *docs;
	int n, i;

	switch (cmd) {
	case CLI_INIT:
		e->command = "manager show event";
		e->usage = "Usage: manager show event <eventname>\n"
			"       Provides a detailed description a Manager interface event.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	if (!(n = stub_xmldoc_manager("managerEvent", a->argv[3], &docs))) {
		ast_cli(a->fd, "Could not find event '%s'\n", a->argv[3]);
		return CLI_SUCCESS;
	}
	ast_cli(a->fd, "Event: %s\n", a->argv[3]);
	for (i = 0; i < n; i++) {
		ast_cli(a->fd, "\n  -= Info about Manager Event '%s' =- \n\n", a->argv[3]);
		ast_cli(a->fd, "[Synopsis]\n%s\n\n", or_na(docs[i].synopsis));
		ast_cli(a->fd, "[Provided By]\n%s\n\n", or_na(docs[i].provided_by));
		ast_cli(a->fd, "[Since]\n%s\n\n", or_na(docs[i].since));
		ast_cli(a->fd, "[Description]\n%s\n\n", or_na(docs[i].description));
		ast_cli(a->fd, "[Syntax]\n%s\n\n", or_na(docs[i].syntax));
		ast_cli(a->fd, "[Arguments]\n%s\n\n", or_na(docs[i].arguments));
		ast_cli(a->fd, "[See Also]\n%s\n\n", or_na(docs[i].seealso));
	}
	stub_xmldoc_free(docs, n);
	return CLI_SUCCESS;
}

static struct ast_cli_entry manager_cli[] = {
	{ .handler = cli_eventlog, .summary = "Show the manager events raised" },
	{ .handler = cli_action, .summary = "Run a manager action" },
	{ .handler = cli_show_commands, .summary = "List manager interface commands" },
	{ .handler = cli_show_command, .summary = "Show a manager interface command" },
	{ .handler = cli_show_event, .summary = "Show a manager interface event" },
};

void stub_manager_init(void)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(builtins); i++) {
		struct manager_action *act = calloc(1, sizeof(*act));
		act->action = builtins[i].name;
		act->authority = builtins[i].authority;
		act->builtin = &builtins[i].doc;
		insert_action(act);
	}
	ast_cli_register_multiple(manager_cli, ARRAY_LEN(manager_cli));
}
