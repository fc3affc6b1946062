//! The Raft log's segment record decoder (node/src/storage/file_log.rs): `len | crc32 |
//! bincode Entry`. The first byte picks how the rest is read: as a record as it lies on disk
//! (almost always refused by its length or checksum, as a torn write is), or as a record body
//! framed here with its correct length and checksum, so that the bincode entry decoder behind
//! the checksum is fuzzed too (what a corruption no crash explains, or a bug in our own
//! encoder, would reach). A record that decodes must encode to the same bytes.

#![no_main]

use kvnode::storage::fuzzing::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fn check(record: &[u8]) {
    let Some(decoded) = decode_record(record) else {
        return;
    };
    let Ok((entry, len)) = decoded else {
        return;
    };
    assert!(
        len >= 8 && len <= record.len(),
        "record length {len} within the input"
    );
    let mut again = Vec::new();
    encode_record(&mut again, &entry).expect("a decoded entry encodes");
    let (back, back_len) = decode_record(&again)
        .expect("an encoded record passes its checksum")
        .expect("an encoded record decodes");
    assert_eq!(back, entry, "a log record round trips");
    assert_eq!(back_len, again.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check(rest);
    } else {
        let mut record = Vec::with_capacity(rest.len() + 8);
        record.extend_from_slice(&(rest.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        record.extend_from_slice(rest);
        check(&record);
    }
});
