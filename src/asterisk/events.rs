//! Change events as Stasis messages on Asterisk's system topic (see glue.c): AMI
//! clients receive them through manager's forwarding of that topic.

use std::ffi::c_int;

use super::{c_string, sys};
use crate::eid::Eid;
use crate::node::events::{self, Event, EventClass, EventSink};

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

/// The module's event sink: each event a Stasis message.
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
        // One table of fields serves both forms.
        let table = event.table();
        let name = c_string(event.name());
        let ami = c_string(&events::ami_of(&table));
        let json = c_string(&events::json_of(event.name(), self.eid, table));
        // SAFETY: the strings outlive the call; the glue copies them.
        let res = unsafe {
            sys::astdb_cluster_event_publish(class, name.as_ptr(), ami.as_ptr(), json.as_ptr())
        };
        if res != 0 {
            self.failed += 1;
        }
    }
}
