/*
 * Test module for the stand-in: registers correctly with the GPL key, adds a
 * CLI command with completion and a dialplan function with no documentation.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "stub_good"
#define AST_MODULE_SELF_SYM __internal_stub_good_self

#include <stdio.h>
#include <string.h>

#include "asterisk.h"
#include "asterisk/astdb.h"
#include "asterisk/cli.h"
#include "asterisk/logger.h"
#include "asterisk/manager.h"
#include "asterisk/module.h"
#include "asterisk/pbx.h"
#include "asterisk/utils.h"

static int loads;

static char *cli_hello(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	static const char *const choices[] = { "alpha", "beta", "bravo" };

	switch (cmd) {
	case CLI_INIT:
		e->command = "stubgood hello";
		e->usage = "Usage: stubgood hello <word>\n";
		return NULL;
	case CLI_GENERATE:
		if (a->pos != 2) {
			return NULL;
		}
		/* n-th match through the return value; the last one via completion_add. */
		{
			int i, seen = 0;
			for (i = 0; i < 2; i++) {
				if (!strncmp(choices[i], a->word, strlen(a->word)) && seen++ == a->n) {
					return ast_strdup(choices[i]);
				}
			}
			if (a->n == seen && !strncmp(choices[2], a->word, strlen(a->word))) {
				ast_cli_completion_add(ast_strdup(choices[2]));
			}
		}
		return NULL;
	}
	if (a->argc != 3) {
		return CLI_SHOWUSAGE;
	}
	ast_cli(a->fd, "hello %s (loads=%d)\n", a->argv[2], loads);
	return CLI_SUCCESS;
}

static struct ast_cli_entry cli[] = {
	{ .handler = cli_hello, .summary = "Says hello" },
};

/* Registered without docs: the stand-in writes since/provided_by into it. */
static struct ast_custom_function echo_function;

static int echo_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	snprintf(buf, len, "%s:%s", cmd, data);
	return 0;
}

static enum ast_module_load_result load_module(void)
{
	loads++;
	memset(&echo_function, 0, sizeof(echo_function));
	echo_function.name = "STUB_ECHO";
	echo_function.read = echo_read;
	if (ast_custom_function_register(&echo_function)) {
		return AST_MODULE_LOAD_DECLINE;
	}
	ast_cli_register_multiple(cli, 1);
	ast_log(__LOG_NOTICE, __FILE__, __LINE__, __func__, "stub_good loaded (since=%s provided_by=%s)\n",
		echo_function.since ? "set" : "unset", echo_function.provided_by ? echo_function.provided_by : "unset");
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	/* Lets a test make unload() fail: AstDB key stubgood/refuse_unload. */
	if (ast_db_exists("stubgood", "refuse_unload")) {
		return -1;
	}
	ast_cli_unregister_multiple(cli, 1);
	ast_custom_function_unregister(&echo_function);
	return 0;
}

static int reload_module(void)
{
	ast_log(__LOG_NOTICE, __FILE__, __LINE__, __func__, "stub_good reloaded\n");
	__ast_manager_event_multichan(EVENT_FLAG_SYSTEM, "StubGoodReloaded", 0, NULL, __FILE__, __LINE__, __func__,
		"Loads: %d\r\n", loads);
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "Stand-in test module",
	.key = ASTERISK_GPL_KEY,
	.load = load_module,
	.unload = unload_module,
	.reload = reload_module,
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
