//! Feeds arbitrary bytes to the engine's message decoder (what a peer sends once the
//! transport has decrypted it): it must never panic, and whatever it accepts must
//! encode back to a message that decodes the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use res_astdb_cluster::engine::codec::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(data) {
        let again = decode(&encode(&msg)).expect("an encoded message decodes");
        assert_eq!(again, msg);
    }
});
