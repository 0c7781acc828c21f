/*
 * Stand-in Asterisk: AstDB on SQLite, behaving like main/db.c: one (recursive)
 * lock around every access, and a sync thread that keeps a transaction open
 * and commits at most about once a second.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "stub.h"

static pthread_mutex_t dblock;
static pthread_cond_t dbcond = PTHREAD_COND_INITIALIZER;
static sqlite3 *astdb;
static pthread_t syncthread;
static int dosync, doexit, sync_started;

static sqlite3_stmt *put_stmt, *get_stmt, *exists_stmt, *del_stmt, *deltree_stmt, *deltree_all_stmt,
	*gettree_stmt, *gettree_all_stmt, *gettree_prefix_stmt, *showkey_stmt;

static const struct {
	sqlite3_stmt **stmt;
	const char *sql;
} statements[] = {
	{ &put_stmt, "INSERT OR REPLACE INTO astdb (key, value) VALUES (?, ?)" },
	{ &get_stmt, "SELECT value FROM astdb WHERE key=?" },
	{ &exists_stmt, "SELECT COUNT(1) FROM astdb WHERE key=?" },
	{ &del_stmt, "DELETE FROM astdb WHERE key=?" },
	/* A tree is the prefix itself and everything below "prefix/". */
	{ &deltree_stmt, "DELETE FROM astdb WHERE key || '/' LIKE ? || '/' || '%'" },
	{ &deltree_all_stmt, "DELETE FROM astdb" },
	{ &gettree_stmt, "SELECT key, value FROM astdb WHERE key || '/' LIKE ? || '/' || '%' ORDER BY key" },
	{ &gettree_all_stmt, "SELECT key, value FROM astdb ORDER BY key" },
	{ &gettree_prefix_stmt, "SELECT key, value FROM astdb WHERE key > ?1 AND key <= ?1 || X'ffff'" },
	{ &showkey_stmt, "SELECT key, value FROM astdb WHERE key LIKE '%' || '/' || ? ORDER BY key" },
};

static void lock(void)
{
	pthread_mutex_lock(&dblock);
}

static void unlock(void)
{
	pthread_mutex_unlock(&dblock);
}

/* Caller holds dblock. */
static void db_sync(void)
{
	dosync = 1;
	pthread_cond_signal(&dbcond);
}

static int exec_sql(const char *sql, int (*cb)(void *, int, char **, char **), void *arg)
{
	char *err = NULL;

	if (sqlite3_exec(astdb, sql, cb, arg, &err) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Error executing SQL (%s): %s\n", sql, err ? err : "?");
		sqlite3_free(err);
		return -1;
	}
	return 0;
}

static void *sync_thread(void *data)
{
	UNUSED(data);
	lock();
	exec_sql("BEGIN TRANSACTION", NULL, NULL);
	for (;;) {
		while (!dosync) {
			pthread_cond_wait(&dbcond, &dblock);
		}
		dosync = 0;
		if (exec_sql("COMMIT", NULL, NULL)) {
			exec_sql("ROLLBACK", NULL, NULL);
		}
		if (doexit) {
			break;
		}
		exec_sql("BEGIN TRANSACTION", NULL, NULL);
		unlock();
		sleep(1);
		lock();
	}
	unlock();
	return NULL;
}

int stub_astdb_init(void)
{
	pthread_mutexattr_t attr;
	char path[4300];
	size_t i;

	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&dblock, &attr);
	pthread_mutexattr_destroy(&attr);

	snprintf(path, sizeof(path), "%s.sqlite3", ast_config_AST_DB);
	if (sqlite3_open(path, &astdb) != SQLITE_OK) {
		STUB_LOG(LOG_ERROR, "Unable to open Asterisk database '%s': %s\n", path, sqlite3_errmsg(astdb));
		return -1;
	}
	if (exec_sql("CREATE TABLE IF NOT EXISTS astdb(key TEXT, value TEXT, PRIMARY KEY(key))", NULL, NULL)) {
		return -1;
	}
	for (i = 0; i < ARRAY_LEN(statements); i++) {
		if (sqlite3_prepare_v2(astdb, statements[i].sql, -1, statements[i].stmt, NULL) != SQLITE_OK) {
			STUB_LOG(LOG_ERROR, "Couldn't prepare statement '%s': %s\n", statements[i].sql, sqlite3_errmsg(astdb));
			return -1;
		}
	}
	if (pthread_create(&syncthread, NULL, sync_thread, NULL)) {
		return -1;
	}
	sync_started = 1;
	return 0;
}

void stub_astdb_shutdown(void)
{
	size_t i;

	if (!sync_started) {
		return;
	}
	lock();
	doexit = 1;
	db_sync();
	unlock();
	pthread_join(syncthread, NULL);
	sync_started = 0;
	lock();
	for (i = 0; i < ARRAY_LEN(statements); i++) {
		sqlite3_finalize(*statements[i].stmt);
		*statements[i].stmt = NULL;
	}
	sqlite3_close(astdb);
	astdb = NULL;
	unlock();
}

static char *full_key(const char *family, const char *key, int *len)
{
	char *s = NULL;

	*len = asprintf(&s, "/%s/%s", family ? family : "", key ? key : "");
	return *len < 0 ? NULL : s;
}

int ast_db_put(const char *family, const char *key, const char *value)
{
	int len, res = 0;
	char *fk = full_key(family, key, &len);

	if (!fk) {
		return -1;
	}
	lock();
	if (sqlite3_bind_text(put_stmt, 1, fk, len, SQLITE_STATIC) != SQLITE_OK
		|| sqlite3_bind_text(put_stmt, 2, value, -1, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Couldn't bind to stmt: %s\n", sqlite3_errmsg(astdb));
		res = -1;
	} else if (sqlite3_step(put_stmt) != SQLITE_DONE) {
		STUB_LOG(LOG_WARNING, "Couldn't execute statement: %s\n", sqlite3_errmsg(astdb));
		res = -1;
	}
	sqlite3_reset(put_stmt);
	db_sync();
	unlock();
	free(fk);
	return res;
}

/* valuelen -1: *out gets a malloc'd copy. */
static int db_get_common(const char *family, const char *key, char **out, int valuelen)
{
	int len, res = 0;
	char *fk = full_key(family, key, &len);
	const unsigned char *text;

	if (!fk) {
		return -1;
	}
	lock();
	if (sqlite3_bind_text(get_stmt, 1, fk, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Couldn't bind key to stmt: %s\n", sqlite3_errmsg(astdb));
		res = -1;
	} else if (sqlite3_step(get_stmt) != SQLITE_ROW) {
		res = -1;
	} else if (!(text = sqlite3_column_text(get_stmt, 0))) {
		STUB_LOG(LOG_WARNING, "Couldn't get value\n");
		res = -1;
	} else if (valuelen == -1) {
		*out = strdup((const char *)text);
	} else if (valuelen > 0) {
		snprintf(*out, (size_t)valuelen, "%s", (const char *)text);
	}
	sqlite3_reset(get_stmt);
	unlock();
	free(fk);
	return res;
}

int ast_db_get(const char *family, const char *key, char *value, int valuelen)
{
	if (valuelen > 0) {
		value[0] = '\0';
	}
	return db_get_common(family, key, &value, valuelen);
}

int ast_db_get_allocated(const char *family, const char *key, char **out)
{
	*out = NULL;
	return db_get_common(family, key, out, -1);
}

int ast_db_exists(const char *family, const char *key)
{
	int len, res = 0;
	char *fk = full_key(family, key, &len);

	if (!fk) {
		return -1;
	}
	lock();
	if (sqlite3_bind_text(exists_stmt, 1, fk, len, SQLITE_STATIC) == SQLITE_OK
		&& sqlite3_step(exists_stmt) == SQLITE_ROW) {
		res = sqlite3_column_int(exists_stmt, 0);
	}
	sqlite3_reset(exists_stmt);
	unlock();
	free(fk);
	return res;
}

int ast_db_del(const char *family, const char *key)
{
	int len, res = 0;
	char *fk = full_key(family, key, &len);

	if (!fk) {
		return -1;
	}
	lock();
	if (sqlite3_bind_text(del_stmt, 1, fk, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Couldn't bind key to stmt: %s\n", sqlite3_errmsg(astdb));
		res = -1;
	} else if (sqlite3_step(del_stmt) != SQLITE_DONE) {
		res = -1;
	}
	sqlite3_reset(del_stmt);
	db_sync();
	unlock();
	free(fk);
	return res;
}

int ast_db_del2(const char *family, const char *key)
{
	int len, res = 0;
	char tmp[1];
	char *fk = full_key(family, key, &len);

	if (!fk) {
		return -1;
	}
	lock();
	if (ast_db_get(family, key, tmp, sizeof(tmp))) {
		STUB_LOG(LOG_WARNING, "AstDB key %s does not exist\n", fk);
		res = -1;
	} else if (sqlite3_bind_text(del_stmt, 1, fk, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Couldn't bind key to stmt: %s\n", sqlite3_errmsg(astdb));
		res = -1;
	} else if (sqlite3_step(del_stmt) != SQLITE_DONE) {
		STUB_LOG(LOG_WARNING, "AstDB error (%s): %s\n", fk, sqlite3_errmsg(astdb));
		res = -1;
	}
	sqlite3_reset(del_stmt);
	db_sync();
	unlock();
	free(fk);
	return res;
}

/* "" for no family (everything), "/family" or "/family/keytree". NULL on error. */
static char *make_prefix(const char *family, const char *keytree, int *len)
{
	char *p = NULL;

	if (family && *family) {
		if (keytree && *keytree) {
			*len = asprintf(&p, "/%s/%s", family, keytree);
		} else {
			*len = asprintf(&p, "/%s", family);
		}
		return *len < 0 ? NULL : p;
	}
	*len = 0;
	return strdup("");
}

int ast_db_deltree(const char *family, const char *keytree)
{
	sqlite3_stmt *stmt = deltree_stmt;
	int len, res = 0;
	char *prefix;

	if ((!family || !*family) && keytree && *keytree) {
		STUB_LOG(LOG_WARNING, "Key tree '%s' specified without family\n", keytree);
		return -1;
	}
	if (!(prefix = make_prefix(family, keytree, &len))) {
		return -1;
	}
	if (len == 0) {
		stmt = deltree_all_stmt;
	}
	lock();
	if (len && sqlite3_bind_text(stmt, 1, prefix, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Couldn't bind %s to stmt: %s\n", prefix, sqlite3_errmsg(astdb));
		res = -1;
	} else if (sqlite3_step(stmt) != SQLITE_DONE) {
		STUB_LOG(LOG_WARNING, "Couldn't execute stmt: %s\n", sqlite3_errmsg(astdb));
		res = -1;
	}
	if (res == 0) {
		res = sqlite3_changes(astdb);
	}
	sqlite3_reset(stmt);
	db_sync();
	unlock();
	free(prefix);
	return res;
}

/* Caller holds dblock. The key and value are stored after the entry, as db.c does. */
static struct ast_db_entry *collect(sqlite3_stmt *stmt)
{
	struct ast_db_entry *head = NULL, *prev = NULL, *cur;

	while (sqlite3_step(stmt) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(stmt, 0);
		const char *value = (const char *)sqlite3_column_text(stmt, 1);
		size_t kl, vl;

		if (!key || !value) {
			break;
		}
		kl = strlen(key);
		vl = strlen(value);
		if (!(cur = malloc(sizeof(*cur) + kl + vl + 2))) {
			break;
		}
		cur->next = NULL;
		memcpy(cur->data, value, vl + 1);
		cur->key = cur->data + vl + 1;
		memcpy(cur->key, key, kl + 1);
		if (prev) {
			prev->next = cur;
		} else {
			head = cur;
		}
		prev = cur;
	}
	return head;
}

struct ast_db_entry *ast_db_gettree(const char *family, const char *keytree)
{
	sqlite3_stmt *stmt = gettree_stmt;
	struct ast_db_entry *ret = NULL;
	int len;
	char *prefix = make_prefix(family, keytree, &len);

	if (!prefix) {
		return NULL;
	}
	if (len == 0) {
		stmt = gettree_all_stmt;
	}
	lock();
	if (len && sqlite3_bind_text(stmt, 1, prefix, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Could not bind %s to stmt: %s\n", prefix, sqlite3_errmsg(astdb));
	} else {
		ret = collect(stmt);
	}
	sqlite3_reset(stmt);
	unlock();
	free(prefix);
	return ret;
}

struct ast_db_entry *ast_db_gettree_by_prefix(const char *family, const char *key_prefix)
{
	struct ast_db_entry *ret = NULL;
	int len;
	char *prefix = make_prefix(family, key_prefix, &len);

	if (!prefix) {
		return NULL;
	}
	lock();
	if (sqlite3_bind_text(gettree_prefix_stmt, 1, prefix, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Could not bind %s to stmt: %s\n", prefix, sqlite3_errmsg(astdb));
	} else {
		ret = collect(gettree_prefix_stmt);
	}
	sqlite3_reset(gettree_prefix_stmt);
	unlock();
	free(prefix);
	return ret;
}

void ast_db_freetree(struct ast_db_entry *dbe)
{
	while (dbe) {
		struct ast_db_entry *next = dbe->next;
		free(dbe);
		dbe = next;
	}
}

/* ---- CLI ---- */

#define CLI_INIT_CASE(cmdtext, usagetext) \
	switch (cmd) { \
	case CLI_INIT: \
		e->command = cmdtext; \
		e->usage = usagetext; \
		return NULL; \
	case CLI_GENERATE: \
		return NULL; \
	}

static char *cli_put(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	CLI_INIT_CASE("database put", "Usage: database put <family> <key> <value>\n"
		"       Adds or updates an entry in the Asterisk database for\n"
		"       a given family, key, and value.\n");
	if (a->argc != 5) {
		return CLI_SHOWUSAGE;
	}
	if (ast_db_put(a->argv[2], a->argv[3], a->argv[4])) {
		ast_cli(a->fd, "Failed to update entry\n");
	} else {
		ast_cli(a->fd, "Updated database successfully\n");
	}
	return CLI_SUCCESS;
}

static char *cli_get(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	char *tmp = NULL;

	CLI_INIT_CASE("database get", "Usage: database get <family> <key>\n"
		"       Retrieves an entry in the Asterisk database for a given\n"
		"       family and key.\n");
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	if (ast_db_get_allocated(a->argv[2], a->argv[3], &tmp)) {
		ast_cli(a->fd, "Database entry not found.\n");
	} else {
		ast_cli(a->fd, "Value: %s\n", tmp);
		free(tmp);
	}
	return CLI_SUCCESS;
}

static char *cli_del(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	CLI_INIT_CASE("database del", "Usage: database del <family> <key>\n"
		"       Deletes an entry in the Asterisk database for a given\n"
		"       family and key.\n");
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	if (ast_db_del2(a->argv[2], a->argv[3])) {
		ast_cli(a->fd, "Database entry could not be removed.\n");
	} else {
		ast_cli(a->fd, "Database entry removed.\n");
	}
	return CLI_SUCCESS;
}

static char *cli_deltree(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	int n;

	CLI_INIT_CASE("database deltree", "Usage: database deltree <family> [keytree]\n"
		"   OR: database deltree <family>[/keytree]\n"
		"       Deletes a family or specific keytree within a family\n"
		"       in the Asterisk database.  The two arguments may be\n"
		"       separated by either a space or a slash.\n");
	if (a->argc < 3 || a->argc > 4) {
		return CLI_SHOWUSAGE;
	}
	n = ast_db_deltree(a->argv[2], a->argc == 4 ? a->argv[3] : NULL);
	if (n < 0) {
		ast_cli(a->fd, "Database unavailable.\n");
	} else if (n == 0) {
		ast_cli(a->fd, "Database entries do not exist.\n");
	} else {
		ast_cli(a->fd, "%d database entries removed.\n", n);
	}
	return CLI_SUCCESS;
}

static void show_rows(int fd, sqlite3_stmt *stmt)
{
	int counter = 0;

	while (sqlite3_step(stmt) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(stmt, 0);
		const char *v = (const char *)sqlite3_column_text(stmt, 1);
		if (!k || !v) {
			continue;
		}
		counter++;
		ast_cli(fd, "%-50s: %-25s\n", k, v);
	}
	ast_cli(fd, "%d results found.\n", counter);
}

static char *cli_show(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	sqlite3_stmt *stmt = gettree_stmt;
	char *prefix;
	int len;

	CLI_INIT_CASE("database show", "Usage: database show [family [keytree]]\n"
		"   OR: database show [family[/keytree]]\n"
		"       Shows Asterisk database contents, optionally restricted\n"
		"       to a given family, or family and keytree. The two arguments\n"
		"       may be separated either by a space or by a slash.\n");
	if (a->argc > 4) {
		return CLI_SHOWUSAGE;
	}
	prefix = make_prefix(a->argc > 2 ? a->argv[2] : "", a->argc > 3 ? a->argv[3] : "", &len);
	if (!prefix) {
		return CLI_FAILURE;
	}
	if (len == 0) {
		stmt = gettree_all_stmt;
	}
	lock();
	if (len && sqlite3_bind_text(stmt, 1, prefix, len, SQLITE_STATIC) != SQLITE_OK) {
		STUB_LOG(LOG_WARNING, "Couldn't bind %s to stmt: %s\n", prefix, sqlite3_errmsg(astdb));
	} else {
		show_rows(a->fd, stmt);
	}
	sqlite3_reset(stmt);
	unlock();
	free(prefix);
	return CLI_SUCCESS;
}

static char *cli_showkey(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	CLI_INIT_CASE("database showkey", "Usage: database showkey <keytree>\n"
		"       Shows Asterisk database contents, restricted to a given key.\n");
	if (a->argc != 3) {
		return CLI_SHOWUSAGE;
	}
	lock();
	if (sqlite3_bind_text(showkey_stmt, 1, a->argv[2], -1, SQLITE_STATIC) == SQLITE_OK) {
		show_rows(a->fd, showkey_stmt);
	}
	sqlite3_reset(showkey_stmt);
	unlock();
	return CLI_SUCCESS;
}

static int display_results(void *arg, int columns, char **values, char **names)
{
	struct ast_cli_args *a = arg;
	int i;

	for (i = 0; i < columns; i++) {
		ast_cli(a->fd, "%-5s: %-50s\n", names[i], values[i] ? values[i] : "(null)");
	}
	ast_cli(a->fd, "\n");
	return 0;
}

static char *cli_query(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	CLI_INIT_CASE("database query", "Usage: database query \"<SQL Statement>\"\n"
		"       Run a user-specified SQL query on the database. Be careful.\n");
	if (a->argc != 3) {
		return CLI_SHOWUSAGE;
	}
	lock();
	exec_sql(a->argv[2], display_results, a);
	db_sync();
	unlock();
	return CLI_SUCCESS;
}

/*
 * ---- test-only extensions: real Asterisk has none of these commands ----
 *
 * For the end-to-end benchmarks (benches/cluster.rs): bulk writes without a
 * process spawn per key, key counts, and waiting for a key or a count inside
 * the process. Times are CLOCK_REALTIME in microseconds, so figures printed
 * by two stand-ins on one machine can be compared. Nothing in the module
 * relies on them.
 */

static long long realtime_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* CPU time the calling thread has used, in microseconds. */
static long long thread_cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* CPU the waitfor / waitcount commands have used, so that a benchmark can leave its
 * own polling out of the process's CPU figures. */
static long long wait_cpu_total_us;

static void add_wait_cpu(long long since_us)
{
	__atomic_fetch_add(&wait_cpu_total_us, thread_cpu_us() - since_us, __ATOMIC_RELAXED);
}

/* Keys of the family's tree ("/family/..."), by an index range scan. -1 on error. */
static long long count_family(const char *family)
{
	sqlite3_stmt *stmt = NULL;
	long long n = -1;
	char *lo = NULL, *hi = NULL;

	/* '0' follows '/' in ASCII: every "/family/..." key sorts between the two. */
	if (asprintf(&lo, "/%s/", family) < 0 || asprintf(&hi, "/%s0", family) < 0) {
		free(lo);
		return -1;
	}
	lock();
	if (sqlite3_prepare_v2(astdb, "SELECT COUNT(*) FROM astdb WHERE key >= ?1 AND key < ?2", -1, &stmt, NULL) == SQLITE_OK
		&& sqlite3_bind_text(stmt, 1, lo, -1, SQLITE_STATIC) == SQLITE_OK
		&& sqlite3_bind_text(stmt, 2, hi, -1, SQLITE_STATIC) == SQLITE_OK
		&& sqlite3_step(stmt) == SQLITE_ROW) {
		n = sqlite3_column_int64(stmt, 0);
	}
	sqlite3_finalize(stmt);
	unlock();
	free(lo);
	free(hi);
	return n;
}

static char *cli_bulkput(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	long long i, count, start, end, failed = 0, pause_us = 0;
	char key[256], value[256];

	CLI_INIT_CASE("database bulkput", "Usage: database bulkput <family> <prefix> <count> [value [pause_us]]\n"
		"       Test-only (not in Asterisk): ast_db_put of <prefix>0 .. <prefix><count-1>,\n"
		"       with <value> or v<i>, in a loop inside the process; with <pause_us>, that\n"
		"       long between puts (a steady writer rather than a burst).\n");
	if (a->argc < 5 || a->argc > 7 || (count = atoll(a->argv[4])) < 0
		|| (a->argc == 7 && (pause_us = atoll(a->argv[6])) < 0)) {
		return CLI_SHOWUSAGE;
	}
	start = realtime_us();
	for (i = 0; i < count; i++) {
		snprintf(key, sizeof(key), "%s%lld", a->argv[3], i);
		if (a->argc >= 6) {
			snprintf(value, sizeof(value), "%s", a->argv[5]);
		} else {
			snprintf(value, sizeof(value), "v%lld", i);
		}
		if (ast_db_put(a->argv[2], key, value)) {
			failed++;
		}
		if (pause_us > 0) {
			usleep((useconds_t)pause_us);
		}
	}
	end = realtime_us();
	ast_cli(a->fd, "Wrote %lld keys (%lld failed) in %lld us; start %lld end %lld\n", count - failed, failed,
		end - start, start, end);
	return CLI_SUCCESS;
}

static char *cli_count(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	CLI_INIT_CASE("database count", "Usage: database count <family>\n"
		"       Test-only (not in Asterisk): how many keys the family's tree holds.\n");
	if (a->argc != 3) {
		return CLI_SHOWUSAGE;
	}
	ast_cli(a->fd, "Keys: %lld\n", count_family(a->argv[2]));
	return CLI_SUCCESS;
}

static char *cli_waitfor(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	long long start, now, timeout_us, cpu_start;
	char *got = NULL;
	int first = 1;

	CLI_INIT_CASE("database waitfor", "Usage: database waitfor <family> <key> <timeout_ms> [value]\n"
		"       Test-only (not in Asterisk): polls until the key exists (with <value> if\n"
		"       given), every 100 us for the first 20 ms, then every millisecond so that a\n"
		"       long wait leaves the CPU to the process it measures; prints when it became\n"
		"       visible (\"Present\" if it already was at the first look).\n");
	if (a->argc < 5 || a->argc > 6) {
		return CLI_SHOWUSAGE;
	}
	timeout_us = atoll(a->argv[4]) * 1000;
	start = realtime_us();
	cpu_start = thread_cpu_us();
	for (;;) {
		int found = !ast_db_get_allocated(a->argv[2], a->argv[3], &got)
			&& (a->argc == 5 || !strcmp(got, a->argv[5]));
		free(got);
		got = NULL;
		now = realtime_us();
		if (found) {
			ast_cli(a->fd, "%s at %lld after %lld us\n", first ? "Present" : "Visible", now,
				now - start);
			add_wait_cpu(cpu_start);
			return CLI_SUCCESS;
		}
		if (now - start > timeout_us) {
			ast_cli(a->fd, "Timeout at %lld after %lld us\n", now, now - start);
			add_wait_cpu(cpu_start);
			return CLI_SUCCESS;
		}
		first = 0;
		usleep(now - start < 20000 ? 100 : 1000);
	}
}

static char *cli_waitcount(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	long long start, now, before, n, want, timeout_us, cpu_start;

	CLI_INIT_CASE("database waitcount", "Usage: database waitcount <family> <count> <timeout_ms>\n"
		"       Test-only (not in Asterisk): polls until the family's tree holds at least\n"
		"       <count> keys; prints when. After each count it sleeps four times as long as\n"
		"       the count took (at least 2 ms), so the AstDB lock stays mostly free.\n");
	if (a->argc != 5) {
		return CLI_SHOWUSAGE;
	}
	want = atoll(a->argv[3]);
	timeout_us = atoll(a->argv[4]) * 1000;
	start = realtime_us();
	cpu_start = thread_cpu_us();
	for (;;) {
		before = realtime_us();
		n = count_family(a->argv[2]);
		now = realtime_us();
		if (n >= want) {
			/* The count holds AstDB's lock, so the keys it found were all there when it
			 * began. */
			ast_cli(a->fd, "Reached %lld keys at %lld after %lld us (poll %lld us)\n", n, before,
				before - start, now - before);
			add_wait_cpu(cpu_start);
			return CLI_SUCCESS;
		}
		if (now - start > timeout_us) {
			ast_cli(a->fd, "Timeout with %lld keys at %lld after %lld us\n", n, now, now - start);
			add_wait_cpu(cpu_start);
			return CLI_SUCCESS;
		}
		usleep((useconds_t)(4 * (now - before) > 2000 ? 4 * (now - before) : 2000));
	}
}

static char *cli_waitcpu(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	CLI_INIT_CASE("database waitcpu", "Usage: database waitcpu\n"
		"       Test-only (not in Asterisk): the CPU time 'database waitfor' and 'database\n"
		"       waitcount' have used in this process so far.\n");
	if (a->argc != 2) {
		return CLI_SHOWUSAGE;
	}
	ast_cli(a->fd, "Wait CPU: %lld us\n", __atomic_load_n(&wait_cpu_total_us, __ATOMIC_RELAXED));
	return CLI_SUCCESS;
}

static struct ast_cli_entry db_cli[] = {
	{ .handler = cli_show, .summary = "Shows database contents" },
	{ .handler = cli_showkey, .summary = "Shows database contents" },
	{ .handler = cli_get, .summary = "Gets database value" },
	{ .handler = cli_put, .summary = "Adds/updates database value" },
	{ .handler = cli_del, .summary = "Removes database key/value" },
	{ .handler = cli_deltree, .summary = "Removes database keytree/values" },
	{ .handler = cli_query, .summary = "Run a user-specified query on the astdb" },
	{ .handler = cli_bulkput, .summary = "Test-only: many ast_db_put calls" },
	{ .handler = cli_count, .summary = "Test-only: count a family's keys" },
	{ .handler = cli_waitfor, .summary = "Test-only: wait until a key is visible" },
	{ .handler = cli_waitcount, .summary = "Test-only: wait until a family holds N keys" },
	{ .handler = cli_waitcpu, .summary = "Test-only: CPU the wait commands used" },
};

void stub_astdb_register_cli(void)
{
	ast_cli_register_multiple(db_cli, ARRAY_LEN(db_cli));
}

/* ---- manager actions (as main/db.c registers them) ---- */

static const char *header(int n, const char *const *names, const char *const *values, const char *name)
{
	int i;

	for (i = 0; i < n; i++) {
		if (!strcasecmp(names[i], name)) {
			return values[i];
		}
	}
	return "";
}

static void send_error(int fd, const char *msg)
{
	ast_cli(fd, "Response: Error\nMessage: %s\n", msg);
}

static void send_ack(int fd, const char *msg)
{
	ast_cli(fd, "Response: Success\nMessage: %s\n", msg);
}

void stub_astdb_manager_action(int fd, const char *action, int n, const char *const *names,
	const char *const *values)
{
	const char *family = header(n, names, values, "Family");
	const char *key = header(n, names, values, "Key");

	if (!strcasecmp(action, "DBPut")) {
		const char *val = header(n, names, values, "Val");
		if (!*family) {
			send_error(fd, "No family specified");
		} else if (!*key) {
			send_error(fd, "No key specified");
		} else if (ast_db_put(family, key, val)) {
			send_error(fd, "Failed to update entry");
		} else {
			send_ack(fd, "Updated database successfully");
		}
	} else if (!strcasecmp(action, "DBGet")) {
		char *tmp = NULL;
		if (!*family) {
			send_error(fd, "No family specified.");
		} else if (!*key) {
			send_error(fd, "No key specified.");
		} else if (ast_db_get_allocated(family, key, &tmp)) {
			send_error(fd, "Database entry not found");
		} else {
			ast_cli(fd, "Response: Success\nEventList: start\nMessage: Result will follow\n\n"
				"Event: DBGetResponse\nFamily: %s\nKey: %s\nVal: %s\n\n"
				"Event: DBGetComplete\nEventList: Complete\nListItems: 1\n", family, key, tmp);
			free(tmp);
		}
	} else if (!strcasecmp(action, "DBGetTree")) {
		struct ast_db_entry *tree, *cur;
		int count = 0;
		if (!*family && *key) {
			send_error(fd, "Key tree specified without family");
			return;
		}
		tree = ast_db_gettree(family, key);
		ast_cli(fd, "Response: Success\nEventList: start\nMessage: Result will follow\n\n");
		for (cur = tree; cur; cur = cur->next, count++) {
			ast_cli(fd, "Event: DBGetTreeResponse\nKey: %s\nVal: %s\n\n", cur->key, cur->data);
		}
		ast_db_freetree(tree);
		ast_cli(fd, "Event: DBGetTreeComplete\nEventList: Complete\nListItems: %d\n", count);
	} else if (!strcasecmp(action, "DBDel")) {
		if (!*family) {
			send_error(fd, "No family specified.");
		} else if (!*key) {
			send_error(fd, "No key specified.");
		} else if (ast_db_del2(family, key)) {
			send_error(fd, "Database entry could not be deleted");
		} else {
			send_ack(fd, "Key deleted successfully");
		}
	} else if (!strcasecmp(action, "DBDelTree")) {
		int num;
		if (!*family) {
			send_error(fd, "No family specified.");
			return;
		}
		num = ast_db_deltree(family, *key ? key : NULL);
		if (num < 0) {
			send_error(fd, "Database unavailable");
		} else if (num == 0) {
			send_error(fd, "Database entry not found");
		} else {
			send_ack(fd, "Key tree deleted successfully");
		}
	} else {
		send_error(fd, "Invalid/unknown command");
	}
}
