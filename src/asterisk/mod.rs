//! The Asterisk side of the border: raw bindings and the C glue live here, and
//! everything that leaves this module is an owned Rust value.

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}
