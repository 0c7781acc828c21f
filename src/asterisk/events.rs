//! Change events as Stasis messages on Asterisk's system topic (see glue.c): AMI
//! clients receive them through manager's forwarding of that topic.

use std::ffi::c_int;

use super::{c_string, sys};
use crate::eid::Eid;
use crate::node::events::{Event, EventClass, EventSink};

/// How long unload waits for the messages still being delivered (their data is
/// destroyed by code in this library).
const DRAIN_MS: c_int = 5_000;

/// Creates the message types. Ok(false): stasis.conf declines them, so no event is
/// published.
pub fn start() -> Result<bool, String> {
    // SAFETY: a plain call; the types are released by `stop`.
    match unsafe { sys::astdb_cluster_events_start() } {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err("could not create the Stasis message types of the change events".into()),
    }
}

/// Publishes nothing more and waits for the messages in flight; how many were still
/// alive after the wait (0 normally).
pub fn stop() -> i32 {
    // SAFETY: called once the module's thread, the only publisher, has stopped.
    unsafe { sys::astdb_cluster_events_stop(DRAIN_MS) }
}

/// An event as a message carries it: rendered only when a subscriber asks.
pub(crate) struct Made {
    pub event: Event,
    /// This node, the sender named in the JSON form.
    pub eid: Eid,
}

impl Made {
    /// The AMI body (`json` false) or the JSON form.
    pub fn render(&self, json: bool) -> String {
        if json {
            self.event.json(self.eid)
        } else {
            self.event.ami()
        }
    }
}

/// The module's event sink: each event a Stasis message. The loop's thread only
/// hands the event over; its AMI and JSON forms are made on the thread of the
/// subscriber that wants them.
pub struct StasisEvents {
    pub eid: Eid,
    /// Events Stasis could not take.
    pub failed: u64,
}

impl EventSink for StasisEvents {
    fn publish(&mut self, event: Event) {
        let class = match event.class() {
            EventClass::Change => sys::ASTDB_CLUSTER_EVENT_CHANGE,
            EventClass::Node => sys::ASTDB_CLUSTER_EVENT_NODE,
        } as c_int;
        let name = c_string(event.name());
        let made = Box::into_raw(Box::new(Made {
            event,
            eid: self.eid,
        }));
        // SAFETY: the glue owns `made` from here: the message's data releases it through
        // astdb_cluster_event_drop, or the glue does at once if it cannot publish.
        let res = unsafe { sys::astdb_cluster_event_publish(class, name.as_ptr(), made.cast()) };
        if res != 0 {
            self.failed += 1;
        }
    }
}
