/*
 * Stand-in Asterisk: the ao2 subset (reference-counted objects), as in
 * main/astobj2.c: the caller's data follows a hidden header holding a magic
 * number, the count and the destructor. The count changes atomically; the
 * thread that takes it to 0 runs the destructor with the data pointer and
 * frees the block. The lock options are accepted and ignored (the stand-in
 * offers no ao2_lock).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stub.h"

#define STUB_AO2_MAGIC 0xa570b123u

struct ao2_header {
	uint32_t magic;
	int32_t refs;
	ao2_destructor_fn destructor;
	size_t size;
	/* Keeps the data as aligned as malloc's. */
	max_align_t data[];
};

static struct ao2_header *header_of(void *user_data, const char *file, int line, const char *func)
{
	struct ao2_header *h;

	if (!user_data) {
		ast_log(__LOG_ERROR, file, line, func, "FRACK!, Failed assertion user_data is NULL\n");
		return NULL;
	}
	h = (struct ao2_header *)((char *)user_data - offsetof(struct ao2_header, data));
	if (__atomic_load_n(&h->magic, __ATOMIC_RELAXED) != STUB_AO2_MAGIC) {
		ast_log(__LOG_ERROR, file, line, func, "FRACK!, Failed assertion bad magic number 0x%x for object %p\n",
			h->magic, user_data);
		return NULL;
	}
	return h;
}

void *__ao2_alloc(size_t data_size, ao2_destructor_fn destructor_fn, unsigned int options,
	const char *tag, const char *file, int line, const char *func)
{
	struct ao2_header *h;

	UNUSED(options);
	UNUSED(tag);
	UNUSED(file);
	UNUSED(line);
	UNUSED(func);
	if (!(h = calloc(1, sizeof(*h) + data_size))) {
		return NULL;
	}
	h->magic = STUB_AO2_MAGIC;
	h->refs = 1;
	h->destructor = destructor_fn;
	h->size = data_size;
	return h->data;
}

int __ao2_ref(void *o, int delta, const char *tag, const char *file, int line, const char *func)
{
	struct ao2_header *h = header_of(o, file, line, func);
	int32_t before, after;

	UNUSED(tag);
	if (!h) {
		return -1;
	}
	if (delta == 0) {
		return __atomic_load_n(&h->refs, __ATOMIC_SEQ_CST);
	}
	before = __atomic_fetch_add(&h->refs, delta, __ATOMIC_ACQ_REL);
	after = before + delta;
	if (after > 0) {
		return before;
	}
	if (after < 0) {
		ast_log(__LOG_ERROR, file, line, func, "Invalid refcount %d on ao2 object %p\n", (int)after, o);
		return before;
	}
	if (h->destructor) {
		h->destructor(o);
	}
	/* A use after the free meets a bad magic number rather than a live object. */
	__atomic_store_n(&h->magic, 0, __ATOMIC_RELAXED);
	free(h);
	return before;
}

void __ao2_cleanup_debug(void *obj, const char *tag, const char *file, int line, const char *function)
{
	if (obj) {
		__ao2_ref(obj, -1, tag, file, line, function);
	}
}
