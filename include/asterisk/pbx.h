/* res_astdb_cluster: dialplan functions (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_PBX_H
#define ASTDB_CLUSTER_MIN_PBX_H

#include "asterisk.h"

struct ast_str;

typedef int (*ast_acf_read_fn_t)(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len);
typedef int (*ast_acf_read2_fn_t)(struct ast_channel *chan, const char *cmd, char *data, struct ast_str **str, ssize_t len);
typedef int (*ast_acf_write_fn_t)(struct ast_channel *chan, const char *cmd, char *data, const char *value);

/* Where a function's documentation comes from. */
enum ast_doc_src { AST_XML_DOC, AST_STATIC_DOC };

/*
 * The custom function record. Asterisk fills the documentation text fields and,
 * from 20.12/21.7/22.2/23.0 on, `since` and from 20.19/22.9/23.3 on `provided_by`,
 * at registration. This declaration is the largest of those layouts (176 bytes),
 * so that a newer Asterisk never writes past it; keep it zeroed.
 */
struct ast_custom_function {
	const char *name;
	void *doc_pool;                    /* documentation string storage */
	const char *synopsis;
	const char *desc;
	const char *syntax;
	const char *arguments;
	const char *seealso;
	struct {                           /* documentation string bookkeeping */
		const char *last_alloc;
		void *embedded_pool;
		void *fields;
		size_t fields_max;
		size_t fields_current;
	} doc_mgr;
	enum ast_doc_src docsrc;
	ast_acf_read_fn_t read;
	ast_acf_read2_fn_t read2;
	size_t read_max;
	ast_acf_write_fn_t write;
	struct ast_module *mod;
	unsigned int read_escalates:1;
	unsigned int write_escalates:1;
	struct ast_custom_function *next;  /* registry list link */
	const char *since;
	const char *provided_by;
};

int __ast_custom_function_register(struct ast_custom_function *acf, struct ast_module *mod);
int ast_custom_function_unregister(struct ast_custom_function *acf);
struct ast_custom_function *ast_custom_function_find(const char *name);
#define ast_custom_function_register(acf) __ast_custom_function_register(acf, AST_MODULE_SELF)

#endif
