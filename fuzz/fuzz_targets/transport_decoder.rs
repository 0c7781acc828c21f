//! Feeds arbitrary bytes to everything that parses peer input in the
//! transport: the hello, the version offer, the record splitter + reassembler
//! (clear and with a real Noise session), and checks that well-formed streams
//! round-trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use res_astdb_cluster::transport::wire::{
    self, check_hello_prefix, decode_hello, decode_offer, encode_offer, negotiate, Cleartext,
    Frame, FrameReader, FrameWriter, PROTOCOL_VERSIONS,
};
use std::sync::{Arc, OnceLock};

const MAX: usize = 1 << 20;

/// A responder-side session, made once (handshakes are too slow per input).
fn session() -> Arc<snow::StatelessTransportState> {
    static S: OnceLock<Arc<snow::StatelessTransportState>> = OnceLock::new();
    S.get_or_init(|| {
        let psk = wire::derive_psk("fuzz", "fuzz-secret-0123456789");
        let params: snow::params::NoiseParams = wire::NOISE_PARAMS.parse().unwrap();
        let mut i = snow::Builder::new(params.clone())
            .psk(0, &psk)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params)
            .psk(0, &psk)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        Arc::new(r.into_stateless_transport_mode().unwrap())
    })
    .clone()
}

fn check(frames: &[Frame]) {
    for f in frames {
        if let Frame::Data(d) = f {
            assert!(d.len() <= MAX, "delivered a payload over the limit");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_hello(data);
    let _ = check_hello_prefix(data);
    // A hello's lowest version, then an offer: whatever is agreed lies in both ranges,
    // and a range offered comes back as itself.
    if let Some((&min, offer)) = data.split_first() {
        if let Ok(theirs) = decode_offer(min, offer) {
            if let Some(v) = negotiate(&PROTOCOL_VERSIONS, &theirs) {
                assert!(PROTOCOL_VERSIONS.contains(&v) && theirs.contains(&v));
            }
            assert_eq!(decode_offer(min, &encode_offer(&theirs)), Ok(theirs));
        }
    }

    // Split the input at a point taken from its first byte, to vary read boundaries.
    let cut = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut r = FrameReader::new(Cleartext, MAX);
    if let Ok(f) = r.push(&data[..cut]) {
        check(&f);
        if let Ok(f) = r.push(&data[cut..]) {
            check(&f);
        }
    }
    let mut r = FrameReader::new(session(), MAX);
    if let Ok(f) = r.push(data) {
        check(&f);
    }

    // Well-formed streams must come back exactly.
    let payloads: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    let mut w = FrameWriter::new(Cleartext);
    let mut wire_bytes = Vec::new();
    for p in &payloads {
        w.data(&mut wire_bytes, p).unwrap();
    }
    let mut r = FrameReader::new(Cleartext, MAX);
    let back = r.push(&wire_bytes).unwrap();
    assert_eq!(back.len(), payloads.len());
    for (f, p) in back.iter().zip(&payloads) {
        assert_eq!(f, &Frame::Data(p.to_vec()));
    }
});
