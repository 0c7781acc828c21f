/* res_astdb_cluster: utilities (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_UTILS_H
#define ASTDB_CLUSTER_MIN_UTILS_H

#include <stddef.h>

struct ast_flags {
	unsigned int flags;
};

struct ast_eid {
	unsigned char eid[6];
};

extern struct ast_eid ast_eid_default;
char *ast_eid_to_str(char *s, int maxlen, struct ast_eid *eid);

void *__ast_malloc(size_t size, const char *file, int lineno, const char *func);
void __ast_free(void *ptr, const char *file, int lineno, const char *func);
char *__ast_strdup(const char *s, const char *file, int lineno, const char *func);
#define ast_free(p) __ast_free((p), __FILE__, __LINE__, __func__)
#define ast_strdup(s) __ast_strdup((s), __FILE__, __LINE__, __func__)

#endif
