//! k8s/crd.yaml is what `breaker-controller crd` prints.

#[test]
fn committed_crd_matches_the_generated_one() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../k8s/crd.yaml"))
            .expect("k8s/crd.yaml");
    assert!(
        committed == breaker_api::policy::crd_yaml(),
        "k8s/crd.yaml is stale: run `cargo run -p controller --bin breaker-controller -- crd > k8s/crd.yaml`"
    );
}
