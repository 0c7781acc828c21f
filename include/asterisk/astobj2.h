/* res_astdb_cluster: reference-counted objects (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_ASTOBJ2_H
#define ASTDB_CLUSTER_MIN_ASTOBJ2_H

#include <stddef.h>

/* Called with the object's data when its last reference goes. */
typedef void (*ao2_destructor_fn)(void *vdoomed);

enum ao2_alloc_opts {
	AO2_ALLOC_OPT_LOCK_MUTEX = (0 << 0),
	AO2_ALLOC_OPT_LOCK_RWLOCK = (1 << 0),
	AO2_ALLOC_OPT_LOCK_NOLOCK = (2 << 0),
};

/* A new object of data_size bytes (zeroed) with one reference. */
void *__ao2_alloc(size_t data_size, ao2_destructor_fn destructor_fn, unsigned int options,
	const char *tag, const char *file, int line, const char *func);
/* Adds delta to the count; returns the count before. */
int __ao2_ref(void *o, int delta, const char *tag, const char *file, int line, const char *func);
/* Drops one reference; NULL is ignored. */
void __ao2_cleanup_debug(void *obj, const char *tag, const char *file, int line, const char *function);

#define ao2_alloc_options(size, destructor, options) \
	__ao2_alloc((size), (destructor), (options), NULL, __FILE__, __LINE__, __func__)
#define ao2_ref(o, delta) __ao2_ref((o), (delta), NULL, __FILE__, __LINE__, __func__)
#define ao2_cleanup(o) __ao2_cleanup_debug((o), NULL, __FILE__, __LINE__, __func__)

#endif
