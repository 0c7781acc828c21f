//! res_astdb_cluster loaded into the stand-in Asterisk: what an administrator
//! sees from the dialplan, the CLI, the config file and the log.

mod standin;

use std::time::Duration;

use standin::{module_so, StandIn};

const GOOD_CONF: &str = "[general]
cluster_name = test.cluster
cluster_node = 1
cluster_secret = test-secret-0123456789
bindaddr = 127.0.0.1
bindport = 15039

[node2]
type = node
node = 2
host = 127.0.0.1:15040

[blacklist]
type = family
mode = global
sync_interval = 200
";

fn node(name: &str, conf: &str) -> StandIn {
    StandIn::builder(name)
        .eid("02:00:00:00:00:01")
        .conf_file("astdb_cluster.conf", conf)
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start()
}

fn loaded(n: &StandIn) -> bool {
    n.cli("module show").contains("res_astdb_cluster")
}

fn eval(n: &StandIn, expr: &str) -> String {
    n.cli(&format!("dialplan eval {expr}")).trim().to_string()
}

#[test]
fn the_module_loads_and_says_which_node_it_is() {
    let n = node("load", GOOD_CONF);
    assert!(loaded(&n), "{}", n.log());
    assert!(
        n.log().contains("this is node 1 (02:00:00:00:00:01) of cluster 'test.cluster', 1 peer(s) configured, 1 family shared"),
        "{}",
        n.log()
    );
}

#[test]
fn db_shared_marks_a_family_and_reads_back_its_mode() {
    let n = node("mark", GOOD_CONF);
    n.cli("database put foo existing 42");
    n.cli("dialplan set DB_SHARED(put,global)=foo");
    n.cli("dialplan set DB_SHARED(put,unique)=registrar");
    assert_eq!(eval(&n, "${DB_SHARED_EXISTS(foo)}"), "1");
    assert_eq!(eval(&n, "${DB_SHARED(foo)}"), "global");
    assert_eq!(
        eval(&n, "${DB_SHARED(foo/sub/deeper)}"),
        "global",
        "a shared family covers its subtree"
    );
    assert_eq!(eval(&n, "${DB_SHARED(registrar)}"), "unique");
    assert_eq!(eval(&n, "${DB_SHARED_EXISTS(nothing)}"), "0");
    assert_eq!(eval(&n, "[${DB_SHARED(nothing)}]"), "[]");

    n.cli("dialplan set DB_SHARED(delete)=foo");
    assert_eq!(eval(&n, "${DB_SHARED_EXISTS(foo)}"), "0");
    assert!(
        n.cli("database get foo existing").contains("42"),
        "marking and unmarking never touch data"
    );
}

#[test]
fn bad_db_shared_arguments_warn_name_the_problem_and_change_nothing() {
    let n = node("badargs", GOOD_CONF);
    n.cli("dialplan set DB_SHARED(put,sideways)=foo");
    n.cli("dialplan set DB_SHARED(put,global)=");
    n.cli("dialplan set DB_SHARED()=foo");
    n.cli("dialplan set DB_SHARED(put)=foo");
    n.cli("dialplan set DB_SHARED(put,global)=/leading/slash");
    let log = n.log();
    assert!(log.contains("DB_SHARED(put,sideways)=foo: 'sideways' is not a sharing mode (want global or unique); nothing changed"), "{log}");
    assert!(
        log.contains("DB_SHARED(put,global)=: family name is empty; nothing changed"),
        "{log}"
    );
    assert!(log.contains("DB_SHARED()=foo: no action given"), "{log}");
    assert!(
        log.contains("DB_SHARED(put)=foo: put needs a mode"),
        "{log}"
    );
    assert!(log.contains("has an empty path segment"), "{log}");
    assert_eq!(eval(&n, "${DB_SHARED_EXISTS(foo)}"), "0");
    let show = n.cli("database shared show");
    assert!(
        show.contains("1 shared family."),
        "only the preset remains:\n{show}"
    );
    assert!(
        n.cli("core show version").contains("stand-in"),
        "Asterisk keeps running"
    );
}

#[test]
fn shared_marks_survive_a_restart_and_a_module_reload() {
    let mut n = node("persist", GOOD_CONF);
    n.cli("dialplan set DB_SHARED(put,unique)=registrar");
    n.cli("module reload res_astdb_cluster.so");
    assert_eq!(eval(&n, "${DB_SHARED(registrar)}"), "unique");
    n.cli("module unload res_astdb_cluster.so");
    n.cli("module load res_astdb_cluster.so");
    assert_eq!(eval(&n, "${DB_SHARED(registrar)}"), "unique");
    n.kill9();
    n.restart();
    assert_eq!(eval(&n, "${DB_SHARED(registrar)}"), "unique");
    assert_eq!(
        eval(&n, "${DB_SHARED(blacklist)}"),
        "global",
        "presets come back from the config file"
    );
}

#[test]
fn cli_shares_unshares_and_shows_families_aligned() {
    let n = node("cli", GOOD_CONF);
    assert!(n
        .cli("database shared put unique registrar")
        .contains("family 'registrar' is now shared unique"));
    let bad = n.cli("database shared put sideways x");
    assert!(bad.contains("'sideways' is not a sharing mode"), "{bad}");
    assert!(
        n.cli("database shared put global")
            .contains("Usage: database shared put"),
        "missing argument shows usage"
    );
    let show = n.cli("database shared show");
    let lines: Vec<&str> = show.lines().collect();
    assert!(
        lines[0].starts_with("Family     Mode    Origin    Policy     Sync  Interval"),
        "{show}"
    );
    assert!(
        show.contains("blacklist  global  preset    broadcast  rw    200ms"),
        "{show}"
    );
    assert!(
        show.contains("registrar  unique  dialplan  broadcast  rw    5000ms"),
        "{show}"
    );
    assert!(show.contains("2 shared families."), "{show}");
    assert!(n
        .cli("database shared show registrar")
        .contains("1 shared family."));
    assert!(n
        .cli("database shared delete registrar")
        .contains("no longer shared; its keys are kept"));
    assert!(n
        .cli("database shared delete registrar")
        .contains("Error: family 'registrar' is not shared"));
}

#[test]
fn family_names_mode_words_and_nodes_tab_complete() {
    let n = node("complete", GOOD_CONF);
    n.cli("database shared put global fruit");
    let words = |line: &str| -> Vec<String> {
        let mut w: Vec<String> = n
            .cli(&format!("_complete {line}"))
            .lines()
            .map(str::to_string)
            .collect();
        w.sort();
        w
    };
    assert_eq!(words("database shared put "), vec!["global", "unique"]);
    assert_eq!(words("database shared put u"), vec!["unique"]);
    assert_eq!(words("database shared delete "), vec!["blacklist", "fruit"]);
    assert_eq!(words("database shared show f"), vec!["fruit"]);
    assert_eq!(words("astdb cluster show nodes "), vec!["2", "node2"]);
}

#[test]
fn show_counts_keys_and_notices_when_a_family_changes() {
    let n = node("stats", GOOD_CONF);
    n.cli("database put blacklist 100 spam");
    n.wait_for_cli(
        "database shared show blacklist",
        Duration::from_secs(10),
        |out| {
            out.lines().any(|l| {
                l.starts_with("blacklist") && l.contains(" 1 ") && l.ends_with("none seen")
            })
        },
    );
    n.cli("database put blacklist sub/200 robo");
    n.cli("database put other 1 x");
    n.wait_for_cli(
        "database shared show blacklist",
        Duration::from_secs(10),
        |out| {
            out.lines().any(|l| {
                l.starts_with("blacklist") && l.contains(" 2 ") && !l.contains("none seen")
            })
        },
    );
}

#[test]
fn status_and_nodes_describe_this_server_and_its_peers() {
    let n = node("status", GOOD_CONF);
    let status = n.cli("astdb cluster show status");
    assert!(
        status.contains("Entity ID:               02:00:00:00:00:01"),
        "{status}"
    );
    assert!(
        status.contains("Cluster:                 test.cluster"),
        "{status}"
    );
    assert!(status.contains("Shared families:         1"), "{status}");
    let nodes = n.cli("astdb cluster show nodes");
    assert!(nodes.contains("2     node2  127.0.0.1:15040"), "{nodes}");
    assert!(n
        .cli("astdb cluster show nodes 9")
        .contains("no configured node matches '9'"));
}

#[test]
fn a_config_error_names_line_section_option_and_reason_and_the_module_declines() {
    let conf = GOOD_CONF.replace("sync_interval = 200", "sync_interval = fast");
    let n = node("badconf", &conf);
    assert!(
        !loaded(&n) || n.cli("module show").contains("Not Running"),
        "{}",
        n.cli("module show")
    );
    let log = n.log();
    assert!(
        log.contains("astdb_cluster.conf line 16, [blacklist] sync_interval: 'fast' is not an interval in milliseconds (100 to 3600000)"),
        "{log}"
    );
    assert!(
        log.contains("declined to load: no valid configuration"),
        "{log}"
    );
}

#[test]
fn without_a_config_file_the_module_declines_and_says_why() {
    let n = StandIn::builder("noconf")
        .eid("02:00:00:00:00:01")
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start();
    assert!(
        n.log()
            .contains("astdb_cluster.conf is missing: see astdb_cluster.conf.sample"),
        "{}",
        n.log()
    );
    assert!(n.cli("core show version").contains("stand-in"));
}

#[test]
fn a_reload_with_a_broken_file_keeps_the_last_good_configuration() {
    let n = node("reload", GOOD_CONF);
    n.write_conf(
        "astdb_cluster.conf",
        &GOOD_CONF.replace("mode = global", "mode = sideways"),
    );
    n.cli("module reload res_astdb_cluster.so");
    let log = n.log();
    assert!(
        log.contains("[blacklist] mode: 'sideways' is not a sharing mode"),
        "{log}"
    );
    assert!(
        log.contains("not applied; keeping the last good configuration"),
        "{log}"
    );
    assert_eq!(eval(&n, "${DB_SHARED(blacklist)}"), "global");

    let added =
        format!("{GOOD_CONF}\n[queue_state]\ntype = family\nmode = unique\nsync_interval = 500\n");
    n.write_conf("astdb_cluster.conf", &added);
    n.cli("module reload res_astdb_cluster.so");
    assert_eq!(
        eval(&n, "${DB_SHARED(queue_state)}"),
        "unique",
        "{}",
        n.log()
    );
}

#[test]
fn a_preset_wins_over_a_dialplan_mark_and_unsharing_it_warns_about_reload() {
    let n = node("preset", GOOD_CONF);
    n.cli("dialplan set DB_SHARED(put,unique)=blacklist");
    assert!(
        n.log()
            .contains("is shared global by a preset in astdb_cluster.conf; the preset wins"),
        "{}",
        n.log()
    );
    assert_eq!(eval(&n, "${DB_SHARED(blacklist)}"), "global");
    let out = n.cli("database shared delete blacklist");
    assert!(out.contains("the next reload shares it again"), "{out}");
    n.cli("module reload res_astdb_cluster.so");
    assert_eq!(
        eval(&n, "${DB_SHARED(blacklist)}"),
        "",
        "unchanged file: reload does nothing"
    );
}

#[test]
fn twenty_unload_load_cycles_leave_no_thread_and_no_mapped_library() {
    let n = node("cycles", GOOD_CONF);
    // The count line only: one listed thread is the CLI connection's own.
    let threads = |n: &StandIn| {
        n.cli("core show threads")
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    n.cli("module unload res_astdb_cluster.so");
    let before = threads(&n);
    for i in 0..20 {
        n.cli("module load res_astdb_cluster.so");
        n.cli(&format!("database shared put global fam{i}"));
        n.cli("database shared show");
        n.cli("module unload res_astdb_cluster.so");
    }
    assert_eq!(threads(&n), before, "threads left behind");
    n.cli("module load res_astdb_cluster.so");
    assert!(loaded(&n));
    let log = n.log();
    assert!(
        !log.contains("still mapped after dlclose"),
        "a thread-local destructor pinned the library:\n{log}"
    );
    assert!(!log.contains("did not register itself"), "{log}");
    assert_eq!(eval(&n, "${DB_SHARED(fam19)}"), "global");
}

#[test]
fn a_damaged_metadata_file_is_set_aside_and_astdb_is_untouched() {
    let mut n = node("damaged", GOOD_CONF);
    n.cli("database put blacklist keep me");
    n.cli("dialplan set DB_SHARED(put,global)=foo");
    n.stop();
    std::fs::write(
        n.db_dir().join("astdb_cluster.sqlite3"),
        b"garbage, not a database",
    )
    .unwrap();
    for side in ["astdb_cluster.sqlite3-wal", "astdb_cluster.sqlite3-shm"] {
        let _ = std::fs::remove_file(n.db_dir().join(side));
    }
    n.restart();
    assert!(loaded(&n));
    let log = n.log();
    assert!(log.contains("was damaged"), "{log}");
    let aside = std::fs::read_dir(n.db_dir())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(".damaged-"));
    assert!(aside, "the damaged file is kept for inspection");
    assert!(
        n.cli("database get blacklist keep").contains("me"),
        "AstDB data is untouched"
    );
}

#[test]
fn dialplan_db_writes_are_seen_at_once_and_other_writers_at_the_next_read() {
    let n = node("capture", GOOD_CONF);
    // A dialplan-shared family has the default 5 s interval: only capture can be quick.
    n.cli("dialplan set DB_SHARED(put,global)=fruit");
    n.wait_for_cli("astdb cluster show status", Duration::from_secs(5), |s| {
        s.contains("DB() and DB_DELETE() seen at once")
    });
    n.cli("dialplan set DB(fruit/apple)=red");
    n.cli("dialplan eval ${DB_DELETE(fruit/apple)}");
    // Families nobody shares cost the module nothing: not even handed over.
    n.cli("dialplan set DB(vegetables/leek)=green");
    n.cli("dialplan set DB(fruitbowl/apple)=red");
    n.cli("dialplan set DB(fruit/pear)=green");
    let status = n.wait_for_cli("astdb cluster show status", Duration::from_secs(2), |s| {
        s.contains("Dialplan writes seen:    3")
    });
    assert!(
        n.cli("database get vegetables leek")
            .contains("Value: green"),
        "the unshared write itself happened"
    );
    std::thread::sleep(Duration::from_millis(300));
    let later = n.cli("astdb cluster show status");
    assert!(later.contains("Dialplan writes seen:    3"), "{later}");
    // At least the three writes (a race with the family's first read may add its baseline).
    let local: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Local changes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(local >= 3, "{status}");
    let show = n.cli("database shared show fruit");
    assert!(!show.contains("none seen"), "{show}");

    // A CLI write is not captured directly; the family's read finds it.
    n.cli("database put blacklist cli-write 1");
    n.wait_for_cli("astdb cluster show status", Duration::from_secs(5), |s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Local changes:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > local)
    });
}

#[test]
fn a_key_that_cannot_be_shared_is_warned_about_once_not_at_every_read() {
    let n = node("warnonce", GOOD_CONF);
    let long_key = "k".repeat(1100);
    n.cli(&format!("database put blacklist {long_key} v"));
    // The family is read every 200 ms; give it several reads.
    assert!(
        n.wait_for_log("longer than 1024 bytes", Duration::from_secs(5)),
        "{}",
        n.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let log = n.log();
    assert_eq!(log.matches("longer than 1024 bytes").count(), 1, "{log}");
    assert!(
        n.cli(&format!("database get blacklist {long_key}"))
            .contains("Value: v"),
        "the key itself is left alone"
    );
}
