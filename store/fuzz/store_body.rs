// The bodies of the `journal_segment` and `durable_config` fuzz targets,
// shared with their stable stand-in `store/tests/fuzz_store.rs`: both
// `include!` this file, so it names its own imports and needs only `bytes`,
// `crc32c`, `tandem_shards` and `tandem_store`. Files on disk are input the
// broker did not write too: a disk, a copy or an operator can change them.

/// A journal segment as recovery reads it at start. Nothing panics; what a
/// scan keeps is exactly the file's first bytes (the records re-encode to
/// them), a torn tail starts where the good records end, damage in the middle
/// is refused unless `repair` cuts it, and recovery holds what replaying the
/// records gives.
///
/// Input: `data[0]` bit 0: `repair`; bit 1: the rest is the whole file (its
/// header too); else a good header is put in front and, unless bit 2 is set,
/// every record's checksum is made right (so the fuzzer reaches the bodies),
/// and with bit 3 one byte is then flipped (at `(data[0] >> 4) * 7` past the
/// header).
fn journal_segment_body(data: &[u8]) {
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    use bytes::{Bytes, BytesMut};
    use tandem_store::record::{read_header, scan, segment_header, Record, BLOCK};
    use tandem_store::recovery::recover;

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let repair = mode & 1 != 0;
    let file: Bytes = if mode & 2 != 0 {
        Bytes::copy_from_slice(rest)
    } else {
        let mut file = segment_header(0, 1);
        file.extend_from_slice(rest);
        if mode & 4 == 0 {
            let mut at = BLOCK;
            while let Some(head) = file.get(at..at + 8) {
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let Some(body) = file.get(at + 8..at + 8 + len).filter(|_| len > 0) else {
                    break;
                };
                let crc = crc32c::crc32c(body);
                file[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                at += 8 + len;
            }
        }
        if mode & 8 != 0 {
            if let Some(b) = file.get_mut(BLOCK + usize::from(mode >> 4) * 7) {
                *b ^= 1;
            }
        }
        file.freeze()
    };

    let header = read_header(&file);
    let scanned = match scan(&file, repair) {
        Ok(s) => s,
        Err(corrupt) => {
            assert!(!repair, "repair refused {corrupt}");
            assert!(corrupt.next > corrupt.offset, "{corrupt}");
            let cut = scan(&file, true).unwrap_or_else(|e| panic!("repair refused {e}"));
            assert_eq!(cut.end, corrupt.offset, "{corrupt}");
            assert_eq!(cut.torn.map(|(at, _)| at), Some(corrupt.offset));
            assert!(recover(0, vec![(1, PathBuf::from("s"), file.clone())], false).is_err());
            return;
        }
    };
    let start = BLOCK.min(file.len());
    assert!(
        start <= scanned.end && scanned.end <= file.len(),
        "{scanned:?}"
    );
    if let Some((at, why)) = &scanned.torn {
        assert_eq!(*at, scanned.end, "{why}");
    }
    if !repair {
        assert_eq!(
            scan(&file, true).as_ref(),
            Ok(&scanned),
            "repair changed a good file"
        );
    }
    let mut again = BytesMut::from(&file[..start]);
    for record in &scanned.records {
        record.encode(&mut again);
    }
    assert_eq!(&again[..], &file[..scanned.end], "{:?}", scanned.records);
    let again = again.freeze();
    let clean = scan(&again, false).unwrap_or_else(|e| panic!("re-encoded records: {e}"));
    assert_eq!(clean.records, scanned.records);
    assert_eq!((clean.end, clean.torn), (scanned.end, None));

    let recovered = recover(0, vec![(1, PathBuf::from("s"), file.clone())], repair);
    if header.is_ok_and(|h| (h.shard, h.number) == (0, 1)) {
        let recovered = recovered.unwrap_or_else(|e| panic!("scans but does not recover: {e}"));
        assert_eq!(recovered.records, scanned.records.len());
        // What replaying the records by hand leaves queued.
        let mut queues: HashMap<&str, BTreeMap<u64, &Bytes>> = HashMap::new();
        for record in &scanned.records {
            match record {
                Record::Enqueue {
                    queue,
                    position,
                    message,
                } => {
                    queues.entry(queue).or_default().insert(*position, message);
                }
                Record::Dequeue { queue, positions } => {
                    if let Some(q) = queues.get_mut(queue.as_str()) {
                        for p in positions {
                            q.remove(p);
                        }
                    }
                }
                Record::Redelivered { .. } => {}
            }
        }
        queues.retain(|_, q| !q.is_empty());
        assert_eq!(recovered.queues.len(), queues.len());
        for (name, q) in &recovered.queues {
            let expected = queues.get(&**name).unwrap_or_else(|| panic!("{name}"));
            assert!(q
                .iter()
                .map(|(p, m)| (*p, m))
                .eq(expected.iter().map(|(p, m)| (*p, *m))));
        }
    }
}

/// The store's durable-configuration file. Nothing panics, and the changes a
/// file holds write back as a file holding the same changes.
///
/// Input: `data[0] % 3` is 0: the rest is the whole file. 1: the rest is the
/// body behind a good header. 2: the body is built as entries: a byte picks
/// the kind (queue, exchange, bind or other) and how many fields follow, then
/// the fields as AMQP values.
fn durable_config_body(data: &[u8]) {
    use bytes::{BufMut, Bytes, BytesMut};
    use tandem_shards::amqp::codec::{Decoder, Value};
    use tandem_store::config_file::{decode, encode};

    const KINDS: [&str; 4] = ["queue", "exchange", "bind", "x"];

    /// See `same` in shards/fuzz/amqp_body.rs: NaN in a headers binding.
    fn same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T) -> bool {
        a == b || format!("{a:?}") == format!("{b:?}")
    }

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = match mode % 3 {
        0 => None,
        1 => Some(Bytes::copy_from_slice(rest)),
        _ => {
            let mut entries = Vec::new();
            let mut d = Decoder::new(Bytes::copy_from_slice(rest));
            'entries: while let Some(pick) = d.peek_code() {
                // The pick byte is read as the next value's first byte would
                // be; skip it by hand.
                let rest = d.rest().slice(1..);
                d = Decoder::new(rest);
                let mut entry = vec![Value::string(KINDS[usize::from(pick) % KINDS.len()])];
                for _ in 0..usize::from(pick >> 2) % 4 + 1 {
                    match d.value() {
                        Ok(v) => entry.push(v),
                        Err(_) => {
                            entries.push(Value::List(entry));
                            break 'entries;
                        }
                    }
                }
                entries.push(Value::List(entry));
            }
            Some(Value::List(entries).to_bytes())
        }
    };
    let file = match body {
        None => Bytes::copy_from_slice(rest),
        Some(body) => {
            // Magic and format as this build writes them.
            let mut file = BytesMut::from(&encode(&[])[..12]);
            file.put_u32_le(crc32c::crc32c(&body));
            file.put_slice(&body);
            file.freeze()
        }
    };
    let Ok(ops) = decode(&file) else {
        return;
    };
    let written = encode(&ops);
    let back = decode(&written).unwrap_or_else(|e| panic!("{ops:?} written does not read: {e}"));
    assert!(same(&back, &ops), "{ops:?} came back as {back:?}");
    assert_eq!(encode(&back), written, "{ops:?}: a second writing differs");
}
