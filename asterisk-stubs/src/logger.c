/*
 * Stand-in Asterisk: logger (ast_log, __ast_verbose) writing
 * "[YYYY-MM-DD HH:MM:SS] LEVEL[tid] file:line func: message" to
 * <astlogdir>/messages and to stderr.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "stub.h"

int ast_verb_sys_level = 3;

static int log_fd = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"DEBUG", "TRACE", "NOTICE", "WARNING", "ERROR", "VERBOSE"};

int stub_logger_init(void)
{
	char path[4200];

	snprintf(path, sizeof(path), "%s/messages", stub_log_dir);
	pthread_mutex_lock(&log_lock);
	if (log_fd >= 0) {
		close(log_fd);
	}
	log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	pthread_mutex_unlock(&log_lock);
	if (log_fd < 0) {
		fprintf(stderr, "Unable to open log file %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

void stub_logger_close(void)
{
	pthread_mutex_lock(&log_lock);
	if (log_fd >= 0) {
		close(log_fd);
		log_fd = -1;
	}
	pthread_mutex_unlock(&log_lock);
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

static void log_line(const char *level, const char *file, int line, const char *func,
	const char *fmt, va_list ap)
{
	char stamp[64];
	char *msg = NULL;
	char *out = NULL;
	struct tm tm;
	time_t now = time(NULL);
	const char *base;
	int len;

	localtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
	if (vasprintf(&msg, fmt, ap) < 0) {
		return;
	}
	/* One line per message: drop the trailing newline the caller usually adds. */
	len = (int)strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r')) {
		msg[--len] = '\0';
	}
	base = file ? strrchr(file, '/') : NULL;
	base = base ? base + 1 : (file ? file : "?");
	len = asprintf(&out, "[%s] %s[%ld] %s:%d %s: %s\n", stamp, level, (long)syscall(SYS_gettid),
		base, line, func ? func : "?", msg);
	free(msg);
	if (len < 0) {
		return;
	}
	pthread_mutex_lock(&log_lock);
	if (log_fd >= 0) {
		write_all(log_fd, out, (size_t)len);
	}
	write_all(STDERR_FILENO, out, (size_t)len);
	pthread_mutex_unlock(&log_lock);
	free(out);
}

void ast_log(int level, const char *file, int line, const char *function, const char *fmt, ...)
{
	va_list ap;
	const char *name = (level >= 0 && level < (int)ARRAY_LEN(level_names)) ? level_names[level] : "UNKNOWN";

	va_start(ap, fmt);
	log_line(name, file, line, function, fmt, ap);
	va_end(ap);
}

void __ast_verbose(const char *file, int line, const char *func, int level, const char *fmt, ...)
{
	va_list ap;

	UNUSED(level);
	va_start(ap, fmt);
	log_line("VERBOSE", file, line, func, fmt, ap);
	va_end(ap);
}

/* ---- CLI: logger show messages [N], core set verbose N ---- */

static char *handle_logger_show_messages(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	char path[4200];
	char *data = NULL;
	size_t size = 0, cap = 0;
	int want = 20, lines = 0;
	FILE *f;
	size_t i;

	switch (cmd) {
	case CLI_INIT:
		e->command = "logger show messages";
		e->usage = "Usage: logger show messages [N]\n       Shows the last N lines (default 20) of the messages log.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc > 4) {
		return CLI_SHOWUSAGE;
	}
	if (a->argc == 4 && (want = atoi(a->argv[3])) <= 0) {
		return CLI_SHOWUSAGE;
	}
	snprintf(path, sizeof(path), "%s/messages", stub_log_dir);
	if (!(f = fopen(path, "r"))) {
		ast_cli(a->fd, "Unable to open %s\n", path);
		return CLI_FAILURE;
	}
	for (;;) {
		size_t n;
		if (size + 4096 > cap) {
			cap = cap ? cap * 2 : 65536;
			data = realloc(data, cap);
		}
		n = fread(data + size, 1, cap - size - 1, f);
		if (n == 0) {
			break;
		}
		size += n;
	}
	fclose(f);
	if (!data) {
		return CLI_SUCCESS;
	}
	data[size] = '\0';
	/* Walk back over `want` lines. */
	i = size;
	if (i > 0 && data[i - 1] == '\n') {
		i--;
	}
	while (i > 0) {
		if (data[i - 1] == '\n' && ++lines == want) {
			break;
		}
		i--;
	}
	stub_cli_write(a->fd, data + i, size - i);
	free(data);
	return CLI_SUCCESS;
}

static char *handle_core_set_verbose(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "core set verbose";
		e->usage = "Usage: core set verbose <level>\n       Sets ast_verb_sys_level.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	ast_verb_sys_level = atoi(a->argv[3]);
	ast_cli(a->fd, "Verbosity is now %d\n", ast_verb_sys_level);
	return CLI_SUCCESS;
}

static struct ast_cli_entry logger_cli[] = {
	{ .handler = handle_logger_show_messages, .summary = "Shows the last lines of the messages log" },
	{ .handler = handle_core_set_verbose, .summary = "Sets the verbosity level" },
};

void stub_logger_register_cli(void)
{
	ast_cli_register_multiple(logger_cli, ARRAY_LEN(logger_cli));
}
