/*
 * Test module for the stand-in: registers itself but with a wrong license key.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "stub_badkey"
#define AST_MODULE_SELF_SYM __internal_stub_badkey_self

#include "asterisk.h"
#include "asterisk/module.h"

static int loaded;

static enum ast_module_load_result load_module(void)
{
	loaded = 1;
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "Module with a wrong key",
	.key = "This is not the GPL key.\n",
	.load = load_module,
	.unload = unload_module,
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
