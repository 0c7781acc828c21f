/* res_astdb_cluster: the system topic (minimal, written for this project). */
#ifndef ASTDB_CLUSTER_MIN_STASIS_SYSTEM_H
#define ASTDB_CLUSTER_MIN_STASIS_SYSTEM_H

#include "asterisk/stasis.h"

/* Forwarded into manager's topic: messages with to_ami become AMI events. */
struct stasis_topic *ast_system_topic(void);

#endif
