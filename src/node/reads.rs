//! When each shared family is read, and which reads can be skipped.
//!
//! Every writer but the dialplan is found by reading the family at its
//! `sync_interval`. Two things keep that cheap: a read is handed to the engine only when
//! it may hold something new (its contents summary differs from what the engine holds,
//! and from the previous read unless an apply or captured write touched the family
//! since); and a family whose read is costly is not read again while AstDB has committed
//! nothing (its commit stamp is unchanged), since every write made meanwhile is at most
//! about a second from its commit.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::engine::{Contents, SharedFamily};

/// The soonest a family whose last read found local changes is read again (µs).
const FOLLOW_UP_US: u64 = 100_000;

/// How many follow-up reads in a row may find nothing new before the family is back to
/// its interval; each waits twice as long as the one before (with 100 ms: reads 0.1,
/// 0.3, 0.7 and 1.5 s after the last that found changes, longer than AstDB's commit).
const FOLLOW_UP_READS: u32 = 4;

/// A family that has had at least this many remote changes applied since its last read,
/// the last of them less than [`APPLYING_US`] ago, is taking in a catch-up (or a burst
/// as large): its interval read is put off, see [`Reads::due`].
const BULK_APPLIES: u64 = 10_000;
/// How recent the last apply must be for a family to count as still taking them in (µs).
const APPLYING_US: u64 = 500_000;
/// How soon a put-off read is due again (µs).
const PUT_OFF_US: u64 = 250_000;

/// A family read again soon because a recent read found local changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Following {
    /// When the next follow-up read comes (µs).
    at: u64,
    /// The wait after it, should it find nothing new (µs).
    wait: u64,
    /// How many more follow-up reads come after it, should they find nothing new.
    left: u32,
}

/// Per family, the read schedule and what earlier reads found. Times are the loop's
/// monotonic clock in µs.
#[derive(Default)]
pub(crate) struct Reads {
    next: HashMap<String, u64>,
    /// A summary of the contents last read.
    hash: HashMap<String, Contents>,
    /// AstDB's commit stamp taken just before a costly read that found nothing new.
    stamp: HashMap<String, (u32, u64)>,
    /// Families whose AstDB contents changed through an apply or a captured write since
    /// their last read.
    touched: HashSet<String>,
    /// Families being followed (see [`Reads::follow_up`]): when the next follow-up read
    /// comes, and the wait before the one after it. A read that comes earlier (a
    /// refresh, a commit) and finds nothing does not end the following: the follow-up
    /// read still comes.
    following: HashMap<String, Following>,
    /// Per family, the remote changes applied since its last read, and when the last of
    /// them was (µs).
    applied: HashMap<String, (u64, u64)>,
    /// Families whose interval read is put off while they take in a catch-up: since when.
    put_off: HashMap<String, u64>,
    /// Families to be read at the next turn whatever they are taking in (a refresh).
    forced: HashSet<String>,
    pub done: u64,
    pub skipped: u64,
    /// Reads made in pieces, and how many of them found something new (and so read the
    /// family whole).
    pub in_pieces: u64,
    pub pieces_new: u64,
}

impl Reads {
    /// Forgets what earlier reads of `name` found, so that its next read is done and
    /// handed to the engine whole.
    pub fn forget(&mut self, name: &str) {
        self.hash.remove(name);
        self.stamp.remove(name);
    }

    /// `name` is no longer shared.
    pub fn drop_family(&mut self, name: &str) {
        self.next.remove(name);
        self.touched.remove(name);
        self.following.remove(name);
        self.applied.remove(name);
        self.put_off.remove(name);
        self.forced.remove(name);
        self.forget(name);
    }

    /// Reads `name` at the next turn, whole.
    pub fn now(&mut self, name: &str, at: u64) {
        self.next.insert(name.to_string(), at);
        self.forced.insert(name.to_string());
        self.forget(name);
    }

    /// Reads `name` at the next turn, keeping what earlier reads found (so a read that
    /// finds the same contents is not handed to the engine).
    pub fn soon(&mut self, name: &str, at: u64) {
        if let Some(next) = self.next.get_mut(name) {
            *next = (*next).min(at);
        }
    }

    /// Notes that shared family `name` changed in AstDB other than by a read.
    pub fn touch(&mut self, name: &str) {
        if !self.touched.contains(name) {
            self.touched.insert(name.to_string());
        }
    }

    /// Notes that `count` remote changes to shared family `name` were just applied to
    /// AstDB: its contents changed other than by a read (see [`Reads::touch`]).
    pub fn applied(&mut self, name: &str, count: u64, at: u64) {
        self.touch(name);
        match self.applied.get_mut(name) {
            Some(a) => *a = (a.0 + count, at),
            None => {
                self.applied.insert(name.to_string(), (count, at));
            }
        }
    }

    /// Dialplan writes were lost from the inbox: every family is read, whatever its stamp.
    pub fn distrust_stamps(&mut self) {
        self.stamp.clear();
    }

    /// The families whose read is due (all of them with `everything`), each then
    /// scheduled one interval on.
    ///
    /// The interval read of a family that is taking in a catch-up (see [`BULK_APPLIES`])
    /// is put off until the catch-up is over, by one interval at the most: reading a
    /// large family from AstDB while the catch-up writes to it holds the AstDB writer
    /// back and the whole answer in memory, and it would find the catch-up's own writes.
    /// A refresh, a follow-up read and `everything` are never put off.
    pub fn due(
        &mut self,
        told: &BTreeMap<String, SharedFamily>,
        at: u64,
        everything: bool,
    ) -> Vec<String> {
        let mut due = Vec::new();
        for (name, family) in told {
            let next = self.next.entry(name.clone()).or_insert(at);
            if everything || *next <= at {
                let interval_us = family.sync_interval_ms.saturating_mul(1000);
                let follow_up = self.following.get(name).is_some_and(|f| f.at <= at);
                let taking_in = self.applied.get(name).is_some_and(|&(count, last)| {
                    count >= BULK_APPLIES && at.saturating_sub(last) < APPLYING_US
                });
                if !everything && !follow_up && taking_in && !self.forced.contains(name) {
                    let since = *self.put_off.entry(name.clone()).or_insert(at);
                    let latest = since.saturating_add(interval_us);
                    if at < latest {
                        *next = latest.min(at + PUT_OFF_US);
                        continue;
                    }
                }
                self.put_off.remove(name);
                self.forced.remove(name);
                let interval = at + interval_us;
                *next = interval;
                if let Some(f) = self.following.get_mut(name) {
                    if f.at <= at {
                        // This is a follow-up read. Should it find nothing new, the next
                        // one waits twice as long; after the last, the interval.
                        *f = Following {
                            at: if f.left == 0 { u64::MAX } else { at + f.wait },
                            wait: f.wait.saturating_mul(2),
                            left: f.left.saturating_sub(1),
                        };
                    }
                    if f.at < interval {
                        *next = f.at;
                    } else {
                        self.following.remove(name);
                    }
                }
                due.push(name.clone());
            }
        }
        due
    }

    /// When the next read is due.
    pub fn next_due(&self, told: &BTreeMap<String, SharedFamily>) -> Option<u64> {
        told.keys()
            .map(|name| self.next.get(name).copied().unwrap_or(0))
            .min()
    }

    /// Whether a read of `name` can be skipped: AstDB has committed nothing since a
    /// costly read that found nothing new.
    pub fn unchanged_since(&mut self, name: &str, stamp: Option<(u32, u64)>) -> bool {
        let same = stamp.is_some() && self.stamp.get(name) == stamp.as_ref();
        if same {
            self.skipped += 1;
        }
        same
    }

    /// Records a read of `name` that found `read`; whether it may hold something new
    /// (`engine_holds`: the engine already holds exactly these contents).
    pub fn is_new(&mut self, name: &str, read: Contents, engine_holds: bool) -> bool {
        self.done += 1;
        self.applied.remove(name);
        let touched = self.touched.remove(name);
        let known = engine_holds || (!touched && self.hash.get(name) == Some(&read));
        self.hash.insert(name.to_string(), read);
        !known
    }

    /// Whether `name` is being followed (see [`Reads::follow_up`]).
    pub fn is_following(&self, name: &str) -> bool {
        self.following.contains_key(name)
    }

    /// A costly read of `name` found nothing new: skip the next ones while `stamp` holds.
    pub fn found_nothing(&mut self, name: &str, stamp: Option<(u32, u64)>) {
        if let Some(stamp) = stamp {
            self.stamp.insert(name.to_string(), stamp);
        }
    }

    /// A read of `name` (which took `took` µs) found local changes: some writer other
    /// than the dialplan is busy with it (a script loading numbers through AMI, say).
    /// It is read again soon rather than a whole interval later, so the rest of its
    /// burst follows quickly; the wait is at least twice the read, so that reading never
    /// takes more than a third of the thread. A follow-up read that finds nothing new
    /// doubles the wait before the next one; after [`FOLLOW_UP_READS`] of them the
    /// family is back to its interval. So a writer that pauses (held up by AstDB's
    /// commit, say) is still followed when it goes on, and one that has finished costs
    /// a few reads, some of them skipped while AstDB commits nothing.
    pub fn follow_up(&mut self, name: &str, at: u64, took: u64) {
        self.stamp.remove(name);
        let wait = FOLLOW_UP_US.max(took.saturating_mul(2));
        let soon = at + wait;
        self.following.insert(
            name.to_string(),
            Following {
                at: soon,
                wait: wait.saturating_mul(2),
                left: FOLLOW_UP_READS - 1,
            },
        );
        if let Some(next) = self.next.get_mut(name) {
            if soon < *next {
                *next = soon;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Mode;

    /// One global family read every minute.
    fn read_every_minute(name: &str) -> BTreeMap<String, SharedFamily> {
        let mut f = SharedFamily::from_dialplan(name, Mode::Global);
        f.sync_interval_ms = 60_000;
        BTreeMap::from([(name.to_string(), f)])
    }

    #[test]
    fn an_early_read_that_finds_nothing_keeps_a_pending_follow_up() {
        let told = read_every_minute("slow");
        let mut reads = Reads::default();
        assert_eq!(reads.due(&told, 0, false), ["slow"]);
        // That read found changes: the next is 100 ms away, not a minute.
        reads.follow_up("slow", 1_000, 1_000);
        assert_eq!(reads.next_due(&told), Some(101_000));
        // A refresh reads it at 5 ms and finds nothing: the follow-up still comes.
        reads.now("slow", 5_000);
        assert_eq!(reads.due(&told, 5_000, false), ["slow"]);
        assert_eq!(reads.next_due(&told), Some(101_000));
        // The follow-up read finds nothing either: the next waits twice as long.
        assert_eq!(reads.due(&told, 101_000, false), ["slow"]);
        assert_eq!(reads.next_due(&told), Some(301_000));
    }

    #[test]
    fn a_writer_that_pauses_is_still_followed_and_one_that_stopped_is_soon_back_to_the_interval() {
        let told = read_every_minute("slow");
        let mut reads = Reads::default();
        assert_eq!(reads.due(&told, 0, false), ["slow"]);
        reads.follow_up("slow", 0, 1_000);
        // The follow-up read finds nothing (the writer waits for AstDB's commit)...
        assert_eq!(reads.due(&told, 100_000, false), ["slow"]);
        assert_eq!(reads.next_due(&told), Some(300_000));
        // ...and the next finds its writes: the wait is short again.
        assert_eq!(reads.due(&told, 300_000, false), ["slow"]);
        reads.follow_up("slow", 301_000, 1_000);
        assert_eq!(reads.next_due(&told), Some(401_000));
        // The writer has finished: the reads that find nothing come 0.2, 0.4 and 0.8 s
        // apart, then the family is back to its interval.
        let mut at = 401_000;
        let mut gaps = Vec::new();
        loop {
            assert_eq!(reads.due(&told, at, false), ["slow"]);
            let next = reads.next_due(&told).unwrap();
            gaps.push(next - at);
            if next - at == 60_000_000 {
                break;
            }
            at = next;
        }
        assert_eq!(gaps, [200_000, 400_000, 800_000, 60_000_000]);
    }

    #[test]
    fn a_slow_read_is_followed_no_sooner_than_twice_its_duration() {
        let told = read_every_minute("big");
        let mut reads = Reads::default();
        assert_eq!(reads.due(&told, 0, false), ["big"]);
        // A read of 400 ms that found changes: the next comes 800 ms after it.
        reads.follow_up("big", 400_000, 400_000);
        assert_eq!(reads.next_due(&told), Some(1_200_000));
        assert_eq!(reads.due(&told, 1_200_000, false), ["big"]);
        assert_eq!(reads.next_due(&told), Some(2_800_000));
    }

    #[test]
    fn a_family_taking_in_a_catch_up_is_read_once_it_is_over_or_an_interval_late_at_most() {
        let told = read_every_minute("big");
        let mut reads = Reads::default();
        assert_eq!(reads.due(&told, 0, false), ["big"]);
        // A catch-up writes to it from 59.5 s to 61 s: the read due at 60 s waits for
        // half a second without applies.
        let mut at = 59_500_000;
        while at <= 61_000_000 {
            reads.applied("big", 5_000, at);
            assert!(
                at < 60_000_000 || reads.due(&told, at, false).is_empty(),
                "{at}"
            );
            at += 100_000;
        }
        let mut read_at = None;
        while read_at.is_none() {
            at = reads.next_due(&told).unwrap();
            if !reads.due(&told, at, false).is_empty() {
                read_at = Some(at);
            }
        }
        // (Put-off reads come 250 ms apart.)
        assert!(
            (61_500_000..=61_750_000).contains(&read_at.unwrap()),
            "{read_at:?}"
        );

        // Applies that never stop: read one interval late, at 3 min instead of 2...
        let read_before = read_at.unwrap();
        let mut read_at = None;
        while read_at.is_none() {
            at += 100_000;
            reads.applied("big", 5_000, at);
            if !reads.due(&told, at, false).is_empty() {
                read_at = Some(at);
            }
        }
        let late = read_at.unwrap() - read_before;
        assert!((120_000_000..=120_300_000).contains(&late), "{late}");
        // ...and a refresh reads it at once.
        reads.applied("big", 5_000, at + 100_000);
        reads.now("big", at + 100_000);
        assert_eq!(reads.due(&told, at + 100_000, false), ["big"]);
    }

    #[test]
    fn a_trickle_of_remote_changes_does_not_put_a_read_off() {
        let told = read_every_minute("queue");
        let mut reads = Reads::default();
        assert_eq!(reads.due(&told, 0, false), ["queue"]);
        reads.applied("queue", 500, 59_900_000);
        assert_eq!(reads.due(&told, 60_000_000, false), ["queue"]);
    }
}
