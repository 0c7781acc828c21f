//! Presets and policies across a four-node cluster of stand-ins: multicast
//! families reach exactly their nodes, read-only listeners never publish,
//! intervals are per family, and `module reload` applies changes.

mod standin;

use std::time::Duration;

use standin::{module_so, StandIn};

const SECRET: &str = "policy-test-secret-0123456789";

use standin::port_base as base_port;

/// astdb_cluster.conf for `node` of `nodes`, with `families` appended.
fn conf(node: u32, nodes: &[u32], base: u16, families: &str) -> String {
    standin::cluster_conf("policy.cluster", SECRET, node, nodes, base, families)
}

fn start(slot: u16, node: u32, text: String) -> StandIn {
    StandIn::builder(&format!("p{slot}n{node}"))
        .eid(&format!("02:00:00:00:00:0{node}"))
        .conf_file("astdb_cluster.conf", &text)
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start()
}

fn wait_value(n: &StandIn, family: &str, key: &str, want: Option<&str>) {
    n.wait_for_cli(
        &format!("database get {family} {key}"),
        Duration::from_secs(15),
        |out| match want {
            Some(v) => out.contains(&format!("Value: {v}")),
            None => out.contains("not found"),
        },
    );
}

fn absent(n: &StandIn, family: &str, key: &str) -> bool {
    n.cli(&format!("database get {family} {key}"))
        .contains("not found")
}

fn wait_peers_up(n: &StandIn, up: usize, of: usize) {
    n.wait_for_cli("astdb cluster show status", Duration::from_secs(20), |s| {
        s.contains(&format!("{up} of {of} peers up"))
    });
}

const FAMILIES: &str = "
[queue_state]
type = family
mode = global
sharing_policy = multicast
sharing_nodes = 1,2,3
sync_interval = 200

[settings]
type = family
mode = global
sync_interval = 200
";

#[test]
fn a_multicast_family_reaches_exactly_its_nodes_and_a_read_only_listener_never_publishes() {
    let nodes_list = [1, 2, 3, 4];
    let base = base_port(0);
    let nodes: Vec<StandIn> = nodes_list
        .iter()
        .map(|&i| {
            // Node 4 is a listener for settings: it receives but never publishes.
            let families = if i == 4 {
                FAMILIES.replace(
                    "[settings]\ntype = family\n",
                    "[settings]\ntype = family\nsync_mode = ro\n",
                )
            } else {
                FAMILIES.to_string()
            };
            start(0, i, conf(i, &nodes_list, base, &families))
        })
        .collect();
    for n in &nodes {
        wait_peers_up(n, 3, 3);
    }
    let [n1, n2, n3, n4] = [&nodes[0], &nodes[1], &nodes[2], &nodes[3]];
    let show = n4.cli("database shared show");
    assert!(
        show.contains("queue_state  global  preset  multicast(1,2,3)  rw"),
        "{show}"
    );
    assert!(
        show.contains("settings     global  preset  broadcast         ro    200ms"),
        "{show}"
    );

    // Multicast: nodes 1-3 get it, node 4 neither gets nor spreads it.
    n1.cli("dialplan set DB(queue_state/sales)=7");
    wait_value(n2, "queue_state", "sales", Some("7"));
    wait_value(n3, "queue_state", "sales", Some("7"));
    n4.cli("dialplan set DB(queue_state/from4)=x");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        absent(n4, "queue_state", "sales"),
        "node 4 is not a sharing node"
    );
    for n in [n1, n2, n3] {
        assert!(
            absent(n, "queue_state", "from4"),
            "node 4's writes are not accepted"
        );
    }

    // Read-only: node 4 follows the cluster...
    n2.cli("dialplan set DB(settings/language)=en");
    wait_value(n4, "settings", "language", Some("en"));
    // ...but its own write is not published, is warned about, and the cluster's value returns.
    n4.cli("database put settings language fr");
    assert!(
        n4.wait_for_log("sync_mode=ro", Duration::from_secs(10)),
        "{}",
        n4.log()
    );
    wait_value(n4, "settings", "language", Some("en"));
    for n in [n1, n2, n3] {
        assert!(n
            .cli("database get settings language")
            .contains("Value: en"));
    }
}

#[test]
fn each_family_is_read_at_its_own_interval_and_refresh_reads_at_once() {
    let nodes_list = [1, 2];
    let base = base_port(1);
    let families = "
[fast]
type = family
sync_interval = 200

[slow]
type = family
sync_interval = 60000
";
    let nodes: Vec<StandIn> = nodes_list
        .iter()
        .map(|&i| start(1, i, conf(i, &nodes_list, base, families)))
        .collect();
    wait_peers_up(&nodes[0], 1, 1);
    // A family of more than 10,000 keys is read at its interval (a smaller one is also
    // read whenever AstDB commits).
    nodes[0].cli("database bulkput slow big 10001");
    nodes[1].wait_for_cli("database count slow", Duration::from_secs(30), |o| {
        o.contains("Keys: 10001")
    });
    // The reads that followed the import end after four in a row found nothing new
    // (the last 1.5 s after it).
    std::thread::sleep(Duration::from_millis(3000));
    // CLI writes are found by the family's read, not at once.
    nodes[0].cli("database put slow k s");
    nodes[0].cli("database put fast k f");
    wait_value(&nodes[1], "fast", "k", Some("f"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        absent(&nodes[1], "slow", "k"),
        "the slow family's next read is a minute away"
    );
    assert!(nodes[0]
        .cli("database shared refresh slow")
        .contains("Reading 1 family now"));
    wait_value(&nodes[1], "slow", "k", Some("s"));

    // A writer other than the dialplan that keeps writing (a script loading numbers,
    // here one put every 250 ms for 3 s) is followed once a read has found it: each
    // read that finds changes brings the next one near, instead of a minute away, and
    // the reads that come between two of its puts and find nothing do not end that.
    std::thread::scope(|s| {
        s.spawn(|| nodes[0].cli("database bulkput slow b 12 x 250000"));
        std::thread::sleep(Duration::from_millis(150));
        nodes[0].cli("database shared refresh slow");
    });
    wait_value(&nodes[1], "slow", "b11", Some("x"));
}

#[test]
fn reload_adds_and_removes_families_and_nodes_without_losing_data() {
    let nodes_list = [1, 2, 3];
    let base = base_port(2);
    let nodes: Vec<StandIn> = nodes_list
        .iter()
        .map(|&i| start(2, i, conf(i, &nodes_list, base, FAMILIES)))
        .collect();
    for n in &nodes {
        wait_peers_up(n, 2, 2);
    }
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];

    // Add a family on every node.
    let added = format!("{FAMILIES}\n[extra]\ntype = family\nmode = unique\nsync_interval = 200\n");
    for (i, n) in nodes.iter().enumerate() {
        n.write_conf(
            "astdb_cluster.conf",
            &conf(i as u32 + 1, &nodes_list, base, &added),
        );
        n.cli("module reload res_astdb_cluster.so");
    }
    n1.cli("dialplan set DB(extra/k)=v");
    wait_value(n2, "02:00:00:00:00:01/extra", "k", Some("v"));
    let ups_before = n1.log().matches("node 2 (node2").count();

    // Node 1 forgets node 3 (and drops it from the multicast list, or the file
    // is refused): node 3 stops receiving; node 2's connection is untouched.
    let added_without3 = added.replace("sharing_nodes = 1,2,3", "sharing_nodes = 1,2");
    // (Both 1 and 2 drop it: a node still known to 2 would get the data from 2.)
    for (i, n) in [n1, n2].iter().enumerate() {
        n.write_conf(
            "astdb_cluster.conf",
            &conf(i as u32 + 1, &[1, 2], base, &added_without3),
        );
        n.cli("module reload res_astdb_cluster.so");
        n.wait_for_cli("astdb cluster show nodes", Duration::from_secs(10), |s| {
            !s.contains("node3")
        });
    }
    n1.cli("dialplan set DB(settings/after)=1");
    wait_value(n2, "settings", "after", Some("1"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        absent(n3, "settings", "after"),
        "a removed node no longer receives"
    );
    assert_eq!(
        n1.log().matches("node 2 (node2").count(),
        ups_before,
        "node 2 was not reconnected:\n{}",
        n1.log()
    );

    // Remove the family on node 1: it stops sharing it, and its data stays.
    let fewer = conf(
        1,
        &[1, 2],
        base,
        &FAMILIES.replace("sharing_nodes = 1,2,3", "sharing_nodes = 1,2"),
    );
    n1.write_conf("astdb_cluster.conf", &fewer);
    n1.cli("module reload res_astdb_cluster.so");
    assert_eq!(n1.cli("dialplan eval [${DB_SHARED(extra)}]").trim(), "[]");
    assert!(
        n1.cli("database get extra k").contains("Value: v"),
        "unsharing never deletes data"
    );

    // Change a policy: settings becomes multicast to 1 and 3 only, on every node.
    let multicast = FAMILIES.replace(
        "[settings]\ntype = family\nmode = global\n",
        "[settings]\ntype = family\nmode = global\nsharing_policy = multicast\nsharing_nodes = 1,3\n",
    );
    n3.write_conf(
        "astdb_cluster.conf",
        &conf(3, &nodes_list, base, &multicast),
    );
    n3.cli("module reload res_astdb_cluster.so");
    assert!(n3
        .cli("database shared show settings")
        .contains("multicast(1,3)"));
}

/// The first two figures of the line `label` of `astdb cluster show status`.
fn status_pair(n: &StandIn, label: &str) -> (u64, u64) {
    let status = n.cli("astdb cluster show status");
    let line = status
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no {label} in:\n{status}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Family reads: (done, skipped).
fn reads(n: &StandIn) -> (u64, u64) {
    status_pair(n, "Family reads:")
}

/// Reads in pieces: (done, of them finding something new).
fn piece_reads(n: &StandIn) -> (u64, u64) {
    status_pair(n, "Reads in pieces:")
}

/// Two nodes sharing family `big` (read every 200 ms), once node `writer` (0 or 1) has
/// written `keys` keys `k<i>` with the stand-in's bulk put and the other has them all.
fn big_family_pair(slot: u16, writer: usize, keys: u32) -> Vec<StandIn> {
    let nodes_list = [1, 2];
    let base = base_port(slot);
    let families = "
[big]
type = family
sync_interval = 200
";
    let nodes: Vec<StandIn> = nodes_list
        .iter()
        .map(|&i| start(slot, i, conf(i, &nodes_list, base, families)))
        .collect();
    wait_peers_up(&nodes[0], 1, 1);
    nodes[writer].cli(&format!("database bulkput big k {keys}"));
    nodes[1 - writer].wait_for_cli("database count big", Duration::from_secs(30), |out| {
        out.contains(&keys.to_string())
    });
    nodes
}

#[test]
fn a_large_received_family_checked_in_pieces_finds_nothing_while_idle_and_finds_local_edits() {
    // Node 1 receives the family: more keys than it reads at once (65,536), some of
    // them the prefixes the pieces split at ("k1", "k12", ...).
    let nodes = big_family_pair(4, 1, 70_000);
    std::thread::sleep(Duration::from_secs(3));
    // AstDB commits elsewhere: each commit has node 1 look at the family again.
    let before = piece_reads(&nodes[0]);
    for i in 0..5 {
        nodes[0].cli(&format!("database put unshared tick{i} x"));
        std::thread::sleep(Duration::from_millis(1_300));
    }
    let idle = piece_reads(&nodes[0]);
    assert!(
        idle.0 >= before.0 + 3,
        "5 commits elsewhere, reads in pieces {before:?} -> {idle:?}"
    );
    // Every read found exactly what node 1 received, the first one after the catch-up
    // included: nothing read twice, nothing missed.
    assert_eq!(
        idle.1, 0,
        "reads in pieces of a family holding what was received found something new: {idle:?}"
    );
    // Edits by the CLI: a key that is a piece's prefix alone first (read by itself),
    // then a changed key, a deletion and a key the family did not have, each found and
    // sent.
    nodes[0].cli("database put big k7 seven");
    wait_value(&nodes[1], "big", "k7", Some("seven"));
    nodes[0].cli("database put big k123 changed");
    nodes[0].cli("database del big k4567");
    nodes[0].cli("database put big zz/new yes");
    wait_value(&nodes[1], "big", "k123", Some("changed"));
    wait_value(&nodes[1], "big", "k4567", None);
    wait_value(&nodes[1], "big", "zz/new", Some("yes"));
    let edited = piece_reads(&nodes[0]);
    assert!(
        edited.1 > idle.1,
        "the edits were not found by a read in pieces: {idle:?} -> {edited:?}"
    );
}

#[test]
fn an_idle_large_family_is_not_read_again_until_astdb_commits_a_change() {
    let nodes = big_family_pair(3, 0, 40_000);
    // Settled: AstDB has committed everything; from now on reads are skipped.
    std::thread::sleep(Duration::from_secs(3));
    let (done, skipped) = reads(&nodes[0]);
    std::thread::sleep(Duration::from_secs(2));
    let (done_later, skipped_later) = reads(&nodes[0]);
    assert!(
        skipped_later >= skipped + 5,
        "idle for 2 s at a 200 ms interval: reads skipped {skipped} -> {skipped_later}"
    );
    assert!(
        done_later <= done + 2,
        "reads done {done} -> {done_later} while nothing changed"
    );
    // A write by the CLI is still found, once AstDB has committed it.
    nodes[0].cli("database put big late yes");
    wait_value(&nodes[1], "big", "late", Some("yes"));
}
