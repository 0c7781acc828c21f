/* res_astdb_cluster: configuration files (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_CONFIG_H
#define ASTDB_CLUSTER_MIN_CONFIG_H

#include "asterisk.h"
#include "asterisk/utils.h"

enum {
	CONFIG_FLAG_WITHCOMMENTS  = (1 << 0),
	CONFIG_FLAG_FILEUNCHANGED = (1 << 1),
	CONFIG_FLAG_NOCACHE       = (1 << 2),
};

#define CONFIG_STATUS_FILEMISSING   ((void *)0)
#define CONFIG_STATUS_FILEUNCHANGED ((void *)-1)
#define CONFIG_STATUS_FILEINVALID   ((void *)-2)

struct ast_comment;

struct ast_variable {
	const char *name;
	const char *value;
	struct ast_variable *next;
	const char *file;
	int lineno;
	int object;
	int blanklines;
	int inherited;
	struct ast_comment *precomments;
	struct ast_comment *sameline;
	struct ast_comment *trailing;
	char stuff[];
};

struct ast_config *ast_config_load2(const char *filename, const char *who_asked, struct ast_flags flags);
void ast_config_destroy(struct ast_config *cfg);
char *ast_category_browse(struct ast_config *config, const char *prev_name);
struct ast_variable *ast_variable_browse(const struct ast_config *config, const char *category);

#endif
