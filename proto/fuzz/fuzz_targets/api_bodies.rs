//! The HTTP API's JSON bodies as the coordinator takes them: arbitrary bytes into each request type
//! it accepts (`serde_json::from_slice`, what axum's `Json` does), then the checks it runs on the
//! result (the configuration limits, the names). An error or a value, never a panic; and a
//! submission the checks pass is within the limits the rest of Corral relies on.
#![no_main]

use corral_proto::api::{
    CordonNodes, CreateJoinToken, DrainNode, NameKind, StopRun, SubmitFleet, SubmitRun, SubmitVolume, check_name,
};
use corral_proto::config::Configuration;
use corral_proto::config::limits::{MAX_NODES, MAX_REPLICAS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(run) = serde_json::from_slice::<SubmitRun>(data)
        && run.check().is_ok()
    {
        match &run.configuration {
            Configuration::Task(t) => assert!((1..=MAX_NODES).contains(&t.nodes)),
            Configuration::Service(s) => assert!(s.replicas.max.is_some_and(|m| m <= MAX_REPLICAS)),
            _ => {}
        }
    }
    if let Ok(fleet) = serde_json::from_slice::<SubmitFleet>(data) {
        let _ = fleet.check();
    }
    if let Ok(volume) = serde_json::from_slice::<SubmitVolume>(data)
        && volume.check().is_ok()
    {
        let _ = corral_proto::admission::check_volume(&volume.configuration);
    }
    if let Ok(sel) = serde_json::from_slice::<CordonNodes>(data) {
        let _ = sel.check();
    }
    if let Ok(drain) = serde_json::from_slice::<DrainNode>(data) {
        let _ = drain.check();
    }
    let _ = serde_json::from_slice::<StopRun>(data);
    let _ = serde_json::from_slice::<CreateJoinToken>(data);
    if let Ok(name) = std::str::from_utf8(data) {
        for kind in [NameKind::Run, NameKind::Fleet, NameKind::Project, NameKind::Node, NameKind::Volume] {
            let _ = check_name(kind, name);
        }
    }
});
