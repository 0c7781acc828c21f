/*
 * Test module for the stand-in's ao2, JSON, Stasis and manager-action API, used
 * the way res_astdb_cluster will use it:
 *
 * - two message types: "stub_stasis_type" (to_ami and to_json) and
 *   "stub_stasis_ami_only" (to_ami); "stub_stasis_declined" is tried too, so
 *   that stasis.conf can decline it;
 * - messages carry an ao2 data object; the module counts the live ones and its
 *   unload waits until none is left (the stand-in delivers meanwhile);
 * - AMI actions StubEcho (static help), StubList (a list; help from the XML
 *   documentation) and StubSlow (sleeps; no help anywhere);
 * - CLI: stubstasis publish <n> [text [delay_us]], stubstasis publish-ami <n>,
 *   stubstasis live, stubstasis selftest, stubstasis json <format> <text>.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "stub_stasis"
#define AST_MODULE_SELF_SYM __internal_stub_stasis_self

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "asterisk.h"
#include "asterisk/astobj2.h"
#include "asterisk/cli.h"
#include "asterisk/json.h"
#include "asterisk/logger.h"
#include "asterisk/manager.h"
#include "asterisk/module.h"
#include "asterisk/stasis.h"
#include "asterisk/stasis_system.h"
#include "asterisk/utils.h"

#define LOG(level, ...) ast_log(level, __FILE__, __LINE__, __func__, __VA_ARGS__)

struct stub_data {
	int seq;
	int delay_us;
	char text[64];
};

static int live, created, destroyed;
static struct stasis_message_type *full_type, *ami_type;

static void data_dtor(void *obj)
{
	struct stub_data *d = obj;

	/* The destructor gets the data pointer, and the data was zeroed. */
	if (d->seq < 0) {
		LOG(__LOG_ERROR, "stub_stasis: destructor got a bad data pointer\n");
	}
	__atomic_add_fetch(&destroyed, 1, __ATOMIC_SEQ_CST);
	/* Last: once live is 0 the unload may go on and unmap this code. */
	__atomic_sub_fetch(&live, 1, __ATOMIC_SEQ_CST);
}

static struct ast_manager_event_blob *to_ami(struct stasis_message *msg)
{
	struct stub_data *d = stasis_message_data(msg);

	if (d->delay_us) {
		usleep((useconds_t)d->delay_us);
	}
	return ast_manager_event_blob_create(EVENT_FLAG_SYSTEM, "StubStasisEvent",
		"Type: %s\r\nSeq: %d\r\nText: %s\r\n", stasis_message_type_name(stasis_message_type(msg)), d->seq,
		d->text);
}

static struct ast_json *to_json(struct stasis_message *msg, const struct stasis_message_sanitizer *sanitize)
{
	struct stub_data *d = stasis_message_data(msg);
	char text[256];

	/* Spaced out on purpose: the recording shows the compact form. */
	snprintf(text, sizeof(text),
		"{ \"type\": \"StubStasisEvent\", \"seq\": %d, \"text\": \"%s\", \"extra\": { \"list\": [1, 2.5, true, null] } }",
		d->seq, d->text);
	return ast_json_load_string(text, NULL);
}

static struct stasis_message_vtable full_vtable = { .to_json = to_json, .to_ami = to_ami };
static struct stasis_message_vtable ami_vtable = { .to_ami = to_ami };

static int publish(struct stasis_message_type *type, int seq, const char *text, int delay_us)
{
	struct stub_data *d = ao2_alloc_options(sizeof(*d), data_dtor, AO2_ALLOC_OPT_LOCK_NOLOCK);
	struct stasis_message *msg;

	if (!d) {
		return -1;
	}
	__atomic_add_fetch(&live, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&created, 1, __ATOMIC_SEQ_CST);
	if (d->seq || d->delay_us || d->text[0]) {
		LOG(__LOG_ERROR, "stub_stasis: ao2 data not zeroed\n");
	}
	d->seq = seq;
	d->delay_us = delay_us;
	snprintf(d->text, sizeof(d->text), "%s", text);
	msg = stasis_message_create(type, d);
	ao2_cleanup(d);
	if (!msg) {
		return -1;
	}
	stasis_publish(ast_system_topic(), msg);
	ao2_cleanup(msg);
	return 0;
}

/* ---- CLI ---- */

static const char *skip_words(const char *line, int n)
{
	while (n-- > 0) {
		while (isspace((unsigned char)*line)) {
			line++;
		}
		while (*line && !isspace((unsigned char)*line)) {
			line++;
		}
	}
	while (isspace((unsigned char)*line)) {
		line++;
	}
	return line;
}

static int dtor_calls;
static void *dtor_seen;

static void test_dtor(void *obj)
{
	dtor_calls++;
	dtor_seen = obj;
}

#define CHECK(cond) do { if (!(cond)) { ast_cli(a->fd, "selftest failed: %s (line %d)\n", #cond, __LINE__); return CLI_FAILURE; } } while (0)

static char *selftest(struct ast_cli_args *a)
{
	struct stasis_message_type *t = NULL;
	struct stasis_message *msg;
	char *obj = ao2_alloc_options(100, test_dtor, AO2_ALLOC_OPT_LOCK_MUTEX);
	int i;

	dtor_calls = 0;
	dtor_seen = NULL;
	CHECK(obj != NULL);
	for (i = 0; i < 100; i++) {
		CHECK(obj[i] == 0);
	}
	CHECK(ao2_ref(obj, +1) == 1);
	CHECK(ao2_ref(obj, 0) == 2);
	CHECK(ao2_ref(obj, -1) == 2);
	CHECK(dtor_calls == 0);
	CHECK(ao2_ref(obj, -1) == 1);
	CHECK(dtor_calls == 1 && dtor_seen == obj);
	ao2_cleanup(NULL);

	CHECK(stasis_message_type_create("stub_selftest", NULL, &t) == STASIS_MESSAGE_TYPE_SUCCESS);
	CHECK(t != NULL && !strcmp(stasis_message_type_name(t), "stub_selftest"));
	obj = ao2_alloc_options(8, test_dtor, AO2_ALLOC_OPT_LOCK_NOLOCK);
	CHECK(stasis_message_create(NULL, obj) == NULL);
	CHECK(stasis_message_create(t, NULL) == NULL);
	CHECK((msg = stasis_message_create(t, obj)) != NULL);
	CHECK(stasis_message_type(msg) == t);
	CHECK(stasis_message_data(msg) == obj);
	/* The message holds the data: our reference can go. */
	CHECK(ao2_ref(obj, -1) == 2);
	CHECK(dtor_calls == 1);
	/* A type without to_ami or to_json is delivered to nobody. */
	stasis_publish(ast_system_topic(), msg);
	ao2_cleanup(msg);
	ao2_cleanup(t);
	ast_cli(a->fd, "selftest ok\n");
	return CLI_SUCCESS;
}

static char *cli_stub(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	const char *sub;

	switch (cmd) {
	case CLI_INIT:
		e->command = "stubstasis";
		e->usage = "Usage: stubstasis publish <n> [text [delay_us]] | publish-ami <n> | live | selftest\n"
			"       stubstasis json compact|pretty|sorted|pretty-sorted <text>\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 2) {
		return CLI_SHOWUSAGE;
	}
	sub = a->argv[1];
	if (!strcmp(sub, "publish") && a->argc >= 3) {
		int n = atoi(a->argv[2]), i, ok = 0;
		const char *text = a->argc >= 4 ? a->argv[3] : "hello";
		int delay = a->argc >= 5 ? atoi(a->argv[4]) : 0;
		for (i = 0; i < n; i++) {
			ok += publish(full_type, i, text, delay) == 0;
		}
		ast_cli(a->fd, "published %d\n", ok);
	} else if (!strcmp(sub, "publish-ami") && a->argc == 3) {
		int n = atoi(a->argv[2]), i, ok = 0;
		for (i = 0; i < n; i++) {
			ok += publish(ami_type, i, "ami", 0) == 0;
		}
		ast_cli(a->fd, "published %d\n", ok);
	} else if (!strcmp(sub, "live")) {
		ast_cli(a->fd, "live=%d created=%d destroyed=%d\n", __atomic_load_n(&live, __ATOMIC_SEQ_CST),
			__atomic_load_n(&created, __ATOMIC_SEQ_CST), __atomic_load_n(&destroyed, __ATOMIC_SEQ_CST));
	} else if (!strcmp(sub, "selftest")) {
		return selftest(a);
	} else if (!strcmp(sub, "json") && a->argc >= 3) {
		static const struct { const char *name; enum ast_json_encoding_format f; } formats[] = {
			{ "compact", AST_JSON_COMPACT }, { "pretty", AST_JSON_PRETTY }, { "sorted", AST_JSON_SORTED },
			{ "pretty-sorted", AST_JSON_PRETTY | AST_JSON_SORTED },
		};
		struct ast_json *json = ast_json_load_string(skip_words(a->line, 3), NULL);
		size_t i;
		char *out;
		for (i = 0; i < sizeof(formats) / sizeof(formats[0]) && strcmp(formats[i].name, a->argv[2]); i++) {
		}
		if (i == sizeof(formats) / sizeof(formats[0])) {
			ast_json_unref(json);
			return CLI_SHOWUSAGE;
		}
		if (!json) {
			ast_cli(a->fd, "INVALID\n");
			return CLI_SUCCESS;
		}
		out = ast_json_dump_string_format(json, formats[i].f);
		ast_cli(a->fd, "%s\n", out ? out : "(dump failed)");
		ast_json_free(out);
		ast_json_unref(json);
	} else {
		return CLI_SHOWUSAGE;
	}
	return CLI_SUCCESS;
}

static struct ast_cli_entry cli[] = {
	{ .handler = cli_stub, .summary = "Stasis and manager test commands" },
};

/* ---- AMI actions ---- */

static int action_echo(struct mansession *s, const struct message *m)
{
	const char *echo = astman_get_header(m, "Echo");

	if (!*echo) {
		astman_send_error(s, m, "Echo: is required");
		return 0;
	}
	if (!strcasecmp(astman_get_header(m, "Fail"), "yes")) {
		astman_send_error(s, m, "Failing as asked");
		return -1;
	}
	astman_send_ack(s, m, (char *)echo);
	return 0;
}

static int action_list(struct mansession *s, const struct message *m)
{
	const char *id = astman_get_header(m, "ActionID");
	const char *count = astman_get_header(m, "Count");
	int n = *count ? atoi(count) : 2, i;

	astman_send_listack(s, m, "Items will follow", "start");
	for (i = 0; i < n; i++) {
		astman_append(s, "Event: StubListItem\r\n");
		if (*id) {
			astman_append(s, "ActionID: %s\r\n", id);
		}
		astman_append(s, "Index: %d\r\n\r\n", i);
	}
	astman_send_list_complete_start(s, m, "StubListComplete", n);
	astman_append(s, "Note: end of list\r\n");
	astman_send_list_complete_end(s);
	return 0;
}

static int action_slow(struct mansession *s, const struct message *m)
{
	usleep((useconds_t)atoi(astman_get_header(m, "Ms")) * 1000);
	astman_send_ack(s, m, "Slept");
	return 0;
}

static enum ast_module_load_result load_module(void)
{
	struct stasis_message_type *declined = NULL;
	int dup, builtin, decl;

	if (stasis_message_type_create("stub_stasis_type", &full_vtable, &full_type) != STASIS_MESSAGE_TYPE_SUCCESS
		|| stasis_message_type_create("stub_stasis_ami_only", &ami_vtable, &ami_type) != STASIS_MESSAGE_TYPE_SUCCESS) {
		ao2_cleanup(full_type);
		full_type = NULL;
		return AST_MODULE_LOAD_DECLINE;
	}
	decl = stasis_message_type_create("stub_stasis_declined", &ami_vtable, &declined);
	ao2_cleanup(declined);
	if (ast_manager_register2("StubEcho", EVENT_FLAG_SYSTEM, action_echo, AST_MODULE_SELF,
			"Echo a header back.", "Answers with the Echo header as its message.")
		|| ast_manager_register2("StubList", EVENT_FLAG_SYSTEM | EVENT_FLAG_REPORTING, action_list,
			AST_MODULE_SELF, NULL, NULL)
		|| ast_manager_register2("StubSlow", EVENT_FLAG_SYSTEM, action_slow, AST_MODULE_SELF, NULL, NULL)) {
		ast_manager_unregister("StubEcho");
		ast_manager_unregister("StubList");
		ao2_cleanup(full_type);
		ao2_cleanup(ami_type);
		full_type = ami_type = NULL;
		return AST_MODULE_LOAD_DECLINE;
	}
	dup = ast_manager_register2("stubecho", EVENT_FLAG_SYSTEM, action_echo, AST_MODULE_SELF, NULL, NULL);
	builtin = ast_manager_register2("DBGet", EVENT_FLAG_SYSTEM, action_echo, AST_MODULE_SELF, NULL, NULL);
	ast_cli_register_multiple(cli, 1);
	LOG(__LOG_NOTICE, "stub_stasis loaded (dup=%d builtin=%d declined=%d)\n", dup, builtin, decl);
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	int waited = 0;

	ast_cli_unregister_multiple(cli, 1);
	ast_manager_unregister("StubEcho");
	ast_manager_unregister("StubList");
	ast_manager_unregister("StubSlow");
	/* Our messages' destructor is in this library: wait until the last one is gone. */
	while (__atomic_load_n(&live, __ATOMIC_SEQ_CST) > 0 && waited++ < 10000) {
		usleep(1000);
	}
	LOG(__LOG_NOTICE, "stub_stasis unloaded (live=%d destroyed=%d)\n", __atomic_load_n(&live, __ATOMIC_SEQ_CST),
		__atomic_load_n(&destroyed, __ATOMIC_SEQ_CST));
	ao2_cleanup(full_type);
	ao2_cleanup(ami_type);
	full_type = ami_type = NULL;
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "Stand-in Stasis and manager test module",
	.key = ASTERISK_GPL_KEY,
	.load = load_module,
	.unload = unload_module,
	.load_pri = AST_MODPRI_DEFAULT,
};

static void __attribute__((constructor)) reg(void)
{
	ast_module_register(&module_info);
}

static void __attribute__((destructor)) unreg(void)
{
	ast_module_unregister(&module_info);
}

struct ast_module *AST_MODULE_SELF_SYM(void)
{
	return module_info.self;
}
