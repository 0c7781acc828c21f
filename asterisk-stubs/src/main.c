/*
 * Stand-in Asterisk: start-up, shutdown and the `-rx` remote client.
 *
 *   asterisk-stub -C /path/asterisk.conf [-f]     run in the foreground
 *   asterisk-stub -C /path/asterisk.conf -rx CMD  run CMD in the running instance
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "stub.h"

char stub_etc_dir[4096] = "/etc/asterisk";
char stub_mod_dir[4096] = "/usr/lib/asterisk/modules";
char stub_db_dir[4096] = "/var/lib/asterisk";
char stub_run_dir[4096] = "/var/run/asterisk";
char stub_log_dir[4096] = "/var/log/asterisk";
char stub_data_dir[4096] = "/var/lib/asterisk";
char stub_spool_dir[4096] = "/var/spool/asterisk";
char stub_conf_file[4096] = "/etc/asterisk/asterisk.conf";
char stub_socket_path[4200];
static char db_path[4200];

const char *ast_config_AST_CONFIG_DIR = stub_etc_dir;
const char *ast_config_AST_DATA_DIR = stub_data_dir;
const char *ast_config_AST_DB = db_path;

static pthread_t main_thread;

struct ast_module *AST_MODULE_SELF_SYM(void)
{
	return NULL;
}

void stub_request_shutdown(void)
{
	pthread_kill(main_thread, SIGUSR1);
}

char *stub_trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
		s++;
	}
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) {
		*--e = '\0';
	}
	return s;
}

int stub_mkdirs(const char *path)
{
	char tmp[4096];
	char *p;

	snprintf(tmp, sizeof(tmp), "%s", path);
	for (p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(tmp, 0755);
			*p = '/';
		}
	}
	if (mkdir(tmp, 0755) && errno != EEXIST) {
		return -1;
	}
	return 0;
}

static int parse_eid(const char *s, struct ast_eid *eid)
{
	unsigned int b[6];
	int i;

	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
		return -1;
	}
	for (i = 0; i < 6; i++) {
		if (b[i] > 255) {
			return -1;
		}
		eid->eid[i] = (unsigned char)b[i];
	}
	return 0;
}

static void default_eid(void)
{
	char host[256] = "";
	unsigned int h = 2166136261u;
	char *p;

	gethostname(host, sizeof(host) - 1);
	for (p = host; *p; p++) {
		h = (h ^ (unsigned char)*p) * 16777619u;
	}
	ast_eid_default.eid[0] = 0x02; /* locally administered */
	ast_eid_default.eid[1] = 0x00;
	ast_eid_default.eid[2] = (unsigned char)(h >> 24);
	ast_eid_default.eid[3] = (unsigned char)(h >> 16);
	ast_eid_default.eid[4] = (unsigned char)(h >> 8);
	ast_eid_default.eid[5] = (unsigned char)h;
}

static int read_asterisk_conf(void)
{
	struct ast_flags flags = { CONFIG_FLAG_NOCACHE };
	struct ast_config *cfg = ast_config_load2(stub_conf_file, "asterisk", flags);
	struct ast_variable *v;

	default_eid();
	if (cfg == CONFIG_STATUS_FILEMISSING || cfg == CONFIG_STATUS_FILEINVALID) {
		fprintf(stderr, "Unable to read %s\n", stub_conf_file);
		return -1;
	}
	for (v = ast_variable_browse(cfg, "directories"); v; v = v->next) {
		char *dst = NULL;
		if (!strcasecmp(v->name, "astetcdir")) {
			dst = stub_etc_dir;
		} else if (!strcasecmp(v->name, "astmoddir")) {
			dst = stub_mod_dir;
		} else if (!strcasecmp(v->name, "astdbdir")) {
			dst = stub_db_dir;
		} else if (!strcasecmp(v->name, "astrundir")) {
			dst = stub_run_dir;
		} else if (!strcasecmp(v->name, "astlogdir")) {
			dst = stub_log_dir;
		} else if (!strcasecmp(v->name, "astdatadir")) {
			dst = stub_data_dir;
		} else if (!strcasecmp(v->name, "astspooldir")) {
			dst = stub_spool_dir;
		}
		if (dst) {
			snprintf(dst, 4096, "%s", v->value);
		}
	}
	for (v = ast_variable_browse(cfg, "options"); v; v = v->next) {
		if (!strcasecmp(v->name, "entityid")) {
			if (parse_eid(v->value, &ast_eid_default)) {
				fprintf(stderr, "Invalid entityid '%s' in %s\n", v->value, stub_conf_file);
				ast_config_destroy(cfg);
				return -1;
			}
		} else if (!strcasecmp(v->name, "verbose")) {
			ast_verb_sys_level = atoi(v->value);
		}
	}
	ast_config_destroy(cfg);
	snprintf(db_path, sizeof(db_path), "%s/astdb", stub_db_dir);
	snprintf(stub_socket_path, sizeof(stub_socket_path), "%s/asterisk.ctl", stub_run_dir);
	return 0;
}

static int remote_command(const char *cmd)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char buf[65536];
	int fd;

	if (strlen(stub_socket_path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "Socket path too long: %s\n", stub_socket_path);
		return 1;
	}
	memcpy(sun.sun_path, stub_socket_path, strlen(stub_socket_path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun))) {
		fprintf(stderr, "Unable to connect to remote asterisk (does %s exist?)\n", stub_socket_path);
		return 1;
	}
	if (write(fd, cmd, strlen(cmd)) < 0 || write(fd, "\n", 1) < 0) {
		fprintf(stderr, "Unable to send the command\n");
		close(fd);
		return 1;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			break;
		}
		fwrite(buf, 1, (size_t)n, stdout);
	}
	fflush(stdout);
	close(fd);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "Usage: asterisk-stub -C asterisk.conf [-f] [-rx command]\n");
}

int main(int argc, char **argv)
{
	const char *rx = NULL;
	sigset_t set;
	int i, sig;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-C") && i + 1 < argc) {
			snprintf(stub_conf_file, sizeof(stub_conf_file), "%s", argv[++i]);
		} else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "-c") || !strcmp(argv[i], "-F")) {
			/* Always in the foreground. */
		} else if ((!strcmp(argv[i], "-rx") || !strcmp(argv[i], "-x")) && i + 1 < argc) {
			rx = argv[++i];
		} else if (!strcmp(argv[i], "-r")) {
			/* "-r -x cmd" */
		} else if (!strncmp(argv[i], "-v", 2) || !strncmp(argv[i], "-d", 2) || !strcmp(argv[i], "-n")) {
			/* accepted, ignored */
		} else {
			usage();
			return 2;
		}
	}
	if (stub_conf_file[0] != '/') {
		char cwd[2048], rel[4096];
		if (getcwd(cwd, sizeof(cwd))) {
			snprintf(rel, sizeof(rel), "%s", stub_conf_file);
			snprintf(stub_conf_file, sizeof(stub_conf_file), "%.2047s/%.2000s", cwd, rel);
		}
	}
	if (read_asterisk_conf()) {
		return 1;
	}
	if (rx) {
		return remote_command(rx);
	}

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGHUP);
	/* Every thread created from here on inherits the mask; only sigwait below sees them. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	main_thread = pthread_self();

	stub_mkdirs(stub_log_dir);
	stub_mkdirs(stub_db_dir);
	stub_mkdirs(stub_run_dir);
	if (stub_logger_init()) {
		return 1;
	}
	STUB_LOG(LOG_NOTICE, "Asterisk stand-in starting (config %s, pid %d)\n", stub_conf_file, (int)getpid());

	stub_cli_register_core();
	stub_logger_register_cli();
	stub_config_register_cli();
	if (stub_astdb_init()) {
		STUB_LOG(LOG_ERROR, "Unable to open the AstDB\n");
		return 1;
	}
	stub_astdb_register_cli();
	stub_pbx_init();
	stub_manager_init();
	if (stub_stasis_init()) {
		return 1;
	}
	stub_loader_init();
	stub_loader_register_cli();
	if (stub_pjsip_init()) {
		return 1;
	}
	if (stub_cli_server_start()) {
		return 1;
	}
	/* Modules are loaded after the socket is up but before "fully booted". */
	{
		char path[4200];
		struct ast_flags flags = { CONFIG_FLAG_NOCACHE };
		struct ast_config *cfg;
		struct ast_variable *v;

		snprintf(path, sizeof(path), "%s/modules.conf", stub_etc_dir);
		cfg = ast_config_load2(path, "asterisk", flags);
		if (cfg && cfg != CONFIG_STATUS_FILEINVALID) {
			/* Asterisk orders the loads by `requires`; here a module whose required
			 * module is not loaded yet is tried again after the others. */
			char **later = NULL;
			size_t nlater = 0, k;
			int progress = 1;

			for (v = ast_variable_browse(cfg, "modules"); v; v = v->next) {
				if (!strcasecmp(v->name, "load") || !strcasecmp(v->name, "preload")
					|| !strcasecmp(v->name, "require") || !strcasecmp(v->name, "preload-require")) {
					if (stub_module_load(v->value, -1) == -2) {
						later = realloc(later, (nlater + 1) * sizeof(*later));
						later[nlater++] = strdup(v->value);
					}
				}
			}
			while (progress && nlater) {
				progress = 0;
				for (k = 0; k < nlater; k++) {
					if (later[k] && stub_module_load(later[k], -1) != -2) {
						free(later[k]);
						later[k] = NULL;
						progress = 1;
					}
				}
			}
			for (k = 0; k < nlater; k++) {
				free(later[k]);
			}
			free(later);
			ast_config_destroy(cfg);
		}
	}
	stub_cli_set_fully_booted();
	STUB_LOG(LOG_NOTICE, "Asterisk Ready.\n");

	for (;;) {
		if (sigwait(&set, &sig)) {
			continue;
		}
		if (sig == SIGHUP) {
			continue;
		}
		break;
	}
	STUB_LOG(LOG_NOTICE, "Shutting down (signal %d)\n", sig);
	stub_cli_server_stop();
	/* The messages' data destructors live in the modules: deliver what is queued
	 * while the modules are still there. */
	stub_stasis_shutdown();
	stub_modules_shutdown();
	stub_pjsip_shutdown();
	stub_astdb_shutdown();
	STUB_LOG(LOG_NOTICE, "Stand-in stopped.\n");
	stub_logger_close();
	_exit(0);
}
