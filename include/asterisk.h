/*
 * res_astdb_cluster: minimal declarations of the Asterisk API the module uses.
 *
 * Written for this project from the documented ABI (see ASTERISK-FACTS in the
 * project notes); used only when no installed Asterisk headers are found.
 * Layouts match the LARGEST known Asterisk 18-23 layouts on x86_64, so that a
 * module built against these headers never lets Asterisk write past a struct.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef ASTDB_CLUSTER_MIN_ASTERISK_H
#define ASTDB_CLUSTER_MIN_ASTERISK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct ast_module;
struct ast_channel;
struct ast_config;

/* An out-of-tree module names the function that returns its own handle. */
#if !defined(AST_MODULE_SELF_SYM)
#error "define AST_MODULE_SELF_SYM before including asterisk.h"
#endif
struct ast_module *AST_MODULE_SELF_SYM(void);
#define AST_MODULE_SELF AST_MODULE_SELF_SYM()

#endif
