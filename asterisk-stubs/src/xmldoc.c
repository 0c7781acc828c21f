/*
 * Stand-in Asterisk: a small reader for third-party documentation, like the
 * XML documentation Asterisk loads from
 * <astdatadir>/documentation/thirdparty/NAME-en_US.xml. Only what
 * `core show function` needs (synopsis, description, since, syntax, see-also)
 * and what `manager show command|event` needs from <manager> and
 * <managerEvent> (the same plus the module attribute and the parameters).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* ---- <manager> and <managerEvent> ---- */

/* The value of attribute `attr` in the tag [tag, gt), malloc'd, or NULL. */
static char *tag_attr(const char *tag, const char *gt, const char *attr)
{
	char key[64];
	const char *a, *v, *q;

	snprintf(key, sizeof(key), "%s=\"", attr);
	for (a = tag; (a = memmem(a, (size_t)(gt - a), key, strlen(key))); a++) {
		/* A whole attribute name, not the tail of a longer one. */
		if (isspace((unsigned char)a[-1])) {
			break;
		}
	}
	if (!a) {
		return NULL;
	}
	v = a + strlen(key);
	q = memchr(v, '"', (size_t)(gt - v));
	return q ? strndup(v, (size_t)(q - v)) : NULL;
}

/* Like ast_true(). */
static int is_true(const char *s)
{
	static const char *const yes[] = { "yes", "true", "y", "t", "1", "on" };
	size_t i;

	for (i = 0; s && i < ARRAY_LEN(yes); i++) {
		if (!strcasecmp(s, yes[i])) {
			return 1;
		}
	}
	return 0;
}

static void appendf(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void appendf(char **out, const char *fmt, ...)
{
	char *piece = NULL, *joined;
	va_list ap;
	int res;

	va_start(ap, fmt);
	res = vasprintf(&piece, fmt, ap);
	va_end(ap);
	if (res < 0) {
		return;
	}
	if (asprintf(&joined, "%s%s", *out ? *out : "", piece) >= 0) {
		free(*out);
		*out = joined;
	}
	free(piece);
}

/*
 * The <parameter> elements of the <syntax> in [start, end): the syntax lines
 * ("Action: X" then "Name: <value>", or "[Name:] <value>" when not required;
 * required is the default for events) and the arguments (each parameter with
 * content: its name, then its paragraphs indented by four spaces).
 */
static void build_parameters(const char *start, const char *end, const char *name, int event,
	char **syntax, char **arguments)
{
	size_t slen;
	const char *s = find_element(start, end, "syntax", &slen);
	const char *p, *send;

	*syntax = NULL;
	*arguments = NULL;
	if (asprintf(syntax, "%s: %s", event ? "Event" : "Action", name) < 0) {
		*syntax = NULL;
	}
	if (!s) {
		return;
	}
	send = s + slen;
	for (p = s; (p = memmem(p, (size_t)(send - p), "<parameter", 10)); ) {
		const char *gt = memchr(p, '>', (size_t)(send - p));
		const char *body = NULL, *body_end = NULL;
		char *pname, *req;
		int required;

		if (!gt) {
			break;
		}
		if (!isspace((unsigned char)p[10]) && p[10] != '>' && p[10] != '/') {
			p = gt;
			continue;
		}
		pname = tag_attr(p, gt, "name");
		req = tag_attr(p, gt, "required");
		required = req ? is_true(req) : event;
		free(req);
		if (gt[-1] != '/') {
			body = gt + 1;
			body_end = memmem(body, (size_t)(send - body), "</parameter>", 12);
			if (!body_end) {
				body_end = send;
			}
		}
		p = body_end ? body_end : gt + 1;
		if (!pname) {
			continue;
		}
		if (required) {
			appendf(syntax, "\n%s: <value>", pname);
		} else {
			appendf(syntax, "\n[%s:] <value>", pname);
		}
		if (body) {
			const char *q = body;
			int named = 0;
			size_t plen;
			const char *para;
			while ((para = find_element(q, body_end, "para", &plen))) {
				char *text = plain_text(para, plen);
				if (!named) {
					appendf(arguments, "\n%s\n", pname);
					named = 1;
				}
				appendf(arguments, "    %s\n", text);
				free(text);
				q = para + plen;
			}
		}
		free(pname);
	}
	/* As Asterisk: the last newline goes. */
	if (*arguments && **arguments && (*arguments)[strlen(*arguments) - 1] == '\n') {
		(*arguments)[strlen(*arguments) - 1] = '\0';
	}
}

static void build_doc(const char *start, const char *end, const char *name, int event, char *provided_by,
	struct stub_xmldoc *doc)
{
	size_t len;
	const char *s;

	memset(doc, 0, sizeof(*doc));
	doc->synopsis = (s = find_element(start, end, "synopsis", &len)) ? plain_text(s, len) : NULL;
	doc->description = (s = find_element(start, end, "description", &len)) ? plain_text(s, len) : NULL;
	doc->since = join_elements(start, end, "version", NULL, ", ");
	doc->seealso = join_elements(start, end, "ref", NULL, ", ");
	build_parameters(start, end, name, event, &doc->syntax, &doc->arguments);
	doc->provided_by = provided_by ? strdup(provided_by) : NULL;
}

int stub_xmldoc_manager(const char *kind, const char *name, struct stub_xmldoc **docs)
{
	char dir[4300];
	DIR *d;
	struct dirent *de;
	int event = !strcmp(kind, "managerEvent");
	int found = 0;

	*docs = NULL;
	snprintf(dir, sizeof(dir), "%s/documentation/thirdparty", ast_config_AST_DATA_DIR);
	if (!(d = opendir(dir))) {
		return 0;
	}
	while (!found && (de = readdir(d))) {
		char path[4600], needle[300], open_tag[64], close_tag[64];
		char *data;
		const char *p;
		size_t l = strlen(de->d_name);

		if (l < 10 || strcmp(de->d_name + l - 10, "-en_US.xml")) {
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (!(data = read_file(path))) {
			continue;
		}
		snprintf(needle, sizeof(needle), "name=\"%s\"", name);
		snprintf(open_tag, sizeof(open_tag), "<%s", kind);
		snprintf(close_tag, sizeof(close_tag), "</%s>", kind);
		for (p = data; (p = strstr(p, needle)); p++) {
			const char *lt = p, *gt, *end, *inst;
			char *module;
			size_t ol = strlen(open_tag);

			while (lt > data && *lt != '<') {
				lt--;
			}
			/* "<manager" must not match "<managerEvent". */
			if (strncmp(lt, open_tag, ol) || !isspace((unsigned char)lt[ol])
				|| !isspace((unsigned char)p[-1])) {
				continue;
			}
			if (!(gt = strchr(p, '>')) || !(end = strstr(gt, close_tag))) {
				break;
			}
			module = tag_attr(lt, gt, "module");
			/* An event's documentation is one part per <managerEventInstance>. */
			for (inst = gt; event && (inst = memmem(inst, (size_t)(end - inst), "<managerEventInstance", 21)); ) {
				const char *igt = memchr(inst, '>', (size_t)(end - inst));
				const char *iend = igt ? memmem(igt, (size_t)(end - igt), "</managerEventInstance>", 23) : NULL;
				if (!iend) {
					break;
				}
				*docs = realloc(*docs, (size_t)(found + 1) * sizeof(**docs));
				build_doc(igt, iend, name, event, module, &(*docs)[found++]);
				inst = iend;
			}
			if (!found) {
				*docs = realloc(*docs, sizeof(**docs));
				build_doc(gt, end, name, event, module, &(*docs)[found++]);
			}
			free(module);
			break;
		}
		free(data);
	}
	closedir(d);
	return found;
}

void stub_xmldoc_free(struct stub_xmldoc *docs, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		free(docs[i].synopsis);
		free(docs[i].description);
		free(docs[i].since);
		free(docs[i].seealso);
		free(docs[i].syntax);
		free(docs[i].arguments);
		free(docs[i].provided_by);
	}
	free(docs);
}
