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
#ifdef ASTDB_CLUSTER_INSTALLED_HEADERS
#include "asterisk/buildopts.h"
#endif

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

void astdb_cluster_manager_event(const char *event, const char *body)
{
	__ast_manager_event_multichan(EVENT_FLAG_SYSTEM, event, 0, NULL, __FILE__, __LINE__,
		__func__, "%s", body);
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
