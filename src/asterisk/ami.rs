//! AMI actions at the border: the request's headers in, the reply out (see glue.c).

use super::{c_string, owned, sys};
use crate::module::ami::{Reply, Request};
use crate::node::events::ami_field;

/// One request as Asterisk handed it to the handler.
pub(crate) struct AmiRequest {
    pub s: *mut sys::mansession,
    pub m: *const sys::message,
}

impl Request for AmiRequest {
    fn header(&self, name: &str) -> String {
        let name = c_string(name);
        // SAFETY: `m` is the message Asterisk passed to the running handler; the header
        // text it returns lives as long as the message.
        unsafe { owned(sys::astdb_cluster_ami_header(self.m, name.as_ptr())) }
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

fn fields_text(out: &mut String, fields: &[(String, String)]) {
    for (k, v) in fields {
        ami_field(out, k, v);
    }
}

impl AmiRequest {
    fn append(&self, text: &str) {
        let text = c_string(text);
        // SAFETY: the session is the handler's; the glue formats with "%s".
        unsafe { sys::astdb_cluster_ami_append(self.s, text.as_ptr()) }
    }

    fn id_line(&self) -> String {
        match self.header("ActionID") {
            id if id.is_empty() => String::new(),
            id => format!("ActionID: {id}\r\n"),
        }
    }

    /// Sends `reply` on the session.
    pub fn send(&self, reply: Reply) {
        let text = |t: &str| c_string(t);
        match reply {
            Reply::Error(why) => {
                let why = text(&why);
                // SAFETY: session and message are the handler's; the text outlives the call.
                unsafe { sys::astdb_cluster_ami_error(self.s, self.m, why.as_ptr()) }
            }
            Reply::Ack(message) => {
                let message = text(&message);
                // SAFETY: as above.
                unsafe { sys::astdb_cluster_ami_ack(self.s, self.m, message.as_ptr()) }
            }
            Reply::Fields(fields) => {
                let mut out = format!("Response: Success\r\n{}", self.id_line());
                fields_text(&mut out, &fields);
                out.push_str("\r\n");
                self.append(&out);
            }
            Reply::List {
                message,
                event,
                items,
                complete,
            } => {
                let message = text(&message);
                // SAFETY: as above.
                unsafe { sys::astdb_cluster_ami_listack(self.s, self.m, message.as_ptr()) };
                let id = self.id_line();
                for item in &items {
                    let mut out = format!("Event: {event}\r\n{id}");
                    fields_text(&mut out, item);
                    out.push_str("\r\n");
                    self.append(&out);
                }
                let complete = text(complete);
                let count = i32::try_from(items.len()).unwrap_or(i32::MAX);
                // SAFETY: as above.
                unsafe { sys::astdb_cluster_ami_complete(self.s, self.m, complete.as_ptr(), count) }
            }
        }
    }
}
