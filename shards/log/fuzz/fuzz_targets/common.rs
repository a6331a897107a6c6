//! What every log fuzz target checks about records a partition hands out: each is byte for
//! byte a record of the input (so its checksum held), offsets strictly increase, and reading
//! never panics or allocates without bound (libFuzzer's malloc limit catches that).

use kateway_log::record;

/// Asserts that `recs` are records encoded somewhere in `files`, in increasing offset order.
pub fn check_records(recs: &[kateway_log::Record], files: &[&[u8]]) {
    let mut last = None;
    for r in recs {
        let mut enc = bytes::BytesMut::new();
        record::encode(&mut enc, r.offset, r.timestamp, &r.key, &r.tags, &r.value);
        let found = files
            .iter()
            .any(|f| f.windows(enc.len()).any(|w| w == &enc[..]));
        assert!(found, "served a record that is not in the files: offset {}", r.offset);
        assert!(last.is_none_or(|l| r.offset > l), "offsets go back at {}", r.offset);
        last = Some(r.offset);
    }
}
