//! tracefs: mounted on demand, and the source of classic tracepoint record layouts.
//!
//! Layouts change between kernels (tcp_retransmit_skb gained `err`, tcp_send_reset's addresses
//! became sockaddrs), so offsets are read from each tracepoint's `format` file at load time.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where tracefs lives on every kernel since 4.1.
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed: {0} \
         (run as root, or mount it: `mount -t tracefs tracefs {TRACEFS}`)"
    )]
    Mount(io::Error),
    #[error(
        "tracepoint {category}:{name} not found in {TRACEFS}/events: this kernel lacks it \
         (connwatch needs Linux 5.14 or newer with CONFIG_TRACEPOINTS)"
    )]
    Missing { category: String, name: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("tracepoint {tracepoint}: its format has no field `{field}`")]
    NoField { tracepoint: String, field: String },
    #[error("tracepoint {tracepoint}: malformed format line `{line}`")]
    Malformed { tracepoint: String, line: String },
}

/// Mounts tracefs at [`TRACEFS`] unless it is there already (a fresh host has it unmounted).
pub fn ensure_mounted() -> Result<(), TracefsError> {
    let root = Path::new(TRACEFS);
    if root.join("events").is_dir() {
        return Ok(());
    }
    let target = CString::new(TRACEFS).expect("no NUL in a constant path");
    let fstype = CString::new("tracefs").expect("no NUL in a constant");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(TracefsError::Mount(io::Error::last_os_error()));
    }
    Ok(())
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Whether this kernel has the tracepoint `category:name` (raw or classic alike).
pub fn exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS).join("events").join(category).join(name).is_dir()
}

/// A tracepoint's record layout.
#[derive(Clone, Debug)]
pub struct Format {
    pub tracepoint: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Reads `events/<category>/<name>/format` under [`TRACEFS`].
    pub fn read(category: &str, name: &str) -> Result<Self, TracefsError> {
        let dir = Path::new(TRACEFS).join("events").join(category).join(name);
        if !dir.is_dir() {
            return Err(TracefsError::Missing { category: category.into(), name: name.into() });
        }
        let path = dir.join("format");
        let text =
            fs::read_to_string(&path).map_err(|source| TracefsError::Read { path, source })?;
        Self::parse(&format!("{category}:{name}"), &text)
    }

    /// Parses a format file's text. Only `field:` lines matter; `print fmt` is ignored.
    pub fn parse(tracepoint: &str, text: &str) -> Result<Self, TracefsError> {
        let malformed = |line: &str| TracefsError::Malformed {
            tracepoint: tracepoint.into(),
            line: line.trim().into(),
        };
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("field:")) {
            let mut decl = None;
            let (mut offset, mut size) = (None, None);
            for part in line.split(';').map(str::trim) {
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                return Err(malformed(line));
            };
            // `const void * skaddr`, `__u8 saddr[4]`, `enum sk_rst_reason reason`
            let last = decl.rsplit([' ', '*']).next().unwrap_or_default();
            let name = last.split('[').next().unwrap_or_default();
            if name.is_empty() {
                return Err(malformed(line));
            }
            fields.push(Field { name: name.into(), offset, size });
        }
        Ok(Self { tracepoint: tracepoint.into(), fields })
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field that must exist and have `size` bytes.
    pub fn offset(&self, name: &str, size: u32) -> Result<u32, TracefsError> {
        match self.field(name) {
            Some(f) if f.size == size => Ok(f.offset),
            _ => Err(TracefsError::NoField {
                tracepoint: self.tracepoint.clone(),
                field: format!("{name} ({size} bytes)"),
            }),
        }
    }
}
