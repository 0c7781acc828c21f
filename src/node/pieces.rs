//! A large family's read in pieces: key prefixes whose rows together are every row of
//! the family, each piece small enough that AstDB's answer for it (about 70 bytes a row
//! in Asterisk's list) stays a few megabytes whatever the family's size.
//!
//! AstDB reads by key prefix only (`ast_db_gettree_by_prefix`), and such a read leaves
//! out the key equal to the prefix, so each piece is a prefix's read and, but for the
//! family's own whole read, the key equal to the prefix, fetched alone. A prefix whose
//! rows are too many is split into one prefix per next byte (1 to 255, whether any key
//! has it or not: AstDB may hold keys the engine does not know yet). How many rows a
//! prefix holds is guessed from a sample of the keys the engine holds for the family.

/// One piece of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The rows whose keys begin with these bytes, the key equal to them left out (as
    /// AstDB's prefix read does).
    Under(Vec<u8>),
    /// The row whose key is exactly these bytes.
    Exact(Vec<u8>),
}

/// Longest prefix split: keys longer than AstDB allows end below it anyway.
const MAX_PREFIX: usize = 256;

/// The most pieces worth reading (some 50 ms of AstDB calls) rather than the whole
/// family: each split costs 509, and keys sharing a long prefix split at every byte of
/// it (the other 254 next bytes must be read too, for keys the engine does not know).
pub const MAX_PIECES: usize = 16_384;

/// The pieces of a family of which `sample` holds about one key in `every` (sorted,
/// distinct), each meant to hold at most `max_rows` rows. In key order; with no sample,
/// one piece: the whole family.
pub fn pieces(sample: &[String], every: usize, max_rows: usize) -> Vec<Piece> {
    let mut out = Vec::new();
    split(
        &mut Vec::new(),
        sample,
        every.max(1),
        max_rows.max(1),
        &mut out,
    );
    out
}

fn split(
    prefix: &mut Vec<u8>,
    keys: &[String],
    every: usize,
    max_rows: usize,
    out: &mut Vec<Piece>,
) {
    // The sorted sample keys of this prefix: the prefix itself first, if it is one.
    let mut rest = keys;
    if !prefix.is_empty() {
        out.push(Piece::Exact(prefix.clone()));
    }
    if rest.first().is_some_and(|k| k.len() == prefix.len()) {
        rest = &rest[1..];
    }
    if rest.len().saturating_mul(every) <= max_rows || prefix.len() >= MAX_PREFIX {
        out.push(Piece::Under(prefix.clone()));
        return;
    }
    let at = prefix.len();
    // No AstDB key holds a NUL: a key that does is no guide.
    rest = &rest[rest.iter().take_while(|k| k.as_bytes()[at] == 0).count()..];
    for byte in 1..=255u8 {
        let n = rest.iter().take_while(|k| k.as_bytes()[at] == byte).count();
        prefix.push(byte);
        split(prefix, &rest[..n], every, max_rows, out);
        prefix.pop();
        rest = &rest[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which piece holds `key`; the pieces must cover it once.
    fn holder(pieces: &[Piece], key: &[u8]) -> usize {
        let holding: Vec<usize> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| match p {
                Piece::Under(pre) => key.len() > pre.len() && key.starts_with(pre),
                Piece::Exact(k) => k == key,
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holding.len(), 1, "{key:?} is in pieces {holding:?}");
        holding[0]
    }

    #[test]
    fn a_small_family_is_read_whole() {
        let sample: Vec<String> = (0..10).map(|i| format!("key{i}")).collect();
        assert_eq!(pieces(&sample, 100, 1_000), vec![Piece::Under(Vec::new())]);
        assert_eq!(pieces(&[], 1, 1), vec![Piece::Under(Vec::new())]);
    }

    #[test]
    fn every_key_of_a_large_family_is_in_exactly_one_piece_and_the_pieces_stay_small() {
        let all: Vec<String> = (0..20_000).map(|i| format!("key{i}")).collect();
        let mut sample: Vec<String> = all.iter().step_by(16).cloned().collect();
        sample.sort();
        let pieces = pieces(&sample, 16, 1_000);
        let mut rows = vec![0usize; pieces.len()];
        for key in &all {
            rows[holder(&pieces, key.as_bytes())] += 1;
        }
        // The guess is from one key in 16: a piece may hold a little more than asked.
        assert!(
            rows.iter().all(|&n| n <= 1_200),
            "largest piece: {:?}",
            rows.iter().max()
        );
        // Split: "", "k", "ke", "key", "key1", and "key10" to "key19" and "key2" to
        // "key9" (1,111 keys each), each into 255 prefix reads and 255 single keys.
        assert!(pieces.len() <= 23 * 2 * 255, "{} pieces", pieces.len());
        // Keys the engine does not know, of any bytes, are in one piece too (the
        // family's own empty key excepted: a read of the family leaves it out).
        for key in ["a", "key", "key1", "kez", "ÿ", "key1\u{7f}", "zzz"] {
            holder(&pieces, key.as_bytes());
        }
        holder(&pieces, &[b'k', 0xe9, 0xff]);
        assert!(pieces.iter().all(|p| p != &Piece::Exact(Vec::new())));
    }

    #[test]
    fn keys_sharing_a_long_prefix_split_at_each_of_its_bytes() {
        let shared = "sip:registrar.example.com/";
        let sample: Vec<String> = (0..4_000).map(|i| format!("{shared}{i:04}")).collect();
        let pieces = pieces(&sample, 1, 1_000);
        // The empty prefix and each of the 26 bytes of the shared one is a split (255
        // prefixes and the 255 keys equal to them; the root is no key): 509 pieces a
        // split, and the family's whole read at the root.
        assert_eq!(pieces.len(), 27 * 509 + 1);
        // Ten bytes more and reading in pieces would cost more than it saves: the loop
        // reads such a family whole.
        let longer = format!("{shared}0123456789");
        let sample: Vec<String> = (0..4_000).map(|i| format!("{longer}{i:04}")).collect();
        assert!(super::pieces(&sample, 1, 1_000).len() > MAX_PIECES);
    }

    #[test]
    fn pieces_come_in_key_order() {
        let mut sample: Vec<String> = (0..5_000).map(|i| format!("{:x}", i * 7919)).collect();
        sample.sort();
        let pieces = pieces(&sample, 8, 500);
        let starts: Vec<&Vec<u8>> = pieces
            .iter()
            .map(|p| match p {
                Piece::Under(p) | Piece::Exact(p) => p,
            })
            .collect();
        // A prefix's own key comes before the keys below it.
        assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        assert!(pieces.windows(2).all(|w| !matches!(
            (&w[0], &w[1]),
            (Piece::Under(a), Piece::Exact(b)) if a == b
        )));
    }
}
