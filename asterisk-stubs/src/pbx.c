/*
 * Stand-in Asterisk: dialplan functions (registry like main/pbx_functions.c),
 * the DB family of functions (like funcs/func_db.c) and the CLI commands
 * `dialplan eval`, `dialplan set`, `core show function(s)`.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "stub.h"

#define WORKSPACE 4096

static pthread_mutex_t acf_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ast_custom_function *acf_root;

static struct ast_custom_function *find_nolock(const char *name)
{
	struct ast_custom_function *cur;

	for (cur = acf_root; cur; cur = cur->next) {
		if (!strcmp(cur->name, name)) {
			return cur;
		}
	}
	return NULL;
}

struct ast_custom_function *ast_custom_function_find(const char *name)
{
	struct ast_custom_function *acf;

	pthread_mutex_lock(&acf_lock);
	acf = find_nolock(name);
	pthread_mutex_unlock(&acf_lock);
	return acf;
}

static int is_empty(const char *s)
{
	return !s || !*s;
}

int __ast_custom_function_register(struct ast_custom_function *acf, struct ast_module *mod)
{
	struct ast_custom_function **pp;

	if (!acf || !acf->name) {
		return -1;
	}
	pthread_mutex_lock(&acf_lock);
	if (find_nolock(acf->name)) {
		pthread_mutex_unlock(&acf_lock);
		STUB_LOG(LOG_ERROR, "Function %s already registered.\n", acf->name);
		return -1;
	}
	acf->mod = mod;
	acf->docsrc = AST_STATIC_DOC;
	if (is_empty(acf->desc) && is_empty(acf->synopsis)) {
		/*
		 * Like Asterisk 22.9+ with no XML documentation found: the documentation
		 * fields, their string pool and the since/provided_by tail are written.
		 * A record shorter than 176 bytes gets overwritten past its end here.
		 */
		char *syn = NULL, *desc = NULL, *syntax = NULL, *seealso = NULL, *since = NULL;
		const char *provided = stub_module_name(mod);
		char *pool;
		size_t total;

		if (!stub_xmldoc_function(acf->name, &syn, &desc, &syntax, &seealso, &since)) {
			syn = strdup("Not available");
			desc = strdup("Not available");
			syntax = strdup("Not available");
			seealso = strdup("Not available");
			since = strdup("");
		}
		/* One block holds every string, as Asterisk's string-field pool does. */
		total = strlen(syn) + strlen(desc) + strlen(syntax) + strlen(seealso) + strlen(since)
			+ strlen(provided) + strlen("Not available") + 7;
		pool = calloc(1, total);
		acf->doc_pool = pool;
		acf->doc_mgr.last_alloc = NULL;
		acf->doc_mgr.embedded_pool = NULL;
#define POOL_PUT(field, text) do { acf->field = pool; pool = stpcpy(pool, text) + 1; } while (0)
		POOL_PUT(synopsis, syn);
		POOL_PUT(desc, desc);
		POOL_PUT(syntax, syntax);
		POOL_PUT(arguments, "Not available");
		POOL_PUT(seealso, seealso);
		POOL_PUT(since, since);
		POOL_PUT(provided_by, provided);
#undef POOL_PUT
		free(syn);
		free(desc);
		free(syntax);
		free(seealso);
		free(since);
		acf->docsrc = AST_XML_DOC;
	}
	for (pp = &acf_root; *pp && strcmp(acf->name, (*pp)->name) > 0; pp = &(*pp)->next) {
	}
	acf->next = *pp;
	*pp = acf;
	pthread_mutex_unlock(&acf_lock);
	return 0;
}

int ast_custom_function_unregister(struct ast_custom_function *acf)
{
	struct ast_custom_function **pp;
	int res = -1;

	if (!acf) {
		return -1;
	}
	pthread_mutex_lock(&acf_lock);
	for (pp = &acf_root; *pp; pp = &(*pp)->next) {
		if (*pp == acf) {
			*pp = acf->next;
			acf->next = NULL;
			res = 0;
			break;
		}
	}
	if (!res && acf->docsrc == AST_XML_DOC) {
		free(acf->doc_pool);
		acf->doc_pool = NULL;
		acf->synopsis = acf->desc = acf->syntax = acf->arguments = acf->seealso = "";
		acf->since = acf->provided_by = "";
	}
	pthread_mutex_unlock(&acf_lock);
	return res;
}

/* Finds `name` and pins its module while the caller uses it. */
static struct ast_custom_function *acquire(const char *name)
{
	struct ast_custom_function *acf;

	pthread_mutex_lock(&acf_lock);
	if ((acf = find_nolock(name))) {
		stub_module_ref(acf->mod);
	}
	pthread_mutex_unlock(&acf_lock);
	return acf;
}

/* Splits "NAME(args)" into a malloc'd name and args (args NULL when no parens). */
static char *split_call(const char *expr, char **args)
{
	char *name = strdup(expr);
	char *open = strchr(name, '(');

	*args = NULL;
	if (open) {
		char *close = strrchr(open, ')');
		*open = '\0';
		if (close) {
			*close = '\0';
		} else {
			STUB_LOG(LOG_WARNING, "Can't find trailing parenthesis for function '%s(%s'?\n", name, open + 1);
		}
		*args = open + 1;
	}
	return name;
}

/* Reads a function; 0 and buf filled, or -1 and an error in err. */
static int func_read(const char *expr, char *buf, size_t len, char *err, size_t errlen)
{
	char *args;
	char *name = split_call(expr, &args);
	char *copy = strdup(args ? args : "");
	struct ast_custom_function *acf;
	int res = -1;

	buf[0] = '\0';
	if (!(acf = acquire(name))) {
		snprintf(err, errlen, "Function %s not registered", name);
	} else {
		if (acf->read) {
			res = acf->read(NULL, name, copy, buf, len);
		} else {
			snprintf(err, errlen, "Function %s cannot be read%s", name,
				acf->read2 ? " (read2 is not supported by the stand-in)" : "");
		}
		stub_module_unref(acf->mod);
	}
	free(copy);
	free(name);
	return res;
}

static int func_write(const char *expr, const char *value, char *err, size_t errlen)
{
	char *args;
	char *name = split_call(expr, &args);
	char *copy = strdup(args ? args : "");
	struct ast_custom_function *acf;
	int res = -1;

	if (!(acf = acquire(name))) {
		snprintf(err, errlen, "Function %s not registered", name);
	} else {
		if (acf->write) {
			res = acf->write(NULL, name, copy, value);
		} else {
			snprintf(err, errlen, "Function %s cannot be written to", name);
		}
		stub_module_unref(acf->mod);
	}
	free(copy);
	free(name);
	return res;
}

/* ---- substitution of ${...} ---- */

struct sbuf {
	char *s;
	size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->s = realloc(b->s, b->cap);
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void substitute(int fd, const char *in, struct sbuf *out, int depth)
{
	const char *p = in;

	if (!out->s) {
		sb_add(out, "", 0);
	}
	while (*p) {
		if (p[0] == '$' && p[1] == '{' && depth < 20) {
			const char *q = p + 2;
			int level = 1;
			while (*q) {
				if (*q == '{') {
					level++;
				} else if (*q == '}' && --level == 0) {
					break;
				}
				q++;
			}
			if (!*q) {
				sb_add(out, p, strlen(p));
				return;
			}
			{
				char *inner = strndup(p + 2, (size_t)(q - p - 2));
				struct sbuf expanded = {0};
				substitute(fd, inner, &expanded, depth + 1);
				if (strchr(expanded.s, '(')) {
					char buf[WORKSPACE];
					char err[256] = "";
					if (func_read(expanded.s, buf, sizeof(buf), err, sizeof(err)) && err[0]) {
						STUB_LOG(LOG_ERROR, "%s\n", err);
						ast_cli(fd, "ERROR: %s\n", err);
					}
					sb_add(out, buf, strlen(buf));
				}
				/* Plain variables: the stand-in has no channel, so they are empty. */
				free(expanded.s);
				free(inner);
			}
			p = q + 1;
			continue;
		}
		sb_add(out, p, 1);
		p++;
	}
}

static char *cli_eval(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct sbuf out = {0};

	switch (cmd) {
	case CLI_INIT:
		e->command = "dialplan eval";
		e->usage = "Usage: dialplan eval <text>\n       Substitutes ${FUNC(args)} in text and prints the result.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 3) {
		return CLI_SHOWUSAGE;
	}
	substitute(a->fd, stub_cli_raw_rest(a->line, 2), &out, 0);
	ast_cli(a->fd, "%s\n", out.s);
	free(out.s);
	return CLI_SUCCESS;
}

static char *cli_set(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	char *expr, *eq, *close;
	struct sbuf value = {0};
	char err[256] = "";
	int res;

	switch (cmd) {
	case CLI_INIT:
		e->command = "dialplan set";
		e->usage = "Usage: dialplan set FUNC(args)=value\n       Writes a dialplan function and prints its return code.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 3) {
		return CLI_SHOWUSAGE;
	}
	expr = strdup(stub_cli_raw_rest(a->line, 2));
	close = strchr(expr, ')');
	eq = strchr(close ? close : expr, '=');
	if (!eq) {
		free(expr);
		return CLI_SHOWUSAGE;
	}
	*eq = '\0';
	substitute(a->fd, eq + 1, &value, 0);
	res = func_write(stub_trim(expr), value.s, err, sizeof(err));
	if (err[0]) {
		STUB_LOG(LOG_ERROR, "%s\n", err);
		ast_cli(a->fd, "ERROR: %s\n", err);
	}
	ast_cli(a->fd, "Result: %d\n", res);
	free(value.s);
	free(expr);
	return CLI_SUCCESS;
}

/*
 * Test-only (real Asterisk has no such command): `dialplan bulkset <count> FUNC(args)=value`
 * writes the function <count> times through the registry, as Set() would, with every
 * "{i}" in args and value replaced by the index. For the benchmarks
 * (benches/cluster.rs); times are CLOCK_REALTIME microseconds.
 */
static void expand_index(struct sbuf *out, const char *in, long long i)
{
	char num[32];
	const char *p;

	out->len = 0;
	sb_add(out, "", 0);
	snprintf(num, sizeof(num), "%lld", i);
	while ((p = strstr(in, "{i}"))) {
		sb_add(out, in, (size_t)(p - in));
		sb_add(out, num, strlen(num));
		in = p + 3;
	}
	sb_add(out, in, strlen(in));
}

static long long realtime_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static long long thread_cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static char *cli_bulkset(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct sbuf fn = {0}, val = {0};
	char *expr, *eq, *close;
	char err[256] = "";
	long long i, count, failed = 0, start, end, cpu;

	switch (cmd) {
	case CLI_INIT:
		e->command = "dialplan bulkset";
		e->usage = "Usage: dialplan bulkset <count> FUNC(args)=value\n"
			"       Test-only (not in Asterisk): writes the function <count> times, each\n"
			"       \"{i}\" replaced by 0 .. count-1; prints the start and end times (us)\n"
			"       and the CPU time the writing thread spent in the loop.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 4 || (count = atoll(a->argv[2])) < 0) {
		return CLI_SHOWUSAGE;
	}
	expr = strdup(stub_cli_raw_rest(a->line, 3));
	close = strchr(expr, ')');
	eq = strchr(close ? close : expr, '=');
	if (!eq) {
		free(expr);
		return CLI_SHOWUSAGE;
	}
	*eq = '\0';
	start = realtime_us();
	cpu = thread_cpu_us();
	for (i = 0; i < count; i++) {
		expand_index(&fn, stub_trim(expr), i);
		expand_index(&val, eq + 1, i);
		err[0] = '\0';
		if (func_write(fn.s, val.s, err, sizeof(err))) {
			failed++;
		}
	}
	cpu = thread_cpu_us() - cpu;
	end = realtime_us();
	if (err[0]) {
		ast_cli(a->fd, "ERROR: %s\n", err);
	}
	ast_cli(a->fd, "Wrote %lld (%lld failed) in %lld us; start %lld end %lld cpu %lld\n", count - failed,
		failed, end - start, start, end, cpu);
	free(fn.s);
	free(val.s);
	free(expr);
	return CLI_SUCCESS;
}

static char *complete_function(const char *word, int n)
{
	struct ast_custom_function *acf;
	size_t l = strlen(word);
	char *res = NULL;
	int i = 0;

	pthread_mutex_lock(&acf_lock);
	for (acf = acf_root; acf; acf = acf->next) {
		if (!strncasecmp(acf->name, word, l) && i++ == n) {
			res = strdup(acf->name);
			break;
		}
	}
	pthread_mutex_unlock(&acf_lock);
	return res;
}

static const char *or_na(const char *s)
{
	return is_empty(s) ? "Not available" : s;
}

static char *cli_show_function(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct ast_custom_function *acf;

	switch (cmd) {
	case CLI_INIT:
		e->command = "core show function";
		e->usage = "Usage: core show function <function>\n       Describe a particular dialplan function.\n";
		return NULL;
	case CLI_GENERATE:
		return a->pos == 3 ? complete_function(a->word, a->n) : NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	pthread_mutex_lock(&acf_lock);
	if (!(acf = find_nolock(a->argv[3]))) {
		pthread_mutex_unlock(&acf_lock);
		ast_cli(a->fd, "No function by that name registered.\n");
		return CLI_FAILURE;
	}
	ast_cli(a->fd, "\n  -= Info about function '%s' =- \n\n", acf->name);
	ast_cli(a->fd, "[Synopsis]\n%s\n\n", or_na(acf->synopsis));
	ast_cli(a->fd, "[Since]\n%s\n\n", or_na(acf->since));
	ast_cli(a->fd, "[Description]\n%s\n\n", or_na(acf->desc));
	ast_cli(a->fd, "[Syntax]\n%s\n\n", or_na(acf->syntax));
	ast_cli(a->fd, "[Arguments]\n%s\n\n", or_na(acf->arguments));
	ast_cli(a->fd, "[See Also]\n%s\n\n", or_na(acf->seealso));
	ast_cli(a->fd, "[Provided By]\n%s\n\n", or_na(acf->provided_by));
	ast_cli(a->fd, "[Module]\n%s\n", stub_module_name(acf->mod));
	pthread_mutex_unlock(&acf_lock);
	return CLI_SUCCESS;
}

static char *cli_show_functions(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct ast_custom_function *acf;
	int n = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "core show functions";
		e->usage = "Usage: core show functions\n       List the registered dialplan functions.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	ast_cli(a->fd, "Installed Custom Functions:\n--------------------------------------------------------------------------------\n");
	pthread_mutex_lock(&acf_lock);
	for (acf = acf_root; acf; acf = acf->next, n++) {
		ast_cli(a->fd, "%-20.20s %-35.35s %s\n", acf->name, or_na(acf->syntax), or_na(acf->synopsis));
	}
	pthread_mutex_unlock(&acf_lock);
	ast_cli(a->fd, "%d custom functions installed.\n", n);
	return CLI_SUCCESS;
}

/* ---- DB functions, like funcs/func_db.c ---- */

/* "family/key": family before the first '/', key the rest. */
static int split_family_key(const char *fname, char *data, char **family, char **key)
{
	char *slash;

	if (is_empty(data) || !(slash = strchr(data, '/'))) {
		STUB_LOG(LOG_WARNING, "%s requires an argument, %s(<family>/<key>)\n", fname, fname);
		return -1;
	}
	*slash = '\0';
	*family = data;
	*key = slash + 1;
	return 0;
}

static int db_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	char *family, *key;

	UNUSED(chan);
	buf[0] = '\0';
	if (split_family_key(cmd, data, &family, &key)) {
		return -1;
	}
	if (ast_db_get(family, key, buf, (int)len - 1)) {
		STUB_LOG(LOG_DEBUG, "DB: %s/%s not found in database.\n", family, key);
	}
	return 0;
}

static int db_write(struct ast_channel *chan, const char *cmd, char *data, const char *value)
{
	char *family, *key;

	UNUSED(chan);
	if (split_family_key(cmd, data, &family, &key)) {
		return -1;
	}
	if (ast_db_put(family, key, value)) {
		STUB_LOG(LOG_WARNING, "DB: Error writing value to database.\n");
	}
	return 0;
}

static int db_exists_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	char *family, *key;

	UNUSED(chan);
	buf[0] = '\0';
	if (split_family_key(cmd, data, &family, &key)) {
		return -1;
	}
	if (ast_db_get(family, key, buf, (int)len - 1)) {
		snprintf(buf, len, "0");
	} else {
		snprintf(buf, len, "1");
	}
	return 0;
}

static int db_delete_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	char *family, *key;

	UNUSED(chan);
	buf[0] = '\0';
	if (split_family_key(cmd, data, &family, &key)) {
		return -1;
	}
	if (ast_db_get(family, key, buf, (int)len - 1)) {
		STUB_LOG(LOG_DEBUG, "DB_DELETE: %s/%s not found in database.\n", family, key);
	} else if (ast_db_del(family, key)) {
		STUB_LOG(LOG_DEBUG, "DB_DELETE: %s/%s could not be deleted from the database\n", family, key);
	}
	return 0;
}

/* Set(DB_DELETE(family/key)=): a delete that discards the value, as func_db has. */
static int db_delete_write(struct ast_channel *chan, const char *cmd, char *data, const char *value)
{
	char buf[128];

	UNUSED(value);
	return db_delete_read(chan, cmd, data, buf, sizeof(buf));
}

static void append(char *buf, size_t len, size_t *used, const char *s, int escape_commas)
{
	for (; *s && *used + 1 < len; s++) {
		if (escape_commas && *s == ',') {
			if (*used + 2 >= len) {
				break;
			}
			buf[(*used)++] = '\\';
		}
		buf[(*used)++] = *s;
	}
	buf[*used] = '\0';
}

/* Distinct first components below `data` (like DB_KEYS), or their count. */
static int keys_common(char *data, char *buf, size_t len, int count_only)
{
	struct ast_db_entry *tree, *dbe;
	size_t plen, used = 0;
	const char *last = "";
	char *dup = NULL;
	int count = 0;

	buf[0] = '\0';
	while (*data == '/') {
		data++;
	}
	plen = strlen(data);
	while (plen > 0 && data[plen - 1] == '/') {
		data[--plen] = '\0';
	}
	if (!(tree = ast_db_gettree(data, NULL))) {
		if (count_only) {
			snprintf(buf, len, "0");
		}
		return 0;
	}
	for (dbe = tree; dbe; dbe = dbe->next) {
		char *cur = dbe->key + plen + 1, *slash;
		if (*cur == '/') {
			cur++;
		}
		if ((slash = strchr(cur, '/'))) {
			*slash = '\0';
		}
		if (!strcasecmp(last, cur)) {
			continue;
		}
		last = cur;
		if (count++ && !count_only) {
			append(buf, len, &used, ",", 0);
		}
		if (!count_only) {
			append(buf, len, &used, cur, 1);
		}
	}
	free(dup);
	ast_db_freetree(tree);
	if (count_only) {
		snprintf(buf, len, "%d", count);
	}
	return 0;
}

static int db_keys_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	UNUSED(chan);
	UNUSED(cmd);
	return keys_common(data, buf, len, 0);
}

static int db_keycount_read(struct ast_channel *chan, const char *cmd, char *data, char *buf, size_t len)
{
	UNUSED(chan);
	UNUSED(cmd);
	return keys_common(data, buf, len, 1);
}

static struct ast_custom_function db_functions[] = {
	{ .name = "DB", .synopsis = "Read from or write to the Asterisk database.",
	  .syntax = "DB(family/key)", .read = db_read, .write = db_write, .read_max = 256 },
	{ .name = "DB_EXISTS", .synopsis = "Check to see if a key exists in the Asterisk database.",
	  .syntax = "DB_EXISTS(family/key)", .read = db_exists_read, .read_max = 2 },
	{ .name = "DB_DELETE", .synopsis = "Return a value from the database and delete it.",
	  .syntax = "DB_DELETE(family/key)", .read = db_delete_read, .write = db_delete_write },
	{ .name = "DB_KEYS", .synopsis = "Obtain a list of keys within the Asterisk database.",
	  .syntax = "DB_KEYS([prefix])", .read = db_keys_read },
	{ .name = "DB_KEYCOUNT", .synopsis = "Obtain the number of keys at a prefix within the Asterisk database.",
	  .syntax = "DB_KEYCOUNT([prefix])", .read = db_keycount_read },
};

static struct ast_cli_entry pbx_cli[] = {
	{ .handler = cli_eval, .summary = "Substitute ${FUNC(args)} in a text" },
	{ .handler = cli_set, .summary = "Write a dialplan function" },
	{ .handler = cli_bulkset, .summary = "Test-only: write a dialplan function many times" },
	{ .handler = cli_show_function, .summary = "Describe a specific dialplan function" },
	{ .handler = cli_show_functions, .summary = "Shows registered dialplan functions" },
};

void stub_pbx_init(void)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(db_functions); i++) {
		ast_custom_function_register(&db_functions[i]);
	}
	ast_cli_register_multiple(pbx_cli, ARRAY_LEN(pbx_cli));
}
