/* res_astdb_cluster: logging (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_LOGGER_H
#define ASTDB_CLUSTER_MIN_LOGGER_H

enum {
	__LOG_DEBUG = 0,
	__LOG_TRACE = 1,
	__LOG_NOTICE = 2,
	__LOG_WARNING = 3,
	__LOG_ERROR = 4,
	__LOG_VERBOSE = 5,
};

void ast_log(int level, const char *file, int line, const char *function, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
void __ast_verbose(const char *file, int line, const char *func, int level, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
extern int ast_verb_sys_level;

#endif
