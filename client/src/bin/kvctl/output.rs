//! Text and JSON encodings of results, written to any `Write` so tests can read them back.
//!
//! Text output carries keys and values as raw bytes, so `kvctl get k > file` round-trips any
//! value. JSON must be UTF-8: values that are not valid UTF-8 are shown lossily (U+FFFD) in
//! `value` and exactly, as hex, in an extra `value_hex` field (likewise `key_hex` for keys).

use std::io::{self, Write};

use clap::ValueEnum;
use kvclient::{DirectoryEntry, KeyValue, KeyspaceInfo, ShardGroup, Strategy, Versioned};
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

/// Prints a command's answer to stdout: `text` as it is, or `json` on one line.
pub fn print(format: OutputFormat, text: &str, json: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Text => out.write_all(text.as_bytes())?,
        OutputFormat::Json => write_json(&mut out, json)?,
    }
    out.flush()
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
#[cfg(test)]
pub fn scan_json(kvs: &[KeyValue], keys_only: bool) -> Value {
    Value::Array(kvs.iter().map(|kv| scan_json_item(kv, keys_only)).collect())
}

/// One key of `scan -o json`.
pub fn scan_json_item(kv: &KeyValue, keys_only: bool) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", &kv.key);
    if !keys_only {
        insert_bytes(&mut object, "value", &kv.value);
    }
    object.insert("version".into(), kv.version.into());
    Value::Object(object)
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

/// A key shown among other words in text output (`describe`): as it is when that is
/// unambiguous, otherwise quoted with escapes (empty keys, spaces, commas, brackets, quotes,
/// control characters, bytes that are not UTF-8, and keys spelled like the open bounds).
pub fn display_key(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text.is_empty()
                && text != "-inf"
                && text != "+inf"
                && !text.chars().any(|c| {
                    c.is_control()
                        || c.is_whitespace()
                        || matches!(c, ',' | '"' | '\\' | '[' | ']' | '(' | ')')
                }) =>
        {
            text.to_owned()
        }
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("\"{}\"", bytes.escape_ascii()),
    }
}

/// A group's replicas, comma-separated, the leader marked with `*`.
fn replicas_text(group: &ShardGroup) -> String {
    group
        .replicas
        .iter()
        .map(|&node| {
            if node == group.leader && node != 0 {
                format!("{node}*")
            } else {
                node.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The keys a group holds under the keyspace's placement: `range [start, end)` or
/// `ring NN.N%`.
fn key_set_text(group: &ShardGroup, placement: Option<Strategy>) -> String {
    let ranged = match placement {
        Some(Strategy::Range) => true,
        Some(_) => false,
        // A strategy this kvctl does not know: show whatever the server filled in.
        None => !group.range_start.is_empty() || !group.range_end.is_empty(),
    };
    if ranged {
        let bound = |key: &[u8], open: &str| {
            if key.is_empty() {
                open.to_owned()
            } else {
                display_key(key)
            }
        };
        format!(
            "range [{}, {})",
            bound(&group.range_start, "-inf"),
            bound(&group.range_end, "+inf")
        )
    } else {
        format!("ring {:.1}%", group.ring_share_percent)
    }
}

/// `keyspace describe` (and `create`) as text: the keyspace's settings, one line per group
/// (id, replicas with the leader starred, key set), then a directory keyspace's entries.
pub fn write_keyspace_text(out: &mut dyn Write, k: &KeyspaceInfo) -> io::Result<()> {
    let directory = k.strategy == Strategy::Directory.as_str();
    let placement = k.placement();
    writeln!(out, "keyspace:    {}", k.name)?;
    writeln!(out, "strategy:    {}", k.strategy)?;
    if directory {
        writeln!(out, "fallback:    {}", k.fallback)?;
        writeln!(out, "separator:   {}", display_key(&k.separator))?;
    }
    if placement == Some(Strategy::Hash) {
        writeln!(out, "vnodes:      {}", k.vnodes)?;
    }
    writeln!(out, "replication: {}", k.replication)?;
    writeln!(out, "epoch:       {}", k.epoch)?;
    writeln!(out, "groups:      {}", k.groups.len())?;
    let ids: Vec<String> = k.groups.iter().map(|g| g.id.to_string()).collect();
    let replicas: Vec<String> = k.groups.iter().map(replicas_text).collect();
    let id_width = ids.iter().map(String::len).max().unwrap_or(0);
    let replicas_width = replicas.iter().map(String::len).max().unwrap_or(0);
    for ((group, id), replicas) in k.groups.iter().zip(&ids).zip(&replicas) {
        writeln!(
            out,
            "  group {id:<id_width$}  replicas {replicas:<replicas_width$}  {}",
            key_set_text(group, placement)
        )?;
    }
    if directory {
        writeln!(out, "directory:   {}", k.directory.len())?;
        let dirs: Vec<String> = k
            .directory
            .iter()
            .map(|e| display_key(&e.directory))
            .collect();
        let width = dirs.iter().map(String::len).max().unwrap_or(0);
        for (entry, dir) in k.directory.iter().zip(&dirs) {
            writeln!(out, "  {dir:<width$}  group {}", entry.group_id)?;
        }
    }
    Ok(())
}

/// `keyspace list` as text: `NAME<TAB>STRATEGY<TAB>GROUPS<TAB>REPLICATION` per keyspace.
pub fn write_keyspace_list_text(out: &mut dyn Write, keyspaces: &[KeyspaceInfo]) -> io::Result<()> {
    for k in keyspaces {
        writeln!(
            out,
            "{}\t{}\t{}\t{}",
            k.name,
            k.strategy,
            k.groups.len(),
            k.replication
        )?;
    }
    Ok(())
}

fn group_json(g: &ShardGroup) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), g.id.into());
    object.insert("replicas".into(), g.replicas.clone().into());
    object.insert("leader".into(), g.leader.into());
    insert_bytes(&mut object, "range_start", &g.range_start);
    insert_bytes(&mut object, "range_end", &g.range_end);
    object.insert("ring_share_percent".into(), g.ring_share_percent.into());
    Value::Object(object)
}

/// A directory entry: `{directory, group_id}`.
pub fn directory_entry_json(e: &DirectoryEntry) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "directory", &e.directory);
    object.insert("group_id".into(), e.group_id.into());
    Value::Object(object)
}

/// `directory list -o json`.
pub fn directory_entries_json(entries: &[DirectoryEntry]) -> Value {
    Value::Array(entries.iter().map(directory_entry_json).collect())
}

/// `directory list` as text: `DIRECTORY<TAB>GROUP` per entry, the directory as raw bytes.
pub fn write_directory_text(out: &mut dyn Write, entries: &[DirectoryEntry]) -> io::Result<()> {
    for e in entries {
        out.write_all(&e.directory)?;
        writeln!(out, "\t{}", e.group_id)?;
    }
    Ok(())
}

/// `keyspace describe -o json`: the KeyspaceInfo fields. Open range bounds are empty strings;
/// a leader of 0 is unknown.
pub fn keyspace_json(k: &KeyspaceInfo) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), k.name.clone().into());
    object.insert("strategy".into(), k.strategy.clone().into());
    object.insert("replication".into(), k.replication.into());
    object.insert(
        "groups".into(),
        Value::Array(k.groups.iter().map(group_json).collect()),
    );
    object.insert("fallback".into(), k.fallback.clone().into());
    insert_bytes(&mut object, "separator", &k.separator);
    object.insert("directory".into(), directory_entries_json(&k.directory));
    object.insert("vnodes".into(), k.vnodes.into());
    object.insert("epoch".into(), k.epoch.into());
    Value::Object(object)
}

/// `keyspace list -o json`: an array of what `describe -o json` prints.
pub fn keyspaces_json(keyspaces: &[KeyspaceInfo]) -> Value {
    Value::Array(keyspaces.iter().map(keyspace_json).collect())
}

/// `keyspace locate` as text: `KEY<TAB>GROUP` per key, the key as raw bytes.
pub fn write_locate_text(out: &mut dyn Write, keys: &[&[u8]], groups: &[u64]) -> io::Result<()> {
    for (key, group) in keys.iter().zip(groups) {
        out.write_all(key)?;
        writeln!(out, "\t{group}")?;
    }
    Ok(())
}

/// `keyspace locate -o json`: an array of `{key, group_id}`.
pub fn locate_json(keys: &[&[u8]], groups: &[u64]) -> Value {
    Value::Array(
        keys.iter()
            .zip(groups)
            .map(|(key, group)| {
                let mut object = Map::new();
                insert_bytes(&mut object, "key", key);
                object.insert("group_id".into(), (*group).into());
                Value::Object(object)
            })
            .collect(),
    )
}

/// An object of named fields, some of them bytes (`directory set -o json` and the like).
pub fn object(fields: &[(&str, Value)], bytes: &[(&str, &[u8])]) -> Value {
    let mut object = Map::new();
    for (name, value) in fields {
        object.insert((*name).into(), value.clone());
    }
    for (name, value) in bytes {
        insert_bytes(&mut object, name, value);
    }
    Value::Object(object)
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

    fn group(id: u64, replicas: &[u64], leader: u64) -> ShardGroup {
        ShardGroup {
            id,
            replicas: replicas.to_vec(),
            leader,
            range_start: Bytes::new(),
            range_end: Bytes::new(),
            ring_share_percent: 0.0,
        }
    }

    fn keyspace(name: &str, strategy: &str, groups: Vec<ShardGroup>) -> KeyspaceInfo {
        KeyspaceInfo {
            name: name.into(),
            strategy: strategy.into(),
            replication: 3,
            groups,
            fallback: String::new(),
            separator: Bytes::new(),
            directory: vec![],
            vnodes: 0,
            epoch: 7,
        }
    }

    fn range_keyspace() -> KeyspaceInfo {
        let mut a = group(4, &[1, 2, 3], 2);
        a.range_end = "g".into();
        let mut b = group(5, &[1, 2, 3], 0);
        b.range_start = "g".into();
        b.range_end = "p q".into();
        let mut c = group(12, &[2, 3, 4], 4);
        c.range_start = "p q".into();
        keyspace("orders", "range", vec![a, b, c])
    }

    fn describe(k: &KeyspaceInfo) -> String {
        String::from_utf8(text(|o| write_keyspace_text(o, k))).unwrap()
    }

    #[test]
    fn describe_range_keyspace() {
        assert_eq!(
            describe(&range_keyspace()),
            "keyspace:    orders\n\
             strategy:    range\n\
             replication: 3\n\
             epoch:       7\n\
             groups:      3\n\
             \x20 group 4   replicas 1,2*,3  range [-inf, g)\n\
             \x20 group 5   replicas 1,2,3   range [g, \"p q\")\n\
             \x20 group 12  replicas 2,3,4*  range [\"p q\", +inf)\n"
        );
    }

    #[test]
    fn describe_hash_keyspace() {
        let mut a = group(1, &[1, 2, 3], 1);
        a.ring_share_percent = 33.349;
        let mut b = group(2, &[1, 2, 3], 3);
        b.ring_share_percent = 66.651;
        let mut k = keyspace("users", "hash", vec![a, b]);
        k.vnodes = 256;
        k.replication = 3;
        assert_eq!(
            describe(&k),
            "keyspace:    users\n\
             strategy:    hash\n\
             vnodes:      256\n\
             replication: 3\n\
             epoch:       7\n\
             groups:      2\n\
             \x20 group 1  replicas 1*,2,3  ring 33.3%\n\
             \x20 group 2  replicas 1,2,3*  ring 66.7%\n"
        );
    }

    #[test]
    fn describe_directory_keyspace_lists_entries_after_groups() {
        let mut k = range_keyspace();
        k.strategy = "directory".into();
        k.fallback = "range".into();
        k.separator = "/".into();
        k.groups.truncate(1);
        k.directory = vec![
            DirectoryEntry {
                directory: "acme".into(),
                group_id: 4,
            },
            DirectoryEntry {
                directory: Bytes::from_static(b"b\xff"),
                group_id: 4,
            },
        ];
        assert_eq!(
            describe(&k),
            "keyspace:    orders\n\
             strategy:    directory\n\
             fallback:    range\n\
             separator:   /\n\
             replication: 3\n\
             epoch:       7\n\
             groups:      1\n\
             \x20 group 4  replicas 1,2*,3  range [-inf, g)\n\
             directory:   2\n\
             \x20 acme     group 4\n\
             \x20 \"b\\xff\"  group 4\n"
        );
        // A hash fallback shows ring shares and vnodes.
        k.fallback = "hash".into();
        k.vnodes = 64;
        k.groups[0].ring_share_percent = 100.0;
        let text = describe(&k);
        assert!(text.contains("vnodes:      64\n"), "{text}");
        assert!(text.contains("ring 100.0%"), "{text}");
    }

    #[test]
    fn keys_in_text_are_unambiguous() {
        assert_eq!(display_key(b"tenant-1"), "tenant-1");
        assert_eq!(display_key("é".as_bytes()), "é");
        assert_eq!(display_key(b""), "\"\"");
        assert_eq!(display_key(b"a b"), "\"a b\"");
        assert_eq!(display_key(b"a,b"), "\"a,b\"");
        assert_eq!(display_key(b"+inf"), "\"+inf\"");
        assert_eq!(display_key(b"\x01"), "\"\\u{1}\"");
        assert_eq!(display_key(b"\xff"), "\"\\xff\"");
    }

    #[test]
    fn list_text_is_one_tab_separated_line_per_keyspace() {
        let mut d = keyspace("tenants", "directory", vec![group(9, &[1], 1)]);
        d.replication = 1;
        let ks = [range_keyspace(), d];
        assert_eq!(
            text(|o| write_keyspace_list_text(o, &ks)),
            b"orders\trange\t3\t3\ntenants\tdirectory\t1\t1\n"
        );
    }

    #[test]
    fn keyspace_json_has_the_info_fields() {
        let mut k = range_keyspace();
        k.groups.truncate(2);
        k.groups[1].range_end = Bytes::from_static(b"\xfe");
        k.directory = vec![DirectoryEntry {
            directory: "d".into(),
            group_id: 5,
        }];
        assert_eq!(
            keyspace_json(&k),
            json!({
                "name": "orders", "strategy": "range", "replication": 3, "fallback": "",
                "separator": "", "vnodes": 0, "epoch": 7,
                "groups": [
                    {"id": 4, "replicas": [1, 2, 3], "leader": 2, "range_start": "",
                     "range_end": "g", "ring_share_percent": 0.0},
                    {"id": 5, "replicas": [1, 2, 3], "leader": 0, "range_start": "g",
                     "range_end": "\u{fffd}", "range_end_hex": "fe", "ring_share_percent": 0.0},
                ],
                "directory": [{"directory": "d", "group_id": 5}],
            })
        );
        assert_eq!(keyspaces_json(&[]), json!([]));
        assert_eq!(
            keyspaces_json(std::slice::from_ref(&k))[0],
            keyspace_json(&k)
        );
    }

    #[test]
    fn directory_and_locate_output() {
        let entries = [
            DirectoryEntry {
                directory: "a".into(),
                group_id: 1,
            },
            DirectoryEntry {
                directory: "b".into(),
                group_id: 2,
            },
        ];
        assert_eq!(text(|o| write_directory_text(o, &entries)), b"a\t1\nb\t2\n");
        assert_eq!(
            directory_entries_json(&entries),
            json!([{"directory": "a", "group_id": 1}, {"directory": "b", "group_id": 2}])
        );
        let keys: [&[u8]; 2] = [b"k1", b"k2"];
        assert_eq!(
            text(|o| write_locate_text(o, &keys, &[3, 4])),
            b"k1\t3\nk2\t4\n"
        );
        assert_eq!(
            locate_json(&keys, &[3, 4]),
            json!([{"key": "k1", "group_id": 3}, {"key": "k2", "group_id": 4}])
        );
        assert_eq!(
            object(&[("epoch", 3.into())], &[("directory", b"x")]),
            json!({"epoch": 3, "directory": "x"})
        );
    }
}
