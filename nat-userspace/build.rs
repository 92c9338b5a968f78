//! Compiles the kernel programs (nat-ebpf) for the bpf target with nightly and
//! bpf-linker; the object is embedded in the `nat` binary.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../nat-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nat-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../nat-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
