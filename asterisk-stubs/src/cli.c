/*
 * Stand-in Asterisk: CLI framework (registration, matching, completion) and
 * the control socket that `asterisk-stub -rx` talks to.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "stub.h"

#define MAX_ARGS 128

static pthread_mutex_t cli_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cli_cond = PTHREAD_COND_INITIALIZER;
static struct ast_cli_entry *cli_head;

/* ---- output ---- */

void stub_cli_write(int fd, const char *buf, size_t len)
{
	if (fd < 0) {
		return;
	}
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

void ast_cli(int fd, const char *fmt, ...)
{
	char *s = NULL;
	int len;
	va_list ap;

	va_start(ap, fmt);
	len = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (len >= 0) {
		stub_cli_write(fd, s, (size_t)len);
		free(s);
	}
}

/* ---- parsing ---- */

int stub_cli_parse(const char *line, char **argv, int max, char *buf, size_t buflen, int *trailing_space)
{
	int argc = 0;
	size_t o = 0;
	const char *p = line;

	if (trailing_space) {
		*trailing_space = 0;
	}
	for (;;) {
		int quoted = 0, have_word = 0;

		while (*p && isspace((unsigned char)*p)) {
			p++;
		}
		if (!*p) {
			break;
		}
		if (argc >= max || o >= buflen - 1) {
			break;
		}
		argv[argc] = buf + o;
		while (*p && o < buflen - 1) {
			if (*p == '\\' && p[1]) {
				buf[o++] = p[1];
				p += 2;
				have_word = 1;
				continue;
			}
			if (*p == '"') {
				quoted = !quoted;
				p++;
				have_word = 1;
				continue;
			}
			if (!quoted && isspace((unsigned char)*p)) {
				break;
			}
			buf[o++] = *p++;
			have_word = 1;
		}
		UNUSED(have_word);
		buf[o++] = '\0';
		argc++;
	}
	if (trailing_space) {
		size_t l = strlen(line);
		*trailing_space = (l == 0) || isspace((unsigned char)line[l - 1]);
	}
	return argc;
}

/* The raw text of `line` after its first `nwords` words. */
static const char *raw_rest(const char *line, int nwords)
{
	const char *p = line;

	while (nwords-- > 0) {
		int quoted = 0;
		while (*p && isspace((unsigned char)*p)) {
			p++;
		}
		while (*p && (quoted || !isspace((unsigned char)*p))) {
			if (*p == '\\' && p[1]) {
				p++;
			} else if (*p == '"') {
				quoted = !quoted;
			}
			p++;
		}
	}
	while (*p && isspace((unsigned char)*p)) {
		p++;
	}
	return p;
}

const char *stub_cli_raw_rest(const char *line, int nwords)
{
	return raw_rest(line, nwords);
}

/* ---- matching (words like "{a|b}" and "[a|b]" match any alternative) ---- */

static int is_special(const char *w)
{
	return w[0] == '[' || w[0] == '{' || w[0] == '%';
}

static int word_match(const char *word, const char *cli_word)
{
	const char *p;
	size_t l;

	if (!word || !*word || !cli_word || !*cli_word) {
		return 0;
	}
	if (!is_special(cli_word)) {
		return strcasecmp(word, cli_word) == 0;
	}
	if (cli_word[0] == '%') {
		return 1;
	}
	l = strlen(word);
	for (p = cli_word + 1; *p;) {
		const char *end = p + strcspn(p, "|]}");
		if ((size_t)(end - p) == l && !strncasecmp(p, word, l)) {
			return 1;
		}
		if (!*end) {
			break;
		}
		p = end + 1;
	}
	return 0;
}

/* Number of command words of `e` matching argv, or -1 if it does not match. */
static int entry_match(struct ast_cli_entry *e, int argc, char **argv)
{
	int i;

	for (i = 0; e->cmda[i]; i++) {
		if (i >= argc) {
			if (e->cmda[i][0] == '[' && !e->cmda[i + 1]) {
				return i;
			}
			return -1;
		}
		if (!word_match(argv[i], e->cmda[i])) {
			return -1;
		}
	}
	return i;
}

/* ---- registration ---- */

static int cli_register(struct ast_cli_entry *e, struct ast_module *mod)
{
	struct ast_cli_entry **pp, *cur;
	char *s, *full;
	int i = 0;

	if (!e->handler) {
		return -1;
	}
	e->command = NULL;
	e->handler(e, CLI_INIT, NULL);
	if (!e->command) {
		STUB_LOG(LOG_WARNING, "CLI entry did not set its command\n");
		return -1;
	}
	s = (char *)e->command;
	while (isspace((unsigned char)*s)) {
		s++;
	}
	full = strdup(s);
	memset((void *)e->cmda, 0, sizeof(e->cmda));
	for (s = full; *s && i < AST_MAX_CMD_LEN - 1;) {
		((const char **)e->cmda)[i++] = s;
		while (*s && !isspace((unsigned char)*s)) {
			s++;
		}
		if (*s) {
			*s++ = '\0';
			while (isspace((unsigned char)*s)) {
				s++;
			}
		}
	}
	/* Rebuild the normalised full command. */
	e->_full_cmd = malloc(strlen(e->command) + 2);
	e->_full_cmd[0] = '\0';
	for (i = 0; e->cmda[i]; i++) {
		if (i) {
			strcat(e->_full_cmd, " ");
		}
		strcat(e->_full_cmd, e->cmda[i]);
	}
	e->args = i;
	e->cmdlen = (int)strlen(e->_full_cmd);
	e->inuse = 0;
	e->module = mod;

	pthread_mutex_lock(&cli_lock);
	for (cur = cli_head; cur; cur = cur->next) {
		if (cur == e || !strcasecmp(cur->_full_cmd, e->_full_cmd)) {
			pthread_mutex_unlock(&cli_lock);
			STUB_LOG(LOG_WARNING, "Command '%s' already registered (or something close enough)\n", e->_full_cmd);
			/* Keep the first block of cmda pointing at `full` so we can free it. */
			free(full);
			free(e->_full_cmd);
			e->_full_cmd = NULL;
			memset((void *)e->cmda, 0, sizeof(e->cmda));
			return -1;
		}
	}
	for (pp = &cli_head; *pp && strcasecmp((*pp)->_full_cmd, e->_full_cmd) < 0; pp = &(*pp)->next) {
	}
	e->next = *pp;
	*pp = e;
	pthread_mutex_unlock(&cli_lock);
	return 0;
}

int __ast_cli_register_multiple(struct ast_cli_entry *e, int len, struct ast_module *mod)
{
	int i, res = 0;

	for (i = 0; i < len; i++) {
		res |= cli_register(&e[i], mod);
	}
	return res;
}

static int cli_unregister(struct ast_cli_entry *e)
{
	struct ast_cli_entry **pp;
	int waited = 0;

	pthread_mutex_lock(&cli_lock);
	for (pp = &cli_head; *pp && *pp != e; pp = &(*pp)->next) {
	}
	if (!*pp) {
		pthread_mutex_unlock(&cli_lock);
		return -1;
	}
	while (e->inuse > 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&cli_cond, &cli_lock, &ts);
		if (++waited == 30) {
			STUB_LOG(LOG_WARNING, "Command '%s' still in use after 30 s, removing it anyway\n", e->_full_cmd);
			break;
		}
	}
	for (pp = &cli_head; *pp && *pp != e; pp = &(*pp)->next) {
	}
	if (*pp) {
		*pp = e->next;
	}
	e->next = NULL;
	pthread_mutex_unlock(&cli_lock);
	/* cmda[0] points at the start of the split copy. */
	free((void *)e->cmda[0]);
	memset((void *)e->cmda, 0, sizeof(e->cmda));
	free(e->_full_cmd);
	e->_full_cmd = NULL;
	e->command = NULL;
	e->usage = NULL;
	return 0;
}

int ast_cli_unregister_multiple(struct ast_cli_entry *e, int len)
{
	int i, res = 0;

	for (i = 0; i < len; i++) {
		res |= cli_unregister(&e[i]);
	}
	return res;
}

/* Finds the entry with the most words matching; marks it in use. */
static struct ast_cli_entry *find_and_use(int argc, char **argv)
{
	struct ast_cli_entry *e, *best = NULL;
	int best_n = -1;

	pthread_mutex_lock(&cli_lock);
	for (e = cli_head; e; e = e->next) {
		int n = entry_match(e, argc, argv);
		if (n > best_n) {
			best_n = n;
			best = e;
		}
	}
	if (best) {
		best->inuse++;
		stub_module_ref(best->module);
	}
	pthread_mutex_unlock(&cli_lock);
	return best;
}

static void release(struct ast_cli_entry *e)
{
	pthread_mutex_lock(&cli_lock);
	e->inuse--;
	stub_module_unref(e->module);
	pthread_cond_broadcast(&cli_cond);
	pthread_mutex_unlock(&cli_lock);
}

int stub_cli_execute(int fd, const char *line)
{
	char *argv[MAX_ARGS + 1];
	size_t buflen = strlen(line) + 2;
	char *buf = malloc(buflen);
	struct ast_cli_entry *e;
	char *res;
	int argc = stub_cli_parse(line, argv, MAX_ARGS, buf, buflen, NULL);

	argv[argc] = NULL;
	if (argc == 0) {
		free(buf);
		return 0;
	}
	if (!(e = find_and_use(argc, argv))) {
		ast_cli(fd, "No such command '%s' (type 'core show help %s' for other possible commands)\n", line, argv[0]);
		free(buf);
		return -1;
	}
	{
		struct ast_cli_args a = {
			.fd = fd, .argc = argc, .argv = (const char *const *)argv, .line = line,
			.word = NULL, .pos = 0, .n = 0,
		};
		res = e->handler(e, 0, &a);
	}
	if (res == CLI_SHOWUSAGE) {
		if (e->usage) {
			ast_cli(fd, "%s", e->usage);
		} else {
			ast_cli(fd, "Invalid usage, but no usage information available.\n");
		}
	}
	release(e);
	free(buf);
	return res == CLI_SUCCESS ? 0 : -1;
}

/* ---- completion ---- */

struct completion {
	char **items;
	size_t count, cap;
};

static __thread struct completion *active_completion;

static void completion_push(struct completion *c, char *s)
{
	size_t i;

	for (i = 0; i < c->count; i++) {
		if (!strcmp(c->items[i], s)) {
			free(s);
			return;
		}
	}
	if (c->count == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->items = realloc(c->items, c->cap * sizeof(*c->items));
	}
	c->items[c->count++] = s;
}

int ast_cli_completion_add(char *value)
{
	if (!value) {
		return -1;
	}
	if (!active_completion) {
		free(value);
		return -1;
	}
	completion_push(active_completion, value);
	return 0;
}

static void add_word_candidates(struct completion *c, const char *cli_word, const char *word)
{
	size_t l = strlen(word);
	const char *p;

	if (!is_special(cli_word)) {
		if (!strncasecmp(cli_word, word, l)) {
			completion_push(c, strdup(cli_word));
		}
		return;
	}
	if (cli_word[0] == '%') {
		return;
	}
	for (p = cli_word + 1; *p;) {
		const char *end = p + strcspn(p, "|]}");
		if ((size_t)(end - p) >= l && !strncasecmp(p, word, l) && end > p) {
			completion_push(c, strndup(p, (size_t)(end - p)));
		}
		if (!*end) {
			break;
		}
		p = end + 1;
	}
}

static void complete_line(int fd, const char *partial)
{
	char *argv[MAX_ARGS + 2];
	size_t buflen = strlen(partial) + 2;
	char *buf = malloc(buflen);
	int trailing, argc, pos, i;
	struct completion c = {0};
	struct ast_cli_entry *e;
	struct ast_cli_entry **run = NULL;
	size_t nrun = 0;

	argc = stub_cli_parse(partial, argv, MAX_ARGS, buf, buflen, &trailing);
	if (trailing || argc == 0) {
		argv[argc++] = "";
	}
	argv[argc] = NULL;
	pos = argc - 1;

	pthread_mutex_lock(&cli_lock);
	for (e = cli_head; e; e = e->next) {
		int ok = 1;
		if (e->_full_cmd[0] == '_') {
			continue;
		}
		for (i = 0; i < pos; i++) {
			if (!e->cmda[i] || !word_match(argv[i], e->cmda[i])) {
				ok = 0;
				break;
			}
		}
		if (!ok) {
			continue;
		}
		if (e->cmda[pos]) {
			add_word_candidates(&c, e->cmda[pos], argv[pos]);
		} else {
			run = realloc(run, (nrun + 1) * sizeof(*run));
			run[nrun++] = e;
			e->inuse++;
			stub_module_ref(e->module);
		}
	}
	pthread_mutex_unlock(&cli_lock);

	for (size_t r = 0; r < nrun; r++) {
		int n;
		e = run[r];
		active_completion = &c;
		for (n = 0; n < 1000; n++) {
			struct ast_cli_args a = {
				.fd = fd, .argc = argc, .argv = (const char *const *)argv, .line = partial,
				.word = argv[pos], .pos = pos, .n = n,
			};
			char *res = e->handler(e, CLI_GENERATE, &a);
			if (!res || res == CLI_SHOWUSAGE || res == CLI_FAILURE) {
				break;
			}
			completion_push(&c, res);
		}
		active_completion = NULL;
		release(e);
	}
	free(run);
	for (size_t k = 0; k < c.count; k++) {
		ast_cli(fd, "%s\n", c.items[k]);
		free(c.items[k]);
	}
	free(c.items);
	free(buf);
}

/* ---- core commands ---- */

static char *handle_complete(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "_complete";
		e->usage = "Usage: _complete <partial line>\n       Lists completions of the last word.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	{
		/* Everything after "_complete" and one separator, trailing space kept. */
		const char *p = a->line;
		while (isspace((unsigned char)*p)) {
			p++;
		}
		p += strlen("_complete");
		if (*p) {
			p++;
		}
		complete_line(a->fd, p);
	}
	return CLI_SUCCESS;
}

static char *handle_help(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct ast_cli_entry *cur;
	int found = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "core show help";
		e->usage = "Usage: core show help [topic]\n       Lists commands starting with topic.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	pthread_mutex_lock(&cli_lock);
	for (cur = cli_head; cur; cur = cur->next) {
		int i, ok = 1;
		if (cur->_full_cmd[0] == '_') {
			continue;
		}
		for (i = 3; i < a->argc; i++) {
			if (!cur->cmda[i - 3] || !word_match(a->argv[i], cur->cmda[i - 3])) {
				ok = 0;
				break;
			}
		}
		if (!ok) {
			continue;
		}
		if (a->argc > 3 && a->argc - 3 == cur->args && cur->usage) {
			ast_cli(a->fd, "%s", cur->usage);
		} else {
			ast_cli(a->fd, "%-30s -- %s\n", cur->_full_cmd, cur->summary ? cur->summary : "<no summary>");
		}
		found++;
	}
	pthread_mutex_unlock(&cli_lock);
	if (!found) {
		ast_cli(a->fd, "No such command\n");
	}
	return CLI_SUCCESS;
}

static char *handle_version(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "core show version";
		e->usage = "Usage: core show version\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	ast_cli(a->fd, "Asterisk stand-in (res_astdb_cluster test double)\n");
	return CLI_SUCCESS;
}

static char *handle_threads(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	DIR *d;
	struct dirent *de;
	int n = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "core show threads";
		e->usage = "Usage: core show threads\n       Counts the process's threads.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if ((d = opendir("/proc/self/task"))) {
		while ((de = readdir(d))) {
			if (de->d_name[0] != '.') {
				ast_cli(a->fd, "%s\n", de->d_name);
				n++;
			}
		}
		closedir(d);
	}
	ast_cli(a->fd, "%d threads listed.\n", n);
	return CLI_SUCCESS;
}

static char *handle_settings(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	char eid[32];

	switch (cmd) {
	case CLI_INIT:
		e->command = "core show settings";
		e->usage = "Usage: core show settings\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	ast_eid_to_str(eid, sizeof(eid), &ast_eid_default);
	ast_cli(a->fd, "\nPBX Core settings\n-----------------\n");
	ast_cli(a->fd, "  Version:                     stand-in\n");
	ast_cli(a->fd, "  Entity ID:                   %s\n", eid);
	ast_cli(a->fd, "  Verbosity:                   %d\n", ast_verb_sys_level);
	ast_cli(a->fd, "\nDirectories\n-----------\n");
	ast_cli(a->fd, "  Configuration file:          %s\n", stub_conf_file);
	ast_cli(a->fd, "  Configuration directory:     %s\n", ast_config_AST_CONFIG_DIR);
	ast_cli(a->fd, "  Module directory:            %s\n", stub_mod_dir);
	ast_cli(a->fd, "  Spool directory:             %s\n", stub_spool_dir);
	ast_cli(a->fd, "  Log directory:               %s\n", stub_log_dir);
	ast_cli(a->fd, "  Run/Sockets directory:       %s\n", stub_run_dir);
	ast_cli(a->fd, "  Data directory:              %s\n", ast_config_AST_DATA_DIR);
	ast_cli(a->fd, "  AstDB:                       %s\n", ast_config_AST_DB);
	return CLI_SUCCESS;
}

static char *handle_stop(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "core stop {now|gracefully|when}";
		e->usage = "Usage: core stop now\n       Unloads the modules and exits.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 3) {
		return CLI_SHOWUSAGE;
	}
	ast_cli(a->fd, "Shutting down\n");
	stub_request_shutdown();
	return CLI_SUCCESS;
}

static int fully_booted;

void stub_cli_set_fully_booted(void)
{
	__atomic_store_n(&fully_booted, 1, __ATOMIC_SEQ_CST);
}

/* As in Asterisk: the control socket answers while modules are still loading; this
 * waits until they are. */
static char *handle_waitfullybooted(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "core waitfullybooted";
		e->usage = "Usage: core waitfullybooted\n"
			"       Waits until start-up has loaded the modules.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	while (!__atomic_load_n(&fully_booted, __ATOMIC_SEQ_CST)) {
		usleep(10000);
	}
	ast_cli(a->fd, "Asterisk has fully booted.\n");
	return CLI_SUCCESS;
}

static struct ast_cli_entry core_cli[] = {
	{ .handler = handle_complete, .summary = "Lists completions" },
	{ .handler = handle_help, .summary = "Display help list, or specific help on a command" },
	{ .handler = handle_version, .summary = "Display version info" },
	{ .handler = handle_waitfullybooted, .summary = "Wait for Asterisk to be fully booted" },
	{ .handler = handle_threads, .summary = "Display the process's threads" },
	{ .handler = handle_settings, .summary = "Show some core settings" },
	{ .handler = handle_stop, .summary = "Shut down the stand-in" },
};

void stub_cli_register_core(void)
{
	ast_cli_register_multiple(core_cli, ARRAY_LEN(core_cli));
}

/* ---- control socket ---- */

static int listen_fd = -1;
static pthread_t accept_thread;

static void *client_thread(void *arg)
{
	int fd = (int)(intptr_t)arg;
	size_t cap = 4096, len = 0;
	char *line = malloc(cap);

	for (;;) {
		ssize_t n;
		if (len + 1 >= cap) {
			if (cap >= 1 << 20) {
				break;
			}
			cap *= 2;
			line = realloc(line, cap);
		}
		n = read(fd, line + len, cap - len - 1);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			break;
		}
		len += (size_t)n;
		if (memchr(line, '\0', len) || memchr(line, '\n', len)) {
			break;
		}
	}
	line[len] = '\0';
	line[strcspn(line, "\n")] = '\0';
	if (len > 0 && line[strlen(line) - 1] == '\r') {
		line[strlen(line) - 1] = '\0';
	}
	stub_cli_execute(fd, line);
	free(line);
	shutdown(fd, SHUT_RDWR);
	close(fd);
	return NULL;
}

static void *accept_loop(void *arg)
{
	UNUSED(arg);
	for (;;) {
		pthread_t t;
		pthread_attr_t attr;
		int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			break;
		}
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &attr, client_thread, (void *)(intptr_t)fd)) {
			close(fd);
		}
		pthread_attr_destroy(&attr);
	}
	return NULL;
}

int stub_cli_server_start(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	if (strlen(stub_socket_path) >= sizeof(sun.sun_path)) {
		STUB_LOG(LOG_ERROR, "Socket path too long: %s\n", stub_socket_path);
		return -1;
	}
	strcpy(sun.sun_path, stub_socket_path);
	unlink(stub_socket_path);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sun, sizeof(sun)) || listen(listen_fd, 64)) {
		STUB_LOG(LOG_ERROR, "Unable to listen on %s: %s\n", stub_socket_path, strerror(errno));
		return -1;
	}
	if (pthread_create(&accept_thread, NULL, accept_loop, NULL)) {
		return -1;
	}
	return 0;
}

void stub_cli_server_stop(void)
{
	if (listen_fd >= 0) {
		shutdown(listen_fd, SHUT_RDWR);
		close(listen_fd);
		listen_fd = -1;
		unlink(stub_socket_path);
	}
}
