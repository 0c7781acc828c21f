//! Several stand-in Asterisk servers with the module, talking over real TCP on
//! loopback: what replicates, and how it survives faults.

mod standin;

use std::time::Duration;

use standin::{module_so, StandIn};

use standin::port_base as base_port;

fn conf(node: u32, nodes: u32, base: u16, secret: &str, extra: &str) -> String {
    let all: Vec<u32> = (1..=nodes).collect();
    standin::cluster_conf("test.cluster", secret, node, &all, base, extra)
}

const PRESETS: &str = "
[blacklist]
type = family
mode = global
sync_interval = 500

[registrar]
type = family
mode = unique
sync_interval = 500
";

const SECRET: &str = "cluster-test-secret-0123456789";

fn cluster(slot: u16, size: u32) -> Vec<StandIn> {
    let base = base_port(slot);
    (1..=size)
        .map(|i| {
            StandIn::builder(&format!("c{slot}n{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file("astdb_cluster.conf", &conf(i, size, base, SECRET, PRESETS))
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"])
                .start()
        })
        .collect()
}

fn wait_value(n: &StandIn, family: &str, key: &str, want: Option<&str>) {
    standin::wait_value_within(n, family, key, want, Duration::from_secs(10));
}

fn wait_all_up(nodes: &[StandIn]) {
    standin::wait_all_peers_up(nodes, Duration::from_secs(15));
}

#[test]
fn a_global_write_on_one_node_reaches_the_others_and_so_does_its_delete() {
    let nodes = cluster(0, 3);
    wait_all_up(&nodes);
    nodes[0].cli("dialplan set DB(blacklist/5551234)=telemarketer");
    wait_value(&nodes[1], "blacklist", "5551234", Some("telemarketer"));
    wait_value(&nodes[2], "blacklist", "5551234", Some("telemarketer"));
    nodes[2].cli("database del blacklist 5551234");
    wait_value(&nodes[0], "blacklist", "5551234", None);
    wait_value(&nodes[1], "blacklist", "5551234", None);
}

#[test]
fn every_writer_path_replicates_puts_and_deletes() {
    let nodes = cluster(1, 3);
    wait_all_up(&nodes);
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    // Families whose names only begin with the shared one's are not part of it.
    a.cli("database put blacklist2 k local");
    a.cli("database put blacklist-old k local");
    // Dialplan: seen at once by capture.
    a.cli("dialplan set DB(blacklist/dialplan)=1");
    // CLI and AMI: seen at the family's next read.
    b.cli("database put blacklist cli 2");
    c.cli("manager action DBPut Family=blacklist Key=ami Val=3");
    a.cli("database put blacklist sub/one 4");
    a.cli("database put blacklist sub/two 5");
    for n in [a, b, c] {
        wait_value(n, "blacklist", "dialplan", Some("1"));
        wait_value(n, "blacklist", "cli", Some("2"));
        wait_value(n, "blacklist", "ami", Some("3"));
        wait_value(n, "blacklist", "sub/two", Some("5"));
    }
    // Node a read blacklist after writing blacklist2 and blacklist-old (sub/two came later).
    for n in [b, c] {
        for family in ["blacklist2", "blacklist-old"] {
            let got = n.cli(&format!("database get {family} k"));
            assert!(
                got.contains("not found"),
                "{family} reached {}: {got}",
                n.name()
            );
        }
        let shown = n.cli("database show blacklist");
        assert!(!shown.contains("local"), "{}: {shown}", n.name());
    }
    for family in ["blacklist2", "blacklist-old"] {
        assert!(a
            .cli(&format!("database get {family} k"))
            .contains("Value: local"));
    }
    a.cli("dialplan eval ${DB_DELETE(blacklist/dialplan)}");
    b.cli("database del blacklist cli");
    c.cli("manager action DBDel Family=blacklist Key=ami");
    b.cli("database deltree blacklist sub");
    for n in [a, b, c] {
        for key in ["dialplan", "cli", "ami", "sub/one", "sub/two"] {
            wait_value(n, "blacklist", key, None);
        }
    }
    c.cli("database put blacklist tree/x 1");
    wait_value(a, "blacklist", "tree/x", Some("1"));
    c.cli("manager action DBDelTree Family=blacklist Key=tree");
    wait_value(a, "blacklist", "tree/x", None);
    wait_value(b, "blacklist", "tree/x", None);
}

#[test]
fn edits_made_while_the_module_was_unloaded_are_found_when_it_loads() {
    let nodes = cluster(2, 3);
    wait_all_up(&nodes);
    nodes[1].cli("module unload res_astdb_cluster.so");
    nodes[1].cli("database put blacklist offline yes");
    nodes[1].cli("module load res_astdb_cluster.so");
    wait_value(&nodes[0], "blacklist", "offline", Some("yes"));
    wait_value(&nodes[2], "blacklist", "offline", Some("yes"));
}

#[test]
fn unique_families_land_under_the_origins_eid_and_leave_local_keys_alone() {
    let nodes = cluster(3, 3);
    wait_all_up(&nodes);
    nodes[1].cli("database put registrar alice sip:alice@node2");
    nodes[0].cli("dialplan set DB(registrar/alice)=sip:alice@node1");
    let from1 = "02:00:00:00:00:01/registrar";
    let from2 = "02:00:00:00:00:02/registrar";
    wait_value(&nodes[1], from1, "alice", Some("sip:alice@node1"));
    wait_value(&nodes[2], from1, "alice", Some("sip:alice@node1"));
    wait_value(&nodes[0], from2, "alice", Some("sip:alice@node2"));
    wait_value(&nodes[2], from2, "alice", Some("sip:alice@node2"));
    // Each node's own key is its own.
    wait_value(&nodes[1], "registrar", "alice", Some("sip:alice@node2"));
    wait_value(&nodes[0], "registrar", "alice", Some("sip:alice@node1"));
    // A node never copies its own keys under its own EID.
    assert!(nodes[0]
        .cli(&format!("database get {from1} alice"))
        .contains("not found"));
    // The origin's delete removes the copies.
    nodes[0].cli("dialplan eval ${DB_DELETE(registrar/alice)}");
    wait_value(&nodes[1], from1, "alice", None);
    wait_value(&nodes[2], from1, "alice", None);
    wait_value(&nodes[1], "registrar", "alice", Some("sip:alice@node2"));
}

#[test]
fn concurrent_writes_to_one_key_converge_to_the_same_value_everywhere() {
    let nodes = cluster(4, 3);
    wait_all_up(&nodes);
    standin::race_one_key_and_wait_for_one_value(&nodes, Duration::from_secs(15));
}

#[test]
fn a_node_killed_during_a_stream_of_writes_catches_up_after_restart() {
    let mut nodes = cluster(5, 3);
    wait_all_up(&nodes);
    for i in 0..40 {
        nodes[0].cli(&format!("dialplan set DB(blacklist/stream{i})=v{i}"));
        if i == 20 {
            nodes[2].kill9();
        }
    }
    // Writes acknowledged by node 3 before it died, and what it missed, are all there after restart.
    nodes[2].restart();
    for i in [0, 19, 21, 39] {
        wait_value(
            &nodes[2],
            "blacklist",
            &format!("stream{i}"),
            Some(&format!("v{i}")),
        );
    }
    // And a node writing while killed keeps its own acknowledged writes.
    nodes[1].cli("dialplan set DB(blacklist/before-crash)=kept");
    wait_value(&nodes[0], "blacklist", "before-crash", Some("kept"));
    nodes[1].kill9();
    nodes[1].restart();
    // AstDB commits about once a second, so the crash may have cost node 2 its
    // own write; the module restores it instead of spreading a delete.
    wait_value(&nodes[1], "blacklist", "before-crash", Some("kept"));
    std::thread::sleep(Duration::from_secs(1));
    wait_value(&nodes[0], "blacklist", "before-crash", Some("kept"));
    wait_value(&nodes[2], "blacklist", "before-crash", Some("kept"));
    nodes[1].cli("dialplan set DB(blacklist/after-restart)=new");
    wait_value(&nodes[2], "blacklist", "after-restart", Some("new"));
}

mod netproxy;

use netproxy::Relay;

/// Three nodes whose every link goes through a relay (the lower node dials the
/// higher one, so node a reaches node b at relay port `relay(a, b)`).
/// Each relay with the pair of nodes it links.
type Links = Vec<((u32, u32), Relay)>;

fn cluster_behind_relays(slot: u16) -> (Vec<StandIn>, Links) {
    let base = base_port(slot);
    let relay_port = |a: u32, b: u32| base + 5 + (a + b) as u16;
    let mut relays = Vec::new();
    for (a, b) in [(1, 2), (1, 3), (2, 3)] {
        relays.push(((a, b), Relay::start(relay_port(a, b), base + b as u16)));
    }
    let nodes = (1..=3u32)
        .map(|i| {
            let mut c = format!(
                "[general]\ncluster_name = test.cluster\ncluster_node = {i}\ncluster_secret = {SECRET}\n\
                 bindaddr = 127.0.0.1\nbindport = {}\n",
                base + i as u16
            );
            for other in (1..=3u32).filter(|o| *o != i) {
                let port = if i < other { relay_port(i, other) } else { base + other as u16 };
                c.push_str(&format!("\n[node{other}]\ntype = node\nnode = {other}\nhost = 127.0.0.1:{port}\n"));
            }
            c.push_str(PRESETS);
            StandIn::builder(&format!("c{slot}n{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file("astdb_cluster.conf", &c)
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"])
                .start()
        })
        .collect();
    (nodes, relays)
}

#[test]
fn after_a_network_split_heals_both_sides_converge_and_deleted_keys_stay_deleted() {
    let (nodes, relays) = cluster_behind_relays(6);
    wait_all_up(&nodes);
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    a.cli("dialplan set DB(blacklist/doomed)=old");
    a.cli("dialplan set DB(blacklist/both)=before");
    wait_value(c, "blacklist", "doomed", Some("old"));
    wait_value(c, "blacklist", "both", Some("before"));

    // Cut node 3 off from 1 and 2; it notices by missed heartbeats.
    for ((x, y), relay) in &relays {
        if *x == 3 || *y == 3 {
            relay.cut();
        }
    }
    c.wait_for_cli("astdb cluster show status", Duration::from_secs(20), |s| {
        s.contains("0 of 2 peers up")
    });

    // Both sides write while apart.
    a.cli("dialplan eval ${DB_DELETE(blacklist/doomed)}");
    a.cli("dialplan set DB(blacklist/majority)=1");
    c.cli("dialplan set DB(blacklist/minority)=3");
    b.cli("dialplan set DB(blacklist/both)=from-majority");
    std::thread::sleep(Duration::from_millis(20));
    c.cli("dialplan set DB(blacklist/both)=from-minority-later");
    wait_value(b, "blacklist", "majority", Some("1"));
    assert!(
        c.cli("database get blacklist majority")
            .contains("not found"),
        "the split holds"
    );

    for (_, relay) in &relays {
        relay.heal();
    }
    for n in [a, b, c] {
        wait_value_long(n, "blacklist", "doomed", None);
        wait_value_long(n, "blacklist", "majority", Some("1"));
        wait_value_long(n, "blacklist", "minority", Some("3"));
        // The later write wins everywhere.
        wait_value_long(n, "blacklist", "both", Some("from-minority-later"));
    }
    // A deleted key does not come back after more syncing.
    std::thread::sleep(Duration::from_secs(2));
    for n in [a, b, c] {
        assert!(n.cli("database get blacklist doomed").contains("not found"));
    }
}

/// Like `wait_value`, for what may wait for a reconnect with backoff.
fn wait_value_long(n: &StandIn, family: &str, key: &str, want: Option<&str>) {
    let cmd = format!("database get {family} {key}");
    n.wait_for_cli(&cmd, Duration::from_secs(40), |out| match want {
        Some(v) => out.contains(&format!("Value: {v}")),
        None => out.contains("not found"),
    });
}

#[test]
fn a_node_with_the_wrong_secret_and_garbage_on_the_port_change_nothing() {
    let base = base_port(7);
    let good: Vec<StandIn> = (1..=2u32)
        .map(|i| {
            StandIn::builder(&format!("c7n{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file("astdb_cluster.conf", &conf(i, 3, base, SECRET, PRESETS))
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"])
                .start()
        })
        .collect();
    let intruder = StandIn::builder("c7n3")
        .eid("02:00:00:00:00:03")
        .conf_file(
            "astdb_cluster.conf",
            &conf(3, 3, base, "a-different-secret-0123456789", PRESETS),
        )
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start();
    good[0].wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
        s.contains("1 of 2 peers up")
    });
    intruder.cli("dialplan set DB(blacklist/intruder)=evil");
    good[0].cli("dialplan set DB(blacklist/legit)=ok");
    wait_value(&good[1], "blacklist", "legit", Some("ok"));

    // Garbage straight to node 1's port.
    use std::io::Write;
    for junk in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        &b"ADBC"[..],
    ] {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", base + 1)) {
            let _ = s.write_all(junk);
        }
    }
    // Node 1 dials node 3; the acceptor is the one that can tell a wrong key,
    // so node 1 sees its handshake refused and node 3 logs the wrong secret.
    let nodes_out =
        good[0].wait_for_cli("astdb cluster show nodes", Duration::from_secs(10), |s| {
            s.contains("Refused connections:")
                && s.contains("malformed hello: 3")
                && s.contains("refused by peer")
        });
    assert!(
        nodes_out.contains("down") || nodes_out.contains("connecting"),
        "{nodes_out}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let intruder_log = intruder.log();
    assert_eq!(
        intruder_log.matches("wrong secret").count(),
        2,
        "once per dialing peer, not per retry:\n{intruder_log}"
    );
    for n in &good {
        assert!(n
            .cli("database get blacklist intruder")
            .contains("not found"));
        let log = n.log();
        assert_eq!(
            log.matches("refused by peer").count(),
            1,
            "logged once, not per retry:\n{log}"
        );
    }
    assert_eq!(
        good[0].log().matches("malformed hello").count(),
        1,
        "three junk connections, one line"
    );
    assert!(intruder
        .cli("database get blacklist legit")
        .contains("not found"));
    assert!(good[0].cli("core show version").contains("stand-in"));
}

#[test]
fn while_the_replica_log_cannot_be_written_changes_wait_and_none_is_lost() {
    // Node 2 runs with a preload library that makes writes to its replica log fail
    // with ENOSPC (a full disk) while a flag file exists.
    let flag = std::env::temp_dir().join(format!("astdb-cluster-disk-full-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let base = base_port(9);
    let nodes: Vec<StandIn> = (1..=2)
        .map(|i| {
            let b = StandIn::builder(&format!("c9n{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file("astdb_cluster.conf", &conf(i, 2, base, SECRET, PRESETS))
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"]);
            let b = if i == 2 {
                b.env(
                    "LD_PRELOAD",
                    &standin::testlib_so("fail_replica_writes").to_string_lossy(),
                )
                .env("FAIL_REPLICA_WRITES_WHILE", &flag.to_string_lossy())
            } else {
                b
            };
            b.start()
        })
        .collect();
    wait_all_up(&nodes);
    nodes[0].cli("dialplan set DB(blacklist/before)=1");
    wait_value(&nodes[1], "blacklist", "before", Some("1"));

    std::fs::write(&flag, b"").unwrap();
    nodes[0].cli("dialplan set DB(blacklist/during)=2");
    assert!(
        nodes[1].wait_for_log(
            "changes wait until it can be saved",
            Duration::from_secs(20)
        ),
        "{}",
        nodes[1].log()
    );
    assert!(
        nodes[1].log().contains("No space left on device"),
        "the log names the cause"
    );
    assert!(
        nodes[1]
            .cli("database get blacklist during")
            .contains("not found"),
        "nothing is applied before its state is saved"
    );
    std::fs::remove_file(&flag).unwrap();

    wait_value_long(&nodes[1], "blacklist", "during", Some("2"));
    nodes[0].cli("dialplan set DB(blacklist/after)=3");
    wait_value(&nodes[1], "blacklist", "after", Some("3"));
}

#[test]
fn a_node_that_applied_replicated_writes_unloads_with_no_thread_left_and_no_refusal_logged() {
    let nodes = cluster(8, 2);
    wait_all_up(&nodes);
    let [a, b] = [&nodes[0], &nodes[1]];
    let threads = |n: &StandIn| {
        n.cli("core show threads")
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    b.cli("module unload res_astdb_cluster.so");
    let before = threads(b);
    for round in 0..3 {
        b.cli("module load res_astdb_cluster.so");
        wait_all_up(&nodes);
        // Received writes and deletions are applied by node b's AstDB writer thread.
        a.cli(&format!("database bulkput blacklist r{round}k 3000 val"));
        a.cli(&format!("dialplan set DB(blacklist/gone{round})=x"));
        wait_value(b, "blacklist", &format!("gone{round}"), Some("x"));
        a.cli(&format!(
            "dialplan eval ${{DB_DELETE(blacklist/gone{round})}}"
        ));
        wait_value(b, "blacklist", &format!("gone{round}"), None);
        let want = format!("Keys: {}", 3000 * (round + 1));
        b.wait_for_cli("database count blacklist", Duration::from_secs(20), |out| {
            out.contains(&want)
        });
        b.cli("module unload res_astdb_cluster.so");
    }
    assert_eq!(threads(b), before, "threads left behind");
    let log = b.log();
    assert!(!log.contains("still mapped after dlclose"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    // Closing its own links while it unloads is not a peer refusing it, and the log
    // says whose doing it is.
    assert!(!log.contains("refused by peer"), "{log}");
    assert!(!log.contains("logged once until it connects"), "{log}");
    assert!(log.contains("is down: this node is stopping"), "{log}");
}
