//! `make control-plane`: the tests' etcd + kube-apiserver for a person, until Ctrl-C or SIGTERM.
use std::path::PathBuf;

use control_plane::{ControlPlane, Who};

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| ".cache/control-plane/run".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let plane = match ControlPlane::start_in(dir.clone(), None) {
        Ok(plane) => plane,
        Err(err) => {
            eprintln!("control-plane: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "kube-apiserver is up at {} (etcd behind it); files in {}",
        plane.url(),
        dir.display()
    );
    for who in Who::ALL {
        println!(
            "  {:<20} export KUBECONFIG={}",
            who.name(),
            plane.kubeconfig(who).display()
        );
    }
    println!("Ctrl-C (or SIGTERM) stops both.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
    // Dropping stops kube-apiserver, then etcd.
    drop(plane);
}
