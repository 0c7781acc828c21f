/* res_astdb_cluster: directories (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_PATHS_H
#define ASTDB_CLUSTER_MIN_PATHS_H

extern const char *ast_config_AST_CONFIG_DIR;
extern const char *ast_config_AST_DATA_DIR;
/* AstDB path without its ".sqlite3" suffix, e.g. /var/lib/asterisk/astdb. */
extern const char *ast_config_AST_DB;

#endif
