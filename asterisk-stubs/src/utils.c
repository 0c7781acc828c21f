/*
 * Stand-in Asterisk: allocation wrappers and EIDs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>

#include "stub.h"

struct ast_eid ast_eid_default;

void *__ast_malloc(size_t size, const char *file, int lineno, const char *func)
{
	UNUSED(file);
	UNUSED(lineno);
	UNUSED(func);
	return malloc(size);
}

void __ast_free(void *ptr, const char *file, int lineno, const char *func)
{
	UNUSED(file);
	UNUSED(lineno);
	UNUSED(func);
	free(ptr);
}

char *__ast_strdup(const char *s, const char *file, int lineno, const char *func)
{
	UNUSED(file);
	UNUSED(lineno);
	UNUSED(func);
	return s ? strdup(s) : NULL;
}

char *ast_eid_to_str(char *s, int maxlen, struct ast_eid *eid)
{
	int i;
	char *os = s;

	if (maxlen < 18) {
		if (maxlen > 0) {
			s[0] = '\0';
		}
		return os;
	}
	for (i = 0; i < 6; i++) {
		s += snprintf(s, 4, i ? ":%02x" : "%02x", eid->eid[i]);
	}
	return os;
}
