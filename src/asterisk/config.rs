//! Reading configuration files through Asterisk's config loader.

use std::ffi::c_char;

use super::{c_string, owned, sys};
use crate::config::{RawSection, RawVar};

/// What loading a file gave.
pub enum Loaded {
    Missing,
    Unchanged,
    Invalid,
    Sections(Vec<RawSection>),
}

/// Loads `file` from the config directory; with `only_if_changed`, an unchanged
/// file gives `Loaded::Unchanged`.
pub fn load(file: &str, only_if_changed: bool) -> Loaded {
    let name = c_string(file);
    let who = c_string("res_astdb_cluster");
    let flags = sys::ast_flags {
        flags: if only_if_changed { 1 << 1 } else { 0 },
    };
    // SAFETY: Asterisk returns NULL, one of two sentinel values, or a config we own.
    let cfg = unsafe { sys::ast_config_load2(name.as_ptr(), who.as_ptr(), flags) };
    match cfg as isize {
        0 => return Loaded::Missing,
        -1 => return Loaded::Unchanged,
        -2 => return Loaded::Invalid,
        _ => {}
    }
    let mut sections = Vec::new();
    // SAFETY: browsing a config we own, copying everything, then destroying it.
    unsafe {
        let mut category: *mut c_char = std::ptr::null_mut();
        loop {
            category = sys::ast_category_browse(cfg, category);
            if category.is_null() {
                break;
            }
            let mut section = RawSection {
                name: owned(category).unwrap_or_default(),
                vars: Vec::new(),
            };
            let mut var = sys::ast_variable_browse(cfg, category);
            while !var.is_null() {
                section.vars.push(RawVar {
                    name: owned((*var).name).unwrap_or_default(),
                    value: owned((*var).value).unwrap_or_default(),
                    line: (*var).lineno.max(0) as u32,
                });
                var = (*var).next;
            }
            sections.push(section);
        }
        sys::ast_config_destroy(cfg);
    }
    Loaded::Sections(sections)
}
