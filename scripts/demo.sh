#!/usr/bin/env bash
# A local three-node cluster on loopback: each node gets its own asterisk.conf,
# directories and entity ID, loads res_astdb_cluster.so, and the demo shares
# families from the dialplan and the CLI and shows what each node reports.
#
# Uses a real Asterisk when one is found (ASTERISK=/path/to/asterisk, or
# `asterisk` on PATH, with its modules in ASTERISK_MODDIR or the usual places),
# otherwise the stand-in Asterisk from asterisk-stubs/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULE=$PWD/res_astdb_cluster.so
[ -f "$MODULE" ] || { echo "build first: make" >&2; exit 1; }
DEMO=${DEMO_DIR:-$(mktemp -d /tmp/astdb-cluster-demo.XXXXXX)}

ASTERISK=${ASTERISK:-$(command -v asterisk || true)}
if [ -n "$ASTERISK" ]; then
    MODDIR=${ASTERISK_MODDIR:-}
    for d in /usr/lib/asterisk/modules /usr/lib/x86_64-linux-gnu/asterisk/modules /usr/lib64/asterisk/modules \
             "$(dirname "$(dirname "$ASTERISK")")/lib/asterisk/modules"; do
        [ -z "$MODDIR" ] && [ -f "$d/func_db.so" ] && MODDIR=$d
    done
    [ -n "$MODDIR" ] || { echo "found $ASTERISK but not its modules; set ASTERISK_MODDIR" >&2; exit 1; }
    # Asterisk will not start without its XML documentation.
    prefix=$(dirname "$(dirname "$ASTERISK")")
    DATADIR=${ASTERISK_DATADIR:-}
    for d in "$prefix/var/lib/asterisk" /usr/share/asterisk /var/lib/asterisk; do
        [ -z "$DATADIR" ] && [ -f "$d/documentation/core-en_US.xml" ] && DATADIR=$d
    done
    [ -n "$DATADIR" ] || { echo "found $ASTERISK but not its documentation; set ASTERISK_DATADIR" >&2; exit 1; }
    KIND="Asterisk ($ASTERISK)"
else
    ASTERISK=$PWD/asterisk-stubs/build/asterisk-stub
    [ -x "$ASTERISK" ] || make -C asterisk-stubs >/dev/null
    MODDIR=""
    KIND="the stand-in Asterisk (no real Asterisk found)"
fi

cli() { "$ASTERISK" -C "$DEMO/n$1/etc/asterisk.conf" -rx "$2"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
    for i in 1 2 3; do cli "$i" "core stop now" >/dev/null 2>&1 || true; done
    [ -n "${KEEP_DEMO:-}" ] || rm -rf "$DEMO"
}
trap cleanup EXIT

say "Starting three nodes with $KIND in $DEMO"
for i in 1 2 3; do
    n=$DEMO/n$i
    mkdir -p "$n"/{etc,db,run,log,spool,modules,varlib}
    if [ -n "$MODDIR" ]; then
        for m in "$MODDIR"/*.so; do ln -sf "$m" "$n/modules/"; done
        datadir=$DATADIR
    else
        datadir=$n/varlib
    fi
    ln -sf "$MODULE" "$n/modules/res_astdb_cluster.so"
    cat > "$n/etc/asterisk.conf" <<CONF
[directories]
astetcdir => $n/etc
astmoddir => $n/modules
astvarlibdir => $n/varlib
astdbdir => $n/db
astkeydir => $n/varlib
astdatadir => $datadir
astspooldir => $n/spool
astrundir => $n/run
astlogdir => $n/log
[options]
entityid = 02:00:00:00:00:0$i
CONF
    printf '[modules]\nautoload = no\nload => pbx_config.so\nload => func_db.so\nload => app_verbose.so\nload => res_clioriginate.so\nload => res_astdb_cluster.so\n' > "$n/etc/modules.conf"
    printf '[logfiles]\nmessages => notice,warning,error,verbose\n' > "$n/etc/logger.conf"
    cat > "$n/etc/extensions.conf" <<'CONF'
[demo]
exten => share,1,Set(DB_SHARED(put,global)=blacklist)
 same => n,Set(DB_SHARED(put,unique)=registrar)
 same => n,Set(DB(blacklist/5551234)=telemarketer)
 same => n,Set(DB(registrar/alice)=sip:alice@10.0.0.${EPOCH:-1})
 same => n,Hangup()
CONF
    {
        printf '[general]\ncluster_name = demo.cluster\ncluster_node = %s\n' "$i"
        printf 'cluster_secret = demo-secret-change-me-0123456789\nbindaddr = 127.0.0.1\nbindport = 1603%s\n' "$i"
        for j in 1 2 3; do
            [ "$j" = "$i" ] || printf '\n[node%s]\ntype = node\nnode = %s\nhost = 127.0.0.1:1603%s\n' "$j" "$j" "$j"
        done
        printf '\n[queue_state]\ntype = family\nmode = global\nsync_interval = 500\n'
    } > "$n/etc/astdb_cluster.conf"
    if [ -n "$MODDIR" ]; then
        "$ASTERISK" -C "$n/etc/asterisk.conf" -g
    else
        "$ASTERISK" -C "$n/etc/asterisk.conf" > "$n/log/console" 2>&1 &
    fi
done
for i in 1 2 3; do
    for _ in $(seq 1 100); do cli "$i" "core show version" >/dev/null 2>&1 && break; sleep 0.1; done
    cli "$i" "core waitfullybooted" >/dev/null  # Asterisk and the stand-in both have it
    cli "$i" "module show like astdb_cluster" | grep astdb_cluster
done

say "Waiting for the three nodes to find each other over the encrypted mesh"
for i in 1 2 3; do
    for _ in $(seq 1 100); do cli "$i" "astdb cluster show status" | grep -q "2 of 2 peers up" && break; sleep 0.1; done
done
cli 1 "astdb cluster show nodes"

say "Node 1: share families from the dialplan, then write to them with DB()"
if [ -n "$MODDIR" ]; then
    cli 1 "channel originate Local/share@demo application Wait 0"
else
    cli 1 "dialplan set DB_SHARED(put,global)=blacklist"
    cli 1 "dialplan set DB_SHARED(put,unique)=registrar"
    cli 1 "dialplan set DB(blacklist/5551234)=telemarketer"
    cli 1 "dialplan set DB(registrar/alice)=sip:alice@10.0.0.1"
fi
# The other nodes share the same families (a preset would do it too).
for i in 2 3; do
    cli "$i" "database shared put global blacklist" >/dev/null
    cli "$i" "database shared put unique registrar" >/dev/null
done
sleep 1

say "Nodes 2 and 3 now hold node 1's blacklist entry..."
for i in 2 3; do echo "node $i: $(cli "$i" 'database get blacklist 5551234')"; done
say "...and node 1's registration under node 1's entity ID (unique family)"
for i in 2 3; do echo "node $i: $(cli "$i" 'database show 02:00:00:00:00:01/registrar' | head -1)"; done

say "Node 3 deletes the entry from the CLI; the delete reaches everyone"
echo "   (CLI and AMI writes are found at the family's next read: sync_interval,"
echo "    5 s for a family shared from the dialplan; DB() writes go out at once)"
cli 3 "database del blacklist 5551234"
sleep 6
for i in 1 2; do echo "node $i: $(cli "$i" 'database get blacklist 5551234')"; done

say "A preset family (queue_state, sync_interval 500 ms) written on node 2"
cli 2 "database put queue_state sales/calls 7"
sleep 1.5
echo "node 1: $(cli 1 'database get queue_state sales/calls')"

say "What each node reports"
for i in 1 2 3; do
    echo "--- node $i"
    cli "$i" "database shared show"
done
say "Node 1 status"
cli 1 "astdb cluster show status"

say "A bad argument is refused with a warning, and nothing changes"
cli 1 "database shared put sideways blacklist" || true

say "Unload and load the module on node 3, five times; it rejoins"
for _ in 1 2 3 4 5; do cli 3 "module unload res_astdb_cluster.so" >/dev/null; cli 3 "module load res_astdb_cluster.so" >/dev/null; done
for _ in $(seq 1 100); do cli 3 "astdb cluster show status" | grep -q "2 of 2 peers up" && break; sleep 0.1; done
cli 3 "astdb cluster show status" | grep Network

say "Done."
