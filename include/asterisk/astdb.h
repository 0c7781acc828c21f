/* res_astdb_cluster: AstDB API (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_ASTDB_H
#define ASTDB_CLUSTER_MIN_ASTDB_H

/* One row of a tree read; `key` is the full "/family/key" path. */
struct ast_db_entry {
	struct ast_db_entry *next;
	char *key;
	char data[];
};

int ast_db_get(const char *family, const char *key, char *value, int valuelen);
int ast_db_get_allocated(const char *family, const char *key, char **out);
int ast_db_exists(const char *family, const char *key);
int ast_db_put(const char *family, const char *key, const char *value);
int ast_db_del(const char *family, const char *key);
int ast_db_del2(const char *family, const char *key);
int ast_db_deltree(const char *family, const char *keytree);
struct ast_db_entry *ast_db_gettree(const char *family, const char *keytree);
struct ast_db_entry *ast_db_gettree_by_prefix(const char *family, const char *key_prefix);
void ast_db_freetree(struct ast_db_entry *entry);

#endif
