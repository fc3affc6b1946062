//! Text and JSON encodings of results, written to any `Write` so tests can read them back.
//!
//! Text output carries keys and values as raw bytes, so `kvctl get k > file` round-trips any
//! value. JSON must be UTF-8: values that are not valid UTF-8 are shown lossily (U+FFFD) in
//! `value` and exactly, as hex, in an extra `value_hex` field (likewise `key_hex` for keys).

use std::io::{self, Write};

use clap::ValueEnum;
use kvclient::{KeyValue, Versioned};
use serde_json::{Map, Value};

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people and shell pipelines.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Writes one JSON document and a newline.
pub fn write_json(out: &mut dyn Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Writes bytes as they are, then a newline.
pub fn write_line(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.write_all(b"\n")
}

/// Inserts `name` as a (lossy) string, and `name_hex` when the bytes are not UTF-8.
fn insert_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            object.insert(name.into(), text.into());
        }
        Err(_) => {
            object.insert(name.into(), String::from_utf8_lossy(bytes).into());
            object.insert(format!("{name}_hex"), hex(bytes).into());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `get -o json`.
pub fn versioned_json(v: &Versioned) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", &v.key);
    insert_bytes(&mut object, "value", &v.value);
    object.insert("version".into(), v.version.into());
    object.insert("group".into(), v.group_id.into());
    object.insert("served_by".into(), v.served_by.into());
    object.insert("applied_index".into(), v.applied_index.into());
    Value::Object(object)
}

/// `put -o json`.
pub fn put_json(key: &[u8], version: u64) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", key);
    object.insert("version".into(), version.into());
    Value::Object(object)
}

/// `delete -o json`.
pub fn delete_json(key: &[u8], existed: bool, version: u64) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", key);
    object.insert("existed".into(), existed.into());
    object.insert("version".into(), version.into());
    Value::Object(object)
}

/// `scan -o json`: an array of `{key, value, version}`; without values when keys-only.
pub fn scan_json(kvs: &[KeyValue], keys_only: bool) -> Value {
    Value::Array(
        kvs.iter()
            .map(|kv| {
                let mut object = Map::new();
                insert_bytes(&mut object, "key", &kv.key);
                if !keys_only {
                    insert_bytes(&mut object, "value", &kv.value);
                }
                object.insert("version".into(), kv.version.into());
                Value::Object(object)
            })
            .collect(),
    )
}

/// `scan` as text: `KEY<TAB>VALUE` lines, or keys alone.
pub fn write_scan_text(out: &mut dyn Write, kvs: &[KeyValue], keys_only: bool) -> io::Result<()> {
    for kv in kvs {
        out.write_all(&kv.key)?;
        if !keys_only {
            out.write_all(b"\t")?;
            out.write_all(&kv.value)?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvclient::Bytes;
    use serde_json::json;

    fn kv(key: &'static [u8], value: &'static [u8], version: u64) -> KeyValue {
        KeyValue {
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
            version,
        }
    }

    fn text(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        out
    }

    #[test]
    fn get_json_has_the_contract_fields() {
        let v = Versioned {
            key: "a".into(),
            value: "1".into(),
            version: 7,
            group_id: 3,
            served_by: 2,
            applied_index: 9,
        };
        let out = text(|o| write_json(o, &versioned_json(&v)));
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            json!({"key": "a", "value": "1", "version": 7, "group": 3, "served_by": 2,
                   "applied_index": 9})
        );
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn binary_values_get_hex_alongside() {
        let j = put_json(b"\xff\x00k", 1);
        assert_eq!(j["key_hex"], "ff006b");
        assert_eq!(j["key"], "\u{fffd}\u{0}k");
        let j = scan_json(&[kv(b"k", b"\x80", 4)], false);
        assert_eq!(
            j,
            json!([{"key": "k", "value": "\u{fffd}", "value_hex": "80", "version": 4}])
        );
    }

    #[test]
    fn scan_text_is_tab_separated_raw_bytes() {
        let kvs = [kv(b"a", b"1", 1), kv(b"b", b"x\xffy", 2)];
        assert_eq!(
            text(|o| write_scan_text(o, &kvs, false)),
            b"a\t1\nb\tx\xffy\n"
        );
        assert_eq!(text(|o| write_scan_text(o, &kvs, true)), b"a\nb\n");
        assert_eq!(text(|o| write_scan_text(o, &[], false)), b"");
    }

    #[test]
    fn scan_json_is_an_array_in_order() {
        let kvs = [kv(b"a", b"1", 1), kv(b"b", b"2", 5)];
        assert_eq!(
            scan_json(&kvs, false),
            json!([{"key": "a", "value": "1", "version": 1},
                   {"key": "b", "value": "2", "version": 5}])
        );
        assert_eq!(
            scan_json(&kvs, true),
            json!([{"key": "a", "version": 1}, {"key": "b", "version": 5}])
        );
        assert_eq!(scan_json(&[], false), json!([]));
    }

    #[test]
    fn delete_json_says_whether_the_key_existed() {
        assert_eq!(
            delete_json(b"k", false, 12),
            json!({"key": "k", "existed": false, "version": 12})
        );
    }

    #[test]
    fn raw_lines() {
        assert_eq!(text(|o| write_line(o, b"v\xff")), b"v\xff\n");
    }
}
