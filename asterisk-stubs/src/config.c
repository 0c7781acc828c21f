/*
 * Stand-in Asterisk: configuration files (the subset of main/config.c a module uses).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "stub.h"

struct ast_category {
	char *name;
	int ignored;                 /* a "(!)" template */
	int lineno;
	struct ast_variable *root, *last;
	struct ast_category *next;
};

struct ast_config {
	struct ast_category *root, *last;
	struct ast_category *last_browse;
	int include_level;
};

/* Remembers mtime and size per (file, who_asked) for CONFIG_FLAG_FILEUNCHANGED. */
struct cfmtime {
	char *file;
	char *who;
	struct timespec mtime;
	off_t size;
	struct cfmtime *next;
};

static pthread_mutex_t cfmtime_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cfmtime *cfmtimes;

static struct ast_variable *variable_new(const char *name, const char *value, const char *file, int lineno)
{
	size_t nl = strlen(name) + 1, vl = strlen(value) + 1, fl = strlen(file) + 1;
	struct ast_variable *v = calloc(1, sizeof(*v) + nl + vl + fl);
	char *p = v->stuff;

	memcpy(p, name, nl);
	v->name = p;
	p += nl;
	memcpy(p, value, vl);
	v->value = p;
	p += vl;
	memcpy(p, file, fl);
	v->file = p;
	v->lineno = lineno;
	return v;
}

static void category_append(struct ast_category *cat, struct ast_variable *v)
{
	if (cat->last) {
		cat->last->next = v;
	} else {
		cat->root = v;
	}
	cat->last = v;
}

static void category_destroy(struct ast_category *cat)
{
	struct ast_variable *v = cat->root, *n;

	while (v) {
		n = v->next;
		free(v);
		v = n;
	}
	free(cat->name);
	free(cat);
}

void ast_config_destroy(struct ast_config *cfg)
{
	struct ast_category *c, *n;

	if (!cfg || cfg == CONFIG_STATUS_FILEUNCHANGED || cfg == CONFIG_STATUS_FILEINVALID) {
		return;
	}
	for (c = cfg->root; c; c = n) {
		n = c->next;
		category_destroy(c);
	}
	free(cfg);
}

static struct ast_category *find_category(const struct ast_config *cfg, const char *name)
{
	struct ast_category *c;

	for (c = cfg->root; c; c = c->next) {
		if (c->name == name) {
			return c;
		}
	}
	for (c = cfg->root; c; c = c->next) {
		if (!strcasecmp(c->name, name)) {
			return c;
		}
	}
	return NULL;
}

char *ast_category_browse(struct ast_config *cfg, const char *prev)
{
	struct ast_category *c;

	if (!cfg) {
		return NULL;
	}
	if (!prev) {
		c = cfg->root;
	} else if (cfg->last_browse && cfg->last_browse->name == prev) {
		c = cfg->last_browse->next;
	} else {
		c = find_category(cfg, prev);
		c = c ? c->next : NULL;
	}
	while (c && c->ignored) {
		c = c->next;
	}
	cfg->last_browse = c;
	return c ? c->name : NULL;
}

struct ast_variable *ast_variable_browse(const struct ast_config *cfg, const char *category)
{
	struct ast_category *c;

	if (!cfg || !category) {
		return NULL;
	}
	c = find_category(cfg, category);
	return c ? c->root : NULL;
}

/* Strips ';' comments (keeping "\;" as ';') and handles ";-- ... --;" blocks. */
static void strip_comments(char *line, int *in_block)
{
	char *r = line, *w = line;

	while (*r) {
		if (*in_block) {
			if (r[0] == '-' && r[1] == '-' && r[2] == ';') {
				*in_block = 0;
				r += 3;
			} else {
				r++;
			}
			continue;
		}
		if (r[0] == '\\' && r[1] == ';') {
			*w++ = ';';
			r += 2;
			continue;
		}
		if (r[0] == ';') {
			if (r[1] == '-' && r[2] == '-') {
				*in_block = 1;
				r += 3;
				continue;
			}
			break;
		}
		*w++ = *r++;
	}
	*w = '\0';
}

static int load_file(struct ast_config *cfg, const char *path, struct ast_category **cat);

static int process_line(struct ast_config *cfg, struct ast_category **cat, char *cur, const char *file, int lineno)
{
	if (cur[0] == '[') {
		char *end = strchr(cur, ']');
		char *opts = NULL;
		struct ast_category *nc;

		if (!end) {
			STUB_LOG(LOG_WARNING, "parse error: no closing ']', line %d of %s\n", lineno, file);
			return -1;
		}
		*end++ = '\0';
		if (*end == '(') {
			char *close = strchr(end, ')');
			if (!close) {
				STUB_LOG(LOG_WARNING, "parse error: no closing ')', line %d of %s\n", lineno, file);
				return -1;
			}
			*close = '\0';
			opts = end + 1;
		}
		nc = calloc(1, sizeof(*nc));
		nc->name = strdup(cur + 1);
		nc->lineno = lineno;
		if (opts) {
			char *tok;
			while ((tok = strsep(&opts, ","))) {
				tok = stub_trim(tok);
				if (!strcmp(tok, "!")) {
					nc->ignored = 1;
				} else if (tok[0] == '+') {
					struct ast_category *existing = find_category(cfg, nc->name);
					struct ast_variable *v;
					if (!existing) {
						STUB_LOG(LOG_WARNING, "Category addition requested, but category '%s' does not exist, line %d of %s\n",
							nc->name, lineno, file);
						category_destroy(nc);
						return -1;
					}
					/* Move what was inherited so far, then continue in the existing one. */
					while ((v = nc->root)) {
						nc->root = v->next;
						v->next = NULL;
						category_append(existing, v);
					}
					nc->last = NULL;
					existing->ignored |= nc->ignored;
					category_destroy(nc);
					*cat = existing;
					return 0;
				} else if (*tok) {
					struct ast_category *base = find_category(cfg, tok);
					struct ast_variable *v;
					if (!base) {
						STUB_LOG(LOG_WARNING, "Inheritance requested, but category '%s' does not exist, line %d of %s\n",
							tok, lineno, file);
						category_destroy(nc);
						return -1;
					}
					for (v = base->root; v; v = v->next) {
						struct ast_variable *copy = variable_new(v->name, v->value, v->file, v->lineno);
						copy->object = v->object;
						copy->inherited = 1;
						category_append(nc, copy);
					}
				}
			}
		}
		if (cfg->last) {
			cfg->last->next = nc;
		} else {
			cfg->root = nc;
		}
		cfg->last = nc;
		*cat = nc;
		return 0;
	}
	if (cur[0] == '#') {
		char *arg = cur + 1;
		char *dir;
		while (*arg && *arg != ' ' && *arg != '\t') {
			arg++;
		}
		if (*arg) {
			*arg++ = '\0';
		}
		dir = cur + 1;
		arg = stub_trim(arg);
		if (!strcasecmp(dir, "include") || !strcasecmp(dir, "tryinclude")) {
			char inc[4200];
			size_t l = strlen(arg);
			if (l >= 2 && ((arg[0] == '"' && arg[l - 1] == '"') || (arg[0] == '<' && arg[l - 1] == '>'))) {
				arg[l - 1] = '\0';
				arg++;
			}
			if (!*arg) {
				STUB_LOG(LOG_WARNING, "Directive '#%s' needs an argument (%s) at line %d of %s\n", dir, "filename", lineno, file);
				return 0;
			}
			if (arg[0] == '/') {
				snprintf(inc, sizeof(inc), "%s", arg);
			} else {
				snprintf(inc, sizeof(inc), "%s/%s", ast_config_AST_CONFIG_DIR, arg);
			}
			if (cfg->include_level > 10) {
				STUB_LOG(LOG_WARNING, "Maximum include level exceeded at line %d of %s\n", lineno, file);
				return -1;
			}
			cfg->include_level++;
			{
				int r = load_file(cfg, inc, cat);
				cfg->include_level--;
				if (r == -2) {
					return -1;
				}
				if (r == -1 && !strcasecmp(dir, "include")) {
					STUB_LOG(LOG_WARNING, "Included file '%s' not found, line %d of %s\n", inc, lineno, file);
				}
			}
			return 0;
		}
		STUB_LOG(LOG_WARNING, "Unknown directive '#%s' at line %d of %s\n", dir, lineno, file);
		return 0;
	}
	{
		char *eq;
		int object = 0, append = 0;
		char *name, *value;

		if (!*cat) {
			STUB_LOG(LOG_WARNING, "parse error: No category context for line %d of %s\n", lineno, file);
			return -1;
		}
		eq = strchr(cur, '=');
		if (!eq) {
			STUB_LOG(LOG_WARNING, "No '=' (equal sign) in line %d of %s\n", lineno, file);
			return 0;
		}
		if (eq > cur && eq[-1] == '+') {
			append = 1;
			eq[-1] = '\0';
		}
		*eq = '\0';
		value = eq + 1;
		if (*value == '>') {
			object = 1;
			value++;
		}
		name = stub_trim(cur);
		value = stub_trim(value);
		if (!*name) {
			STUB_LOG(LOG_WARNING, "No variable name in line %d of %s\n", lineno, file);
			return 0;
		}
		if (append) {
			struct ast_variable *v, *found = NULL, **pp;
			for (v = (*cat)->root; v; v = v->next) {
				if (!strcmp(v->name, name)) {
					found = v;
				}
			}
			if (found) {
				char *joined;
				struct ast_variable *nv;
				if (asprintf(&joined, "%s%s", found->value, value) < 0) {
					return -1;
				}
				nv = variable_new(found->name, joined, found->file, found->lineno);
				free(joined);
				nv->object = found->object;
				for (pp = &(*cat)->root; *pp != found; pp = &(*pp)->next) {
				}
				nv->next = found->next;
				*pp = nv;
				if ((*cat)->last == found) {
					(*cat)->last = nv;
				}
				free(found);
				return 0;
			}
		}
		{
			struct ast_variable *v = variable_new(name, value, file, lineno);
			v->object = object;
			category_append(*cat, v);
		}
	}
	return 0;
}

/* 0 ok, -1 missing, -2 invalid. */
static int load_file(struct ast_config *cfg, const char *path, struct ast_category **cat)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, in_block = 0, res = 0;

	if (!f) {
		return -1;
	}
	while ((n = getline(&line, &cap, f)) >= 0) {
		char *cur;
		lineno++;
		strip_comments(line, &in_block);
		cur = stub_trim(line);
		if (!*cur) {
			continue;
		}
		if (process_line(cfg, cat, cur, path, lineno)) {
			res = -2;
			break;
		}
	}
	free(line);
	fclose(f);
	return res;
}

struct ast_config *ast_config_load2(const char *filename, const char *who_asked, struct ast_flags flags)
{
	char path[4200];
	struct stat st;
	struct ast_config *cfg;
	struct ast_category *cat = NULL;
	struct cfmtime *m;
	int r;

	if (!filename || !*filename) {
		return CONFIG_STATUS_FILEMISSING;
	}
	if (!who_asked) {
		who_asked = "";
	}
	if (filename[0] == '/') {
		snprintf(path, sizeof(path), "%s", filename);
	} else {
		snprintf(path, sizeof(path), "%s/%s", ast_config_AST_CONFIG_DIR, filename);
	}
	if (stat(path, &st)) {
		STUB_LOG(LOG_DEBUG, "No file to parse: %s\n", path);
		return CONFIG_STATUS_FILEMISSING;
	}
	if (!(flags.flags & CONFIG_FLAG_NOCACHE)) {
		pthread_mutex_lock(&cfmtime_lock);
		for (m = cfmtimes; m; m = m->next) {
			if (!strcmp(m->file, path) && !strcmp(m->who, who_asked)) {
				break;
			}
		}
		if (m && (flags.flags & CONFIG_FLAG_FILEUNCHANGED) && m->size == st.st_size
			&& m->mtime.tv_sec == st.st_mtim.tv_sec && m->mtime.tv_nsec == st.st_mtim.tv_nsec) {
			pthread_mutex_unlock(&cfmtime_lock);
			return CONFIG_STATUS_FILEUNCHANGED;
		}
		if (!m) {
			m = calloc(1, sizeof(*m));
			m->file = strdup(path);
			m->who = strdup(who_asked);
			m->next = cfmtimes;
			cfmtimes = m;
		}
		m->size = st.st_size;
		m->mtime = st.st_mtim;
		pthread_mutex_unlock(&cfmtime_lock);
	}
	cfg = calloc(1, sizeof(*cfg));
	cfg->include_level = 1;
	r = load_file(cfg, path, &cat);
	if (r == -1) {
		ast_config_destroy(cfg);
		return CONFIG_STATUS_FILEMISSING;
	}
	if (r == -2) {
		ast_config_destroy(cfg);
		return CONFIG_STATUS_FILEINVALID;
	}
	return cfg;
}

/* ---- CLI (stand-in only, for tests): config test load <file> [who_asked] [unchanged] ---- */

static char *cli_config_test_load(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct ast_flags flags = { 0 };
	struct ast_config *cfg;
	char *cat = NULL;

	switch (cmd) {
	case CLI_INIT:
		e->command = "config test load";
		e->usage = "Usage: config test load <file> [who_asked] [unchanged]\n"
			"       Loads a file with ast_config_load2() as a module would and prints the\n"
			"       result: MISSING, UNCHANGED, INVALID or every category and variable.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 4 || a->argc > 6) {
		return CLI_SHOWUSAGE;
	}
	if (a->argc == 6 && !strcasecmp(a->argv[5], "unchanged")) {
		flags.flags |= CONFIG_FLAG_FILEUNCHANGED;
	}
	cfg = ast_config_load2(a->argv[3], a->argc >= 5 ? a->argv[4] : "cli", flags);
	if (cfg == CONFIG_STATUS_FILEMISSING) {
		ast_cli(a->fd, "MISSING\n");
		return CLI_SUCCESS;
	}
	if (cfg == CONFIG_STATUS_FILEUNCHANGED) {
		ast_cli(a->fd, "UNCHANGED\n");
		return CLI_SUCCESS;
	}
	if (cfg == CONFIG_STATUS_FILEINVALID) {
		ast_cli(a->fd, "INVALID\n");
		return CLI_SUCCESS;
	}
	while ((cat = ast_category_browse(cfg, cat))) {
		struct ast_variable *v;
		ast_cli(a->fd, "[%s]\n", cat);
		for (v = ast_variable_browse(cfg, cat); v; v = v->next) {
			const char *base = strrchr(v->file, '/');
			ast_cli(a->fd, "%s %s %s (%s:%d%s)\n", v->name, v->object ? "=>" : "=", v->value,
				base ? base + 1 : v->file, v->lineno, v->inherited ? ", inherited" : "");
		}
	}
	ast_config_destroy(cfg);
	return CLI_SUCCESS;
}

static struct ast_cli_entry config_cli[] = {
	{ .handler = cli_config_test_load, .summary = "Load a config file as a module would (stand-in only)" },
};

void stub_config_register_cli(void)
{
	ast_cli_register_multiple(config_cli, ARRAY_LEN(config_cli));
}
