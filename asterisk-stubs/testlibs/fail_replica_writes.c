/*
 * Test-only LD_PRELOAD library: while the file named by $FAIL_REPLICA_WRITES_WHILE
 * exists, writes to any file whose name ends in ".replica" fail with ENOSPC, as on
 * a full disk. Everything else is passed through untouched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int failing(int fd)
{
	const char *flag = getenv("FAIL_REPLICA_WRITES_WHILE");
	char link[64], target[4096];
	ssize_t n;
	size_t len;

	if (!flag || access(flag, F_OK) != 0) {
		return 0;
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n <= 0) {
		return 0;
	}
	target[n] = '\0';
	len = strlen(target);
	return len > 8 && strcmp(target + len - 8, ".replica") == 0;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
	static ssize_t (*real)(int, const void *, size_t, off_t);

	if (failing(fd)) {
		errno = ENOSPC;
		return -1;
	}
	if (!real) {
		real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
	}
	return real(fd, buf, count, offset);
}

ssize_t write(int fd, const void *buf, size_t count)
{
	static ssize_t (*real)(int, const void *, size_t);

	if (failing(fd)) {
		errno = ENOSPC;
		return -1;
	}
	if (!real) {
		real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
	}
	return real(fd, buf, count);
}
