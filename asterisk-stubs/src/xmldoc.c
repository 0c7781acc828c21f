/*
 * Stand-in Asterisk: a small reader for third-party documentation, like the
 * XML documentation Asterisk loads from
 * <astdatadir>/documentation/thirdparty/NAME-en_US.xml. Only what
 * `core show function` needs: synopsis, description, since, syntax, see-also.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "stub.h"

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *data = NULL;
	size_t size = 0, cap = 0, n;

	if (!f) {
		return NULL;
	}
	do {
		if (size + 4097 > cap) {
			cap = cap ? cap * 2 : 65536;
			data = realloc(data, cap);
		}
		n = fread(data + size, 1, cap - size - 1, f);
		size += n;
	} while (n > 0);
	fclose(f);
	data[size] = '\0';
	return data;
}

/* Text of `in` without tags, entities decoded, whitespace collapsed. */
static char *plain_text(const char *in, size_t len)
{
	char *out = malloc(len + 1);
	size_t o = 0, i = 0;
	int space = 0;

	while (i < len) {
		if (in[i] == '<') {
			const char *gt = memchr(in + i, '>', len - i);
			/* A closing paragraph ends a line. */
			if (!strncmp(in + i, "</para>", 7) && o > 0) {
				out[o++] = '\n';
				space = 0;
			} else {
				space = 1;
			}
			i = gt ? (size_t)(gt - in) + 1 : len;
			continue;
		}
		if (isspace((unsigned char)in[i])) {
			space = 1;
			i++;
			continue;
		}
		if (space && o > 0 && out[o - 1] != '\n') {
			out[o++] = ' ';
		}
		space = 0;
		if (in[i] == '&') {
			static const struct { const char *e; char c; } ents[] = {
				{ "&lt;", '<' }, { "&gt;", '>' }, { "&amp;", '&' }, { "&quot;", '"' }, { "&apos;", '\'' },
			};
			size_t k;
			for (k = 0; k < ARRAY_LEN(ents); k++) {
				size_t el = strlen(ents[k].e);
				if (len - i >= el && !strncmp(in + i, ents[k].e, el)) {
					out[o++] = ents[k].c;
					i += el;
					break;
				}
			}
			if (k < ARRAY_LEN(ents)) {
				continue;
			}
		}
		out[o++] = in[i++];
	}
	while (o > 0 && isspace((unsigned char)out[o - 1])) {
		o--;
	}
	out[o] = '\0';
	return out;
}

/* The inner text of the first <tag>...</tag> in [start, end), or NULL. */
static const char *find_element(const char *start, const char *end, const char *tag, size_t *len)
{
	char open[64], close[64];
	const char *p = start, *q;

	snprintf(open, sizeof(open), "<%s", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	while ((p = memmem(p, (size_t)(end - p), open, strlen(open)))) {
		char c = p[strlen(open)];
		if (c == '>' || isspace((unsigned char)c)) {
			break;
		}
		p++;
	}
	if (!p || !(p = memchr(p, '>', (size_t)(end - p)))) {
		return NULL;
	}
	p++;
	if (!(q = memmem(p, (size_t)(end - p), close, strlen(close)))) {
		return NULL;
	}
	*len = (size_t)(q - p);
	return p;
}

static char *join_elements(const char *start, const char *end, const char *tag, const char *attr, const char *sep)
{
	char *out = strdup("");
	const char *p = start;
	char open[64];

	snprintf(open, sizeof(open), "<%s", tag);
	while ((p = memmem(p, (size_t)(end - p), open, strlen(open)))) {
		const char *gt = memchr(p, '>', (size_t)(end - p));
		char *piece = NULL, *joined;
		if (!gt) {
			break;
		}
		if (attr) {
			char key[64];
			const char *a;
			snprintf(key, sizeof(key), "%s=\"", attr);
			a = memmem(p, (size_t)(gt - p), key, strlen(key));
			if (a) {
				const char *v = a + strlen(key);
				const char *qe = memchr(v, '"', (size_t)(gt - v));
				piece = qe ? strndup(v, (size_t)(qe - v)) : NULL;
			}
		} else {
			size_t len;
			const char *inner = find_element(p, end, tag, &len);
			piece = inner ? plain_text(inner, len) : NULL;
		}
		p = gt + 1;
		if (!piece || !*piece) {
			free(piece);
			continue;
		}
		if (asprintf(&joined, "%s%s%s", out, *out ? sep : "", piece) >= 0) {
			free(out);
			out = joined;
		}
		free(piece);
	}
	return out;
}

int stub_xmldoc_function(const char *name, char **synopsis, char **desc, char **syntax, char **seealso,
	char **since)
{
	char dir[4300];
	DIR *d;
	struct dirent *de;
	int found = 0;

	snprintf(dir, sizeof(dir), "%s/documentation/thirdparty", ast_config_AST_DATA_DIR);
	if (!(d = opendir(dir))) {
		return 0;
	}
	while (!found && (de = readdir(d))) {
		char path[4600], needle[300];
		char *data;
		const char *p, *end, *start;
		size_t l = strlen(de->d_name);

		if (l < 10 || strcmp(de->d_name + l - 10, "-en_US.xml")) {
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (!(data = read_file(path))) {
			continue;
		}
		snprintf(needle, sizeof(needle), "name=\"%s\"", name);
		for (p = data; (p = strstr(p, needle)); p++) {
			/* The attribute must belong to a <function ...> tag. */
			const char *lt = p;
			while (lt > data && *lt != '<') {
				lt--;
			}
			if (strncmp(lt, "<function", 9) || !isspace((unsigned char)lt[9])) {
				continue;
			}
			start = strchr(p, '>');
			end = start ? strstr(start, "</function>") : NULL;
			if (!end) {
				break;
			}
			{
				size_t len;
				const char *s;
				char *params;
				*synopsis = (s = find_element(start, end, "synopsis", &len)) ? plain_text(s, len) : strdup("");
				*desc = (s = find_element(start, end, "description", &len)) ? plain_text(s, len) : strdup("");
				*since = join_elements(start, end, "version", NULL, ", ");
				*seealso = join_elements(start, end, "ref", NULL, ", ");
				s = find_element(start, end, "syntax", &len);
				params = s ? join_elements(s, s + len, "parameter", "name", ",") : strdup("");
				if (asprintf(syntax, "%s(%s)", name, params) < 0) {
					*syntax = strdup(name);
				}
				free(params);
			}
			found = 1;
			break;
		}
		free(data);
	}
	closedir(d);
	return found;
}
