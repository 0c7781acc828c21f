/*
 * res_astdb_cluster: registration with Asterisk and the C-only parts of its API.
 *
 * Built against installed Asterisk headers when found, otherwise against the
 * project's own minimal declarations in include/ (see build.rs).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "res_astdb_cluster"
#define AST_MODULE_SELF_SYM __internal_res_astdb_cluster_self

#include "asterisk.h"
#include "asterisk/module.h"
#include "asterisk/logger.h"
#include "asterisk/cli.h"
#include "asterisk/pbx.h"
#include "asterisk/utils.h"
#include "asterisk/manager.h"
#include "asterisk/astdb.h"
#include "asterisk/astobj2.h"
#include "asterisk/json.h"
#include "asterisk/stasis.h"
#include "asterisk/stasis_system.h"
#ifdef ASTDB_CLUSTER_INSTALLED_HEADERS
#include "asterisk/buildopts.h"
#endif

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <alloca.h>

#include "glue.h"

#ifndef AST_BUILDOPT_SUM
#define AST_BUILDOPT_SUM ""
#endif

/* ---- module registration (what AST_MODULE_INFO does for in-tree modules) ---- */

static enum ast_module_load_result load_module(void)
{
	return (enum ast_module_load_result)astdb_cluster_load();
}

static int unload_module(void)
{
	return astdb_cluster_unload();
}

static int reload_module(void)
{
	return astdb_cluster_reload();
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "AstDB cluster: shares AstDB families between Asterisk servers",
	.key = ASTERISK_GPL_KEY,
	.flags = AST_MODFLAG_LOAD_ORDER,
	.buildopt_sum = AST_BUILDOPT_SUM,
	.load = load_module,
	.unload = unload_module,
	.reload = reload_module,
	.load_pri = AST_MODPRI_DEFAULT,
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
};

static void __attribute__((constructor)) register_module(void)
{
	ast_module_register(&module_info);
}

static void __attribute__((destructor)) unregister_module(void)
{
	ast_module_unregister(&module_info);
}

struct ast_module *AST_MODULE_SELF_SYM(void)
{
	return module_info.self;
}

const char *astdb_cluster_headers(void)
{
#ifdef ASTDB_CLUSTER_INSTALLED_HEADERS
	return "installed";
#else
	return "bundled";
#endif
}

/* ---- logging ---- */

void astdb_cluster_log(int level, const char *file, int line, const char *func, const char *msg)
{
	ast_log(level, file, line, func, "%s\n", msg);
}

void astdb_cluster_cli_write(int fd, const char *text)
{
	ast_cli(fd, "%s", text);
}

char *astdb_cluster_db_get(const char *family, const char *key)
{
	char *value = NULL;

	if (ast_db_get_allocated(family, key, &value)) {
		return NULL;
	}
	return value;
}

void astdb_cluster_free(void *ptr)
{
	ast_free(ptr);
}

int astdb_cluster_cli_completion_add(const char *candidate)
{
	char *copy = ast_strdup(candidate);

	return copy ? ast_cli_completion_add(copy) : -1;
}

/* ---- dialplan functions ---- */

static int db_shared_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	(void)chan;
	(void)cmd;
	return astdb_cluster_function_read(0, data, buf, len);
}

static int db_shared_write(struct ast_channel *chan, const char *cmd, char *data, const char *value)
{
	(void)chan;
	(void)cmd;
	return astdb_cluster_function_write(0, data, value);
}

static int db_shared_exists_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	(void)chan;
	(void)cmd;
	return astdb_cluster_function_read(1, data, buf, len);
}

/*
 * Zero-initialised and never const: Asterisk writes into these records at
 * registration (documentation fields, and the since/provided_by tail in newer
 * versions).
 */
static struct ast_custom_function db_shared_function = {
	.name = "DB_SHARED",
	.read = db_shared_read,
	.write = db_shared_write,
};

static struct ast_custom_function db_shared_exists_function = {
	.name = "DB_SHARED_EXISTS",
	.read = db_shared_exists_read,
};

int astdb_cluster_register_functions(void)
{
	if (ast_custom_function_register(&db_shared_function)) {
		return -1;
	}
	if (ast_custom_function_register(&db_shared_exists_function)) {
		ast_custom_function_unregister(&db_shared_function);
		return -1;
	}
	return 0;
}

void astdb_cluster_unregister_functions(void)
{
	ast_custom_function_unregister(&db_shared_exists_function);
	ast_custom_function_unregister(&db_shared_function);
}

/* ---- CLI ---- */

#define MAX_CLI_ENTRIES 16

static struct ast_cli_entry cli_entries[MAX_CLI_ENTRIES];
static int cli_entry_count;

static char *cli_handler(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	int idx = (int)(e - cli_entries);

	switch (cmd) {
	case CLI_INIT:
		e->command = (char *)astdb_cluster_cli_command(idx);
		e->usage = astdb_cluster_cli_usage(idx);
		return NULL;
	case CLI_GENERATE:
		astdb_cluster_cli_complete(idx, a->line, a->word, a->pos);
		return NULL;
	}
	switch (astdb_cluster_cli_exec(idx, a->fd, a->argc, a->argv)) {
	case 0:
		return CLI_SUCCESS;
	case 1:
		return CLI_SHOWUSAGE;
	default:
		return CLI_FAILURE;
	}
}

int astdb_cluster_register_cli(void)
{
	int i;

	cli_entry_count = astdb_cluster_cli_count();
	if (cli_entry_count > MAX_CLI_ENTRIES) {
		cli_entry_count = MAX_CLI_ENTRIES;
	}
	for (i = 0; i < cli_entry_count; i++) {
		/* summary is a const member: build each entry whole, then place it. */
		struct ast_cli_entry entry = {
			.handler = cli_handler,
			.summary = astdb_cluster_cli_summary(i),
		};
		memcpy(&cli_entries[i], &entry, sizeof(entry));
	}
	return ast_cli_register_multiple(cli_entries, cli_entry_count);
}

void astdb_cluster_unregister_cli(void)
{
	ast_cli_unregister_multiple(cli_entries, cli_entry_count);
	memset(cli_entries, 0, sizeof(cli_entries));
	cli_entry_count = 0;
}

/* ---- capture of dialplan DB() / DB_DELETE() writes ----
 *
 * AstDB has no change notification. To see dialplan writes at once, the
 * callbacks func_db registered are wrapped: each wrapper calls the original
 * and, when it succeeded, reports the path. The original is restored on
 * unload; `in_flight` lets unload wait for calls still inside a wrapper.
 */

static ast_acf_write_fn_t db_write_original;
static ast_acf_read_fn_t db_delete_read_original;
static ast_acf_write_fn_t db_delete_write_original;
static int in_flight;

/* func_db splits its argument in place: keep a copy to report. */
#define COPY_PATH(data) ((data) ? strcpy(alloca(strlen(data) + 1), (data)) : NULL)

static int db_write_wrapper(struct ast_channel *chan, const char *cmd, char *data, const char *value)
{
	char *path;
	int res;

	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	path = COPY_PATH(data);
	res = db_write_original(chan, cmd, data, value);
	if (!res && path) {
		astdb_cluster_db_written(path, value ? value : "");
	}
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	return res;
}

static int db_delete_read_wrapper(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	char *path;
	int res;

	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	path = COPY_PATH(data);
	res = db_delete_read_original(chan, cmd, data, buf, len);
	if (!res && path) {
		astdb_cluster_db_written(path, NULL);
	}
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	return res;
}

static int db_delete_write_wrapper(struct ast_channel *chan, const char *cmd, char *data, const char *value)
{
	char *path;
	int res;

	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	path = COPY_PATH(data);
	res = db_delete_write_original(chan, cmd, data, value);
	if (!res && path) {
		astdb_cluster_db_written(path, NULL);
	}
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	return res;
}

/* Swaps *slot to `wrapper`, remembering the original, unless already wrapped;
 * sets `bit` in `mask` when the slot is wrapped. */
#define WRAP(slot, wrapper, original, mask, bit) \
	do { \
		if ((slot) && (slot) != (wrapper)) { \
			(original) = (slot); \
			__atomic_store_n(&(slot), (wrapper), __ATOMIC_SEQ_CST); \
		} \
		if ((slot) == (wrapper)) { \
			(mask) |= (bit); \
		} \
	} while (0)

#define UNWRAP(slot, wrapper, original) \
	do { \
		if ((slot) == (wrapper)) { \
			__atomic_store_n(&(slot), (original), __ATOMIC_SEQ_CST); \
		} \
	} while (0)

int astdb_cluster_capture_hook(void)
{
	struct ast_custom_function *db = ast_custom_function_find("DB");
	struct ast_custom_function *db_delete = ast_custom_function_find("DB_DELETE");
	int wrapped = 0;

	if (db) {
		WRAP(db->write, db_write_wrapper, db_write_original, wrapped, ASTDB_CLUSTER_CAPTURE_DB);
	}
	if (db_delete) {
		WRAP(db_delete->read, db_delete_read_wrapper, db_delete_read_original, wrapped, ASTDB_CLUSTER_CAPTURE_DB_DELETE_READ);
		WRAP(db_delete->write, db_delete_write_wrapper, db_delete_write_original, wrapped, ASTDB_CLUSTER_CAPTURE_DB_DELETE_WRITE);
	}
	return wrapped;
}

void astdb_cluster_capture_unhook(void)
{
	struct ast_custom_function *db = ast_custom_function_find("DB");
	struct ast_custom_function *db_delete = ast_custom_function_find("DB_DELETE");
	int waited;

	if (db) {
		UNWRAP(db->write, db_write_wrapper, db_write_original);
	}
	if (db_delete) {
		UNWRAP(db_delete->read, db_delete_read_wrapper, db_delete_read_original);
		UNWRAP(db_delete->write, db_delete_write_wrapper, db_delete_write_original);
	}
	/* A caller may have read the wrapper's address just before it was
	 * restored: wait for calls inside, then a little for ones entering. */
	for (waited = 0; __atomic_load_n(&in_flight, __ATOMIC_SEQ_CST) && waited < 5000; waited++) {
		usleep(1000);
	}
	usleep(20000);
}

/* ---- change events: Stasis messages on the system topic ----
 *
 * Each message's data is an ao2 object holding the event as the module made
 * it (a Rust value, opaque here); its AMI and JSON forms are rendered only
 * when a subscriber asks for them, on the subscriber's thread (manager calls
 * to_ami only while an AMI client is connected). Messages are delivered after
 * stasis_publish returns, and the vtable, the renderers and the data
 * destructor are code in this library: unload stops publishing and waits for
 * every data object to be destroyed before the library can be unmapped.
 */

struct cluster_event {
	const char *name; /* one of event_names: AMI keeps the pointer */
	void *event;      /* owned: released by astdb_cluster_event_drop */
};

static const char *const event_names[] = {
	"AstDBClusterKeyChange",
	"AstDBClusterChangeSummary",
	"AstDBClusterPeerUp",
	"AstDBClusterPeerDown",
	"AstDBClusterPeerRefused",
	"AstDBClusterCatchupStart",
	"AstDBClusterCatchupEnd",
	"AstDBClusterFamilyShared",
	"AstDBClusterFamilyUnshared",
};

static struct stasis_message_type *event_types[2];
static int events_open;
static int events_alive;

static void cluster_event_destroy(void *obj)
{
	struct cluster_event *event = obj;

	astdb_cluster_event_drop(event->event);
	__atomic_sub_fetch(&events_alive, 1, __ATOMIC_SEQ_CST);
}

static struct ast_json *cluster_event_to_json(struct stasis_message *message,
	const struct stasis_message_sanitizer *sanitize)
{
	struct cluster_event *event = stasis_message_data(message);
	struct ast_json *json = NULL;
	char *text;

	(void)sanitize;
	if (event && (text = astdb_cluster_event_render(event->event, 1))) {
		json = ast_json_load_string(text, NULL);
		astdb_cluster_event_text_free(text);
	}
	return json;
}

static struct ast_manager_event_blob *cluster_event_to_ami(struct stasis_message *message)
{
	struct cluster_event *event = stasis_message_data(message);
	struct ast_manager_event_blob *blob = NULL;
	char *text;

	if (event && (text = astdb_cluster_event_render(event->event, 0))) {
		blob = ast_manager_event_blob_create(EVENT_FLAG_SYSTEM, event->name, "%s", text);
		astdb_cluster_event_text_free(text);
	}
	return blob;
}

static struct stasis_message_vtable cluster_event_vtable = {
	.to_json = cluster_event_to_json,
	.to_ami = cluster_event_to_ami,
};

int astdb_cluster_events_start(void)
{
	static const char *const type_names[2] = {
		"astdb_cluster_change_type",
		"astdb_cluster_node_type",
	};
	int i, declined = 0;

	for (i = 0; i < 2; i++) {
		switch (stasis_message_type_create(type_names[i], &cluster_event_vtable, &event_types[i])) {
		case STASIS_MESSAGE_TYPE_SUCCESS:
			break;
		case STASIS_MESSAGE_TYPE_DECLINED:
			event_types[i] = NULL;
			declined = 1;
			break;
		default:
			event_types[i] = NULL;
			astdb_cluster_events_stop(0);
			return -1;
		}
	}
	__atomic_store_n(&events_open, 1, __ATOMIC_SEQ_CST);
	return declined;
}

int astdb_cluster_event_publish(int class, const char *name, void *made)
{
	struct stasis_message_type *type;
	struct stasis_message *message;
	struct cluster_event *event;
	const char *static_name = NULL;
	size_t i;

	if (!__atomic_load_n(&events_open, __ATOMIC_SEQ_CST) || class < 0 || class > 1
		|| !(type = event_types[class])) {
		astdb_cluster_event_drop(made);
		return -1;
	}
	for (i = 0; i < sizeof(event_names) / sizeof(event_names[0]); i++) {
		if (!strcmp(event_names[i], name)) {
			static_name = event_names[i];
		}
	}
	if (!static_name
		|| !(event = ao2_alloc_options(sizeof(*event), cluster_event_destroy, AO2_ALLOC_OPT_LOCK_NOLOCK))) {
		astdb_cluster_event_drop(made);
		return -1;
	}
	/* From here the data object owns the event. */
	__atomic_add_fetch(&events_alive, 1, __ATOMIC_SEQ_CST);
	event->name = static_name;
	event->event = made;
	message = stasis_message_create(type, event);
	ao2_cleanup(event);
	if (!message) {
		return -1;
	}
	stasis_publish(ast_system_topic(), message);
	ao2_cleanup(message);
	return 0;
}

int astdb_cluster_events_stop(int wait_ms)
{
	int i, waited, alive;

	__atomic_store_n(&events_open, 0, __ATOMIC_SEQ_CST);
	for (waited = 0; __atomic_load_n(&events_alive, __ATOMIC_SEQ_CST) && waited < wait_ms; waited++) {
		usleep(1000);
	}
	alive = __atomic_load_n(&events_alive, __ATOMIC_SEQ_CST);
	for (i = 0; i < 2; i++) {
		/* A message does not hold its type: with messages still alive, the
		 * types are left to them (a small leak) rather than freed under them. */
		if (!alive) {
			ao2_cleanup(event_types[i]);
		}
		event_types[i] = NULL;
	}
	return alive;
}

/* ---- AMI actions ----
 *
 * ast_manager_register2 takes a handler without context, so each slot of the
 * table has its own trampoline. Registered with NULL texts: the help comes
 * from the XML documentation, as for ast_manager_register_xml.
 */

#define MAX_AMI_ACTIONS 10

#define AMI_TRAMPOLINE(i) \
	static int ami_action_##i(struct mansession *s, const struct message *m) \
	{ \
		return astdb_cluster_ami_exec(i, s, m); \
	}
AMI_TRAMPOLINE(0)
AMI_TRAMPOLINE(1)
AMI_TRAMPOLINE(2)
AMI_TRAMPOLINE(3)
AMI_TRAMPOLINE(4)
AMI_TRAMPOLINE(5)
AMI_TRAMPOLINE(6)
AMI_TRAMPOLINE(7)
AMI_TRAMPOLINE(8)
AMI_TRAMPOLINE(9)

static int (*const ami_handlers[MAX_AMI_ACTIONS])(struct mansession *, const struct message *) = {
	ami_action_0, ami_action_1, ami_action_2, ami_action_3, ami_action_4,
	ami_action_5, ami_action_6, ami_action_7, ami_action_8, ami_action_9,
};

static int ami_registered;

int astdb_cluster_register_ami(void)
{
	int count = astdb_cluster_ami_count();

	if (count > MAX_AMI_ACTIONS) {
		count = MAX_AMI_ACTIONS;
	}
	for (ami_registered = 0; ami_registered < count; ami_registered++) {
		int i = ami_registered;

		if (ast_manager_register2(astdb_cluster_ami_name(i), astdb_cluster_ami_authority(i),
				ami_handlers[i], AST_MODULE_SELF, NULL, NULL)) {
			astdb_cluster_unregister_ami();
			return -1;
		}
	}
	return 0;
}

void astdb_cluster_unregister_ami(void)
{
	while (ami_registered > 0) {
		ami_registered--;
		ast_manager_unregister(astdb_cluster_ami_name(ami_registered));
	}
}

const char *astdb_cluster_ami_header(const struct message *m, const char *name)
{
	return astman_get_header(m, (char *)name);
}

void astdb_cluster_ami_error(struct mansession *s, const struct message *m, const char *text)
{
	astman_send_error(s, m, (char *)text);
}

void astdb_cluster_ami_ack(struct mansession *s, const struct message *m, const char *text)
{
	astman_send_ack(s, m, (char *)text);
}

void astdb_cluster_ami_listack(struct mansession *s, const struct message *m, const char *text)
{
	astman_send_listack(s, m, (char *)text, "start");
}

void astdb_cluster_ami_append(struct mansession *s, const char *text)
{
	astman_append(s, "%s", text);
}

void astdb_cluster_ami_complete(struct mansession *s, const struct message *m, const char *event,
	int count)
{
	astman_send_list_complete_start(s, m, event, count);
	astman_send_list_complete_end(s);
}
