//! Builds connwatch-ebpf for the BPF target (nightly, bpf-linker), drops the object's DWARF
//! and leaves it in OUT_DIR, where `probes` embeds it. `cargo xtask` installs the
//! prerequisites first.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("connwatch lives inside the workspace")?;
    let ebpf_dir = workspace.join("connwatch-ebpf");
    // The programs embed connwatch-common's records and config: rebuild when they change.
    println!("cargo:rerun-if-changed={}", workspace.join("connwatch-common").display());
    let ebpf_dir = ebpf_dir.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "connwatch-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building connwatch-ebpf (run `cargo xtask prereqs` to install nightly rust-src and bpf-linker)")?;
    // The eBPF binary is named `connwatch` too (connwatch-ebpf/Cargo.toml); `probes` embeds it.
    let object = PathBuf::from(env::var("OUT_DIR")?).join("connwatch");
    strip_dwarf(&object).with_context(|| format!("dropping the DWARF of {}", object.display()))
}

/// Drops the object's DWARF (three quarters of it): bpf-linker made the BTF the loader reads
/// from it already, and every page of the embedded object counts in connwatch's RSS (2.4 MiB
/// with 65,536 sockets tracked, docs/benchmarks.md). Written beside it, then renamed over it,
/// so a file it shares with the eBPF build's own output stays whole.
fn strip_dwarf(object: &Path) -> anyhow::Result<()> {
    let data = fs::read(object)?;
    let mut elf = object::build::elf::Builder::read(&*data)?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        let target = name.strip_prefix(b".rela").or_else(|| name.strip_prefix(b".rel"));
        section.delete =
            name.starts_with(b".debug") || target.is_some_and(|t| t.starts_with(b".debug"));
    }
    elf.delete_orphans();
    // LLVM writes the section names into the symbols' string table; the writer wants a table
    // of their own.
    let has_section_names = elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString));
    if !has_section_names {
        let names = elf.sections.add();
        names.name = (&b".shstrtab"[..]).into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    elf.write(&mut stripped)?;
    let temporary = object.with_extension("stripped");
    fs::write(&temporary, stripped)?;
    fs::rename(&temporary, object)?;
    Ok(())
}
