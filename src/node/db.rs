//! The loop's access to AstDB, behind a trait: Asterisk's `ast_db_*` API in the module
//! (src/asterisk/), an in-memory AstDB that commits once a second in the simulator.

/// The rows of one family as read: keys relative to the family, and their values.
pub trait Rows {
    /// Visits every row without copying it.
    fn each(&self, visit: &mut dyn FnMut(&str, &str));
    /// The rows, copied.
    fn to_vec(&self) -> Vec<(String, String)>;
}

impl Rows for Vec<(String, String)> {
    fn each(&self, visit: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            visit(k, v);
        }
    }

    fn to_vec(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

/// AstDB as the loop uses it.
pub trait AstDb: Send {
    /// Every key of `family` and its subtree (keys relative to `family`), and nothing
    /// of a family that merely begins alike.
    fn read(&mut self, family: &str) -> Box<dyn Rows + '_>;
    /// Writes `/family/key` = `value`.
    fn put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String>;
    /// Deletes `/family/key`; whether it was there.
    fn del(&mut self, family: &str, key: &str) -> bool;
    /// A stamp of AstDB's committed state: equal stamps at two moments mean nothing was
    /// committed in between. None: not known (assume changed).
    fn committed_stamp(&mut self) -> Option<(u32, u64)>;
}
