/*
 * The part of Asterisk's res_pjsip publish API that res_astdb_cluster_pjsip uses,
 * declared here by the project (Asterisk's own res_pjsip*.h include pjproject's
 * headers, which an Asterisk install does not ship). The layouts are those of
 * Asterisk 20, 22 and 23, which do not differ (see the README, "Over SIP PUBLISH").
 * The stand-in Asterisk implements exactly these.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef ASTDB_CLUSTER_SIP_API_H
#define ASTDB_CLUSTER_SIP_API_H

#include <stddef.h>

struct ast_sip_outbound_publish;         /* a type = outbound-publish object (sorcery) */
struct ast_sip_outbound_publish_client;  /* ao2 object */
struct ast_sip_endpoint;                 /* sorcery object */
struct ast_sip_publication;              /* ao2 object */
/* pjsip_msg_body: read only through the two functions below; its first member is the
 * content type (pjsip_media_type), which is all ast_sip_is_content_type needs. */
typedef struct pjsip_msg_body pjsip_msg_body;
typedef struct pjsip_media_type pjsip_media_type;

struct ast_sip_body {
	const char *type;
	const char *subtype;
	const char *body_text;
};

struct ast_sip_event_publisher_handler {
	const char *event_name;
	int (*start_publishing)(struct ast_sip_outbound_publish *configuration,
		struct ast_sip_outbound_publish_client *client);
	int (*stop_publishing)(struct ast_sip_outbound_publish_client *client);
	struct {
		struct ast_sip_event_publisher_handler *next;
	} next;
};

enum ast_sip_publish_state {
	AST_SIP_PUBLISH_STATE_INITIALIZED,
	AST_SIP_PUBLISH_STATE_ACTIVE,
	AST_SIP_PUBLISH_STATE_TERMINATED,
};

struct ast_sip_publish_handler {
	const char *event_name;
	struct ao2_container *publications;   /* set by ast_sip_register_publish_handler */
	/* Returns the SIP response code: 200 accepts the new publication. */
	int (*new_publication)(struct ast_sip_endpoint *endpoint, const char *resource,
		const char *event_configuration);
	void (*publish_expire)(struct ast_sip_publication *pub);
	/* Non-zero refuses the body. */
	int (*publication_state_change)(struct ast_sip_publication *pub, pjsip_msg_body *body,
		enum ast_sip_publish_state state);
	struct {
		struct ast_sip_publish_handler *next;
	} next;
};

/* res_pjsip_outbound_publish */
int ast_sip_register_event_publisher_handler(struct ast_sip_event_publisher_handler *handler);
void ast_sip_unregister_event_publisher_handler(struct ast_sip_event_publisher_handler *handler);
/* A new reference (ao2), or NULL when no outbound-publish of that name is running. */
struct ast_sip_outbound_publish_client *ast_sip_publish_client_get(const char *name);
/* Queues one PUBLISH; the client sends one at a time. 0 when queued. */
int ast_sip_publish_client_send(struct ast_sip_outbound_publish_client *client,
	const struct ast_sip_body *body);

/* The same through the client's publisher for `user` ("" is the client's own),
 * created if it has none. */
int ast_sip_publish_client_user_send(struct ast_sip_outbound_publish_client *client,
	const char *user, const struct ast_sip_body *body);
/* Drops the client's publisher for `user`. */
void ast_sip_publish_client_remove(struct ast_sip_outbound_publish_client *client,
	const char *user);

/* res_pjsip_pubsub */
int ast_sip_register_publish_handler(struct ast_sip_publish_handler *handler);
void ast_sip_unregister_publish_handler(struct ast_sip_publish_handler *handler);
const char *ast_sip_publication_get_event_configuration(const struct ast_sip_publication *pub);
const char *ast_sip_publication_get_resource(const struct ast_sip_publication *pub);

/* res_pjsip */
int ast_sip_is_content_type(pjsip_media_type *content_type, char *type, char *subtype);

/* pjproject (libasteriskpj): copies the body's text; the length, or -1 if it does not fit. */
int pjsip_print_text_body(pjsip_msg_body *msg_body, char *buf, size_t size);

/* Asterisk core */
const char *ast_sorcery_object_get_id(const void *object);

#endif
