/*
 * Test module for the stand-in's res_pjsip publish API (src/pjsip/sip_api.h): a publisher
 * and a publish handler for event "asterisk-db".
 *
 *   stubsip send <outbound-publish> <text>   queues <text> (the rest of the line, as typed)
 *                                            as an application/json PUBLISH body
 *
 * new_publication answers 403 for the event configuration "refuse", else 200; a body
 * "bad" is refused. What arrives is logged at NOTICE ("stubsip received ...").
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define AST_MODULE "stub_sip"
#define AST_MODULE_SELF_SYM __internal_stub_sip_self

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asterisk.h"
#include "asterisk/astobj2.h"
#include "asterisk/cli.h"
#include "asterisk/logger.h"
#include "asterisk/module.h"
#include "asterisk/utils.h"
#include "sip_api.h"

#define NOTICE(...) ast_log(__LOG_NOTICE, __FILE__, __LINE__, __func__, __VA_ARGS__)

static int start_publishing(struct ast_sip_outbound_publish *configuration, struct ast_sip_outbound_publish_client *client)
{
	NOTICE("stubsip start_publishing %s\n", ast_sorcery_object_get_id(configuration));
	return 0;
}

static int stop_publishing(struct ast_sip_outbound_publish_client *client)
{
	NOTICE("stubsip stop_publishing\n");
	return 0;
}

static struct ast_sip_event_publisher_handler publisher = {
	.event_name = "asterisk-db",
	.start_publishing = start_publishing,
	.stop_publishing = stop_publishing,
};

static int new_publication(struct ast_sip_endpoint *endpoint, const char *resource, const char *event_configuration)
{
	NOTICE("stubsip new_publication endpoint=%s resource=%s config=%s\n", ast_sorcery_object_get_id(endpoint), resource,
		event_configuration);
	return strcmp(event_configuration, "refuse") ? 200 : 403;
}

static void publish_expire(struct ast_sip_publication *pub)
{
	NOTICE("stubsip expired resource=%s\n", ast_sip_publication_get_resource(pub));
}

static int state_change(struct ast_sip_publication *pub, pjsip_msg_body *body, enum ast_sip_publish_state state)
{
	static const char *const names[] = { "initialized", "active", "terminated" };
	static char text[65536];
	int len = 0;

	if (body) {
		if (!ast_sip_is_content_type((pjsip_media_type *)body, "application", "json")) {
			NOTICE("stubsip not json\n");
			return -1;
		}
		len = pjsip_print_text_body(body, text, sizeof(text) - 1);
		if (len < 0) {
			NOTICE("stubsip body too large\n");
			return -1;
		}
	}
	text[len] = '\0';
	NOTICE("stubsip received state=%s resource=%s config=%s len=%d body=%s\n", names[state],
		ast_sip_publication_get_resource(pub), ast_sip_publication_get_event_configuration(pub), len,
		body ? text : "(none)");
	return body && !strcmp(text, "bad") ? -1 : 0;
}

static struct ast_sip_publish_handler handler = {
	.event_name = "asterisk-db",
	.new_publication = new_publication,
	.publish_expire = publish_expire,
	.publication_state_change = state_change,
};

static char *cli_send(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct ast_sip_outbound_publish_client *client;
	struct ast_sip_body body = { .type = "application", .subtype = "json" };
	const char *p = a ? a->line : NULL;
	int words;

	switch (cmd) {
	case CLI_INIT:
		e->command = "stubsip send";
		e->usage = "Usage: stubsip send <outbound-publish> <text>\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc < 4) {
		return CLI_SHOWUSAGE;
	}
	/* The text as typed (quotes kept): what follows the first three words. */
	for (words = 0; words < 3; words++) {
		while (isspace((unsigned char)*p)) {
			p++;
		}
		while (*p && !isspace((unsigned char)*p)) {
			p++;
		}
	}
	while (isspace((unsigned char)*p)) {
		p++;
	}
	body.body_text = p;
	if (!(client = ast_sip_publish_client_get(a->argv[2]))) {
		ast_cli(a->fd, "No outbound publish '%s'\n", a->argv[2]);
		return CLI_FAILURE;
	}
	if (ast_sip_publish_client_send(client, &body)) {
		ast_cli(a->fd, "Send failed\n");
	} else {
		ast_cli(a->fd, "Queued %zu bytes\n", strlen(p));
	}
	ao2_ref(client, -1);
	return CLI_SUCCESS;
}

static struct ast_cli_entry cli[] = {
	{ .handler = cli_send, .summary = "Sends a PUBLISH body" },
};

static enum ast_module_load_result load_module(void)
{
	if (ast_sip_register_publish_handler(&handler)) {
		return AST_MODULE_LOAD_DECLINE;
	}
	if (ast_sip_register_event_publisher_handler(&publisher)) {
		ast_sip_unregister_publish_handler(&handler);
		return AST_MODULE_LOAD_DECLINE;
	}
	ast_cli_register_multiple(cli, 1);
	return AST_MODULE_LOAD_SUCCESS;
}

static int unload_module(void)
{
	ast_cli_unregister_multiple(cli, 1);
	ast_sip_unregister_event_publisher_handler(&publisher);
	ast_sip_unregister_publish_handler(&handler);
	return 0;
}

static struct ast_module_info module_info = {
	.name = AST_MODULE,
	.description = "Stand-in SIP publish test module",
	.key = ASTERISK_GPL_KEY,
	.load = load_module,
	.unload = unload_module,
	.load_pri = AST_MODPRI_DEFAULT,
	.requires = "res_pjsip,res_pjsip_pubsub,res_pjsip_outbound_publish",
};

static void __attribute__((constructor)) reg(void)
{
	ast_module_register(&module_info);
}

static void __attribute__((destructor)) unreg(void)
{
	ast_module_unregister(&module_info);
}

struct ast_module *AST_MODULE_SELF_SYM(void)
{
	return module_info.self;
}
