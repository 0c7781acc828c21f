//! The loop's access to AstDB, behind a trait: Asterisk's `ast_db_*` API in the module
//! (src/asterisk/), an in-memory AstDB that commits once a second in the simulator.

/// The rows of one family as read: keys relative to the family, and their values.
pub trait Rows {
    /// Visits every row without copying it.
    fn each(&self, visit: &mut dyn FnMut(&str, &str));
    /// The rows, copied.
    fn to_vec(&self) -> Vec<(String, String)>;
    /// The rows, copied into one buffer (two strings per row would cost about 110
    /// bytes a row of a million-row read, for as long as the read is worked through).
    fn packed(&self) -> PackedRows {
        let mut rows = PackedRows::default();
        self.each(&mut |key, value| rows.push(key, value));
        rows
    }
}

/// Rows copied into one string: per row, where its key ends and where its value ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedRows {
    text: String,
    ends: Vec<(usize, usize)>,
}

impl PackedRows {
    pub fn push(&mut self, key: &str, value: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((key_end, self.text.len()));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Row `i`'s key and value.
    pub fn row(&self, i: usize) -> (&str, &str) {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p].1);
        let (key_end, end) = self.ends[i];
        (&self.text[start..key_end], &self.text[key_end..end])
    }

    /// Rows `range`, copied as the engine takes them.
    pub fn to_vec(&self, range: std::ops::Range<usize>) -> Vec<(String, String)> {
        range
            .map(|i| {
                let (k, v) = self.row(i);
                (k.to_string(), v.to_string())
            })
            .collect()
    }
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
    /// The rows of `family` whose keys (relative to it) begin with the bytes `prefix`
    /// and are longer, as AstDB's prefix read gives them: a piece of [`AstDb::read`].
    fn read_under(&mut self, family: &str, prefix: &[u8]) -> Box<dyn Rows + '_>;
    /// The value of the key of `family` that is exactly the bytes `key`, as
    /// [`AstDb::read`] would give it.
    fn read_exact(&mut self, family: &str, key: &[u8]) -> Option<String>;
    /// Writes `/family/key` = `value`.
    fn put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String>;
    /// Deletes `/family/key`; whether it was there.
    fn del(&mut self, family: &str, key: &str) -> bool;
    /// A stamp of AstDB's committed state: equal stamps at two moments mean nothing was
    /// committed in between. None: not known (assume changed).
    fn committed_stamp(&mut self) -> Option<(u32, u64)>;
    /// A replicated change's write: it may still be under way when this returns (the
    /// module's AstDB writes on a thread of its own, and tells its failures from
    /// [`AstDb::settle`]), but every other call here sees it done.
    fn apply_put(&mut self, family: &str, key: &str, value: &str) -> Result<(), String> {
        self.put(family, key, value)
    }
    /// A replicated deletion, as [`AstDb::apply_put`].
    fn apply_del(&mut self, family: &str, key: &str) {
        self.del(family, key);
    }
    /// The `apply_*` calls of a batch are all made: they may start (a module's AstDB
    /// gathers them into groups).
    fn applies_made(&mut self) {}
    /// Waits until every `apply_*` made so far is in AstDB; the errors of those that
    /// failed since the last call.
    fn settle(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Waits until every `apply_*` made before the last [`AstDb::applies_made`] call is
    /// in AstDB (those of the last call may still be under way), as a replica-log save
    /// needs (see [`crate::engine::Engine::take_batch`]); the errors as
    /// [`AstDb::settle`].
    fn settle_before_last(&mut self) -> Vec<String> {
        self.settle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_give_back_every_row_as_read() {
        let rows: Vec<(String, String)> = vec![
            ("a".into(), "1".into()),
            ("sub/é".into(), String::new()),
            (String::new(), "x".into()),
            ("z".into(), "zz".into()),
        ];
        let packed = rows.packed();
        assert_eq!(packed.len(), 4);
        assert_eq!(packed.row(1), ("sub/é", ""));
        assert_eq!(packed.to_vec(0..4), rows);
        assert_eq!(packed.to_vec(1..3), rows[1..3]);
    }
}
