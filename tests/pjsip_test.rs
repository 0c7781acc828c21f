//! `transport = pjsip`: stand-in Asterisk servers whose res_pjsip stand-in carries
//! the cluster as real SIP PUBLISH requests over loopback UDP, through
//! res_astdb_cluster_pjsip.so, configured with pjsip.conf objects as the README says.

mod standin;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use standin::{module_so, port_base, StandIn};

const SECRET: &str = "sip-test-secret-0123456789";

const PRESETS: &str = "
[blacklist]
type = family
mode = global
sync_interval = 500

[registrar]
type = family
mode = unique
sync_interval = 500

[queue_state]
type = family
mode = global
sharing_policy = multicast
sharing_nodes = 1,2
sync_interval = 500
";

/// res_astdb_cluster_pjsip.so, which build.rs leaves beside the library.
fn sip_module_so() -> PathBuf {
    let lib = module_so();
    let mut dir = lib.parent().expect("module dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let so = dir.join("res_astdb_cluster_pjsip.so");
    assert!(so.is_file(), "{} is missing", so.display());
    so
}

/// The SIP port of node `i` in cluster `slot`.
fn sip_port(slot: u16, i: u32) -> u16 {
    port_base(slot) + i as u16
}

/// pjsip.conf of node `i` among `nodes`: an endpoint and an inbound-publication for
/// each other node, and an outbound-publish to it (at `to_port(other)`).
fn pjsip_conf(slot: u16, i: u32, nodes: u32, to_port: &dyn Fn(u32) -> u16) -> String {
    let mut c = format!(
        "[transport-udp]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:{}\n",
        sip_port(slot, i)
    );
    for p in (1..=nodes).filter(|p| *p != i) {
        c.push_str(&format!(
            "\n[node{p}]\ntype = endpoint\ncontext = default\n\
             \n[node{p}]\ntype = inbound-publication\nendpoint = node{p}\nevent_asterisk-db = node{p}\n\
             \n[astdb-node{p}]\ntype = outbound-publish\nserver_uri = sip:node{i}@127.0.0.1:{}\n\
             from_uri = sip:node{i}@127.0.0.1:{}\nevent = asterisk-db\n",
            to_port(p),
            sip_port(slot, i)
        ));
    }
    c
}

fn cluster_conf(i: u32, nodes: u32, secret: &str) -> String {
    let mut c = format!(
        "[general]\ncluster_name = sip.cluster\ncluster_node = {i}\ncluster_secret = {secret}\ntransport = pjsip\n"
    );
    for p in (1..=nodes).filter(|p| *p != i) {
        c.push_str(&format!(
            "\n[node{p}]\ntype = node\nnode = {p}\noutbound_publish = astdb-node{p}\n"
        ));
    }
    c.push_str(PRESETS);
    c
}

fn node_with(slot: u16, i: u32, nodes: u32, secret: &str, to_port: &dyn Fn(u32) -> u16) -> StandIn {
    StandIn::builder(&format!("sip{slot}n{i}"))
        .eid(&format!("02:00:00:00:00:0{i}"))
        .conf_file("pjsip.conf", &pjsip_conf(slot, i, nodes, to_port))
        .conf_file("astdb_cluster.conf", &cluster_conf(i, nodes, secret))
        .module_path(module_so())
        .module_as(sip_module_so(), "res_astdb_cluster_pjsip.so")
        .preload(&["res_astdb_cluster.so", "res_astdb_cluster_pjsip.so"])
        .start()
}

fn cluster(slot: u16, size: u32) -> Vec<StandIn> {
    (1..=size)
        .map(|i| node_with(slot, i, size, SECRET, &|p| sip_port(slot, p)))
        .collect()
}

fn wait_value(n: &StandIn, family: &str, key: &str, want: Option<&str>) {
    standin::wait_value_within(n, family, key, want, Duration::from_secs(20));
}

fn wait_all_up(nodes: &[StandIn]) {
    standin::wait_all_peers_up(nodes, Duration::from_secs(20));
}

/// Sends raw SIP text to `port` and returns the response's status line.
fn raw_sip(port: u16, text: &str) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap().port();
    let text = text.replace("{me}", &me.to_string());
    sock.send_to(text.as_bytes(), ("127.0.0.1", port)).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = sock.recv(&mut buf).expect("a SIP response");
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    reply.lines().next().unwrap_or_default().to_string()
}

/// A PUBLISH from `from` to resource `resource` with `body` (application/json).
fn publish_text(from: &str, resource: &str, port: u16, body: &str, branch: &str) -> String {
    format!(
        "PUBLISH sip:{resource}@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{{me}};rport;branch=z9hG4bK{branch}\r\n\
         From: <sip:{from}@127.0.0.1:{{me}}>;tag=t{branch}\r\n\
         To: <sip:{resource}@127.0.0.1:{port}>\r\n\
         Call-ID: c{branch}\r\n\
         CSeq: 1 PUBLISH\r\n\
         Event: asterisk-db\r\n\
         Expires: 3600\r\n\
         Max-Forwards: 70\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn refused(n: &StandIn, cause: &str) -> bool {
    let status = n.cli("astdb cluster show status");
    status.contains(cause)
}

#[test]
fn over_sip_a_write_and_its_delete_reach_every_node_as_publish_requests_with_a_json_body() {
    let nodes = cluster(0, 3);
    for n in &nodes {
        n.cli("pjsip set logger on");
    }
    wait_all_up(&nodes);
    nodes[0].cli("dialplan set DB(blacklist/5551234)=telemarketer");
    wait_value(&nodes[1], "blacklist", "5551234", Some("telemarketer"));
    wait_value(&nodes[2], "blacklist", "5551234", Some("telemarketer"));
    nodes[2].cli("database del blacklist 5551234");
    wait_value(&nodes[0], "blacklist", "5551234", None);
    wait_value(&nodes[1], "blacklist", "5551234", None);

    // What `pjsip set logger on` shows: PUBLISH, Event: asterisk-db, a JSON body
    // naming the sender and the family, the value sealed.
    let log = nodes[1].log();
    let publish = log
        .split("<--- Received SIP request")
        .find(|m| m.contains("\"family\":\"blacklist\""))
        .unwrap_or_else(|| panic!("no PUBLISH about blacklist in node 2's log:\n{log}"));
    assert!(publish.contains("PUBLISH sip:"), "{publish}");
    assert!(publish.contains("Event: asterisk-db"), "{publish}");
    assert!(
        publish.contains("Content-Type: application/json"),
        "{publish}"
    );
    assert!(publish.contains("\"type\":\"asterisk-db\""), "{publish}");
    assert!(publish.contains("\"eid\":\"02:00:00:00:00:0"), "{publish}");
    assert!(publish.contains("\"sealed\":\""), "{publish}");
    assert!(!log.contains("telemarketer\""), "a value went in the clear");
    assert!(!log.contains("Received SIP response (") || log.contains("SIP/2.0 200 OK"));
}

#[test]
fn over_sip_every_writer_path_replicates_puts_and_deletes() {
    let nodes = cluster(1, 3);
    wait_all_up(&nodes);
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    a.cli("dialplan set DB(blacklist/dialplan)=1");
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
    a.cli("dialplan eval ${DB_DELETE(blacklist/dialplan)}");
    b.cli("database del blacklist cli");
    c.cli("manager action DBDel Family=blacklist Key=ami");
    b.cli("database deltree blacklist sub");
    for n in [a, b, c] {
        for key in ["dialplan", "cli", "ami", "sub/one", "sub/two"] {
            wait_value(n, "blacklist", key, None);
        }
    }
    // A family shared from the dialplan replicates too.
    a.cli("dialplan set DB_SHARED(put,global)=speeddial");
    b.cli("dialplan set DB_SHARED(put,global)=speeddial");
    c.cli("dialplan set DB_SHARED(put,global)=speeddial");
    a.cli("dialplan set DB(speeddial/1)=2001");
    wait_value(c, "speeddial", "1", Some("2001"));
}

#[test]
fn over_sip_unique_families_land_under_the_origins_eid_multicast_reaches_only_its_nodes_and_ro_never_publishes(
) {
    let nodes = cluster(2, 3);
    wait_all_up(&nodes);
    nodes[0].cli("dialplan set DB(registrar/alice)=sip:alice@node1");
    let from1 = "02:00:00:00:00:01/registrar";
    wait_value(&nodes[1], from1, "alice", Some("sip:alice@node1"));
    wait_value(&nodes[2], from1, "alice", Some("sip:alice@node1"));
    assert!(nodes[1]
        .cli("database get registrar alice")
        .contains("not found"));

    nodes[0].cli("dialplan set DB(queue_state/agent1)=paused");
    wait_value(&nodes[1], "queue_state", "agent1", Some("paused"));

    // Node 3 takes `settings` read-only: it receives, and never publishes its own.
    for (i, n) in nodes.iter().enumerate() {
        let mode = if i == 2 { "ro" } else { "rw" };
        n.write_conf(
            "astdb_cluster.conf",
            &(cluster_conf(i as u32 + 1, 3, SECRET)
                + &format!("\n[settings]\ntype = family\nmode = global\nsync_mode = {mode}\nsync_interval = 500\n")),
        );
        n.cli("module reload res_astdb_cluster.so");
    }
    nodes[0].cli("dialplan set DB(settings/moh)=jazz");
    wait_value(&nodes[2], "settings", "moh", Some("jazz"));
    // Its own write is not published, is warned about, and the cluster's value returns.
    nodes[2].cli("database put settings moh rock");
    assert!(nodes[2].wait_for_log("sync_mode=ro", Duration::from_secs(10)));
    wait_value(&nodes[2], "settings", "moh", Some("jazz"));
    assert!(nodes[0]
        .cli("database get settings moh")
        .contains("Value: jazz"));
    assert!(nodes[2]
        .cli("database get queue_state agent1")
        .contains("not found"));
}

#[test]
fn over_sip_concurrent_writes_to_one_key_converge_to_the_same_value_everywhere() {
    let nodes = cluster(3, 3);
    wait_all_up(&nodes);
    standin::race_one_key_and_wait_for_one_value(&nodes, Duration::from_secs(20));
}

#[test]
fn over_sip_a_node_killed_with_sigkill_catches_up_and_a_large_catch_up_comes_in_bounded_bodies() {
    let mut nodes = cluster(4, 3);
    wait_all_up(&nodes);
    nodes[2].kill9();
    for i in 0..20 {
        nodes[0].cli(&format!("dialplan set DB(blacklist/missed{i})=v{i}"));
    }
    // A bulk load far too large for one body: 20,000 keys, about 600 KB.
    nodes[1].cli("database bulkput blacklist bulk 20000 listed-by-node-two");
    nodes[1].cli("database shared refresh blacklist");
    nodes[0].cli("pjsip set logger on");
    nodes[2].restart();
    nodes[2].cli("pjsip set logger on");
    for i in [0, 10, 19] {
        wait_value(
            &nodes[2],
            "blacklist",
            &format!("missed{i}"),
            Some(&format!("v{i}")),
        );
    }
    nodes[2].wait_for_cli(
        "database get blacklist bulk19999",
        Duration::from_secs(60),
        |s| s.contains("Value: listed-by-node-two"),
    );
    // The catch-up came in large bodies, none over the limit.
    let mut largest = 0;
    for n in [&nodes[0], &nodes[2]] {
        for line in n.log().lines() {
            if let Some(rest) = line.split("SIP request (").nth(1) {
                let bytes: usize = rest.split(' ').next().unwrap().parse().unwrap();
                assert!(bytes <= 61_000, "{} sent {bytes} bytes: {line}", n.name());
                largest = largest.max(bytes);
            }
        }
    }
    assert!(largest > 30_000, "the largest PUBLISH was {largest} bytes");
}

/// A UDP relay for one direction's requests (and their responses) that can be cut.
struct UdpRelay {
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpRelay {
    fn start(listen: u16, target: u16) -> UdpRelay {
        let sock = UdpSocket::bind(("127.0.0.1", listen)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&cut), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut client = None;
            let target: std::net::SocketAddr = ([127, 0, 0, 1], target).into();
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                if from == target {
                    if let Some(to) = client {
                        let _ = sock.send_to(&buf[..n], to);
                    }
                } else {
                    client = Some(from);
                    let _ = sock.send_to(&buf[..n], target);
                }
            }
        });
        UdpRelay {
            cut,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn over_sip_after_a_split_heals_both_sides_converge_and_deleted_keys_stay_deleted() {
    let slot = 5;
    // Node i reaches node j through relay port base + 4 + index of (i, j).
    let pairs = [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)];
    let relay_port = |i: u32, j: u32| {
        port_base(slot) + 4 + pairs.iter().position(|p| *p == (i, j)).unwrap() as u16
    };
    let relays: Vec<((u32, u32), UdpRelay)> = pairs
        .iter()
        .map(|&(i, j)| ((i, j), UdpRelay::start(relay_port(i, j), sip_port(slot, j))))
        .collect();
    let nodes: Vec<StandIn> = (1..=3)
        .map(|i| node_with(slot, i, 3, SECRET, &|p| relay_port(i, p)))
        .collect();
    wait_all_up(&nodes);
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    a.cli("dialplan set DB(blacklist/doomed)=old");
    a.cli("dialplan set DB(blacklist/both)=before");
    wait_value(c, "blacklist", "doomed", Some("old"));
    wait_value(c, "blacklist", "both", Some("before"));

    for ((i, j), r) in &relays {
        if *i == 3 || *j == 3 {
            r.cut.store(true, Ordering::Relaxed);
        }
    }
    c.wait_for_cli("astdb cluster show status", Duration::from_secs(20), |s| {
        s.contains("0 of 2 peers up")
    });
    a.cli("dialplan eval ${DB_DELETE(blacklist/doomed)}");
    a.cli("dialplan set DB(blacklist/majority)=1");
    c.cli("dialplan set DB(blacklist/minority)=3");
    b.cli("dialplan set DB(blacklist/both)=from-majority");
    std::thread::sleep(Duration::from_millis(20));
    c.cli("dialplan set DB(blacklist/both)=from-minority-later");
    wait_value(b, "blacklist", "majority", Some("1"));
    assert!(c
        .cli("database get blacklist majority")
        .contains("not found"));

    for (_, r) in &relays {
        r.cut.store(false, Ordering::Relaxed);
    }
    for n in [a, b, c] {
        wait_value(n, "blacklist", "doomed", None);
        wait_value(n, "blacklist", "majority", Some("1"));
        wait_value(n, "blacklist", "minority", Some("3"));
        wait_value(n, "blacklist", "both", Some("from-minority-later"));
    }
    std::thread::sleep(Duration::from_secs(2));
    for n in [a, b, c] {
        assert!(n.cli("database get blacklist doomed").contains("not found"));
    }
}

#[test]
fn a_wrong_secret_a_malformed_body_and_a_publication_not_configured_are_refused_and_change_nothing()
{
    let slot = 6;
    let mut a = node_with(slot, 1, 2, SECRET, &|p| sip_port(slot, p));
    let b = node_with(slot, 2, 2, "another-secret-0123456789", &|p| {
        sip_port(slot, p)
    });
    a.cli("database put blacklist kept original");
    b.cli("database put blacklist kept forged");
    b.cli("dialplan set DB(blacklist/injected)=1");
    a.wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
        s.contains("body does not open with cluster_secret")
    });
    assert!(a
        .log()
        .contains("was refused: body does not open with cluster_secret"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(a
        .cli("database get blacklist kept")
        .contains("Value: original"));
    assert!(a
        .cli("database get blacklist injected")
        .contains("not found"));
    assert!(a
        .cli("astdb cluster show status")
        .contains("0 of 1 peers up"));

    let port = sip_port(slot, 1);
    // Malformed JSON on a configured publication: refused with a SIP error.
    let status = raw_sip(
        port,
        &publish_text("node2", "node2", port, "{not json", "m1"),
    );
    assert!(status.starts_with("SIP/2.0 5"), "{status}");
    assert!(refused(&a, "malformed body"));
    // A body much larger than any the cluster sends.
    let big = format!(
        "{{\"type\":\"asterisk-db\",\"pad\":\"{}\"}}",
        "x".repeat(62_000)
    );
    let status = raw_sip(port, &publish_text("node2", "node2", port, &big, "m2"));
    assert!(status.starts_with("SIP/2.0 5"), "{status}");
    assert!(refused(&a, "oversized body"));
    // No inbound-publication for that resource: res_pjsip's 404.
    let status = raw_sip(port, &publish_text("node2", "nobody", port, "{}", "m3"));
    assert!(status.starts_with("SIP/2.0 404"), "{status}");
    // An inbound-publication whose event_asterisk-db names no node section: 403.
    a.write_conf(
        "pjsip.conf",
        &(pjsip_conf(slot, 1, 2, &|p| sip_port(slot, p))
            + "\n[stranger]\ntype = inbound-publication\nevent_asterisk-db = stranger\n"),
    );
    a.restart();
    let status = raw_sip(port, &publish_text("node2", "stranger", port, "{}", "m4"));
    assert!(status.starts_with("SIP/2.0 403"), "{status}");
    assert!(refused(&a, "publication not configured"));
    assert!(a
        .cli("database get blacklist kept")
        .contains("Value: original"));
}

#[test]
fn without_pjsip_the_module_runs_the_mesh_and_the_sip_module_does_not_load() {
    // The module itself names no res_pjsip symbol.
    let out = std::process::Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(module_so())
        .output()
        .expect("nm");
    let undefined = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!undefined.contains("ast_sip_"), "{undefined}");
    assert!(!undefined.contains("pjsip_"), "{undefined}");

    let slot = 7;
    let base = port_base(slot);
    let node = |i: u32| {
        StandIn::builder(&format!("nosip{i}"))
            .eid(&format!("02:00:00:00:00:0{i}"))
            .conf_file(
                "astdb_cluster.conf",
                &standin::cluster_conf("t", SECRET, i, &[1, 2], base, PRESETS),
            )
            .module_path(module_so())
            .module_as(sip_module_so(), "res_astdb_cluster_pjsip.so")
            .preload(&["res_astdb_cluster.so", "res_astdb_cluster_pjsip.so"])
            .start()
    };
    let (a, b) = (node(1), node(2));
    let modules = a.cli("module show like astdb");
    assert!(modules.contains("res_astdb_cluster.so"), "{modules}");
    assert!(!modules.contains("res_astdb_cluster_pjsip.so"), "{modules}");
    a.cli("dialplan set DB(blacklist/k)=over-the-mesh");
    wait_value(&b, "blacklist", "k", Some("over-the-mesh"));
}

#[test]
fn the_sip_module_unloads_and_loads_again_and_the_cluster_resumes() {
    let nodes = cluster(8, 2);
    wait_all_up(&nodes);
    let a = &nodes[0];
    for round in 0..3 {
        let out = a.cli("module unload res_astdb_cluster.so");
        assert!(!out.contains("Unloaded res_astdb_cluster.so"), "{out}");
        a.cli("module unload res_astdb_cluster_pjsip.so");
        a.cli("module unload res_astdb_cluster.so");
        assert!(!a
            .cli("module show like astdb")
            .contains("res_astdb_cluster"));
        a.cli("module load res_astdb_cluster.so");
        a.cli("module load res_astdb_cluster_pjsip.so");
        a.cli(&format!("dialplan set DB(blacklist/round)={round}"));
        wait_value(&nodes[1], "blacklist", "round", Some(&round.to_string()));
    }
}
