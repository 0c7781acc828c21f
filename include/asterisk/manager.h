/* res_astdb_cluster: manager events (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_MANAGER_H
#define ASTDB_CLUSTER_MIN_MANAGER_H

#include "asterisk.h"

#define EVENT_FLAG_SYSTEM    (1 << 0)
#define EVENT_FLAG_USER      (1 << 6)
#define EVENT_FLAG_REPORTING (1 << 9)

int __ast_manager_event_multichan(int category, const char *event, int chancount,
	struct ast_channel **chans, const char *file, int line, const char *func,
	const char *contents, ...) __attribute__((format(printf, 8, 9)));

#endif
