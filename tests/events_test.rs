//! Change events, AMI actions and per-key inspection, through stand-in Asterisk servers
//! talking over loopback: what an AMI client and a Stasis subscriber see.

mod standin;

use std::time::Duration;

use standin::{module_so, port_base, StandIn};

const SECRET: &str = "events-test-secret-0123456789";

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

fn conf(node: u32, nodes: u32, base: u16, general: &str, extra: &str) -> String {
    let all: Vec<u32> = (1..=nodes).collect();
    standin::cluster_conf_with("events.cluster", SECRET, node, &all, base, general, extra)
}

fn node(slot: u16, i: u32, size: u32, general: &str, extra: &str) -> StandIn {
    StandIn::builder(&format!("e{slot}n{i}"))
        .eid(&format!("02:00:00:00:00:0{i}"))
        .conf_file(
            "astdb_cluster.conf",
            &conf(i, size, port_base(slot), general, extra),
        )
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start()
}

fn cluster(slot: u16, size: u32, general: &str, extra: &str) -> Vec<StandIn> {
    (1..=size)
        .map(|i| node(slot, i, size, general, extra))
        .collect()
}

fn wait_all_up(nodes: &[StandIn]) {
    let peers = nodes.len() - 1;
    for n in nodes {
        n.wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
            s.contains(&format!("{peers} of {peers} peers up"))
        });
    }
}

/// The AMI events named `name` the node raised so far, each as its lines.
fn events_named(n: &StandIn, name: &str) -> Vec<String> {
    n.events()
        .split("\n\n")
        .filter(|e| e.contains(&format!("Event: {name}\n")))
        .map(str::to_string)
        .collect()
}

/// Waits until the node raised an event `name` holding every one of `fields`
/// ("Name: value" lines); returns it.
fn wait_event(n: &StandIn, name: &str, fields: &[&str]) -> String {
    let matching = |log: &str| {
        log.split("\n\n")
            .find(|e| {
                e.contains(&format!("Event: {name}\n"))
                    && fields.iter().all(|f| e.lines().any(|l| l == *f))
            })
            .map(str::to_string)
    };
    let log = n.wait_for_cli("manager show eventlog", Duration::from_secs(15), |log| {
        matching(log).is_some()
    });
    matching(&log).unwrap_or_default()
}

fn field<'a>(event: &'a str, name: &str) -> Option<&'a str> {
    event
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn each_kind_of_writer_raises_a_key_change_event_on_every_node() {
    let nodes = cluster(0, 2, "", PRESETS);
    wait_all_up(&nodes);
    let [a, b] = [&nodes[0], &nodes[1]];

    // The dialplan of node 1: "dialplan" there, "peer" on node 2.
    a.cli("dialplan set DB(blacklist/5551234)=telemarketer");
    let here = wait_event(
        a,
        "AstDBClusterKeyChange",
        &["Key: 5551234", "Source: dialplan"],
    );
    assert_eq!(field(&here, "Family"), Some("blacklist"));
    assert_eq!(field(&here, "Val"), Some("telemarketer"));
    assert_eq!(field(&here, "Operation"), Some("put"));
    assert_eq!(field(&here, "Mode"), Some("global"));
    assert_eq!(field(&here, "OriginNode"), Some("1"));
    assert_eq!(field(&here, "OriginEID"), Some("02:00:00:00:00:01"));
    assert!(field(&here, "FromNode").is_none(), "{here}");
    let there = wait_event(
        b,
        "AstDBClusterKeyChange",
        &["Key: 5551234", "Source: peer"],
    );
    assert_eq!(field(&there, "FromNode"), Some("1"));
    assert_eq!(
        field(&there, "VersionTime"),
        field(&here, "VersionTime"),
        "one version, seen on both nodes"
    );
    assert!(field(&there, "VersionCounter").is_some());

    // Another writer on node 2 (the CLI), found by the family's read: "local".
    b.cli("database put blacklist 5550000 spam");
    let local = wait_event(
        b,
        "AstDBClusterKeyChange",
        &["Key: 5550000", "Source: local"],
    );
    assert_eq!(field(&local, "OriginNode"), Some("2"));
    wait_event(
        a,
        "AstDBClusterKeyChange",
        &["Key: 5550000", "Source: peer"],
    );

    // A delete from the dialplan: no value, operation delete, on both.
    a.cli("dialplan eval ${DB_DELETE(blacklist/5551234)}");
    let gone = wait_event(
        b,
        "AstDBClusterKeyChange",
        &["Key: 5551234", "Operation: delete"],
    );
    assert!(field(&gone, "Val").is_none(), "{gone}");

    // A unique family: node 2 holds node 1's copy under /<EID>/registrar.
    a.cli("dialplan set DB(registrar/alice)=sip:alice@10.0.0.1");
    let own = wait_event(a, "AstDBClusterKeyChange", &["Key: alice"]);
    assert_eq!(field(&own, "Family"), Some("registrar"));
    assert_eq!(field(&own, "Mode"), Some("unique"));
    let copy = wait_event(b, "AstDBClusterKeyChange", &["Key: alice"]);
    assert_eq!(
        field(&copy, "Family"),
        Some("02:00:00:00:00:01/registrar"),
        "named as DBGet would take it"
    );
    assert_eq!(field(&copy, "SharedFamily"), Some("registrar"));
}

#[test]
fn writes_to_families_nobody_shares_raise_no_event() {
    let nodes = cluster(1, 2, "", PRESETS);
    wait_all_up(&nodes);
    let [a, b] = [&nodes[0], &nodes[1]];
    a.cli("dialplan set DB(other/k)=v");
    a.cli("database put blacklist2 k v");
    // Then a shared write, whose event shows the unshared ones had their chance.
    a.cli("dialplan set DB(blacklist/marker)=1");
    wait_event(b, "AstDBClusterKeyChange", &["Key: marker"]);
    a.cli("database put blacklist marker2 1");
    wait_event(a, "AstDBClusterKeyChange", &["Key: marker2"]);
    for n in [a, b] {
        let changes = events_named(n, "AstDBClusterKeyChange");
        assert!(
            changes
                .iter()
                .all(|e| field(e, "SharedFamily") == Some("blacklist")),
            "{changes:?}"
        );
    }
}

#[test]
fn a_catch_up_is_announced_and_summarised_instead_of_flooding_ami() {
    let a = node(2, 1, 2, "", PRESETS);
    a.cli("database bulkput blacklist k 500");
    a.wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
        s.lines()
            .any(|l| l.starts_with("Local changes:") && l.ends_with(" 500"))
    });
    let b = node(2, 2, 2, "", PRESETS);
    b.wait_for_cli("database count blacklist", Duration::from_secs(20), |s| {
        s.contains("Keys: 500")
    });
    let start = wait_event(&b, "AstDBClusterCatchupStart", &["SharedFamily: blacklist"]);
    assert_eq!(field(&start, "Node"), Some("1"));
    assert_eq!(field(&start, "EID"), Some("02:00:00:00:00:01"));
    let end = wait_event(&b, "AstDBClusterCatchupEnd", &["SharedFamily: blacklist"]);
    assert!(
        matches!(field(&end, "Result"), Some("in_sync" | "quiet")),
        "{end}"
    );
    assert_eq!(field(&end, "Received"), Some("500"), "{end}");
    assert_eq!(field(&end, "Deleted"), Some("0"));
    // No flood: summaries (the default limit is 100 per batch), and every key counted once.
    let summaries = events_named(&b, "AstDBClusterChangeSummary");
    let keys = events_named(&b, "AstDBClusterKeyChange");
    assert!(!summaries.is_empty(), "a 500-key catch-up gives summaries");
    assert!(keys.len() < 500, "{} key events", keys.len());
    let summed: u64 = summaries
        .iter()
        .map(|e| field(e, "Puts").unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(summed + keys.len() as u64, 500);
    assert!(summaries
        .iter()
        .all(|e| field(e, "Source") == Some("peer") && field(e, "Reason") == Some("batch")));
}

#[test]
fn a_family_with_key_events_off_gives_only_summaries_and_events_off_gives_none() {
    let quiet = "
[blacklist]
type = family
mode = global
sync_interval = 500
key_events = no
";
    let nodes = cluster(3, 2, "", quiet);
    wait_all_up(&nodes);
    nodes[0].cli("dialplan set DB(blacklist/a)=1");
    let s = wait_event(
        &nodes[1],
        "AstDBClusterChangeSummary",
        &["SharedFamily: blacklist", "Reason: key_events_off"],
    );
    assert_eq!(field(&s, "Puts"), Some("1"));
    assert_eq!(field(&s, "FromNode"), Some("1"));
    assert!(events_named(&nodes[1], "AstDBClusterKeyChange").is_empty());
    drop(nodes);

    let silent = cluster(4, 2, "events = no\n", PRESETS);
    wait_all_up(&silent);
    silent[0].cli("dialplan set DB(blacklist/a)=1");
    silent[1].wait_for_cli("database get blacklist a", Duration::from_secs(10), |o| {
        o.contains("Value: 1")
    });
    for n in &silent {
        assert!(
            !n.events().contains("Event: AstDBCluster"),
            "{}",
            n.events()
        );
    }
}

#[test]
fn stasis_subscribers_get_each_change_as_json() {
    let nodes = cluster(5, 2, "", PRESETS);
    wait_all_up(&nodes);
    nodes[0].cli("dialplan set DB(blacklist/j)=json value");
    wait_event(&nodes[1], "AstDBClusterKeyChange", &["Key: j"]);
    let messages = nodes[1].cli("stasis show messages");
    let line = messages
        .lines()
        .find(|l| l.starts_with("astdb_cluster_change_type ") && l.contains("\"key\":\"j\""))
        .unwrap_or_else(|| panic!("no change message in:\n{messages}"));
    let json: serde_json::Value =
        serde_json::from_str(line.split_once(' ').unwrap().1).expect("valid JSON");
    assert_eq!(json["type"], "AstDBClusterKeyChange");
    assert_eq!(json["family"], "blacklist");
    assert_eq!(json["val"], "json value");
    assert_eq!(json["source"], "peer");
    assert_eq!(json["from_node"], 1);
    assert_eq!(json["eid"], "02:00:00:00:00:02");
    assert!(json["version_time"].as_u64().unwrap() > 0);
    assert!(
        messages
            .lines()
            .any(|l| l.starts_with("astdb_cluster_node_type ") && l.contains("AstDBClusterPeerUp")),
        "{messages}"
    );
}

#[test]
fn peers_coming_going_and_refused_raise_events() {
    let mut nodes = cluster(6, 2, "", PRESETS);
    wait_all_up(&nodes);
    let up = wait_event(&nodes[0], "AstDBClusterPeerUp", &["Node: 2"]);
    assert_eq!(field(&up, "EID"), Some("02:00:00:00:00:02"));
    nodes[1].stop();
    wait_event(&nodes[0], "AstDBClusterPeerDown", &["Node: 2"]);
    // A node 2 with the wrong secret: node 1 calls it and is refused.
    let all = [1, 2];
    let wrong = standin::cluster_conf(
        "events.cluster",
        "a-different-secret-0123456789",
        2,
        &all,
        port_base(6),
        PRESETS,
    );
    let _intruder = StandIn::builder("e6n2b")
        .eid("02:00:00:00:00:02")
        .conf_file("astdb_cluster.conf", &wrong)
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start();
    let refused = wait_event(&nodes[0], "AstDBClusterPeerRefused", &["Node: 2"]);
    assert!(field(&refused, "Cause").is_some(), "{refused}");
    assert_eq!(field(&refused, "Peer"), Some("node 2"));
}

/// Runs an AMI action through the stand-in's manager, as a client would.
fn action(n: &StandIn, line: &str) -> String {
    n.cli(&format!("manager action {line}"))
}

#[test]
fn ami_actions_answer_like_the_cli_and_name_the_bad_field() {
    let nodes = cluster(7, 2, "", PRESETS);
    wait_all_up(&nodes);
    let a = &nodes[0];

    let shared = action(
        a,
        "AstDBClusterShare Family=queue_state Mode=unique ActionID=42",
    );
    assert!(shared.contains("Response: Success"), "{shared}");
    assert!(shared.contains("ActionID: 42"), "{shared}");
    assert!(shared.contains("family 'queue_state' is now shared unique"));
    let families = action(a, "AstDBClusterFamilies");
    assert!(families.contains("EventList: start"), "{families}");
    assert_eq!(families.matches("Event: AstDBClusterFamily\n").count(), 3);
    assert!(families.contains("Family: queue_state\nMode: unique\nOrigin: dialplan"));
    assert!(
        families.contains("Event: AstDBClusterFamiliesComplete\nEventList: Complete\nListItems: 3")
    );
    // The share is an event too.
    wait_event(
        a,
        "AstDBClusterFamilyShared",
        &["Family: queue_state", "Mode: unique"],
    );

    let nodes_list = action(a, "AstDBClusterNodes");
    assert!(
        nodes_list.contains("Event: AstDBClusterNode\n"),
        "{nodes_list}"
    );
    assert!(nodes_list.contains("EID: 02:00:00:00:00:02"));
    assert!(nodes_list.contains("State: up"));
    assert!(nodes_list.contains("ListItems: 1"));

    let status = action(a, "AstDBClusterStatus");
    assert!(status.contains("Response: Success"), "{status}");
    assert!(status.contains("EntityID: 02:00:00:00:00:01"));
    assert!(status.contains("SharedFamilies: 3"));

    assert!(action(a, "AstDBClusterRefresh Family=blacklist").contains("Response: Success"));
    // A refresh re-reads a family that stays shared: no share event for it.
    wait_event(a, "AstDBClusterFamilyShared", &["Family: blacklist"]);
    a.cli("manager action AstDBClusterShare Family=marker Mode=global");
    wait_event(a, "AstDBClusterFamilyShared", &["Family: marker"]);
    assert_eq!(
        events_named(a, "AstDBClusterFamilyShared")
            .iter()
            .filter(|e| field(e, "Family") == Some("blacklist"))
            .count(),
        1,
        "refreshing is not sharing"
    );
    a.cli("manager action AstDBClusterUnshare Family=marker");
    let unshared = action(a, "AstDBClusterUnshare Family=queue_state");
    assert!(unshared.contains("no longer shared"), "{unshared}");

    // Errors name the field and change nothing.
    for (request, message) in [
        (
            "AstDBClusterShare Mode=global",
            "Message: Family: is required",
        ),
        ("AstDBClusterShare Family=x", "Message: Mode: is required"),
        (
            "AstDBClusterShare Family=x Mode=sideways",
            "Message: Mode: 'sideways' is not a sharing mode",
        ),
        ("AstDBClusterShare Family=bad/ Mode=global", "Message: "),
        ("AstDBClusterUnshare", "Message: Family: is required"),
        (
            "AstDBClusterUnshare Family=nosuch",
            "Message: family 'nosuch' is not shared",
        ),
        (
            "AstDBClusterRefresh Family=nosuch",
            "Message: family 'nosuch' is not shared",
        ),
        (
            "AstDBClusterShowKey Family=blacklist",
            "Message: Key: is required",
        ),
        (
            "AstDBClusterShowKey Family=other Key=k",
            "Message: family 'other' is not shared",
        ),
        (
            "AstDBClusterNodes Node=9",
            "Message: no configured node matches '9'",
        ),
    ] {
        let out = action(a, request);
        assert!(out.contains("Response: Error"), "{request}: {out}");
        assert!(out.contains(message), "{request}: {out}");
    }
    let families = action(a, "AstDBClusterFamilies");
    assert_eq!(
        families.matches("Event: AstDBClusterFamily\n").count(),
        2,
        "the refused requests changed nothing"
    );
}

#[test]
fn show_key_tells_value_version_origin_tombstone_and_copies() {
    let nodes = cluster(8, 2, "", PRESETS);
    wait_all_up(&nodes);
    let [a, b] = [&nodes[0], &nodes[1]];
    a.cli("dialplan set DB(blacklist/5551234)=telemarketer");
    wait_event(b, "AstDBClusterKeyChange", &["Key: 5551234"]);
    let shown = b.cli("database shared show key blacklist 5551234");
    assert!(shown.contains("Value:"), "{shown}");
    assert!(shown.contains("telemarketer"));
    assert!(shown.contains("Origin:") && shown.contains("node 1 (02:00:00:00:00:01)"));
    assert!(shown
        .lines()
        .any(|l| l.starts_with("Tombstone:") && l.ends_with("no")));
    let via_ami = action(b, "AstDBClusterShowKey Family=blacklist Key=5551234");
    assert!(via_ami.contains("Val: telemarketer"), "{via_ami}");
    assert!(via_ami.contains("OriginNode: 1\nOriginEID: 02:00:00:00:00:01\nTombstone: no"));
    assert!(via_ami.contains("VersionTime: ") && via_ami.contains("VersionCounter: "));

    // Deleted: the tombstone is held, the value gone.
    a.cli("dialplan eval ${DB_DELETE(blacklist/5551234)}");
    wait_event(
        b,
        "AstDBClusterKeyChange",
        &["Key: 5551234", "Operation: delete"],
    );
    let deleted = b.cli("database shared show key blacklist 5551234");
    assert!(deleted.contains("(not in AstDB)"), "{deleted}");
    assert!(deleted
        .lines()
        .any(|l| l.starts_with("Tombstone:") && l.contains("yes")));

    // A unique key: node 2 holds node 1's copy and its own.
    a.cli("dialplan set DB(registrar/alice)=one");
    b.cli("dialplan set DB(registrar/alice)=two");
    wait_event(b, "AstDBClusterKeyChange", &["Key: alice", "Source: peer"]);
    let copy = b.cli("database shared show key 02:00:00:00:00:01/registrar alice");
    assert!(copy.contains("one"), "{copy}");
    assert!(copy.contains("node 1 (02:00:00:00:00:01)"));
    let copies = copy
        .lines()
        .find(|l| l.starts_with("Copies held:"))
        .unwrap_or_else(|| panic!("{copy}"));
    assert!(
        copies.contains("node 1 (02:00:00:00:00:01)")
            && copies.contains("node 2 (02:00:00:00:00:02)")
    );
    let via_ami = action(b, "AstDBClusterShowKey Family=registrar Key=alice");
    assert!(via_ami.contains("Val: two"), "{via_ami}");
    assert!(
        via_ami.contains("Copies: 2=02:00:00:00:00:02,1=02:00:00:00:00:01"),
        "{via_ami}"
    );

    // Not shared, or nonsense: said so.
    assert!(b
        .cli("database shared show key other k")
        .contains("family 'other' is not shared"));
    let completion = b.cli("_complete database shared show key blacklist");
    assert!(completion.contains("blacklist"), "{completion}");
}

#[test]
fn a_cli_write_to_a_small_family_reaches_the_peer_long_before_its_interval() {
    // An interval of an hour: only the read at AstDB's commit can bring the key over.
    let slow = "
[settings]
type = family
mode = global
sync_interval = 3600000
";
    let nodes = cluster(9, 2, "", slow);
    wait_all_up(&nodes);
    // The first read of a newly shared family is at once; let it pass.
    std::thread::sleep(Duration::from_secs(1));
    nodes[0].cli("database put settings night_mode on");
    nodes[1].wait_for_cli(
        "database get settings night_mode",
        Duration::from_secs(30),
        |o| o.contains("Value: on"),
    );
    nodes[0].cli("manager action DBPut Family=settings Key=day_mode Val=off");
    nodes[1].wait_for_cli(
        "database get settings day_mode",
        Duration::from_secs(30),
        |o| o.contains("Value: off"),
    );
}

#[test]
fn unloading_while_events_are_in_flight_leaves_nothing_behind() {
    // Nodes 5 and 6 of slot 3, whose ports no other test here uses.
    let all = [5, 6];
    let nodes: Vec<StandIn> = all
        .iter()
        .map(|&i| {
            let conf = standin::cluster_conf_with(
                "events.cluster",
                SECRET,
                i,
                &all,
                port_base(3),
                "event_batch_limit = 1000000\n",
                PRESETS,
            );
            StandIn::builder(&format!("e3n{i}"))
                .eid(&format!("02:00:00:00:00:0{i}"))
                .conf_file("astdb_cluster.conf", &conf)
                .module_path(module_so())
                .preload(&["res_astdb_cluster.so"])
                .start()
        })
        .collect();
    wait_all_up(&nodes);
    let [a, b] = [&nodes[0], &nodes[1]];
    std::thread::scope(|s| {
        // A steady stream of changes (one every 0.4 ms) into node 2, each an event there.
        s.spawn(|| a.cli("database bulkput blacklist k 3000 v 400"));
        for _ in 0..8 {
            b.cli("module unload res_astdb_cluster.so");
            b.cli("module load res_astdb_cluster.so");
        }
    });
    b.wait_for_cli("database count blacklist", Duration::from_secs(30), |o| {
        o.contains("Keys: 3000")
    });
    let log = b.log();
    assert!(!log.contains("still mapped after dlclose"), "{log}");
    assert!(!log.contains("did not register itself"), "{log}");
    assert!(!log.contains("still being delivered"), "{log}");
    // And it still raises events.
    a.cli("dialplan set DB(blacklist/after)=1");
    wait_event(b, "AstDBClusterKeyChange", &["Key: after"]);
}
