/* res_astdb_cluster: JSON values (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_JSON_H
#define ASTDB_CLUSTER_MIN_JSON_H

struct ast_json;
struct ast_json_error;

enum ast_json_encoding_format {
	AST_JSON_COMPACT,
	AST_JSON_PRETTY,
	AST_JSON_SORTED,
};

/* Parses JSON text; NULL on error. Release with ast_json_unref(). */
struct ast_json *ast_json_load_string(const char *input, struct ast_json_error *error);
void ast_json_unref(struct ast_json *value);
/* The value as text; release with ast_json_free(). */
char *ast_json_dump_string_format(struct ast_json *root, enum ast_json_encoding_format format);
void ast_json_free(void *p);
#define ast_json_dump_string(root) ast_json_dump_string_format(root, AST_JSON_COMPACT)

#endif
