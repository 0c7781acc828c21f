//! DB_SHARED and DB_SHARED_EXISTS. Bad arguments log a warning naming the
//! function and what was wrong, and change nothing.

use super::with_runtime;
use crate::engine::family::{validate_family_name, Mode};
use crate::{notice, warning};

/// What `Set(DB_SHARED(<args>)=family)` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Share(Mode),
    Unshare,
}

/// Parses the arguments of a DB_SHARED write: `put,global`, `put,unique` or `delete`.
pub fn parse_write_args(args: &str) -> Result<Request, String> {
    let parts: Vec<&str> = args.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [action, mode] if action.eq_ignore_ascii_case("put") => match mode.parse::<Mode>() {
            Ok(mode) => Ok(Request::Share(mode)),
            Err(e) => Err(e),
        },
        [action] if action.eq_ignore_ascii_case("put") => {
            Err("put needs a mode: DB_SHARED(put,global) or DB_SHARED(put,unique)".into())
        }
        [action] if action.eq_ignore_ascii_case("delete") => Ok(Request::Unshare),
        [action, extra @ ..] if action.eq_ignore_ascii_case("delete") => Err(format!(
            "delete takes no further argument (got '{}')",
            extra.join(",")
        )),
        [""] => Err("no action given (want put,global, put,unique or delete)".into()),
        _ => Err(format!(
            "'{args}' is not an action (want put,global, put,unique or delete)"
        )),
    }
}

/// `Set(DB_SHARED(args)=family)`. Returns 0 on success, -1 on refusal.
pub fn write_db_shared(args: &str, family: &str) -> i32 {
    let family = family.trim();
    let request = match parse_write_args(args) {
        Ok(r) => r,
        Err(why) => {
            warning!("DB_SHARED({args})={family}: {why}; nothing changed");
            return -1;
        }
    };
    if let Err(why) = validate_family_name(family) {
        warning!("DB_SHARED({args})={family}: {why}; nothing changed");
        return -1;
    }
    let outcome = with_runtime(|rt| match request {
        Request::Share(mode) => rt.share(family, mode),
        Request::Unshare => rt.unshare(family),
    })
    .and_then(|r| r);
    match outcome {
        Ok(message) => {
            notice!("DB_SHARED: {message}");
            0
        }
        Err(why) => {
            warning!("DB_SHARED({args})={family}: {why}; nothing changed");
            -1
        }
    }
}

/// `${DB_SHARED(family)}`: the mode sharing it (global or unique), or empty.
pub fn read_db_shared(family: &str) -> Option<String> {
    let family = family.trim();
    if let Err(why) = validate_family_name(family) {
        warning!("DB_SHARED({family}): {why}");
        return None;
    }
    match with_runtime(|rt| rt.registry.covering(family).map(|f| f.mode.to_string())) {
        Ok(mode) => Some(mode.unwrap_or_default()),
        Err(why) => {
            warning!("DB_SHARED({family}): {why}");
            None
        }
    }
}

/// `${DB_SHARED_EXISTS(family)}`: 1 when the family is shared, else 0.
pub fn read_db_shared_exists(family: &str) -> Option<String> {
    let family = family.trim();
    if let Err(why) = validate_family_name(family) {
        warning!("DB_SHARED_EXISTS({family}): {why}");
        return None;
    }
    match with_runtime(|rt| rt.registry.covering(family).is_some()) {
        Ok(shared) => Some(if shared { "1" } else { "0" }.into()),
        Err(why) => {
            warning!("DB_SHARED_EXISTS({family}): {why}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_delete_arguments_are_understood() {
        assert_eq!(
            parse_write_args("put,global"),
            Ok(Request::Share(Mode::Global))
        );
        assert_eq!(
            parse_write_args("PUT, unique"),
            Ok(Request::Share(Mode::Unique))
        );
        assert_eq!(parse_write_args("delete"), Ok(Request::Unshare));
    }

    #[test]
    fn bad_arguments_are_refused_with_what_was_wrong() {
        assert!(parse_write_args("put,sideways")
            .unwrap_err()
            .contains("'sideways' is not a sharing mode"));
        assert!(parse_write_args("put")
            .unwrap_err()
            .contains("put needs a mode"));
        assert!(parse_write_args("")
            .unwrap_err()
            .contains("no action given"));
        assert!(parse_write_args("share,global")
            .unwrap_err()
            .contains("'share,global' is not an action"));
        assert!(parse_write_args("delete,global")
            .unwrap_err()
            .contains("delete takes no further argument"));
    }
}
