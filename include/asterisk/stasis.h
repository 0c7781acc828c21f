/* res_astdb_cluster: Stasis message bus (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_STASIS_H
#define ASTDB_CLUSTER_MIN_STASIS_H

#include "asterisk/json.h"

struct stasis_message_type;
struct stasis_message;
struct stasis_topic;
struct stasis_message_sanitizer;
struct ast_manager_event_blob;
struct ast_event;

/* How a message type turns its messages into other forms; fixed at creation.
 * Three function pointers, the same in Asterisk 20, 22 and 23. */
struct stasis_message_vtable {
	struct ast_json *(*to_json)(struct stasis_message *message,
		const struct stasis_message_sanitizer *sanitize);
	struct ast_manager_event_blob *(*to_ami)(struct stasis_message *message);
	struct ast_event *(*to_event)(struct stasis_message *message);
};

enum stasis_message_type_result {
	STASIS_MESSAGE_TYPE_ERROR = -1,
	STASIS_MESSAGE_TYPE_SUCCESS,
	STASIS_MESSAGE_TYPE_DECLINED, /* disabled in stasis.conf */
};

/* The type is an ao2 object: release it with ao2_cleanup(). */
enum stasis_message_type_result stasis_message_type_create(const char *name,
	struct stasis_message_vtable *vtable, struct stasis_message_type **result);
const char *stasis_message_type_name(const struct stasis_message_type *type);

/* A message holding a reference to `data`, an ao2 object. */
struct stasis_message *stasis_message_create(struct stasis_message_type *type, void *data);
struct stasis_message_type *stasis_message_type(const struct stasis_message *msg);
void *stasis_message_data(const struct stasis_message *msg);

/* Delivers the message to the topic's subscribers, on their own threads. */
void stasis_publish(struct stasis_topic *topic, struct stasis_message *message);

#endif
