/*
 * Test module for the stand-in's loader: requires stub_good (ast_module_info.requires),
 * so stub_good cannot be unloaded while this one is loaded.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "stub_needs_good"
#define AST_MODULE_SELF_SYM __internal_stub_needs_good_self

#include "asterisk.h"
#include "asterisk/module.h"

static enum ast_module_load_result load_module(void)
{
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "Stand-in test module requiring stub_good",
	.key = ASTERISK_GPL_KEY,
	.load = load_module,
	.unload = unload_module,
	.load_pri = AST_MODPRI_DEFAULT,
	.requires = "stub_good",
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
