use corral_coordinator::store::Store;
use corral_proto::ids::NodeId;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("corral.db"))?;
    for i in 0..10_000usize {
        let id = NodeId(format!("n{i:012x}"));
        store.add_node(&id, &format!("hollow-{i:05}"), None, &format!("fp{i}"))?;
    }
    for _ in 0..3 {
        let t = Instant::now();
        let n = store.nodes()?.len();
        println!("nodes() without inventories: {n} rows in {:?}", t.elapsed());
    }
    for i in 0..10_000usize {
        let id = NodeId(format!("n{i:012x}"));
        store.set_inventory(&id, &corral_tests::hollow::h100_host(i))?;
    }
    for _ in 0..3 {
        let t = Instant::now();
        let n = store.nodes()?.len();
        println!("nodes() with 8-GPU inventories: {n} rows in {:?}", t.elapsed());
    }
    Ok(())
}
