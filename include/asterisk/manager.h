/* res_astdb_cluster: manager events and actions (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_MANAGER_H
#define ASTDB_CLUSTER_MIN_MANAGER_H

#include "asterisk.h"

#define EVENT_FLAG_SYSTEM    (1 << 0)
#define EVENT_FLAG_CALL      (1 << 1)
#define EVENT_FLAG_LOG       (1 << 2)
#define EVENT_FLAG_VERBOSE   (1 << 3)
#define EVENT_FLAG_COMMAND   (1 << 4)
#define EVENT_FLAG_AGENT     (1 << 5)
#define EVENT_FLAG_USER      (1 << 6)
#define EVENT_FLAG_CONFIG    (1 << 7)
#define EVENT_FLAG_DTMF      (1 << 8)
#define EVENT_FLAG_REPORTING (1 << 9)

/* A manager session and one action request; opaque here. */
struct mansession;
struct message;
struct ast_manager_event_blob;

int __ast_manager_event_multichan(int category, const char *event, int chancount,
	struct ast_channel **chans, const char *file, int line, const char *func,
	const char *contents, ...) __attribute__((format(printf, 8, 9)));

/* For a message type's to_ami: `manager_event` must outlive the blob (a literal). */
struct ast_manager_event_blob *ast_manager_event_blob_create(int event_flags,
	const char *manager_event, const char *extra_fields_fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* NULL synopsis and description: the help comes from the XML documentation. */
int ast_manager_register2(const char *action, int authority,
	int (*func)(struct mansession *s, const struct message *m),
	struct ast_module *module, const char *synopsis, const char *description);
int ast_manager_unregister(const char *action);

/* "" when the header is absent. */
const char *astman_get_header(const struct message *m, char *var);
void astman_send_error(struct mansession *s, const struct message *m, char *error);
void astman_send_ack(struct mansession *s, const struct message *m, char *msg);
void astman_send_listack(struct mansession *s, const struct message *m, char *msg, char *listflag);
void astman_send_list_complete_start(struct mansession *s, const struct message *m,
	const char *event_name, int count);
void astman_send_list_complete_end(struct mansession *s);
void astman_append(struct mansession *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
