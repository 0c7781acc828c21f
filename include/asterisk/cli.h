/* res_astdb_cluster: CLI commands (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_CLI_H
#define ASTDB_CLUSTER_MIN_CLI_H

#include "asterisk.h"

#define AST_MAX_CMD_LEN 16

#define CLI_SUCCESS   ((char *)0)
#define CLI_SHOWUSAGE ((char *)1)
#define CLI_FAILURE   ((char *)2)

enum { CLI_INIT = -2, CLI_GENERATE = -3 };

struct ast_cli_args {
	const int fd;
	const int argc;
	const char * const *argv;
	const char *line;   /* the line being completed */
	const char *word;   /* the word being completed */
	const int pos;      /* its position */
	const int n;        /* which match to return */
};

/* 200 bytes on x86_64, unchanged from Asterisk 18 to 23. Must be writable. */
struct ast_cli_entry {
	const char * const cmda[AST_MAX_CMD_LEN];
	const char * const summary;
	const char *usage;
	int inuse;
	struct ast_module *module;
	char *_full_cmd;
	int cmdlen;
	int args;
	char *command;
	char *(*handler)(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a);
	struct ast_cli_entry *next;
};

void ast_cli(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int ast_cli_completion_add(char *value);
int __ast_cli_register_multiple(struct ast_cli_entry *e, int len, struct ast_module *mod);
int ast_cli_unregister_multiple(struct ast_cli_entry *e, int len);
#define ast_cli_register_multiple(e, len) __ast_cli_register_multiple(e, len, AST_MODULE_SELF)

#endif
