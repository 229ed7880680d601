//! The committed CRD must be what `crdgen` generates from the Rust types.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/bully/crds/bullycluster.yaml")
}

#[test]
fn committed_crd_is_fresh() {
    let path = committed_path();
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let generated = bully_controller::crd::crd_yaml();
    assert!(
        committed == generated,
        "{} is stale; regenerate it with\n  cargo run -p bully-controller -- crdgen --output charts/bully/crds/bullycluster.yaml",
        path.display()
    );
}

#[test]
fn crdgen_prints_the_same_yaml() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bully-controller"))
        .arg("crdgen")
        .output()
        .expect("running bully-controller crdgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        bully_controller::crd::crd_yaml()
    );
}
