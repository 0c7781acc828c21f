//! Entity IDs: how Asterisk servers name themselves (`entityid` in asterisk.conf).
//! A word shared by every layer: the engine versions changes with it, the transport
//! names peers by it, Asterisk reports its own.

use std::fmt;
use std::str::FromStr;

/// A server's entity ID, written `11:11:11:11:11:11`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Eid(pub [u8; 6]);

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eid({self})")
    }
}

impl FromStr for Eid {
    type Err = String;

    /// Accepts six hex octets separated by `:` (or `-`), as Asterisk does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!(
                "'{s}' is not an entity ID (want six hex octets like 11:22:33:44:55:66)"
            ));
        }
        let mut eid = [0u8; 6];
        for (slot, part) in eid.iter_mut().zip(&parts) {
            if part.is_empty() || part.len() > 2 {
                return Err(format!("'{s}' is not an entity ID: bad octet '{part}'"));
            }
            *slot = u8::from_str_radix(part, 16)
                .map_err(|_| format!("'{s}' is not an entity ID: bad octet '{part}'"))?;
        }
        Ok(Eid(eid))
    }
}

/// True when `segment` is written like an EID; such names are where unique copies live.
pub fn looks_like_eid(segment: &str) -> bool {
    segment.len() == 17 && segment.parse::<Eid>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eid_round_trips_through_its_text_form() {
        let eid: Eid = "11:22:33:aa:bb:CC".parse().unwrap();
        assert_eq!(eid.0, [0x11, 0x22, 0x33, 0xaa, 0xbb, 0xcc]);
        assert_eq!(eid.to_string(), "11:22:33:aa:bb:cc");
    }

    #[test]
    fn malformed_eids_are_refused_with_the_text_named() {
        for bad in [
            "",
            "11:22",
            "11:22:33:44:55:66:77",
            "zz:22:33:44:55:66",
            "111:2:33:44:55:66",
        ] {
            let err = bad.parse::<Eid>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn eid_like_segments_are_recognised() {
        assert!(looks_like_eid("02:00:00:00:00:01"));
        assert!(!looks_like_eid("blacklist"));
    }
}
