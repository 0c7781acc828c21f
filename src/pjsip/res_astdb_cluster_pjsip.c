/*
 * res_astdb_cluster_pjsip: carries res_astdb_cluster's changes as SIP PUBLISH
 * (Event: asterisk-db, an application/json body) through res_pjsip's
 * outbound-publish and inbound-publication objects.
 *
 * res_astdb_cluster.so itself names no res_pjsip symbol, so it loads in an Asterisk
 * without PJSIP; this small module holds that side. It requires res_pjsip,
 * res_pjsip_pubsub, res_pjsip_outbound_publish and res_astdb_cluster, finds the
 * latter's entry points with dlsym, and hands over the one operation it offers
 * (queue a PUBLISH on a named outbound-publish). Everything else (what the bodies
 * say, their seal, pacing, which node a publication is) is decided there.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "res_astdb_cluster_pjsip"
#define AST_MODULE_SELF_SYM __internal_res_astdb_cluster_pjsip_self

#include "asterisk.h"
#include "asterisk/module.h"
#include "asterisk/logger.h"
#include "asterisk/astobj2.h"
#ifdef ASTDB_CLUSTER_INSTALLED_HEADERS
#include "asterisk/buildopts.h"
#endif

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "sip_api.h"

#ifndef LOG_ERROR
/* The project's own logger.h has the levels only. */
#define LOG_ERROR __LOG_ERROR, __FILE__, __LINE__, __func__
#endif

#ifdef ASTDB_CLUSTER_INSTALLED_HEADERS
/* Asterisk's headers want its own allocator. */
#define BUF_ALLOC(n) ast_malloc(n)
#define BUF_FREE(p) ast_free(p)
#else
#define BUF_ALLOC(n) malloc(n)
#define BUF_FREE(p) free(p)
#endif

#ifndef AST_BUILDOPT_SUM
#define AST_BUILDOPT_SUM ""
#endif

#define EVENT_NAME "asterisk-db"
/* Bodies are at most 60,000 bytes (res_astdb_cluster's limit); a longer one is
 * refused whole rather than cut. */
#define BODY_MAX 65536

/* What this module offers res_astdb_cluster (its Rust side reads the same layout). */
struct astdb_cluster_sip_ops {
	unsigned int version;
	int (*publish)(const char *client, const char *body, int fresh);
};

/* res_astdb_cluster's entry points. */
static int (*cluster_attach)(const struct astdb_cluster_sip_ops *ops);
static void (*cluster_detach)(void);
static void (*cluster_client)(const void *client, const char *name, int running);
static int (*cluster_accept)(const char *resource, const char *config);
static int (*cluster_body)(const char *resource, const char *config, int json,
	const char *body, size_t len);
static void *cluster_lib;

/* Queues one PUBLISH: 0, -1 when no such outbound-publish exists, -2 when its
 * publisher refused the body. A client stopped once (this module was unloaded)
 * keeps a spent publisher that never sends again; with `fresh` it is dropped
 * first, and the send makes a new one. */
static int publish(const char *client_name, const char *text, int fresh)
{
	struct ast_sip_outbound_publish_client *client = ast_sip_publish_client_get(client_name);
	struct ast_sip_body body = {
		.type = "application",
		.subtype = "json",
		.body_text = text,
	};
	int res;

	if (!client) {
		return -1;
	}
	if (fresh) {
		ast_sip_publish_client_remove(client, "");
	}
	res = ast_sip_publish_client_user_send(client, "", &body);
	ao2_ref(client, -1);
	return res ? -2 : 0;
}

static const struct astdb_cluster_sip_ops ops = {
	.version = 1,
	.publish = publish,
};

/* ---- outbound: the outbound-publish objects with event = asterisk-db ---- */

static int start_publishing(struct ast_sip_outbound_publish *configuration,
	struct ast_sip_outbound_publish_client *client)
{
	cluster_client(client, ast_sorcery_object_get_id(configuration), 1);
	return 0;
}

/* Given only the client: res_astdb_cluster remembers which name it had. */
static int stop_publishing(struct ast_sip_outbound_publish_client *client)
{
	cluster_client(client, NULL, 0);
	return 0;
}

static struct ast_sip_event_publisher_handler publisher = {
	.event_name = EVENT_NAME,
	.start_publishing = start_publishing,
	.stop_publishing = stop_publishing,
};

/* ---- inbound: PUBLISH requests on inbound-publication objects ---- */

static int new_publication(struct ast_sip_endpoint *endpoint, const char *resource,
	const char *event_configuration)
{
	return cluster_accept(resource, event_configuration);
}

static int publication_state_change(struct ast_sip_publication *pub, pjsip_msg_body *body,
	enum ast_sip_publish_state state)
{
	char *text;
	int len, json, res;

	if (!body || state == AST_SIP_PUBLISH_STATE_TERMINATED) {
		return 0;
	}
	text = BUF_ALLOC(BODY_MAX + 1);
	if (!text) {
		return -1;
	}
	len = pjsip_print_text_body(body, text, BODY_MAX);
	if (len < 0) {
		/* Longer than any body the cluster sends: handed over as an oversized one. */
		len = BODY_MAX + 1;
		memset(text, ' ', BODY_MAX + 1);
	}
	json = ast_sip_is_content_type((pjsip_media_type *) body, "application", "json");
	res = cluster_body(ast_sip_publication_get_resource(pub),
		ast_sip_publication_get_event_configuration(pub), json, text, (size_t) len);
	BUF_FREE(text);
	return res ? -1 : 0;
}

static struct ast_sip_publish_handler publication_handler = {
	.event_name = EVENT_NAME,
	.new_publication = new_publication,
	.publication_state_change = publication_state_change,
};

/* ---- module ---- */

static int find_cluster(void)
{
	/* res_astdb_cluster.so is loaded (it is required) with local symbols: open it by
	 * its soname, which finds the copy already in memory. */
	cluster_lib = dlopen("res_astdb_cluster.so", RTLD_NOW | RTLD_NOLOAD);
	if (!cluster_lib) {
		ast_log(LOG_ERROR, "res_astdb_cluster.so is not loaded: load it first\n");
		return -1;
	}
	cluster_attach = dlsym(cluster_lib, "astdb_cluster_sip_attach");
	cluster_detach = dlsym(cluster_lib, "astdb_cluster_sip_detach");
	cluster_client = dlsym(cluster_lib, "astdb_cluster_sip_client");
	cluster_accept = dlsym(cluster_lib, "astdb_cluster_sip_accept");
	cluster_body = dlsym(cluster_lib, "astdb_cluster_sip_body");
	if (!cluster_attach || !cluster_detach || !cluster_client || !cluster_accept || !cluster_body) {
		ast_log(LOG_ERROR, "res_astdb_cluster.so has no SIP PUBLISH support (a different version?)\n");
		dlclose(cluster_lib);
		cluster_lib = NULL;
		return -1;
	}
	return 0;
}

static enum ast_module_load_result load_module(void)
{
	if (find_cluster()) {
		return AST_MODULE_LOAD_DECLINE;
	}
	if (cluster_attach(&ops)) {
		ast_log(LOG_ERROR, "res_astdb_cluster.so refused the SIP PUBLISH operations\n");
		dlclose(cluster_lib);
		cluster_lib = NULL;
		return AST_MODULE_LOAD_DECLINE;
	}
	if (ast_sip_register_publish_handler(&publication_handler)) {
		ast_log(LOG_ERROR, "could not register the '%s' publication handler\n", EVENT_NAME);
		cluster_detach();
		dlclose(cluster_lib);
		cluster_lib = NULL;
		return AST_MODULE_LOAD_DECLINE;
	}
	if (ast_sip_register_event_publisher_handler(&publisher)) {
		ast_log(LOG_ERROR, "could not register the '%s' event publisher\n", EVENT_NAME);
		ast_sip_unregister_publish_handler(&publication_handler);
		cluster_detach();
		dlclose(cluster_lib);
		cluster_lib = NULL;
		return AST_MODULE_LOAD_DECLINE;
	}
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	ast_sip_unregister_event_publisher_handler(&publisher);
	ast_sip_unregister_publish_handler(&publication_handler);
	if (cluster_lib) {
		/* Waits until res_astdb_cluster is no longer in publish(). */
		cluster_detach();
		dlclose(cluster_lib);
		cluster_lib = NULL;
	}
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "AstDB cluster over SIP PUBLISH (Event: asterisk-db)",
	.key = ASTERISK_GPL_KEY,
	.flags = AST_MODFLAG_LOAD_ORDER,
	.buildopt_sum = AST_BUILDOPT_SUM,
	.load = load_module,
	.unload = unload_module,
	.load_pri = AST_MODPRI_DEFAULT,
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
	.requires = "res_pjsip,res_pjsip_pubsub,res_pjsip_outbound_publish,res_astdb_cluster",
};

static void __attribute__((constructor)) register_module(void)
{
	ast_module_register(&module_info);
}

static void __attribute__((destructor)) unregister_module(void)
{
	ast_module_unregister(&module_info);
}

struct ast_module *AST_MODULE_SELF_SYM(void)
{
	return module_info.self;
}
