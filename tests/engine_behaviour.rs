//! Single behaviours of the engine, one scenario each.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use res_astdb_cluster::engine::{
    Body, Change, Contents, Counters, DbOp, Eid, Engine, EngineConfig, Entry, Hlc, ItemId, Message,
    Mode, Output, SharedFamily, SharingPolicy, SyncMode, Version, WarningKind,
};
use res_astdb_cluster::metadata::replica::{self, ReplicaLog};

const NOW: u64 = 1_700_000_000_000;
const A: Eid = Eid([2, 0, 0, 0, 0, 1]);
const B: Eid = Eid([2, 0, 0, 0, 0, 2]);
const C: Eid = Eid([2, 0, 0, 0, 0, 3]);

fn node(eid: Eid, number: u32) -> Engine {
    Engine::new(EngineConfig::new(eid, number), None)
}

fn changes(
    family: &str,
    mode: Mode,
    owner: Option<Eid>,
    key: &str,
    ms: u64,
    from: Eid,
    value: Option<&str>,
) -> Message {
    Message {
        sent: Hlc::from_parts(NOW, 0),
        family: family.into(),
        mode,
        body: Body::Changes(vec![Change {
            item: ItemId {
                owner,
                key: key.into(),
            },
            entry: Entry {
                version: Version::new(Hlc::from_parts(ms, 0), from),
                value: value.map(Into::into),
            },
        }]),
    }
}

/// The outputs of `call` alone: those of earlier calls are taken first.
fn outputs_of(e: &mut Engine, call: impl FnOnce(&mut Engine)) -> Vec<Output> {
    e.take_batch();
    call(e);
    e.take_batch().outputs
}

/// Whether `e` has work for a tick at `now_ms` (a queued push slice, say).
fn due(e: &Engine, now_ms: u64) -> bool {
    e.next_deadline().is_some_and(|at| at <= now_ms)
}

fn applies(out: &[Output]) -> Vec<&DbOp> {
    out.iter()
        .filter_map(|o| match o {
            Output::Apply(op) => Some(op),
            _ => None,
        })
        .collect()
}

fn sent_to(out: &[Output]) -> BTreeSet<Eid> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

#[test]
fn changes_for_unshared_families_are_dropped_and_counted() {
    let mut a = node(A, 1);
    a.peer_up(B, 2, NOW);
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("secret", Mode::Global, None, "k", NOW, B, Some("v")),
            NOW,
        )
    });
    assert!(applies(&out).is_empty());
    assert_eq!(a.counters().dropped_unshared, 1);
}

#[test]
fn changes_for_a_family_shared_in_the_other_mode_are_dropped_and_counted() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Unique), NOW);
    a.peer_up(B, 2, NOW);
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("f", Mode::Global, None, "k", NOW, B, Some("v")),
            NOW,
        )
    });
    assert!(applies(&out).is_empty());
    assert_eq!(a.counters().dropped_mode, 1);
}

#[test]
fn changes_stamped_too_far_ahead_are_dropped_not_applied() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.peer_up(B, 2, NOW);
    let far = NOW + a.config().max_clock_skew_ms + 1;
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("f", Mode::Global, None, "k", far, B, Some("v")),
            NOW,
        )
    });
    assert!(applies(&out).is_empty());
    assert_eq!(a.counters().dropped_skew, 1);
    assert!(a.clock().wall_ms() <= NOW, "the clock did not jump ahead");
}

#[test]
fn a_remote_change_is_applied_and_its_echo_in_a_snapshot_is_not_a_local_change() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.local_snapshot("f", vec![], NOW);
    a.peer_up(B, 2, NOW);
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("f", Mode::Global, None, "k", NOW, B, Some("v")),
            NOW,
        )
    });
    assert_eq!(
        applies(&out),
        vec![&DbOp::Put {
            family: "f".into(),
            key: "k".into(),
            value: "v".into()
        }]
    );
    let out = outputs_of(&mut a, |a| {
        a.local_snapshot("f", vec![("k".into(), "v".into())], NOW + 10)
    });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(a.counters().local_changes, 0);
}

#[test]
fn a_message_of_more_changes_than_the_event_limit_is_reported_as_one_count() {
    let mut cfg = EngineConfig::new(A, 1);
    cfg.events = true;
    cfg.event_batch_limit = 3;
    let mut a = Engine::new(cfg, None);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.local_snapshot("f", vec![], NOW);
    a.peer_up(B, 2, NOW);
    let message = |keys: &[&str], value: Option<&str>| {
        let mut msg = changes("f", Mode::Global, None, "", NOW, B, value);
        let Body::Changes(c) = &mut msg.body else {
            unreachable!()
        };
        let one = c.remove(0);
        for k in keys {
            let mut change = one.clone();
            change.item.key = (*k).into();
            c.push(change);
        }
        msg
    };
    let reports = |out: &[Output]| -> (usize, Vec<(u64, u64)>) {
        let keys = out
            .iter()
            .filter(|o| matches!(o, Output::Changed(_)))
            .count();
        let counts = out
            .iter()
            .filter_map(|o| match o {
                Output::ChangesCounted(c) => Some((c.puts, c.deletes)),
                _ => None,
            })
            .collect();
        (keys, counts)
    };
    // Within the limit: a Changed per key.
    let out = outputs_of(&mut a, |a| {
        a.receive(B, message(&["a", "b", "c"], Some("v")), NOW)
    });
    assert_eq!(reports(&out), (3, vec![]));
    // Over it: the keys are all applied, and told as one count.
    let out = outputs_of(&mut a, |a| {
        a.receive(B, message(&["d", "e", "f", "g"], Some("v")), NOW)
    });
    assert_eq!(applies(&out).len(), 4);
    assert_eq!(reports(&out), (0, vec![(4, 0)]));
    // Only what changed is counted: three keys already held, one new.
    let out = outputs_of(&mut a, |a| {
        a.receive(B, message(&["a", "b", "c", "h"], Some("v")), NOW)
    });
    assert_eq!(reports(&out), (0, vec![(1, 0)]));
}

#[test]
fn unique_items_land_under_the_origin_eid_and_the_origin_delete_removes_them() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("registrar", Mode::Unique), NOW);
    a.peer_up(B, 2, NOW);
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes(
                "registrar",
                Mode::Unique,
                Some(B),
                "100",
                NOW,
                B,
                Some("sip:x"),
            ),
            NOW,
        )
    });
    let fam = format!("{B}/registrar");
    assert_eq!(fam, "02:00:00:00:00:02/registrar");
    assert_eq!(
        applies(&out),
        vec![&DbOp::Put {
            family: fam.as_str().into(),
            key: "100".into(),
            value: "sip:x".into()
        }]
    );
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("registrar", Mode::Unique, Some(B), "100", NOW + 1, B, None),
            NOW,
        )
    });
    assert_eq!(
        applies(&out),
        vec![&DbOp::Delete {
            family: fam.into(),
            key: "100".into()
        }]
    );
}

#[test]
fn multicast_families_are_exchanged_only_with_the_listed_nodes() {
    let mut a = node(A, 1);
    let mut f = SharedFamily::from_dialplan("queue_state", Mode::Global);
    f.policy = SharingPolicy::Multicast([1, 2].into());
    a.share(f, NOW);
    a.local_snapshot("queue_state", vec![], NOW);
    a.peer_up(B, 2, NOW);
    a.peer_up(C, 3, NOW);
    a.local_change("queue_state", "q1", Some("paused"), NOW);
    let out = outputs_of(&mut a, |a| a.tick(NOW + 1));
    assert_eq!(sent_to(&out), [B].into());
    let out = outputs_of(&mut a, |a| {
        a.receive(
            C,
            changes("queue_state", Mode::Global, None, "q2", NOW, C, Some("x")),
            NOW,
        )
    });
    assert!(applies(&out).is_empty());
    assert_eq!(a.counters().dropped_policy, 1);
}

#[test]
fn read_only_families_do_not_publish_local_changes_and_keep_the_cluster_value() {
    let mut a = node(A, 1);
    let mut f = SharedFamily::from_dialplan("f", Mode::Global);
    f.sync_mode = SyncMode::Ro;
    a.share(f, NOW);
    a.local_snapshot("f", vec![], NOW);
    a.peer_up(B, 2, NOW);
    a.receive(
        B,
        changes("f", Mode::Global, None, "k", NOW, B, Some("cluster")),
        NOW,
    );
    let out = outputs_of(&mut a, |a| a.local_change("f", "k", Some("mine"), NOW + 5));
    assert!(out.iter().any(
        |o| matches!(o, Output::Warn(w) if w.kind == WarningKind::ReadOnlyReverted
            && w.to_string().contains("sync_mode=ro"))
    ));
    assert_eq!(
        applies(&out),
        vec![&DbOp::Put {
            family: "f".into(),
            key: "k".into(),
            value: "cluster".into()
        }]
    );
    assert!(
        sent_to(&outputs_of(&mut a, |a| a.tick(NOW + 10))).is_empty()
            || a.counters().sent_changes == 0
    );
    assert_eq!(a.counters().ro_refused, 1);
}

#[test]
fn writes_below_a_shared_family_are_keys_of_it() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("foo", Mode::Global), NOW);
    a.local_snapshot("foo", vec![], NOW);
    a.local_change("foo/sub", "k", Some("v"), NOW);
    assert!(a.entry("foo", None, "sub/k").is_some());
    a.local_change("foobar", "k", Some("v"), NOW);
    assert_eq!(a.counters().local_changes, 1);
}

#[test]
fn a_restarted_node_never_reissues_a_version_even_if_its_clock_went_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, _) = ReplicaLog::open(&dir.path().join(replica::FILE_NAME)).unwrap();
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.local_snapshot("f", vec![], NOW);
    a.local_change("f", "k", Some("1"), NOW);
    let first = a.entry("f", None, "k").unwrap().version;
    store.write(&a.take_batch().save).unwrap();
    drop(a);

    let mut a = Engine::new(EngineConfig::new(A, 1), Some(store.load().unwrap()));
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW - 60_000);
    let out = outputs_of(&mut a, |a| {
        a.local_snapshot("f", vec![("k".into(), "1".into())], NOW - 60_000)
    });
    assert!(
        out.is_empty(),
        "unchanged data is not a change after a restart"
    );
    a.local_change("f", "k", Some("2"), NOW - 60_000);
    assert!(a.entry("f", None, "k").unwrap().version > first);
}

#[test]
fn a_deleted_key_does_not_come_back_from_an_older_write() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.local_snapshot("f", vec![("k".into(), "v".into())], NOW);
    a.peer_up(B, 2, NOW);
    a.local_change("f", "k", None, NOW + 100);
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("f", Mode::Global, None, "k", NOW + 50, B, Some("old")),
            NOW + 200,
        )
    });
    assert!(applies(&out).is_empty());
    assert!(a.entry("f", None, "k").unwrap().is_tombstone());
}

#[test]
fn a_stale_copy_from_a_peer_that_missed_a_collected_tombstone_is_retired() {
    let mut cfg = EngineConfig::new(A, 1);
    cfg.tombstone_max_age_ms = 1_000;
    let mut a = Engine::new(cfg, None);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.local_snapshot("f", vec![], NOW);
    a.peer_up(B, 2, NOW);
    a.peer_down(B);
    a.receive(
        B,
        changes("f", Mode::Global, None, "k", NOW, B, Some("v")),
        NOW,
    );
    a.local_change("f", "k", None, NOW + 10);
    // B never acknowledges; the tombstone is collected by age.
    a.tick(NOW + 5_000);
    assert_eq!(a.counters().collected_by_age, 1);
    assert!(a.entry("f", None, "k").is_none());
    // B comes back with its old copy: it is not applied, B is told to delete it.
    a.peer_up(B, 2, NOW + 6_000);
    let out = outputs_of(&mut a, |a| {
        a.receive(
            B,
            changes("f", Mode::Global, None, "k", NOW, B, Some("v")),
            NOW + 6_000,
        )
    });
    assert!(applies(&out).is_empty());
    let retire = out.iter().any(|o| matches!(o, Output::Send { to, msg: Message { body: Body::Changes(c), .. } } if *to == B && c[0].entry.value.is_none()));
    assert!(retire, "{out:?}");
    assert_eq!(a.counters().retired, 1);
}

/// Node A holding keys k00000..k02999 of global family `family`, with B up.
fn holding_3000_keys(cfg: EngineConfig, family: &str) -> Engine {
    let mut a = Engine::new(cfg, None);
    a.share(SharedFamily::from_dialplan(family, Mode::Global), NOW);
    let rows: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("k{i:05}"), "v".to_string()))
        .collect();
    a.local_snapshot(family, rows, NOW);
    a.peer_up(B, 2, NOW);
    a
}

/// What a new, empty node answers to a digest: an empty summary of the root.
fn empty_root_summary(family: &str, ms: u64) -> Message {
    Message {
        sent: Hlc::from_parts(ms, 0),
        family: family.into(),
        mode: Mode::Global,
        body: Body::Summary(vec![res_astdb_cluster::engine::SummaryRange {
            depth: 0,
            prefix: 0,
            items: Vec::new(),
        }]),
    }
}

#[test]
fn a_large_push_still_in_flight_is_not_sent_again_until_the_connection_is_new() {
    let family = "big";
    let mut a = holding_3000_keys(EngineConfig::new(A, 1), family);
    // B (new, empty) answers a digest with an empty summary of the root, twice.
    let summary = |ms: u64| empty_root_summary(family, ms);
    let pushed = |out: &[Output]| -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { msg, .. } => match &msg.body {
                    Body::Changes(c) => Some(c.iter().map(|c| c.item.key.to_string())),
                    _ => None,
                },
                _ => None,
            })
            .flatten()
            .collect()
    };
    let first = pushed(&outputs_of(&mut a, |a| {
        a.receive(B, summary(NOW + 10), NOW + 10)
    }));
    assert_eq!(first.len(), 3000);
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted, "a catch-up goes out in key order");
    assert!(pushed(&outputs_of(&mut a, |a| a.receive(
        B,
        summary(NOW + 20),
        NOW + 20
    )))
    .is_empty());
    // A key written since is sent all the same.
    a.local_change(family, "k00001", Some("new"), NOW + 30);
    a.tick(NOW + 30);
    assert_eq!(
        pushed(&outputs_of(&mut a, |a| a.receive(
            B,
            summary(NOW + 40),
            NOW + 40
        )))
        .len(),
        1
    );
    // Once such a push cannot be in flight any more, or on a new connection, it is resent.
    let late = NOW + 40 + a.config().max_message_age_ms + 1;
    assert_eq!(
        pushed(&outputs_of(&mut a, |a| a.receive(B, summary(late), late))).len(),
        3000
    );
    a.peer_down(B);
    a.peer_up(B, 2, late);
    assert_eq!(
        pushed(&outputs_of(&mut a, |a| a.receive(B, summary(late), late))).len(),
        3000
    );
}

#[test]
fn a_catch_up_too_large_for_one_turn_goes_out_in_slices_in_key_order() {
    let family = "big";
    let mut cfg = EngineConfig::new(A, 1);
    cfg.push_slice = 500;
    let mut a = holding_3000_keys(cfg, family);
    let summary = |ms: u64| empty_root_summary(family, ms);
    let pushed = |out: &[Output]| -> Vec<(String, Option<String>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { msg, .. } => match &msg.body {
                    Body::Changes(c) => Some(c.iter().map(|c| {
                        (
                            c.item.key.to_string(),
                            c.entry.value.as_deref().map(str::to_string),
                        )
                    })),
                    _ => None,
                },
                _ => None,
            })
            .flatten()
            .collect()
    };
    let mut sent = pushed(&outputs_of(&mut a, |a| {
        a.receive(B, summary(NOW + 10), NOW + 10)
    }));
    assert_eq!(sent.len(), 500, "the first slice goes at once");
    assert!(due(&a, NOW + 10), "the next slice is due at once");
    // The peer asks again before the rest arrived: nothing is added twice.
    assert!(pushed(&outputs_of(&mut a, |a| a.receive(
        B,
        summary(NOW + 20),
        NOW + 20
    )))
    .is_empty());
    // A key changed (here by a third node) before its slice goes out is sent as it is now.
    a.peer_up(C, 3, NOW + 25);
    a.receive(
        C,
        changes(
            family,
            Mode::Global,
            None,
            "k02999",
            NOW + 25,
            C,
            Some("newer"),
        ),
        NOW + 25,
    );
    let mut t = NOW + 30;
    while due(&a, t) {
        sent.extend(pushed(&outputs_of(&mut a, |a| a.tick(t))));
        t += 100;
    }
    let keys: Vec<&String> = sent.iter().map(|(k, _)| k).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "in key order, each key once"
    );
    assert_eq!(keys.len(), 3000);
    assert!(sent.contains(&("k02999".to_string(), Some("newer".to_string()))));

    // A connection lost mid-way drops the rest: the next connection starts afresh.
    let later = t + 100_000;
    a.tick(later - 1); // the digest syncs due by then, out of the way
    a.receive(B, summary(later), later);
    assert!(due(&a, later));
    a.peer_down(B);
    assert!(!due(&a, later), "{:?}", a.next_deadline());
}

#[test]
fn a_catch_up_to_a_peer_whose_link_is_backed_up_waits_and_then_goes_on_where_it_stopped() {
    let family = "big";
    let mut cfg = EngineConfig::new(A, 1);
    cfg.push_slice = 500;
    let mut a = holding_3000_keys(cfg, family);
    let count = |out: &[Output]| -> usize {
        out.iter()
            .map(|o| match o {
                Output::Send { msg, .. } => match &msg.body {
                    Body::Changes(c) => c.len(),
                    _ => 0,
                },
                _ => 0,
            })
            .sum()
    };
    let first = count(&outputs_of(&mut a, |a| {
        a.receive(B, empty_root_summary(family, NOW + 10), NOW + 10)
    }));
    assert_eq!(first, 500);
    assert_eq!(a.pushing_to().into_iter().collect::<Vec<_>>(), vec![B]);
    // The driver says B's link still holds too much: no slice goes, and no slice is
    // due (the driver need not spin), though the push is still under way.
    a.hold_pushes([B].into_iter().collect());
    let t = NOW + 20;
    assert_eq!(count(&outputs_of(&mut a, |a| a.tick(t))), 0);
    assert!(!due(&a, t), "{:?}", a.next_deadline());
    assert!(a.pushing());
    assert!(a.pushes_held());
    // Released, the rest goes, each key once.
    a.hold_pushes(Default::default());
    assert!(!a.pushes_held());
    assert!(due(&a, t));
    let mut rest = 0;
    let mut t = t;
    while due(&a, t) {
        rest += count(&outputs_of(&mut a, |a| a.tick(t)));
        t += 100;
    }
    assert_eq!(first + rest, 3000);
    assert!(!a.pushing());
}

fn read(rows: &[(&str, &str)]) -> Contents {
    read_as(None, rows)
}

fn read_as(owner: Option<Eid>, rows: &[(&str, &str)]) -> Contents {
    let mut c = Contents::default();
    for (k, v) in rows {
        c.add(owner, k, v);
    }
    c
}

#[test]
fn a_read_that_matches_what_the_engine_holds_needs_no_handing_over() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    assert!(
        !a.holds_contents("f", read(&[])),
        "a family never looked at is always handed over"
    );
    a.local_snapshot("f", vec![("a".into(), "1".into())], NOW);
    assert!(a.holds_contents("f", read(&[("a", "1")])));
    assert!(!a.holds_contents("f", read(&[("a", "2")])), "a local edit");
    assert!(!a.holds_contents("f", read(&[])), "a local delete");
    assert!(
        !a.holds_contents("f", read(&[("a", "1"), ("b", "1")])),
        "a local add"
    );

    // A remote change: once applied, AstDB holds what the engine holds.
    a.peer_up(B, 2, NOW);
    a.receive(
        B,
        changes("f", Mode::Global, None, "k", NOW, B, Some("v")),
        NOW,
    );
    assert!(a.holds_contents("f", read(&[("a", "1"), ("k", "v")])));
    assert!(!a.holds_contents("f", read(&[("a", "1")])));
    a.receive(
        B,
        changes("f", Mode::Global, None, "a", NOW + 1, B, None),
        NOW,
    );
    assert!(a.holds_contents("f", read(&[("k", "v")])));

    // Captured writes count as held too.
    a.local_change("f", "c", Some("3"), NOW + 2);
    assert!(a.holds_contents("f", read(&[("c", "3"), ("k", "v")])));

    // A family with a shared family nested in it reads that one's rows too.
    a.share(SharedFamily::from_dialplan("f/sub", Mode::Global), NOW);
    assert!(!a.holds_contents("f", read(&[("c", "3"), ("k", "v")])));
}

#[test]
fn a_unique_familys_read_is_compared_with_this_nodes_own_keys_only() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("u", Mode::Unique), NOW);
    a.local_snapshot("u", vec![("x".into(), "1".into())], NOW);
    a.peer_up(B, 2, NOW);
    a.receive(
        B,
        changes("u", Mode::Unique, Some(B), "y", NOW, B, Some("2")),
        NOW,
    );
    assert_eq!(a.own_owner("u"), Some(A));
    assert!(a.holds_contents("u", read_as(Some(A), &[("x", "1")])));
    assert!(!a.holds_contents("u", read_as(Some(A), &[("x", "1"), ("y", "2")])));
}

#[test]
fn a_large_read_handed_over_in_slices_changes_the_same_as_in_one_piece() {
    let start: Vec<(String, String)> = (0..100).map(|i| (format!("k{i:03}"), "a".into())).collect();
    // Later: k000..k049 changed, k050..k089 as they were, k090..k099 gone, n000..n009 new.
    let mut later: Vec<(String, String)> = (0..90)
        .map(|i| (format!("k{i:03}"), if i < 50 { "b" } else { "a" }.into()))
        .collect();
    later.extend((0..10).map(|i| (format!("n{i:03}"), "c".into())));
    later.sort();
    let run = |sliced: bool| {
        let mut e = node(A, 1);
        e.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
        e.local_snapshot("f", start.clone(), NOW);
        if sliced {
            for slice in later.chunks(7) {
                e.local_rows("f", slice, NOW + 10);
            }
        }
        e.local_snapshot("f", later.clone(), NOW + 10);
        let held: Vec<(String, Option<String>)> = (0..100)
            .map(|i| format!("k{i:03}"))
            .chain((0..10).map(|i| format!("n{i:03}")))
            .map(|k| {
                let v = e
                    .entry("f", None, &k)
                    .and_then(|x| x.value.as_deref().map(str::to_string));
                (k, v)
            })
            .collect();
        (held, e.counters().local_changes)
    };
    let (whole, whole_changes) = run(false);
    let (sliced, sliced_changes) = run(true);
    assert_eq!(sliced, whole);
    assert_eq!(sliced_changes, whole_changes);
    assert_eq!(
        whole_changes,
        100 + 50 + 10 + 10,
        "first read, edits, deletes, adds"
    );
}

#[test]
fn slices_of_a_read_without_deletes_leave_nothing_for_the_whole_read_but_deletes_do() {
    let start: Vec<(String, String)> = (0..50).map(|i| (format!("k{i:03}"), "a".into())).collect();
    let mut e = node(A, 1);
    e.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    e.local_snapshot("f", start.clone(), NOW);

    // Edits and additions only: once the slices are taken the engine holds the read.
    let mut grown = start.clone();
    grown[3].1 = "b".into();
    grown.push(("z".into(), "new".into()));
    for slice in grown.chunks(8) {
        e.local_rows("f", slice, NOW + 10);
    }
    let pairs: Vec<(&str, &str)> = grown
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(e.holds_contents("f", read_as(None, &pairs)));

    // A key gone from AstDB: slices cannot see it, so the whole read is still needed.
    let shrunk: Vec<(String, String)> = grown[1..].to_vec();
    for slice in shrunk.chunks(8) {
        e.local_rows("f", slice, NOW + 20);
    }
    let pairs: Vec<(&str, &str)> = shrunk
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(!e.holds_contents("f", read_as(None, &pairs)));
    let read = read_as(None, &pairs);
    e.local_snapshot("f", shrunk.clone(), NOW + 20);
    assert!(e.holds_contents("f", read));
    assert!(e
        .entry("f", None, "k000")
        .is_some_and(|x| x.value.is_none()));
}

#[test]
fn an_idle_engine_has_its_next_sync_as_deadline_and_a_tick_before_it_does_nothing() {
    let mut a = node(A, 1);
    assert_eq!(a.next_deadline(), None, "nothing shared, nothing scheduled");
    let f = SharedFamily::from_dialplan("f", Mode::Global);
    let interval = f.sync_interval_ms;
    a.share(f, NOW);
    a.local_snapshot("f", vec![("k".into(), "v".into())], NOW);
    a.peer_up(B, 2, NOW);
    a.take_batch();
    assert_eq!(a.next_deadline(), Some(NOW + interval));
    a.tick(NOW + interval - 1);
    assert!(a.take_batch().is_empty());
    assert_eq!(a.next_deadline(), Some(NOW + interval));

    // A local change waits in the outbox: due at once, whatever the clock says.
    a.local_change("f", "k", Some("w"), NOW + 10);
    assert!(due(&a, 0));
    a.tick(NOW + 10);
    assert_eq!(sent_to(&a.take_batch().outputs), [B].into());
    assert_eq!(a.next_deadline(), Some(NOW + interval));
    // The sync goes at its deadline, and the next one is an interval later.
    a.tick(NOW + interval);
    assert_eq!(sent_to(&a.take_batch().outputs), [B].into());
    assert_eq!(a.next_deadline(), Some(NOW + 2 * interval));
}

#[test]
fn the_output_buffer_handed_back_serves_the_next_batch() {
    let mut a = node(A, 1);
    a.share(SharedFamily::from_dialplan("f", Mode::Global), NOW);
    a.local_snapshot("f", vec![], NOW);
    a.peer_up(B, 2, NOW);
    let mut outputs = a.take_batch().outputs;
    outputs.reserve(1000);
    let capacity = outputs.capacity();
    outputs.clear();
    a.recycle(outputs);
    assert_eq!(a.queued_outputs(), 0);
    a.local_change("f", "k", Some("v"), NOW + 1);
    a.tick(NOW + 1);
    let batch = a.take_batch();
    assert_eq!(batch.outputs.len(), 1);
    assert_eq!(batch.outputs.capacity(), capacity);
    // Too large a buffer is not kept.
    a.recycle(Vec::with_capacity(70_000));
    a.tick(NOW + 2);
    assert!(a.take_batch().outputs.capacity() < 70_000);
}

/// Three nodes exchanging messages (each delivered 3 ms after it is sent, in order),
/// driven either by a tick every 100 ms or only by a tick when a node's deadline comes.
/// A holds 300 keys and deletes 50; B writes keys of its own and deletes some; C joins
/// late and catches up in slices. Gives each node's AstDB at the end, the ticks made,
/// and the nodes' counters.
fn three_nodes(at_deadlines: bool) -> (Vec<BTreeMap<String, String>>, u64, Vec<Counters>) {
    const END: u64 = 60_000;
    let eids = [A, B, C];
    let mut nodes: Vec<Engine> = eids
        .iter()
        .enumerate()
        .map(|(i, &eid)| {
            let mut cfg = EngineConfig::new(eid, i as u32 + 1);
            cfg.max_clock_skew_ms = 1_000;
            cfg.max_message_age_ms = 2_000;
            cfg.batch_max_changes = 16;
            cfg.push_slice = 50;
            Engine::new(cfg, None)
        })
        .collect();
    let mut dbs: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); 3];
    let mut net: VecDeque<(u64, usize, usize, Message)> = VecDeque::new();
    let mut ticks = 0;
    // Runs what node `i` was handed at `t`.
    let run = |i: usize,
               t: u64,
               nodes: &mut Vec<Engine>,
               dbs: &mut Vec<BTreeMap<String, String>>,
               net: &mut VecDeque<(u64, usize, usize, Message)>| {
        for o in nodes[i].take_batch().outputs {
            match o {
                Output::Send { to, msg } => {
                    let j = eids.iter().position(|&e| e == to).expect("a known peer");
                    net.push_back((t + 3, i, j, msg));
                }
                Output::Apply(DbOp::Put { key, value, .. }) => {
                    dbs[i].insert(key.to_string(), value.to_string());
                }
                Output::Apply(DbOp::Delete { key, .. }) => {
                    dbs[i].remove(&*key);
                }
                Output::Warn(w) => panic!("{w}"),
                Output::Changed(_) | Output::ChangesCounted(_) | Output::CatchUp(_) => {}
            }
        }
    };
    let write = |i: usize,
                 t: u64,
                 key: &str,
                 value: Option<&str>,
                 nodes: &mut Vec<Engine>,
                 dbs: &mut Vec<BTreeMap<String, String>>| {
        match value {
            Some(v) => dbs[i].insert(key.to_string(), v.to_string()),
            None => dbs[i].remove(key),
        };
        nodes[i].local_change("f", key, value, NOW + t);
    };
    let mut family = SharedFamily::from_dialplan("f", Mode::Global);
    family.sync_interval_ms = 1_000;
    for (i, e) in nodes.iter_mut().enumerate() {
        e.share(family.clone(), NOW);
        let rows: Vec<(String, String)> = if i == 0 {
            (0..300).map(|k| (format!("k{k:03}"), "a".into())).collect()
        } else {
            Vec::new()
        };
        dbs[i].extend(rows.iter().cloned());
        e.local_snapshot("f", rows, NOW);
    }
    let mut next_tick = [0u64; 3];
    for t in 0..=END {
        // Links: A and B from the start, C with both at 3 s.
        let links: &[(usize, usize)] = match t {
            0 => &[(0, 1)],
            3_000 => &[(0, 2), (1, 2)],
            _ => &[],
        };
        for &(x, y) in links {
            nodes[x].peer_up(eids[y], y as u32 + 1, NOW + t);
            run(x, t, &mut nodes, &mut dbs, &mut net);
            nodes[y].peer_up(eids[x], x as u32 + 1, NOW + t);
            run(y, t, &mut nodes, &mut dbs, &mut net);
        }
        while net.front().is_some_and(|m| m.0 <= t) {
            let Some((_, from, to, msg)) = net.pop_front() else {
                break;
            };
            nodes[to].receive(eids[from], msg, NOW + t);
            run(to, t, &mut nodes, &mut dbs, &mut net);
        }
        if (500..1_500).contains(&t) && t % 50 == 0 {
            let key = format!("b{:02}", (t - 500) / 50);
            write(1, t, &key, Some("b"), &mut nodes, &mut dbs);
            run(1, t, &mut nodes, &mut dbs, &mut net);
        }
        if t == 2_000 {
            for k in 0..50 {
                write(0, t, &format!("k{k:03}"), None, &mut nodes, &mut dbs);
            }
            run(0, t, &mut nodes, &mut dbs, &mut net);
        }
        if t == 5_000 {
            for k in 0..10 {
                write(1, t, &format!("b{k:02}"), None, &mut nodes, &mut dbs);
            }
            run(1, t, &mut nodes, &mut dbs, &mut net);
        }
        for i in 0..3 {
            let due = if at_deadlines {
                nodes[i].next_deadline().is_some_and(|at| at <= NOW + t)
            } else {
                t >= next_tick[i]
            };
            if due {
                next_tick[i] = t + 100;
                ticks += 1;
                nodes[i].tick(NOW + t);
                run(i, t, &mut nodes, &mut dbs, &mut net);
            }
        }
    }
    if at_deadlines {
        for e in &nodes {
            let at = e.next_deadline().expect("syncs are scheduled");
            assert!(at > NOW + END, "an idle node's deadline is not now");
        }
    }
    let counters = nodes.iter().map(|e| e.counters().clone()).collect();
    (dbs, ticks, counters)
}

#[test]
fn a_cluster_driven_only_at_its_deadlines_converges_like_one_ticked_every_100_ms() {
    let (every_100_ms, ticks_100, counters_100) = three_nodes(false);
    let (at_deadlines, ticks_deadline, counters_deadline) = three_nodes(true);
    let mut expected: BTreeMap<String, String> = (50..300)
        .map(|k| (format!("k{k:03}"), "a".to_string()))
        .collect();
    expected.extend((10..20).map(|k| (format!("b{k:02}"), "b".to_string())));
    for (i, (db_100, db_deadline)) in every_100_ms.iter().zip(&at_deadlines).enumerate() {
        assert_eq!(db_100, &expected, "node {i}, ticked every 100 ms");
        assert_eq!(db_deadline, &expected, "node {i}, ticked at its deadlines");
    }
    for counters in [&counters_100, &counters_deadline] {
        for c in counters {
            assert_eq!(c.tombstones, 0, "every tombstone is collected: {c:?}");
            assert_eq!(c.collected, 60, "{c:?}");
            assert_eq!(c.collected_by_age, 0, "{c:?}");
        }
    }
    assert!(
        ticks_deadline * 4 < ticks_100,
        "{ticks_deadline} ticks at deadlines, {ticks_100} every 100 ms"
    );
}
