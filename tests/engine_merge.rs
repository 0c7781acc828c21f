//! Properties of the merge rule: it is a join, so replicas agree whatever the order,
//! grouping or repetition of the changes they see.

use proptest::prelude::*;
use res_astdb_cluster::engine::{merge, Eid, Entry, Hlc, Version};

fn entry() -> impl Strategy<Value = Entry> {
    // Few distinct clocks, origins and values so that ties are common.
    (0u64..4, 0u16..3, 0u8..3, prop::option::of(0u8..3)).prop_map(|(ms, c, o, v)| Entry {
        version: Version::new(Hlc::from_parts(ms, c), Eid([0, 0, 0, 0, 0, o])),
        value: v.map(|v| format!("v{v}").into()),
    })
}

proptest! {
    #[test]
    fn merge_is_commutative(a in entry(), b in entry()) {
        prop_assert_eq!(merge(a.clone(), b.clone()), merge(b, a));
    }

    #[test]
    fn merge_is_associative(a in entry(), b in entry(), c in entry()) {
        prop_assert_eq!(
            merge(merge(a.clone(), b.clone()), c.clone()),
            merge(a, merge(b, c))
        );
    }

    #[test]
    fn merge_is_idempotent(a in entry(), b in entry()) {
        prop_assert_eq!(merge(a.clone(), a.clone()), a.clone());
        let ab = merge(a.clone(), b.clone());
        prop_assert_eq!(merge(ab.clone(), b), ab);
    }

    #[test]
    fn any_order_of_delivery_gives_the_same_winner(mut changes in prop::collection::vec(entry(), 1..12), seed in any::<u64>()) {
        let first = changes.iter().cloned().reduce(merge).unwrap();
        // A deterministic shuffle with duplicates.
        let mut s = seed;
        for i in (1..changes.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            changes.swap(i, (s >> 33) as usize % (i + 1));
        }
        changes.push(changes[0].clone());
        prop_assert_eq!(changes.into_iter().reduce(merge).unwrap(), first);
    }

    #[test]
    fn the_higher_version_wins_and_a_delete_wins_a_tie(a in entry(), b in entry()) {
        let m = merge(a.clone(), b.clone());
        prop_assert_eq!(m.version, a.version.max(b.version));
        if a.version == b.version && (a.value.is_none() || b.value.is_none()) {
            prop_assert!(m.value.is_none());
        }
    }
}
