/*
 * Stand-in Asterisk for res_astdb_cluster tests: internal declarations.
 *
 * The stand-in implements the API declared in the project's include/ and is
 * compiled against those very headers, so prototypes and layouts match what
 * the module sees.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef ASTERISK_STUB_H
#define ASTERISK_STUB_H

#define AST_MODULE "asterisk"
#define AST_MODULE_SELF_SYM __internal_asterisk_stub_core_self

#include <pthread.h>
#include <stdio.h>

#include "asterisk.h"
#include "asterisk/astdb.h"
#include "asterisk/astobj2.h"
#include "asterisk/cli.h"
#include "asterisk/config.h"
#include "asterisk/json.h"
#include "asterisk/logger.h"
#include "asterisk/manager.h"
#include "asterisk/module.h"
#include "asterisk/paths.h"
#include "asterisk/pbx.h"
#include "asterisk/stasis.h"
#include "asterisk/stasis_system.h"
#include "asterisk/utils.h"

#define STUB_LOG(level, ...) ast_log(level, __FILE__, __LINE__, __func__, __VA_ARGS__)
#define LOG_DEBUG   __LOG_DEBUG
#define LOG_NOTICE  __LOG_NOTICE
#define LOG_WARNING __LOG_WARNING
#define LOG_ERROR   __LOG_ERROR
#define UNUSED(x) (void)(x)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Directories from asterisk.conf (main.c). */
extern char stub_etc_dir[4096];
extern char stub_mod_dir[4096];
extern char stub_db_dir[4096];
extern char stub_run_dir[4096];
extern char stub_log_dir[4096];
extern char stub_data_dir[4096];
extern char stub_spool_dir[4096];
extern char stub_conf_file[4096];
extern char stub_socket_path[4200];

/* main.c */
void stub_request_shutdown(void);

/* logger.c */
int stub_logger_init(void);
void stub_logger_close(void);

/* astdb.c */
int stub_astdb_init(void);
void stub_astdb_shutdown(void);
void stub_astdb_register_cli(void);
/* Manager actions performing writes like manager_db (used by manager.c). */
void stub_astdb_manager_action(int fd, const char *action, int nargs, const char *const *names,
	const char *const *values);

/* cli.c */
void stub_cli_register_core(void);
/* Start-up has loaded the modules ("core waitfullybooted" returns from then on). */
void stub_cli_set_fully_booted(void);
int stub_cli_execute(int fd, const char *line);
int stub_cli_server_start(void);
void stub_cli_server_stop(void);
/* Parses a command line into words; quotes group words. Returns argc. */
int stub_cli_parse(const char *line, char **argv, int max, char *buf, size_t buflen, int *trailing_space);

/* loader.c */
int stub_loader_init(void);
int stub_module_load(const char *name, int fd);
int stub_module_unload(const char *name, int fd);
void stub_modules_shutdown(void);
const char *stub_module_name(struct ast_module *mod);
void stub_module_ref(struct ast_module *mod);
void stub_module_unref(struct ast_module *mod);
/* A stand-in part listed by "module show" as a running module that cannot be unloaded
 * (and that other modules may name in their `requires`). */
void stub_loader_add_builtin(const char *resource, const char *description);

/* pjsip.c: the res_pjsip publish API subset (src/pjsip/sip_api.h) over UDP. init reads
 * <astetcdir>/pjsip.conf and, when it has a transport, binds it and starts the receiver
 * (before modules load); shutdown (after modules unload) stops every SIP thread. */
int stub_pjsip_init(void);
void stub_pjsip_shutdown(void);

/* pbx.c */
void stub_pbx_init(void);

/* manager.c */
void stub_manager_init(void);
/* What ast_manager_event_blob_create() makes (opaque to modules, as in Asterisk). */
struct ast_manager_event_blob {
	int event_flags;
	const char *manager_event;   /* the caller's pointer, as Asterisk keeps it */
	char *extra_fields;
};
/* "system,all" for EVENT_FLAG_SYSTEM, as Asterisk's authority_to_str(). */
const char *stub_manager_authority(int authority, char *buf, size_t len);

/* stasis.c: the dispatcher starts at init; shutdown stops taking messages,
 * delivers what is queued and joins it (before the modules are unloaded). */
int stub_stasis_init(void);
void stub_stasis_shutdown(void);

void stub_logger_register_cli(void);
void stub_config_register_cli(void);
void stub_loader_register_cli(void);
const char *stub_cli_raw_rest(const char *line, int nwords);

/* xmldoc.c: 1 and malloc'd strings if <astdatadir>/documentation/thirdparty documents it. */
int stub_xmldoc_function(const char *name, char **synopsis, char **desc, char **syntax, char **seealso,
	char **since);

/* xmldoc.c: the documentation of <manager name="X"> (kind "manager", one
 * part) or <managerEvent name="X"> (kind "managerEvent", one part per
 * <managerEventInstance>). Returns the number of parts, 0 if undocumented;
 * fields are malloc'd or NULL. */
struct stub_xmldoc {
	char *synopsis, *description, *since, *seealso, *syntax, *arguments, *provided_by;
};
int stub_xmldoc_manager(const char *kind, const char *name, struct stub_xmldoc **docs);
void stub_xmldoc_free(struct stub_xmldoc *docs, int n);

/* utils */
char *stub_trim(char *s);
int stub_mkdirs(const char *path);
void stub_cli_write(int fd, const char *buf, size_t len);

#endif
