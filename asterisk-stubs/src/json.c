/*
 * Stand-in Asterisk: the JSON subset, behaving like main/json.c over Jansson
 * 2.15 (the version Asterisk 20-23 bundle):
 *
 * - ast_json_load_string() decodes with Jansson's default flags: the text must
 *   be exactly one object or array (a bare scalar is refused, "'[' or '{'
 *   expected"), with nothing but white space after it; strings must be valid
 *   UTF-8 without raw control characters, \u escapes must pair surrogates and
 *   must not be \u0000; integers must fit in 64 bits and reals must not
 *   overflow; a repeated key replaces the earlier value in its place; at most
 *   2048 levels of nesting.
 * - ast_json_dump_string_format() encodes as json_dumps() with the flags
 *   main/json.c picks: compact ("," and ":"), or pretty (two-space indent,
 *   ", " and ": "), keys optionally sorted (strcmp order); strings escaped as
 *   Jansson does (\" \\ \b \f \n \r \t, other controls \u00XX, UTF-8 kept);
 *   reals as "%.17g" with ".0" added when needed and the exponent without '+'
 *   or leading zeros.
 *
 * Written for the stand-in; no Jansson code.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stub.h"

#define MAX_DEPTH 2048

enum jkind { J_OBJECT, J_ARRAY, J_STRING, J_INTEGER, J_REAL, J_TRUE, J_FALSE, J_NULL };

struct jnode {
	enum jkind kind;
	char *str;             /* J_STRING: decoded UTF-8 (no NUL inside) */
	long long ival;
	double rval;
	/* J_OBJECT (keys set) and J_ARRAY */
	char **keys;
	struct jnode **items;
	size_t count, cap;
};

struct ast_json {
	int refs;
	struct jnode *root;
};

/* ---- tree ---- */

static void node_free(struct jnode *n)
{
	size_t i;

	if (!n) {
		return;
	}
	for (i = 0; i < n->count; i++) {
		if (n->keys) {
			free(n->keys[i]);
		}
		node_free(n->items[i]);
	}
	free(n->keys);
	free(n->items);
	free(n->str);
	free(n);
}

static int node_append(struct jnode *n, char *key, struct jnode *item)
{
	if (key) {
		size_t i;
		/* As json_object_set: a repeated key replaces the value where it stands. */
		for (i = 0; i < n->count; i++) {
			if (!strcmp(n->keys[i], key)) {
				node_free(n->items[i]);
				n->items[i] = item;
				free(key);
				return 0;
			}
		}
	}
	if (n->count == n->cap) {
		size_t cap = n->cap ? n->cap * 2 : 4;
		struct jnode **items = realloc(n->items, cap * sizeof(*items));
		if (!items) {
			return -1;
		}
		n->items = items;
		if (n->kind == J_OBJECT) {
			char **keys = realloc(n->keys, cap * sizeof(*keys));
			if (!keys) {
				return -1;
			}
			n->keys = keys;
		}
		n->cap = cap;
	}
	if (n->kind == J_OBJECT) {
		n->keys[n->count] = key;
	}
	n->items[n->count++] = item;
	return 0;
}

/* ---- decoding ---- */

struct parser {
	const char *p;
	int depth;
	int failed;
};

static void skip_ws(struct parser *ps)
{
	while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r') {
		ps->p++;
	}
}

static struct jnode *new_node(enum jkind kind)
{
	struct jnode *n = calloc(1, sizeof(*n));

	if (n) {
		n->kind = kind;
	}
	return n;
}

/* Length of the valid UTF-8 sequence at s (not overlong, no surrogate, at most
 * U+10FFFF), or 0. */
static size_t utf8_valid(const unsigned char *s)
{
	unsigned int cp;
	size_t len, i;

	if (s[0] < 0x80) {
		return 1;
	} else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			return 0;
		}
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff
		|| (cp >= 0xd800 && cp <= 0xdfff)) {
		return 0;
	}
	return len;
}

static int hex4(const char *s, unsigned int *out)
{
	unsigned int v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char c = s[i];
		v <<= 4;
		if (c >= '0' && c <= '9') {
			v |= (unsigned int)(c - '0');
		} else if (c >= 'a' && c <= 'f') {
			v |= (unsigned int)(c - 'a' + 10);
		} else if (c >= 'A' && c <= 'F') {
			v |= (unsigned int)(c - 'A' + 10);
		} else {
			return -1;
		}
	}
	*out = v;
	return 0;
}

static size_t put_utf8(char *out, unsigned int cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	} else if (cp < 0x800) {
		out[0] = (char)(0xc0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	} else if (cp < 0x10000) {
		out[0] = (char)(0xe0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* At the opening quote; returns the decoded string (malloc'd) or NULL. */
static char *parse_string(struct parser *ps)
{
	const char *start = ++ps->p;
	size_t cap = 0;
	char *out, *o;

	/* Every escape decodes to no more bytes than it takes, so the raw length bounds the output. */
	while (*ps->p && *ps->p != '"') {
		if (*ps->p == '\\' && ps->p[1]) {
			ps->p++;
		}
		ps->p++;
	}
	if (!*ps->p) {
		return NULL;
	}
	cap = (size_t)(ps->p - start) + 1;
	if (!(out = malloc(cap))) {
		return NULL;
	}
	o = out;
	ps->p = start;
	while (*ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p;
		if (c < 0x20) {
			goto fail; /* control character */
		}
		if (c >= 0x80) {
			size_t n = utf8_valid((const unsigned char *)ps->p);
			if (!n) {
				goto fail;
			}
			memcpy(o, ps->p, n);
			o += n;
			ps->p += n;
			continue;
		}
		if (c != '\\') {
			*o++ = (char)c;
			ps->p++;
			continue;
		}
		ps->p++;
		switch (*ps->p) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '/': *o++ = '/'; break;
		case 'b': *o++ = '\b'; break;
		case 'f': *o++ = '\f'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case 'u': {
			unsigned int cp, lo;
			if (hex4(ps->p + 1, &cp)) {
				goto fail;
			}
			ps->p += 4;
			if (cp >= 0xdc00 && cp <= 0xdfff) {
				goto fail; /* a low surrogate alone */
			}
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (ps->p[1] != '\\' || ps->p[2] != 'u' || hex4(ps->p + 3, &lo) || lo < 0xdc00 || lo > 0xdfff) {
					goto fail;
				}
				ps->p += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			if (cp == 0) {
				goto fail; /* \u0000 needs JSON_ALLOW_NUL */
			}
			o += put_utf8(o, cp);
			break;
		}
		default:
			goto fail;
		}
		ps->p++;
	}
	ps->p++;
	*o = '\0';
	return out;
fail:
	free(out);
	return NULL;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static struct jnode *parse_number(struct parser *ps)
{
	const char *start = ps->p, *q = ps->p;
	int real = 0;
	struct jnode *n;
	char *end;

	if (*q == '-') {
		q++;
	}
	if (*q == '0') {
		q++;
		if (is_digit(*q)) {
			return NULL; /* leading zero */
		}
	} else if (is_digit(*q)) {
		while (is_digit(*q)) {
			q++;
		}
	} else {
		return NULL;
	}
	if (*q == '.') {
		q++;
		if (!is_digit(*q)) {
			return NULL;
		}
		while (is_digit(*q)) {
			q++;
		}
		real = 1;
	}
	if (*q == 'e' || *q == 'E') {
		q++;
		if (*q == '+' || *q == '-') {
			q++;
		}
		if (!is_digit(*q)) {
			return NULL;
		}
		while (is_digit(*q)) {
			q++;
		}
		real = 1;
	}
	if (!(n = new_node(real ? J_REAL : J_INTEGER))) {
		return NULL;
	}
	errno = 0;
	if (real) {
		n->rval = strtod(start, &end);
		if (errno == ERANGE && (n->rval == HUGE_VAL || n->rval == -HUGE_VAL)) {
			free(n);
			return NULL; /* real number overflow */
		}
	} else {
		n->ival = strtoll(start, &end, 10);
		if (errno == ERANGE) {
			free(n);
			return NULL; /* too big (negative) integer */
		}
	}
	ps->p = q;
	return n;
}

static struct jnode *parse_value(struct parser *ps);

static struct jnode *parse_container(struct parser *ps, int object)
{
	struct jnode *n = new_node(object ? J_OBJECT : J_ARRAY);
	char close = object ? '}' : ']';

	if (!n) {
		return NULL;
	}
	if (++ps->depth > MAX_DEPTH) {
		goto fail;
	}
	ps->p++;
	skip_ws(ps);
	if (*ps->p == close) {
		ps->p++;
		ps->depth--;
		return n;
	}
	for (;;) {
		char *key = NULL;
		struct jnode *item;

		if (object) {
			if (*ps->p != '"' || !(key = parse_string(ps))) {
				goto fail;
			}
			skip_ws(ps);
			if (*ps->p != ':') {
				free(key);
				goto fail;
			}
			ps->p++;
			skip_ws(ps);
		}
		if (!(item = parse_value(ps))) {
			free(key);
			goto fail;
		}
		if (node_append(n, key, item)) {
			free(key);
			node_free(item);
			goto fail;
		}
		skip_ws(ps);
		if (*ps->p == ',') {
			ps->p++;
			skip_ws(ps);
			continue;
		}
		if (*ps->p == close) {
			ps->p++;
			break;
		}
		goto fail;
	}
	ps->depth--;
	return n;
fail:
	node_free(n);
	return NULL;
}

static struct jnode *parse_literal(struct parser *ps, const char *word, enum jkind kind)
{
	size_t l = strlen(word);

	if (strncmp(ps->p, word, l)) {
		return NULL;
	}
	ps->p += l;
	return new_node(kind);
}

static struct jnode *parse_value(struct parser *ps)
{
	struct jnode *n;
	char *s;

	switch (*ps->p) {
	case '{':
		return parse_container(ps, 1);
	case '[':
		return parse_container(ps, 0);
	case '"':
		if (!(s = parse_string(ps))) {
			return NULL;
		}
		if (!(n = new_node(J_STRING))) {
			free(s);
			return NULL;
		}
		n->str = s;
		return n;
	case 't':
		return parse_literal(ps, "true", J_TRUE);
	case 'f':
		return parse_literal(ps, "false", J_FALSE);
	case 'n':
		return parse_literal(ps, "null", J_NULL);
	default:
		return parse_number(ps);
	}
}

struct ast_json *ast_json_load_string(const char *input, struct ast_json_error *error)
{
	struct parser ps = { .p = input };
	struct ast_json *json;
	struct jnode *root;

	UNUSED(error);
	if (!input) {
		return NULL;
	}
	skip_ws(&ps);
	/* Jansson without JSON_DECODE_ANY: '[' or '{' expected. */
	if (*ps.p != '{' && *ps.p != '[') {
		return NULL;
	}
	if (!(root = parse_value(&ps))) {
		return NULL;
	}
	skip_ws(&ps);
	if (*ps.p) {
		node_free(root); /* end of file expected */
		return NULL;
	}
	if (!(json = calloc(1, sizeof(*json)))) {
		node_free(root);
		return NULL;
	}
	json->refs = 1;
	json->root = root;
	return json;
}

void ast_json_unref(struct ast_json *value)
{
	if (value && __atomic_sub_fetch(&value->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		node_free(value->root);
		free(value);
	}
}

void ast_json_free(void *p)
{
	free(p);
}

/* ---- encoding ---- */

struct out {
	char *buf;
	size_t len, cap;
	int failed;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->failed) {
		return;
	}
	if (o->len + n + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 256;
		char *b;
		while (o->len + n + 1 > cap) {
			cap *= 2;
		}
		if (!(b = realloc(o->buf, cap))) {
			o->failed = 1;
			return;
		}
		o->buf = b;
		o->cap = cap;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void dump_string(struct out *o, const char *s)
{
	const char *run = s;

	put(o, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		const char *esc = NULL;
		char seq[8];

		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		default:
			if (c < 0x20) {
				snprintf(seq, sizeof(seq), "\\u%04X", c);
				esc = seq;
			}
		}
		if (esc) {
			put(o, run, (size_t)(s - run));
			puts_(o, esc);
			run = s + 1;
		}
	}
	put(o, run, (size_t)(s - run));
	put(o, "\"", 1);
}

/* Jansson 2.15 (built with dtoa) writes the shortest digits that read back as
 * the same double: fixed notation for decimal exponents -4 < k <= 16 (with
 * ".0" for whole numbers), else d.ddd e<exp>, as Python's repr(). */
static void dump_real(struct out *o, double v)
{
	char sci[64], digits[32], buf[64];
	int prec, exp10 = 0, decpt, n, neg = signbit(v) != 0;
	char *p, *w;

	for (prec = 0; prec < 17; prec++) {
		snprintf(sci, sizeof(sci), "%.*e", prec, v);
		if (strtod(sci, NULL) == v) {
			break;
		}
	}
	/* sci is "-d.ddde+XX": the digits without the point, then the exponent. */
	w = digits;
	for (p = sci; *p && *p != 'e'; p++) {
		if (*p >= '0' && *p <= '9') {
			*w++ = *p;
		}
	}
	*w = '\0';
	if (*p == 'e') {
		exp10 = atoi(p + 1);
	}
	n = (int)strlen(digits);
	decpt = exp10 + 1;
	if (!strcmp(digits, "0")) {
		decpt = 1;
	}
	w = buf;
	if (neg) {
		*w++ = '-';
	}
	if (decpt <= -4 || decpt > 16) {
		*w++ = digits[0];
		if (n > 1) {
			w += sprintf(w, ".%s", digits + 1);
		}
		sprintf(w, "e%d", decpt - 1);
	} else if (decpt <= 0) {
		*w++ = '0';
		*w++ = '.';
		for (; decpt < 0; decpt++) {
			*w++ = '0';
		}
		strcpy(w, digits);
	} else if (decpt < n) {
		sprintf(w, "%.*s.%s", decpt, digits, digits + decpt);
	} else {
		w += sprintf(w, "%s", digits);
		for (; n < decpt; n++) {
			*w++ = '0';
		}
		strcpy(w, ".0");
	}
	puts_(o, buf);
}

static void indent(struct out *o, int pretty, int depth)
{
	int i;

	if (!pretty) {
		return;
	}
	put(o, "\n", 1);
	for (i = 0; i < depth; i++) {
		put(o, "  ", 2);
	}
}

static int key_cmp(const void *a, const void *b)
{
	const char *const *ka = a, *const *kb = b;

	return strcmp(*ka, *kb);
}

static void dump_node(struct out *o, const struct jnode *n, int pretty, int sorted, int depth)
{
	char buf[32];
	size_t i;

	switch (n->kind) {
	case J_STRING:
		dump_string(o, n->str);
		return;
	case J_INTEGER:
		snprintf(buf, sizeof(buf), "%lld", n->ival);
		puts_(o, buf);
		return;
	case J_REAL:
		dump_real(o, n->rval);
		return;
	case J_TRUE:
		puts_(o, "true");
		return;
	case J_FALSE:
		puts_(o, "false");
		return;
	case J_NULL:
		puts_(o, "null");
		return;
	case J_ARRAY:
	case J_OBJECT:
		break;
	}
	put(o, n->kind == J_OBJECT ? "{" : "[", 1);
	if (n->count == 0) {
		put(o, n->kind == J_OBJECT ? "}" : "]", 1);
		return;
	}
	{
		/* The order to write the members in: as read, or by key. */
		size_t *order = malloc(n->count * sizeof(*order));
		if (!order) {
			o->failed = 1;
			return;
		}
		for (i = 0; i < n->count; i++) {
			order[i] = i;
		}
		if (sorted && n->kind == J_OBJECT) {
			const char **keys = malloc(n->count * 2 * sizeof(*keys));
			if (!keys) {
				free(order);
				o->failed = 1;
				return;
			}
			/* Pairs (key, index) sorted by key; the index rides along. */
			for (i = 0; i < n->count; i++) {
				keys[2 * i] = n->keys[i];
				keys[2 * i + 1] = (const char *)(uintptr_t)i;
			}
			qsort(keys, n->count, 2 * sizeof(*keys), key_cmp);
			for (i = 0; i < n->count; i++) {
				order[i] = (size_t)(uintptr_t)keys[2 * i + 1];
			}
			free(keys);
		}
		indent(o, pretty, depth + 1);
		for (i = 0; i < n->count; i++) {
			size_t k = order[i];
			if (n->kind == J_OBJECT) {
				dump_string(o, n->keys[k]);
				puts_(o, pretty ? ": " : ":");
			}
			dump_node(o, n->items[k], pretty, sorted, depth + 1);
			if (i + 1 < n->count) {
				put(o, ",", 1);
				indent(o, pretty, depth + 1);
			} else {
				indent(o, pretty, depth);
			}
		}
		free(order);
	}
	put(o, n->kind == J_OBJECT ? "}" : "]", 1);
}

char *ast_json_dump_string_format(struct ast_json *root, enum ast_json_encoding_format format)
{
	struct out o = { 0 };

	if (!root) {
		return NULL;
	}
	dump_node(&o, root->root, (format & AST_JSON_PRETTY) != 0, (format & AST_JSON_SORTED) != 0, 0);
	if (o.failed) {
		free(o.buf);
		return NULL;
	}
	return o.buf;
}
