//! Fuzz target `plugin_table`: the loader's check of a plugin's function
//! table (`transport_abi::check_table`, what `Plugin::load` runs on the table a
//! library returns), on tables built in memory.
//!
//! An input describes a table, field by field, in a fixed byte layout
//! (below); mutants of valid descriptions become real tables in aligned
//! memory, with the name pointer NULL or pointing at the described name
//! bytes, and function pointers NULL or not as described (never called:
//! the check only looks at them). A simple model of the rules (NULL or
//! misaligned, major version, size, name, required functions, in that
//! order) says what the check must answer, error included.
//!
//! ```text
//!   mode u8      1: a NULL table pointer, 2: a misaligned one, else the table
//!   size u32, abi_major u16, abi_minor u16
//!   name u64     0: NULL, else: points at the name bytes below
//!   capabilities u64
//!   13 x u64     the functions in table order (0: NULL)
//!   72 bytes     the name bytes (a short input is padded with 'A')
//! ```

use proptest::prelude::*;
use std::mem::{offset_of, size_of};
use std::path::Path;
use test_support::fuzz::{fuzz, largest_allocation, Verdict};
use transport_abi::abi::{DragonTransportTable, DRAGON_CAP_ZERO_COPY_RECV, DRAGON_TRANSPORT_ABI_MAJOR};
use transport_abi::{check_table, LoadError, TableInfo};

#[global_allocator]
static ALLOC: test_support::fuzz::CountingAlloc = test_support::fuzz::CountingAlloc;

const FUNCTIONS: [&str; 13] = [
    "open",
    "close",
    "channel_create",
    "channel_attach",
    "channel_handle",
    "channel_close",
    "channel_destroy",
    "send",
    "recv",
    "recv_msg",
    "message_free",
    "poll",
    "len",
];
const NAME_BYTES: usize = 72;
const LEN: usize = 1 + 4 + 2 + 2 + 8 + 8 + 13 * 8 + NAME_BYTES;
const NEED: u32 = transport_abi::loader::TABLE_SIZE_V1_0;

/// A table as the input describes it.
struct Desc {
    mode: u8,
    size: u32,
    major: u16,
    minor: u16,
    name_ptr: u64,
    capabilities: u64,
    functions: [u64; 13],
    name: [u8; NAME_BYTES],
}

impl Desc {
    fn parse(input: &[u8]) -> Desc {
        let mut b = input.to_vec();
        b.resize(LEN.max(b.len()), b'A');
        let u = |at: usize, n: usize| b[at..at + n].iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
        let mut functions = [0u64; 13];
        for (i, f) in functions.iter_mut().enumerate() {
            *f = u(25 + 8 * i, 8);
        }
        Desc {
            mode: b[0],
            size: u(1, 4) as u32,
            major: u(5, 2) as u16,
            minor: u(7, 2) as u16,
            name_ptr: u(9, 8),
            capabilities: u(17, 8),
            functions,
            name: b[129..129 + NAME_BYTES].try_into().expect("72 bytes"),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![self.mode];
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.major.to_le_bytes());
        b.extend_from_slice(&self.minor.to_le_bytes());
        b.extend_from_slice(&self.name_ptr.to_le_bytes());
        b.extend_from_slice(&self.capabilities.to_le_bytes());
        for f in self.functions {
            b.extend_from_slice(&f.to_le_bytes());
        }
        b.extend_from_slice(&self.name);
        assert_eq!(b.len(), LEN);
        b
    }

    /// What the loader must answer for this table.
    fn expected(&self, path: &Path) -> Result<TableInfo, LoadError> {
        let path = path.to_path_buf();
        if self.mode == 1 || self.mode == 2 {
            return Err(LoadError::NullTable(path));
        }
        if self.major != DRAGON_TRANSPORT_ABI_MAJOR {
            return Err(LoadError::WrongVersion { path, major: self.major, minor: self.minor });
        }
        if self.size < NEED {
            return Err(LoadError::TableTooShort { path, size: self.size, need: NEED });
        }
        let name = (self.name_ptr != 0)
            .then(|| self.name[..65].iter().position(|&c| c == 0))
            .flatten()
            .map(|end| &self.name[..end])
            .filter(|n| !n.is_empty() && n.len() <= 64 && n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_'));
        let Some(name) = name else { return Err(LoadError::BadTableName(path)) };
        let zero_copy = self.capabilities & DRAGON_CAP_ZERO_COPY_RECV != 0;
        for (f, v) in FUNCTIONS.iter().zip(self.functions) {
            let optional = matches!(*f, "recv_msg" | "message_free") && !zero_copy;
            if v == 0 && !optional {
                return Err(LoadError::MissingFunction { path, function: f });
            }
        }
        Ok(TableInfo {
            name: String::from_utf8(name.to_vec()).expect("ASCII"),
            version: (self.major, self.minor),
            capabilities: self.capabilities,
        })
    }

    /// Build the table in aligned memory and check it as the loader does.
    fn check(&self, path: &Path) -> Result<TableInfo, LoadError> {
        let name = self.name;
        // One spare word, for the misaligned pointer.
        // A whole table of this version (fields appended after `len` NULL).
        let mut mem = vec![0u64; size_of::<DragonTransportTable>() / 8 + 1];
        let base = mem.as_mut_ptr().cast::<u8>();
        let put = |at: usize, v: u64, n: usize| {
            for (i, byte) in v.to_le_bytes()[..n].iter().enumerate() {
                // SAFETY: every offset written is inside the table, which
                // lies inside `mem`.
                unsafe { base.add(at + i).write(*byte) };
            }
        };
        put(offset_of!(DragonTransportTable, size), u64::from(self.size), 4);
        put(offset_of!(DragonTransportTable, abi_major), u64::from(self.major), 2);
        put(offset_of!(DragonTransportTable, abi_minor), u64::from(self.minor), 2);
        let name_ptr = if self.name_ptr == 0 { 0 } else { name.as_ptr() as u64 };
        put(offset_of!(DragonTransportTable, name), name_ptr, size_of::<usize>());
        put(offset_of!(DragonTransportTable, capabilities), self.capabilities, 8);
        let at = [
            offset_of!(DragonTransportTable, open),
            offset_of!(DragonTransportTable, close),
            offset_of!(DragonTransportTable, channel_create),
            offset_of!(DragonTransportTable, channel_attach),
            offset_of!(DragonTransportTable, channel_handle),
            offset_of!(DragonTransportTable, channel_close),
            offset_of!(DragonTransportTable, channel_destroy),
            offset_of!(DragonTransportTable, send),
            offset_of!(DragonTransportTable, recv),
            offset_of!(DragonTransportTable, recv_msg),
            offset_of!(DragonTransportTable, message_free),
            offset_of!(DragonTransportTable, poll),
            offset_of!(DragonTransportTable, len),
        ];
        for (o, v) in at.into_iter().zip(self.functions) {
            put(o, v, size_of::<usize>());
        }
        let table: *const DragonTransportTable = match self.mode {
            1 => std::ptr::null(),
            // SAFETY: one byte into `mem`.
            2 => unsafe { base.add(1) }.cast(),
            _ => base.cast(),
        };
        // SAFETY: NULL, misaligned (refused before any read), or a whole
        // table; the name, if set, points at 72 readable bytes. Function
        // pointers are only compared with NULL, never called.
        unsafe { check_table(table, path) }
    }
}

/// Valid tables: names of every length, with and without zero copy, and a
/// later minor version with a longer table.
fn generated() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, name) in ["shm", "tcp", "verbs", "x", "a_b_9", &"n".repeat(64)].iter().enumerate() {
        let mut n = [0u8; NAME_BYTES];
        n[..name.len()].copy_from_slice(name.as_bytes());
        let zero_copy = i % 2 == 0;
        let mut functions = [0x1000 + i as u64; 13];
        if !zero_copy {
            functions[9] = 0;
            functions[10] = 0;
        }
        out.push(
            Desc {
                mode: 0,
                size: NEED + 8 * (i as u32 % 3),
                major: DRAGON_TRANSPORT_ABI_MAJOR,
                minor: i as u16 % 2,
                name_ptr: 1,
                capabilities: if zero_copy { DRAGON_CAP_ZERO_COPY_RECV | 1 } else { 1 },
                functions,
                name: n,
            }
            .encode(),
        );
    }
    out
}

#[test]
fn fuzz_plugin_table() {
    let path = Path::new("<fuzzed table>");
    let corpus = test_support::fuzz::corpus(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/plugin_table"));
    for (i, b) in corpus.iter().enumerate() {
        let d = Desc::parse(b);
        assert!(d.check(path).is_ok(), "corpus table {i} is not valid: {:?}", d.check(path));
    }
    let mut pool = corpus;
    pool.extend(generated());
    fuzz("plugin_table", pool, |b| {
        let d = Desc::parse(b);
        let (got, big) = largest_allocation(|| d.check(path));
        prop_assert!(big <= 4096, "checking a table allocated {big} bytes at once");
        prop_assert_eq!(&got, &d.expected(path));
        match got {
            Ok(_) => Ok(Verdict::Accepted),
            Err(e) => {
                prop_assert!(e.to_string().contains("<fuzzed table>"), "{}", e);
                Ok(Verdict::Rejected)
            }
        }
    });
}

#[test]
fn a_null_misaligned_short_or_nameless_table_is_a_clear_error() {
    let path = Path::new("t.so");
    let valid = Desc::parse(&generated()[0]);
    assert!(valid.check(path).is_ok());
    let with = |f: &dyn Fn(&mut Desc)| {
        let mut d = Desc::parse(&generated()[0]);
        f(&mut d);
        d.check(path).unwrap_err().to_string()
    };
    assert!(with(&|d| d.mode = 1).contains("returned NULL"));
    assert!(with(&|d| d.mode = 2).contains("returned NULL"));
    assert!(with(&|d| d.major = 2).contains("ABI version 2.0"));
    assert!(with(&|d| d.size = 8).contains("8 bytes"));
    assert!(with(&|d| d.name_ptr = 0).contains("name"));
    assert!(with(&|d| d.name = [b'z'; NAME_BYTES]).contains("name"));
    assert!(with(&|d| d.name[1] = 0xff).contains("name"));
    assert!(with(&|d| d.functions[7] = 0).contains("send"));
}
