//! Logging through Asterisk's logger.

use super::{c_string, sys};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Notice = 2,
    Warning = 3,
    Error = 4,
}

/// Logs `msg` at `level`, attributed to `file`:`line` in `func`.
pub fn log(level: Level, file: &str, line: u32, func: &str, msg: &str) {
    let (file, func, msg) = (c_string(file), c_string(func), c_string(msg));
    // SAFETY: all strings outlive the call; the glue formats with "%s".
    unsafe {
        sys::astdb_cluster_log(
            level as i32,
            file.as_ptr(),
            line as i32,
            func.as_ptr(),
            msg.as_ptr(),
        )
    }
}

#[macro_export]
macro_rules! notice {
    ($($arg:tt)*) => { $crate::asterisk::log::log($crate::asterisk::log::Level::Notice, file!(), line!(), module_path!(), &format!($($arg)*)) };
}
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::asterisk::log::log($crate::asterisk::log::Level::Warning, file!(), line!(), module_path!(), &format!($($arg)*)) };
}
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::asterisk::log::log($crate::asterisk::log::Level::Error, file!(), line!(), module_path!(), &format!($($arg)*)) };
}
