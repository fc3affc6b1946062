//! Snapshots (node/src/storage/state_machine.rs): a stored snapshot (its meta and body bytes,
//! as the `snap` tree keeps it) and a snapshot body as a replica installs it from its leader,
//! with the request-id checkpoint inside it rebuilt into the table. The first byte picks
//! which; the rest is the bytes. What decodes must encode and decode again to the same bytes.

#![no_main]

use kvnode::storage::fuzzing::{decode, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let record = if which % 2 == 0 {
        Record::SnapshotBody
    } else {
        Record::StoredSnapshot
    };
    if let Ok(once) = decode(record, bytes) {
        let twice = decode(record, &once).expect("an encoded snapshot decodes");
        assert_eq!(twice, once, "{record:?} round trip changed the snapshot");
    }
});
