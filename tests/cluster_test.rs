//! Several stand-in Asterisk servers with the module, talking over real TCP on
//! loopback: what replicates, and how it survives faults.

mod standin;

use std::time::Duration;

use standin::{module_so, StandIn};

/// A port range for this test process, so parallel test binaries do not collide.
fn base_port(slot: u16) -> u16 {
    let pid = std::process::id() as u16;
    20000 + (pid % 400) * 100 + slot * 10
}

fn conf(node: u32, nodes: u32, base: u16, secret: &str, extra: &str) -> String {
    let mut c = format!(
        "[general]\ncluster_name = test.cluster\ncluster_node = {node}\ncluster_secret = {secret}\n\
         bindaddr = 127.0.0.1\nbindport = {}\n",
        base + node as u16
    );
    for other in (1..=nodes).filter(|o| *o != node) {
        c.push_str(&format!(
            "\n[node{other}]\ntype = node\nnode = {other}\nhost = 127.0.0.1:{}\n",
            base + other as u16
        ));
    }
    c.push_str(extra);
    c
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
    let cmd = format!("database get {family} {key}");
    n.wait_for_cli(&cmd, Duration::from_secs(10), |out| match want {
        Some(v) => out.contains(&format!("Value: {v}")),
        None => out.contains("not found"),
    });
}

fn wait_all_up(nodes: &[StandIn]) {
    let peers = nodes.len() - 1;
    for n in nodes {
        n.wait_for_cli("astdb cluster show status", Duration::from_secs(15), |s| {
            s.contains(&format!("{peers} of {peers} peers up"))
        });
    }
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
