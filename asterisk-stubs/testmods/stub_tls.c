/*
 * Test module for the stand-in: registers a thread-local destructor on the
 * thread that runs load() (what a Rust thread_local! with Drop does). Loaded
 * at start-up, that thread is the main thread, which never exits, so the
 * library stays mapped after dlclose and cannot register itself again.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "stub_tls"
#define AST_MODULE_SELF_SYM __internal_stub_tls_self

#include "asterisk.h"
#include "asterisk/module.h"

extern int __cxa_thread_atexit_impl(void (*dtor)(void *), void *obj, void *dso_symbol);
extern void *__dso_handle;

static void tls_dtor(void *obj)
{
	(void)obj;
}

static enum ast_module_load_result load_module(void)
{
	__cxa_thread_atexit_impl(tls_dtor, NULL, &__dso_handle);
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "Module that pins itself with a thread-local destructor",
	.key = ASTERISK_GPL_KEY,
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
