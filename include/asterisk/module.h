/* res_astdb_cluster: module loader ABI (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_MODULE_H
#define ASTDB_CLUSTER_MIN_MODULE_H

#include "asterisk.h"

/* The loader refuses a module whose key is not this exact text. */
#define ASTERISK_GPL_KEY \
"This paragraph is copyright (c) 2006 by Digium, Inc. \
In order for your module to load, it must return this \
key via a function called \"key\".  Any code which \
includes this paragraph must be licensed under the GNU \
General Public License version 2 or later (at your \
option).  In addition to Digium's general reservations \
of rights, Digium expressly reserves the right to \
allow other parties to license this paragraph under \
different terms. Any use of Digium, Inc. trademarks or \
logos (including \"Asterisk\" or \"Digium\") without \
express written permission of Digium, Inc. is prohibited.\n"

enum ast_module_load_result {
	AST_MODULE_LOAD_SUCCESS = 0,
	AST_MODULE_LOAD_DECLINE = 1,
	AST_MODULE_LOAD_SKIP = 2,
	AST_MODULE_LOAD_PRIORITY = 3,
	AST_MODULE_LOAD_FAILURE = -1,
};

enum ast_module_support_level {
	AST_MODULE_SUPPORT_UNKNOWN,
	AST_MODULE_SUPPORT_CORE,
	AST_MODULE_SUPPORT_EXTENDED,
	AST_MODULE_SUPPORT_DEPRECATED,
};

enum ast_module_flags {
	AST_MODFLAG_DEFAULT = 0,
	AST_MODFLAG_GLOBAL_SYMBOLS = (1 << 0),
	AST_MODFLAG_LOAD_ORDER = (1 << 1),
};

enum { AST_MODPRI_DEFAULT = 128 };

/* 160 bytes on x86_64, unchanged from Asterisk 18 to 23. */
struct ast_module_info {
	struct ast_module *self;             /* set by the loader */
	enum ast_module_load_result (*load)(void);
	int (*reload)(void);
	int (*unload)(void);
	const char *name;                    /* file name without .so */
	const char *description;
	const char *key;                     /* ASTERISK_GPL_KEY */
	unsigned int flags;
	const char buildopt_sum[33];         /* empty: not checked */
	unsigned char load_pri;
	const char *requires;
	const char *optional_modules;
	const char *enhances;
	void *reserved[4];
	enum ast_module_support_level support_level;
};

void ast_module_register(const struct ast_module_info *info);
void ast_module_unregister(const struct ast_module_info *info);

#endif
