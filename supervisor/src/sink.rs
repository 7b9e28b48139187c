//! Writing records: as jobs finish, or in input order with `--keep-order`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::record::Record;

/// How many out-of-order records `--keep-order` holds before the pool stops reading input.
pub const REORDER_LIMIT: usize = 10_000;

/// Where records go.
pub struct Sink {
    out: io::BufWriter<Box<dyn Write + Send>>,
    keep_order: bool,
    next: u64,
    held: BTreeMap<u64, Record>,
}

impl Sink {
    /// Writes NDJSON records to `out`.
    pub fn new(out: Box<dyn Write + Send>, keep_order: bool) -> Sink {
        Sink {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            keep_order,
            next: 0,
            held: BTreeMap::new(),
        }
    }

    /// Takes a record; writes it (and any it unblocks) now unless it must wait its turn.
    pub fn push(&mut self, record: Record) -> io::Result<()> {
        if !self.keep_order {
            return self.write(&record);
        }
        self.held.insert(record.ordinal, record);
        while let Some(record) = self.held.remove(&self.next) {
            self.write(&record)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Whether the pool may read more input (bounded memory under `--keep-order`).
    pub fn has_room(&self) -> bool {
        self.held.len() < REORDER_LIMIT
    }

    /// Writes what is buffered through to the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Writes records still held, in order (an interrupted run leaves gaps).
    pub fn finish(&mut self) -> io::Result<()> {
        for (_, record) in std::mem::take(&mut self.held) {
            self.write(&record)?;
        }
        self.flush()
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }
}
