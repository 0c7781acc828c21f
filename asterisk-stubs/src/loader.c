/*
 * Stand-in Asterisk: module loader, like main/loader.c for dynamic modules:
 * dlopen(RTLD_NOW | RTLD_LOCAL), registration during dlopen, GPL key check,
 * load/unload/reload and the "module ..." CLI commands.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "stub.h"

struct ast_module {
	const struct ast_module_info *info;
	void *lib;
	char *resource;          /* "name.so" */
	char *path;
	int usecount;
	int running;
	int builtin;             /* a stand-in part shown as a module (e.g. res_pjsip.so) */
	struct ast_module **deps;  /* the modules named in info->requires, each referenced */
	int ndeps;
	struct ast_module *next;
};

static pthread_mutex_t loader_lock;          /* recursive: held across load/unload */
static pthread_mutex_t ref_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ast_module *modules;
static struct ast_module *resource_being_loaded;

static const unsigned char expected_key_md5[16] = {
	0x87, 0x76, 0x79, 0x35, 0x23, 0xea, 0x3a, 0xd3, 0x25, 0x2a, 0xbb, 0x35, 0x87, 0xe4, 0x22, 0x24,
};

int stub_loader_init(void)
{
	pthread_mutexattr_t attr;

	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&loader_lock, &attr);
	pthread_mutexattr_destroy(&attr);
	return 0;
}

const char *stub_module_name(struct ast_module *mod)
{
	if (!mod) {
		return "asterisk";
	}
	if (mod->info && mod->info->name) {
		return mod->info->name;
	}
	return mod->resource;
}

void stub_module_ref(struct ast_module *mod)
{
	if (mod) {
		pthread_mutex_lock(&ref_lock);
		mod->usecount++;
		pthread_mutex_unlock(&ref_lock);
	}
}

void stub_module_unref(struct ast_module *mod)
{
	if (mod) {
		pthread_mutex_lock(&ref_lock);
		mod->usecount--;
		pthread_mutex_unlock(&ref_lock);
	}
}

void ast_module_register(const struct ast_module_info *info)
{
	struct ast_module *mod = resource_being_loaded;

	if (!mod) {
		STUB_LOG(LOG_ERROR, "Module '%s' registered itself outside of a load\n", info && info->name ? info->name : "?");
		return;
	}
	mod->info = info;
	*(struct ast_module **)&((struct ast_module_info *)info)->self = mod;
}

void ast_module_unregister(const struct ast_module_info *info)
{
	struct ast_module *mod;

	pthread_mutex_lock(&loader_lock);
	for (mod = modules; mod; mod = mod->next) {
		if (mod->info == info) {
			mod->info = NULL;
			break;
		}
	}
	if (resource_being_loaded && resource_being_loaded->info == info) {
		resource_being_loaded->info = NULL;
	}
	pthread_mutex_unlock(&loader_lock);
}

static void drop_deps_of(struct ast_module *mod)
{
	int i;

	for (i = 0; i < mod->ndeps; i++) {
		stub_module_unref(mod->deps[i]);
	}
	free(mod->deps);
	mod->deps = NULL;
	mod->ndeps = 0;
}

void stub_loader_add_builtin(const char *resource, const char *description)
{
	struct ast_module *mod = calloc(1, sizeof(*mod));
	struct ast_module_info *info = calloc(1, sizeof(*info));
	size_t l = strlen(resource);

	info->name = strndup(resource, l > 3 ? l - 3 : l);
	info->description = strdup(description);
	info->self = mod;
	mod->info = info;
	mod->resource = strdup(resource);
	mod->builtin = 1;
	mod->running = 1;
	pthread_mutex_lock(&loader_lock);
	mod->next = modules;
	modules = mod;
	pthread_mutex_unlock(&loader_lock);
}

static int key_ok(const char *key)
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (!EVP_Digest(key, strlen(key), digest, &len, EVP_md5(), NULL) || len != 16) {
		return 0;
	}
	return memcmp(digest, expected_key_md5, 16) == 0;
}

static char *resource_name(const char *name)
{
	size_t l = strlen(name);
	char *r;

	if (l > 3 && !strcasecmp(name + l - 3, ".so")) {
		return strdup(name);
	}
	if (asprintf(&r, "%s.so", name) < 0) {
		return NULL;
	}
	return r;
}

static struct ast_module *find_module(const char *resource)
{
	struct ast_module *m;

	for (m = modules; m; m = m->next) {
		if (!strcasecmp(m->resource, resource)) {
			return m;
		}
	}
	return NULL;
}

static void report(int fd, int level, const char *fmt, const char *a, const char *b)
{
	char msg[1024];

	snprintf(msg, sizeof(msg), fmt, a, b);
	ast_log(level, __FILE__, __LINE__, "load_resource", "%s\n", msg);
	if (fd >= 0) {
		ast_cli(fd, "%s\n", msg);
	}
}

static void check_unmapped(const char *path, const char *name)
{
	void *again = dlopen(path, RTLD_NOW | RTLD_NOLOAD);

	if (again) {
		STUB_LOG(LOG_WARNING, "Module '%s' is still mapped after dlclose\n", name);
		dlclose(again);
	}
}

/* As Asterisk's loader: every module named in info->requires (comma-separated, without
 * ".so") must be loaded and running; each gets a reference for as long as `mod` is loaded,
 * so it cannot be unloaded before. Called with loader_lock held. */
static int take_deps(struct ast_module *mod, int fd)
{
	const char *req = mod->info->requires;
	char *copy, *tok, *save = NULL;
	const char *name = mod->info->name ? mod->info->name : mod->resource;
	int res = 0;

	if (!req || !*req) {
		return 0;
	}
	copy = strdup(req);
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *dep_name = resource_name(stub_trim(tok));
		struct ast_module *dep;

		if (!dep_name || !*stub_trim(tok)) {
			free(dep_name);
			continue;
		}
		dep = find_module(dep_name);
		if (!dep) {
			report(fd, LOG_ERROR, "%s has one or more unknown dependencies.%s", name, "");
			res = -1;
		} else if (!dep->running) {
			report(fd, LOG_ERROR, "%s loaded before dependency %s!", name, stub_module_name(dep));
			res = -1;
		} else {
			mod->deps = realloc(mod->deps, (size_t)(mod->ndeps + 1) * sizeof(*mod->deps));
			mod->deps[mod->ndeps++] = dep;
			stub_module_ref(dep);
		}
		free(dep_name);
		if (res) {
			break;
		}
	}
	free(copy);
	if (res) {
		drop_deps_of(mod);
	}
	return res;
}

int stub_module_load(const char *name, int fd)
{
	char *resource = resource_name(name);
	struct ast_module *mod;
	const struct ast_module_info *info;
	int res, missing_dep = 0;

	if (!resource) {
		return -1;
	}
	pthread_mutex_lock(&loader_lock);
	if (find_module(resource)) {
		report(fd, LOG_WARNING, "Module '%s' already loaded.%s", resource, "");
		pthread_mutex_unlock(&loader_lock);
		free(resource);
		return -1;
	}
	mod = calloc(1, sizeof(*mod));
	mod->resource = resource;
	if (name[0] == '/') {
		mod->path = strdup(name);
	} else if (asprintf(&mod->path, "%s/%s", stub_mod_dir, resource) < 0) {
		mod->path = NULL;
	}

	resource_being_loaded = mod;
	mod->lib = dlopen(mod->path, RTLD_NOW | RTLD_LOCAL);
	resource_being_loaded = NULL;
	if (!mod->lib) {
		report(fd, LOG_WARNING, "Error loading module '%s': %s", resource, dlerror());
		goto fail;
	}
	if (!mod->info) {
		report(fd, LOG_WARNING, "Module '%s' did not register itself during load%s", resource, "");
		dlclose(mod->lib);
		check_unmapped(mod->path, resource);
		goto fail;
	}
	info = mod->info;
	if (!info->description || !info->key) {
		report(fd, LOG_WARNING, "Module '%s' does not provide a description or a license key.%s", resource, "");
		goto fail_close;
	}
	if (!key_ok(info->key)) {
		report(fd, LOG_WARNING, "Module '%s' did not provide a valid license key.%s", resource, "");
		goto fail_close;
	}
	if (info->buildopt_sum[0]) {
		report(fd, LOG_WARNING, "Module '%s' was built against a different set of build options (%s); the stand-in has none.",
			resource, info->buildopt_sum);
		goto fail_close;
	}
	if (info->name && strncasecmp(info->name, resource, strlen(resource) - 3)) {
		STUB_LOG(LOG_WARNING, "Module '%s' names itself '%s'\n", resource, info->name);
	}
	if (take_deps(mod, fd)) {
		report(fd, LOG_WARNING, "Module '%s' declined to load.%s", resource, "");
		missing_dep = 1;
		goto fail_close;
	}
	/* Listed before load() so that the module can find itself. */
	mod->next = modules;
	modules = mod;
	res = info->load ? (int)info->load() : AST_MODULE_LOAD_SUCCESS;
	if (res == AST_MODULE_LOAD_SUCCESS) {
		mod->running = 1;
		STUB_LOG(LOG_NOTICE, "Loaded %s => (%s)\n", resource, info->description);
		if (fd >= 0) {
			ast_cli(fd, "Loaded %s\n", resource);
		}
		pthread_mutex_unlock(&loader_lock);
		return 0;
	}
	modules = mod->next;
	drop_deps_of(mod);
	if (res == AST_MODULE_LOAD_DECLINE || res == AST_MODULE_LOAD_SKIP) {
		report(fd, LOG_WARNING, "Module '%s' declined to load.%s", resource, "");
	} else {
		report(fd, LOG_ERROR, "Module '%s' could not be loaded.%s", resource, "");
	}
fail_close:
	dlclose(mod->lib);
	check_unmapped(mod->path, resource);
fail:
	pthread_mutex_unlock(&loader_lock);
	free(mod->path);
	free(mod->resource);
	free(mod);
	if (fd >= 0) {
		ast_cli(fd, "Unable to load module %s\n", name);
	}
	return missing_dep ? -2 : -1;
}

int stub_module_unload(const char *name, int fd)
{
	char *resource = resource_name(name);
	struct ast_module *mod, **pp;
	int res = 0, usecount;

	pthread_mutex_lock(&loader_lock);
	if (!resource || !(mod = find_module(resource))) {
		report(fd, LOG_WARNING, "Unload failed, '%s' could not be found%s", name, "");
		pthread_mutex_unlock(&loader_lock);
		free(resource);
		return -1;
	}
	free(resource);
	if (mod->builtin) {
		report(fd, LOG_WARNING, "Unload failed, '%s' is built into the stand-in and cannot be unloaded%s", mod->resource, "");
		pthread_mutex_unlock(&loader_lock);
		return -1;
	}
	pthread_mutex_lock(&ref_lock);
	usecount = mod->usecount;
	pthread_mutex_unlock(&ref_lock);
	if (usecount > 0) {
		char n[32];
		snprintf(n, sizeof(n), "%d", usecount);
		report(fd, LOG_WARNING, "Soft unload failed, '%s' has use count %s", mod->resource, n);
		pthread_mutex_unlock(&loader_lock);
		return -1;
	}
	if (mod->running && mod->info && mod->info->unload) {
		res = mod->info->unload();
	}
	if (res) {
		report(fd, LOG_WARNING, "Firm unload failed for %s%s", mod->resource, "");
		report(fd, LOG_WARNING, "Unable to unload resource %s (unload() returned non-zero)%s", mod->resource, "");
		pthread_mutex_unlock(&loader_lock);
		return -1;
	}
	for (pp = &modules; *pp && *pp != mod; pp = &(*pp)->next) {
	}
	if (*pp) {
		*pp = mod->next;
	}
	mod->running = 0;
	drop_deps_of(mod);
	if (dlclose(mod->lib)) {
		STUB_LOG(LOG_WARNING, "Failure in dlclose for module '%s': %s\n", mod->resource, dlerror());
	}
	check_unmapped(mod->path, mod->resource);
	STUB_LOG(LOG_NOTICE, "Unloaded %s\n", mod->resource);
	if (fd >= 0) {
		ast_cli(fd, "Unloaded %s\n", mod->resource);
	}
	pthread_mutex_unlock(&loader_lock);
	free(mod->path);
	free(mod->resource);
	free(mod);
	return 0;
}

static int module_reload(const char *name, int fd)
{
	char *resource = name ? resource_name(name) : NULL;
	struct ast_module *mod;
	int found = 0;

	pthread_mutex_lock(&loader_lock);
	for (mod = modules; mod; mod = mod->next) {
		if (resource && strcasecmp(mod->resource, resource)) {
			continue;
		}
		found = 1;
		if (!mod->running || !mod->info) {
			continue;
		}
		if (!mod->info->reload) {
			if (resource) {
				ast_cli(fd, "The module '%s' does not support reloading.\n", mod->resource);
			}
			continue;
		}
		STUB_LOG(LOG_NOTICE, "Reloading module '%s' (%s)\n", mod->resource, mod->info->description);
		if (mod->info->reload()) {
			ast_cli(fd, "The module '%s' reported a reload failure.\n", mod->resource);
		} else {
			ast_cli(fd, "Module '%s' reloaded successfully.\n", mod->resource);
		}
	}
	pthread_mutex_unlock(&loader_lock);
	if (resource && !found) {
		ast_cli(fd, "The module '%s' was not properly initialized.  Before reloading the module, you must run \"module load %s\" and fix whatever is preventing the module from being initialized.\n", resource, resource);
	}
	free(resource);
	return found ? 0 : -1;
}

void stub_modules_shutdown(void)
{
	struct ast_module *mod;

	pthread_mutex_lock(&loader_lock);
	/* Most recently loaded first, as they may depend on earlier ones. */
	while ((mod = modules)) {
		modules = mod->next;
		if (mod->running && !mod->builtin && mod->info && mod->info->unload) {
			STUB_LOG(LOG_NOTICE, "Unloading %s at shutdown\n", mod->resource);
			mod->info->unload();
		}
		mod->running = 0;
		drop_deps_of(mod);
		/* Like Asterisk at shutdown: no dlclose. */
	}
	pthread_mutex_unlock(&loader_lock);
}

/* ---- CLI ---- */

static char *complete_loaded(const char *word, int n)
{
	struct ast_module *m;
	size_t l = strlen(word);
	int i = 0;
	char *res = NULL;

	pthread_mutex_lock(&loader_lock);
	for (m = modules; m; m = m->next) {
		if (!strncasecmp(m->resource, word, l) && i++ == n) {
			res = strdup(m->resource);
			break;
		}
	}
	pthread_mutex_unlock(&loader_lock);
	return res;
}

static char *cli_load(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	switch (cmd) {
	case CLI_INIT:
		e->command = "module load";
		e->usage = "Usage: module load <module name>\n       Loads the specified module into Asterisk.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 3) {
		return CLI_SHOWUSAGE;
	}
	if (stub_module_load(a->argv[2], a->fd)) {
		return CLI_FAILURE;
	}
	return CLI_SUCCESS;
}

static char *cli_unload(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	int i, res = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "module unload";
		e->usage = "Usage: module unload <module name>...\n       Unloads the specified module(s) from Asterisk.\n";
		return NULL;
	case CLI_GENERATE:
		return a->pos >= 2 ? complete_loaded(a->word, a->n) : NULL;
	}
	if (a->argc < 3) {
		return CLI_SHOWUSAGE;
	}
	for (i = 2; i < a->argc; i++) {
		if (stub_module_unload(a->argv[i], a->fd)) {
			ast_cli(a->fd, "Unable to unload resource %s\n", a->argv[i]);
			res = -1;
		}
	}
	return res ? CLI_FAILURE : CLI_SUCCESS;
}

static char *cli_reload(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	int i;

	switch (cmd) {
	case CLI_INIT:
		e->command = "module reload";
		e->usage = "Usage: module reload [module ...]\n       Reloads the given modules, or all.\n";
		return NULL;
	case CLI_GENERATE:
		return a->pos >= 2 ? complete_loaded(a->word, a->n) : NULL;
	}
	if (a->argc == 2) {
		module_reload(NULL, a->fd);
	}
	for (i = 2; i < a->argc; i++) {
		module_reload(a->argv[i], a->fd);
	}
	return CLI_SUCCESS;
}

static char *cli_show(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct ast_module *m;
	int count = 0;

	switch (cmd) {
	case CLI_INIT:
		e->command = "module show [like]";
		e->usage = "Usage: module show [like keyword]\n       Shows the loaded modules.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	ast_cli(a->fd, "%-30s %-40.40s %-10s %-11s %13s\n", "Module", "Description", "Use Count", "Status", "Support Level");
	pthread_mutex_lock(&loader_lock);
	for (m = modules; m; m = m->next) {
		int uc;
		if (a->argc == 4 && !strcasestr(m->resource, a->argv[3])) {
			continue;
		}
		pthread_mutex_lock(&ref_lock);
		uc = m->usecount;
		pthread_mutex_unlock(&ref_lock);
		ast_cli(a->fd, "%-30s %-40.40s %-10d %-11s %13s\n", m->resource,
			m->info && m->info->description ? m->info->description : "",
			uc, m->running ? "Running" : "Not Running", "extended");
		count++;
	}
	pthread_mutex_unlock(&loader_lock);
	ast_cli(a->fd, "%d modules loaded\n", count);
	return CLI_SUCCESS;
}

static struct ast_cli_entry loader_cli[] = {
	{ .handler = cli_load, .summary = "Load a module by name" },
	{ .handler = cli_unload, .summary = "Unload a module by name" },
	{ .handler = cli_reload, .summary = "Reload configuration for a module" },
	{ .handler = cli_show, .summary = "List modules and info" },
};

void stub_loader_register_cli(void)
{
	ast_cli_register_multiple(loader_cli, ARRAY_LEN(loader_cli));
}
