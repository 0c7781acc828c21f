/*
 * res_astdb_cluster: the seam between Asterisk's C API and the Rust module.
 *
 * Everything Asterisk offers only as a macro, a variadic function or a struct
 * whose layout varies between versions is handled in glue.c, so that Rust sees
 * plain functions taking plain values.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef ASTDB_CLUSTER_GLUE_H
#define ASTDB_CLUSTER_GLUE_H

#include <stddef.h>

/* ---- provided by glue.c, called from Rust ---- */

/* Registers DB_SHARED and DB_SHARED_EXISTS; 0 on success. */
int astdb_cluster_register_functions(void);
void astdb_cluster_unregister_functions(void);
/* Registers the CLI commands described by the astdb_cluster_cli_* callbacks. */
int astdb_cluster_register_cli(void);
void astdb_cluster_unregister_cli(void);

/* level: 2 notice, 3 warning, 4 error. */
void astdb_cluster_log(int level, const char *file, int line, const char *func, const char *msg);
void astdb_cluster_cli_write(int fd, const char *text);
/* Adds one completion candidate (copied with Asterisk's allocator). */
int astdb_cluster_cli_completion_add(const char *candidate);
/*
 * Capture of dialplan writes: wraps the callbacks of DB() (write) and
 * DB_DELETE() (read and write) so that each successful call also reports the
 * "family/key" it touched. Idempotent: call it again to re-wrap after func_db
 * was reloaded. Returns which callbacks are wrapped now (0 when func_db is
 * not loaded).
 */
#define ASTDB_CLUSTER_CAPTURE_DB 1
#define ASTDB_CLUSTER_CAPTURE_DB_DELETE_READ 2
#define ASTDB_CLUSTER_CAPTURE_DB_DELETE_WRITE 4
int astdb_cluster_capture_hook(void);
/* Restores func_db's callbacks and waits for calls in progress to leave. */
void astdb_cluster_capture_unhook(void);

/* The build's Asterisk headers: "installed" or "bundled". */
const char *astdb_cluster_headers(void);

/* A value from AstDB (NULL when absent), released with astdb_cluster_free. */
char *astdb_cluster_db_get(const char *family, const char *key);
void astdb_cluster_free(void *ptr);

/*
 * Change events as Stasis messages on the system topic. start: creates the
 * message types; 0 on success, 1 when stasis.conf declines them, -1 on error.
 * publish: `name` must be one of the event names glue.c knows (its AMI name
 * must outlive the message, so a static copy is used); class 0 = change, 1 =
 * node; `event` is the module's event, owned from then on by the message (or
 * dropped at once when it cannot be published). 0 when published. stop:
 * publishes nothing more, waits up to `wait_ms` for every message data object
 * to be destroyed (their code is in this library), then releases the types;
 * returns how many were still alive.
 */
#define ASTDB_CLUSTER_EVENT_CHANGE 0
#define ASTDB_CLUSTER_EVENT_NODE 1
int astdb_cluster_events_start(void);
int astdb_cluster_event_publish(int class, const char *name, void *event);
int astdb_cluster_events_stop(int wait_ms);

/*
 * AMI actions described by the astdb_cluster_ami_* callbacks, registered with
 * their help taken from the XML documentation. The helpers below answer a
 * request; `s` and `m` are the session and message the handler was given.
 */
struct mansession;
struct message;
int astdb_cluster_register_ami(void);
void astdb_cluster_unregister_ami(void);
const char *astdb_cluster_ami_header(const struct message *m, const char *name);
void astdb_cluster_ami_error(struct mansession *s, const struct message *m, const char *text);
void astdb_cluster_ami_ack(struct mansession *s, const struct message *m, const char *text);
void astdb_cluster_ami_listack(struct mansession *s, const struct message *m, const char *text);
void astdb_cluster_ami_append(struct mansession *s, const char *text);
void astdb_cluster_ami_complete(struct mansession *s, const struct message *m, const char *event,
	int count);

/* ---- provided by Rust, called from glue.c ---- */

/* A dialplan DB() call wrote `value` to "family/key" (value NULL: DB_DELETE()
 * deleted it). Must not block. */
void astdb_cluster_db_written(const char *path, const char *value);

int astdb_cluster_load(void);
int astdb_cluster_unload(void);
int astdb_cluster_reload(void);

/* which: 0 = DB_SHARED, 1 = DB_SHARED_EXISTS. Return 0 on success, -1 on error. */
int astdb_cluster_function_read(int which, const char *data, char *buf, size_t len);
int astdb_cluster_function_write(int which, const char *data, const char *value);

/* CLI table: command text, one-line summary and usage of entry `idx`. */
int astdb_cluster_cli_count(void);
const char *astdb_cluster_cli_command(int idx);
const char *astdb_cluster_cli_summary(int idx);
const char *astdb_cluster_cli_usage(int idx);
/* Runs entry `idx`; returns 0 success, 1 show usage, 2 failure. */
int astdb_cluster_cli_exec(int idx, int fd, int argc, const char *const *argv);
/* Offers completions for word `word` at position `pos` through astdb_cluster_cli_completion_add. */
void astdb_cluster_cli_complete(int idx, const char *line, const char *word, int pos);

/* An event published by the module: its AMI body (form 0) or JSON (form 1),
 * released with astdb_cluster_event_text_free (NULL on failure); and its
 * release. Called on Stasis threads. */
char *astdb_cluster_event_render(const void *event, int form);
void astdb_cluster_event_text_free(char *text);
void astdb_cluster_event_drop(void *event);

/* AMI table: action name (static), authority; exec answers the request. */
int astdb_cluster_ami_count(void);
const char *astdb_cluster_ami_name(int idx);
int astdb_cluster_ami_authority(int idx);
int astdb_cluster_ami_exec(int idx, struct mansession *s, const struct message *m);

#endif
