//! Golden bytes pin every message's encoding: a failing test here means a wire break. Never update a
//! golden string to make a test pass without bumping the ALPN version.

use proptest::prelude::*;

use super::*;
use crate::inventory::{DockerInfo, GpuInfo, TpuInfo};
use crate::job::{ContainerSpec, Mount};
use crate::resources::{Allocation, GpuVendor, Memory};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn inventory() -> HostInventory {
    HostInventory {
        hostname: "gpu-01".into(),
        os: "Debian 12".into(),
        cpu_model: "EPYC".into(),
        cpu_cores: 64,
        arch: "x86_64".into(),
        memory: Memory::gb(512),
        disk: Memory::gb(1024),
        gpus: vec![GpuInfo {
            index: 0,
            vendor: GpuVendor::Nvidia,
            name: "NVIDIA A100-SXM4-80GB".into(),
            memory: Memory::gb(80),
            uuid: "GPU-1".into(),
            pci_bus_id: "00000000:07:00.0".into(),
        }],
        gpu_driver_version: Some("550.54.15".into()),
        cuda_version: Some("12.4".into()),
        tpus: vec![TpuInfo { device: "/dev/accel0".into(), pci_device_id: Some("0x0062".into()) }],
        docker: DockerInfo { version: "28.2.2".into(), nvidia_runtime: true },
    }
}

fn job_spec() -> JobSpec {
    JobSpec {
        job_id: "j1".into(),
        run_id: "r1".into(),
        run_name: "train".into(),
        project: "main".into(),
        node_id: "n1".into(),
        image: "busybox".into(),
        commands: vec!["echo hi".into()],
        env: vec![("A".into(), "1".into())],
        working_dir: Some("/w".into()),
        allocation: Allocation { cpus: 2, memory: Memory::gb(1), shm_size: None, gpu_indices: vec![0, 1] },
        max_duration_secs: Some(60),
        stop_grace_secs: 10,
        host_network: true,
        container: ContainerSpec::default(),
    }
}

/// Every message variant with fixed contents, and its pinned frame.
fn golden() -> Vec<(String, Vec<u8>)> {
    let agent = [
        AgentMessage::Hello(Hello {
            protocol_min: 1,
            protocol_max: 1,
            agent_version: "0.1.0".into(),
            enroll: Some(EnrollRequest { secret: "s".into(), csr_der: vec![1, 2], hostname: "h".into(), fleet: None }),
        }),
        AgentMessage::Inventory(inventory()),
        AgentMessage::Containers(vec![ContainerReport { job_id: "j1".into(), running: true, exit_code: None }]),
        AgentMessage::JobUpdate(JobUpdate {
            job_id: "j1".into(),
            state: JobState::Failed,
            exit_code: Some(3),
            reason: Some(TerminationReason::ContainerExitedWithError),
            message: Some("exit 3".into()),
        }),
        AgentMessage::Heartbeat { seq: 7 },
        AgentMessage::TunnelReply(TunnelReply::Connected),
        AgentMessage::TunnelReply(TunnelReply::Failed { message: "closed".into() }),
    ];
    let coord = [
        CoordinatorMessage::Welcome(Welcome {
            protocol: 1,
            node_id: "n1".into(),
            coordinator_version: "0.1.0".into(),
            heartbeat_secs: 5,
        }),
        CoordinatorMessage::Enrolled(Enrollment {
            node_id: "n1".into(),
            certificate_pem: "C".into(),
            ca_pem: "A".into(),
        }),
        CoordinatorMessage::Refused(Refusal { code: RefusalCode::WrongSecret, message: "no".into() }),
        CoordinatorMessage::StartJob(Box::new(job_spec())),
        CoordinatorMessage::StopJob { job_id: "j1".into(), abort: false, reason: TerminationReason::StoppedByUser },
        CoordinatorMessage::ForgetJob { job_id: "j1".into() },
        CoordinatorMessage::HeartbeatAck { seq: 7 },
        CoordinatorMessage::OpenTunnel { job_id: "j1".into(), port: 8080 },
        CoordinatorMessage::OpenExec(ExecRequest {
            job_id: "j1".into(),
            command: vec!["sh".into()],
            tty: true,
            size: Some(TermSize { rows: 24, cols: 80 }),
        }),
    ];
    let logs = [
        LogFrame::Open { job_id: "j1".into() },
        LogFrame::Chunk { offset: 300, data: b"hi\n".to_vec() },
        LogFrame::End { total: 303 },
    ];
    let exec = [
        ExecFrame::Stdin(b"ls\n".to_vec()),
        ExecFrame::StdinEnd,
        ExecFrame::Resize(TermSize { rows: 50, cols: 132 }),
        ExecFrame::Stdout(b"a\n".to_vec()),
        ExecFrame::Stderr(b"e\n".to_vec()),
        ExecFrame::Exit { code: Some(7) },
    ];
    // Added after the exec frames: appended, so no earlier frame's bytes move.
    let ssh =
        [CoordinatorMessage::OpenSsh { job_id: "j1".into(), authorized_keys: vec!["ssh-ed25519 AAAA u@h".into()] }];
    // Added after SSH: the image store.
    let images_agent = [AgentMessage::FetchImage { image: "team/app:1".into() }];
    let images_coord = [
        CoordinatorMessage::ImageReply(ImageReply::Stored { size: 1_000_000 }),
        CoordinatorMessage::ImageReply(ImageReply::NotStored),
    ];
    // Added after the image store: agent upgrades.
    let upgrade_agent = [AgentMessage::FetchAgent { sha256: "ab".repeat(32) }];
    let upgrade_coord =
        [CoordinatorMessage::Upgrade { version: "0.2.0".into(), sha256: "ab".repeat(32), size: 12_000_000 }];
    // Added after upgrades: spot interruptions.
    let interruption =
        [AgentMessage::InterruptionNotice { action: "terminate".into(), time: "2026-11-27T12:00:00Z".into() }];
    // Added after spot interruptions: acknowledged log streams.
    let log_agent = [AgentMessage::OpenLog { job_id: "j1".into() }];
    let log_coord = [CoordinatorMessage::LogStored { offset: 303, complete: true }];
    let mut out = Vec::new();
    for m in agent {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in coord {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in logs {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in exec {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in ssh {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in images_agent {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in images_coord {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in upgrade_agent {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in upgrade_coord {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in interruption {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in log_agent {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    for m in log_coord {
        out.push((format!("{m:?}"), encode(&m).expect("encodes")));
    }
    out
}

const GOLDEN: &[&str] = &[
    "4352524c00010000001200010105302e312e30010173020102016800",
    "4352524c00010000008f01066770752d30310944656269616e203132044550594340067838365f3634808080808010808080808020010000154e564944494120413130302d53584d342d3830474280808080c002054750552d311030303030303030303a30373a30302e3001093535302e35342e3135010431322e34010b2f6465762f616363656c3001063078303036320632382e322e3201",
    "4352524c0001000000070201026a310100",
    "4352524c00010000001103026a3107010601010106657869742033",
    "4352524c0001000000020407",
    "4352524c0001000000020500",
    "4352524c000100000009050106636c6f736564",
    "4352524c00010000000c0001026e3105302e312e3005",
    "4352524c00010000000801026e3101430141",
    "4352524c0001000000050201026e6f",
    // Protocol 2: the protocol 1 frame (below, `START_JOB_V1`) with `container` after it (its
    // last byte: no `utilization_policy`).
    "4352524c00010000004903026a3102723105747261696e046d61696e026e310762757379626f7801076563686f206869010141013101022f7702808080800400020001013c0a01000000000000000000000000",
    "4352524c00010000000604026a310004",
    "4352524c00010000000405026a31",
    "4352524c0001000000020607",
    "4352524c00010000000607026a31903f",
    "4352524c00010000000c08026a310102736801011850",
    "4352524c00010000000400026a31",
    "4352524c00010000000701ac020368690a",
    "4352524c00010000000302af02",
    "4352524c00010000000500036c730a",
    "4352524c00010000000101",
    "4352524c00010000000402328401",
    "4352524c0001000000040302610a",
    "4352524c0001000000040402650a",
    "4352524c00010000000305010e",
    "4352524c00010000001a09026a3101147373682d65643235353139204141414120754068",
    "4352524c00010000000c060a7465616d2f6170703a31",
    "4352524c0001000000050a00c0843d",
    "4352524c0001000000020a01",
    "4352524c000100000042074061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162",
    "4352524c00010000004c0b05302e322e30406162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616280b6dc05",
    "4352524c00010000002008097465726d696e61746514323032362d31312d32375431323a30303a30305a",
    "4352524c00010000000409026a31",
    "4352524c0001000000040caf0201",
];

#[test]
fn golden_bytes_are_pinned() {
    let frames = golden();
    assert_eq!(frames.len(), GOLDEN.len(), "one golden frame per message variant");
    for ((name, bytes), want) in frames.iter().zip(GOLDEN) {
        assert_eq!(&hex(bytes), want, "encoding of {name} changed: that is a wire break");
    }
}

#[test]
fn golden_frames_decode_back() {
    let frames = golden();
    let (first, used): (AgentMessage, usize) = decode_frame(&frames[0].1).expect("valid").expect("complete");
    assert_eq!(used, frames[0].1.len());
    assert!(matches!(first, AgentMessage::Hello(_)));
}

#[test]
fn header_is_checked_before_payload() {
    let mut f = encode(&AgentMessage::Heartbeat { seq: 1 }).expect("encodes");
    f[0] = b'X';
    assert!(matches!(decode_frame::<AgentMessage>(&f), Err(FrameError::BadMagic(_))));

    let mut f = encode(&AgentMessage::Heartbeat { seq: 1 }).expect("encodes");
    f[5] = 9;
    assert_eq!(decode_frame::<AgentMessage>(&f), Err(FrameError::UnsupportedVersion(9)));

    // A header announcing 4 GiB is refused from the header alone, with no payload present.
    let mut h = Vec::from(MAGIC);
    h.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode_frame::<AgentMessage>(&h), Err(FrameError::TooLarge(u32::MAX)));
}

#[test]
fn partial_frames_ask_for_more() {
    let f = encode(&AgentMessage::Heartbeat { seq: 1 }).expect("encodes");
    for cut in 0..f.len() {
        assert_eq!(decode_frame::<AgentMessage>(&f[..cut]), Ok(None));
    }
}

#[test]
fn negotiation_picks_newest_common() {
    assert_eq!(negotiate(1, 1), Some(1));
    assert_eq!(negotiate(1, 5), Some(PROTOCOL_MAX));
    assert_eq!(negotiate(PROTOCOL_MAX + 1, PROTOCOL_MAX + 3), None);
}

fn arb_state() -> impl Strategy<Value = JobState> {
    prop_oneof![
        Just(JobState::Submitted),
        Just(JobState::Pending),
        Just(JobState::Running),
        Just(JobState::Done),
        Just(JobState::Failed),
    ]
}

proptest! {
    #[test]
    fn job_updates_round_trip(id in "[a-z0-9]{1,20}", code in proptest::option::of(any::<i64>()),
                              msg in proptest::option::of(".{0,40}"), state in arb_state()) {
        let m = AgentMessage::JobUpdate(JobUpdate { job_id: JobId(id), state, exit_code: code, reason: None, message: msg });
        let f = encode(&m).expect("encodes");
        let (back, used): (AgentMessage, usize) = decode_frame(&f).expect("valid").expect("complete");
        prop_assert_eq!(used, f.len());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn log_chunks_round_trip(offset in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let m = LogFrame::Chunk { offset, data };
        let f = encode(&m).expect("encodes");
        let (back, _): (LogFrame, usize) = decode_frame(&f).expect("valid").expect("complete");
        prop_assert_eq!(back, m);
    }

    #[test]
    fn tunnel_frames_round_trip(id in "[a-z0-9]{1,20}", port in any::<u16>(), why in ".{0,80}") {
        let open = CoordinatorMessage::OpenTunnel { job_id: JobId(id), port };
        let (back, _): (CoordinatorMessage, usize) =
            decode_frame(&encode(&open).expect("encodes")).expect("valid").expect("complete");
        prop_assert_eq!(back, open);
        let reply = AgentMessage::TunnelReply(TunnelReply::Failed { message: why });
        let (back, _): (AgentMessage, usize) =
            decode_frame(&encode(&reply).expect("encodes")).expect("valid").expect("complete");
        prop_assert_eq!(back, reply);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_frame::<AgentMessage>(&bytes);
        let _ = decode_frame::<CoordinatorMessage>(&bytes);
        let _ = decode_frame::<LogFrame>(&bytes);
    }
}

/// `JobSpec` as protocol 1 agents know it: the same fields without `container`.
#[derive(Debug, PartialEq, Deserialize)]
struct JobSpecV1 {
    job_id: JobId,
    run_id: crate::ids::RunId,
    run_name: String,
    project: String,
    node_id: NodeId,
    image: String,
    commands: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    allocation: Allocation,
    max_duration_secs: Option<u64>,
    stop_grace_secs: u64,
    host_network: bool,
}

#[derive(Debug, PartialEq, Deserialize)]
enum CoordinatorMessageV1 {
    Welcome(Welcome),
    Enrolled(Enrollment),
    Refused(Refusal),
    StartJob(Box<JobSpecV1>),
}

/// `StartJob(job_spec())` as protocol 1 encoded it.
const START_JOB_V1: &str = "4352524c00010000003d03026a3102723105747261696e046d61696e026e310762757379626f7801076563686f206869010141013101022f7702808080800400020001013c0a01";

#[test]
fn a_protocol_1_agent_reads_a_protocol_2_start_job() {
    // The payload of protocol 1 is the start of protocol 2's.
    let frame = hex(&encode(&CoordinatorMessage::StartJob(Box::new(job_spec()))).expect("encodes"));
    assert!(frame[20..].starts_with(&START_JOB_V1[20..]), "{frame}");

    let mut spec = job_spec();
    spec.container.mounts.push(Mount::Host { host_path: "/data".into(), path: "/d".into(), optional: false });
    let frame = encode(&CoordinatorMessage::StartJob(Box::new(spec.clone()))).expect("encodes");
    let (old, _): (CoordinatorMessageV1, usize) = decode_frame(&frame).expect("decodes").expect("complete");
    let CoordinatorMessageV1::StartJob(old) = old else { panic!("not a StartJob: {old:?}") };
    assert_eq!((old.job_id, old.image, old.commands, old.host_network), (spec.job_id, spec.image, spec.commands, true));
    // What it cannot read is what the coordinator keeps from it.
    assert!(spec.container.needs_protocol_2());
    assert!(!ContainerSpec::default().needs_protocol_2());
}

/// Protocol 2: an agent's interface addresses (`ssh_config.network`), a message of its own so that
/// a protocol 1 agent's `Inventory` still decodes.
#[test]
fn interfaces_golden_bytes() {
    let m = AgentMessage::Interfaces { addresses: vec!["10.0.0.1/24".into()] };
    let bytes = encode(&m).expect("encodes");
    assert_eq!(hex(&bytes), "4352524c00010000000e0c010b31302e302e302e312f3234");
    let (back, _): (AgentMessage, usize) = decode_frame(&bytes).expect("valid").expect("complete");
    assert_eq!(back, m);
}

/// Protocol 2: an agent fetches a run's upload (its local repo or `files`) from the coordinator.
#[test]
fn fetch_upload_golden_bytes() {
    let m = AgentMessage::FetchUpload { sha256: "ab".repeat(32) };
    let bytes = encode(&m).expect("encodes");
    assert_eq!(hex(&bytes), format!("4352524c000100000042{}{}", "0a40", "6162".repeat(32)));
    let (back, _): (AgentMessage, usize) = decode_frame(&bytes).expect("valid").expect("complete");
    assert_eq!(back, m);
}

/// Protocol 2: an agent's named volumes (with their sizes), and the coordinator asking it to
/// remove one (`corral volume delete`).
#[test]
fn volume_messages_golden_bytes() {
    let name = "corral-vol-main-data";
    let name_hex: String = hex(name.as_bytes());
    let report = AgentMessage::Volumes(vec![
        VolumeReport { docker_name: name.into(), size: Some(4096) },
        VolumeReport { docker_name: name.into(), size: None },
    ]);
    let bytes = encode(&report).expect("encodes");
    assert_eq!(hex(&bytes), format!("4352524c0001000000300b0214{name_hex}01802014{name_hex}00"));
    let (back, _): (AgentMessage, usize) = decode_frame(&bytes).expect("valid").expect("complete");
    assert_eq!(back, report);
    let delete = CoordinatorMessage::DeleteVolume { docker_name: name.into() };
    let bytes = encode(&delete).expect("encodes");
    assert_eq!(hex(&bytes), format!("4352524c0001000000160d14{name_hex}"));
    let (back, _): (CoordinatorMessage, usize) = decode_frame(&bytes).expect("valid").expect("complete");
    assert_eq!(back, delete);
}

/// Protocol 3: what a node measured over an interval.
#[test]
fn metrics_golden_bytes() {
    use crate::metrics::{ContainerSample, EccCounts, GpuSample, HostSample, NodeMetrics, RemappedRows};
    let m = AgentMessage::Metrics(Box::new(NodeMetrics {
        at_ms: 1_700_000_000_000,
        interval_ms: 10_000,
        host: HostSample { cpu_millicores: 1500, memory_used: 1 << 30, memory_total: 1 << 34 },
        gpus: vec![GpuSample {
            index: 2,
            uuid: "GPU-2".into(),
            lost: false,
            utilization: Some(97),
            memory_utilization: None,
            memory_used: Some(1 << 20),
            memory_total: Some(1 << 36),
            temperature: Some(81),
            power_mw: Some(312_000),
            sm_clock_mhz: Some(1410),
            memory_clock_mhz: None,
            throttle_reasons: Some(4),
            ecc: Some(EccCounts { uncorrected_volatile: 3, ..EccCounts::default() }),
            retired_pages_pending: Some(false),
            remapped_rows: Some(RemappedRows { failure: true, ..RemappedRows::default() }),
            xids: vec![79],
        }],
        containers: vec![ContainerSample {
            job_id: "j1".into(),
            cpu_millicores: Some(250),
            memory_used: 4096,
            memory_limit: 8192,
            network_rx: 1,
            network_tx: 2,
            disk_read: 3,
            disk_write: 4,
        }],
    }));
    let bytes = encode(&m).expect("encodes");
    assert_eq!(
        hex(&bytes),
        "4352524c0001000000550d80a0abfef962904edc0b808080800480808080400102054750552d32000161000180804001808080808002015101c0851301820b000104010003000001000100000001014f01026a3101fa018020804001020304"
    );
    let (back, _): (AgentMessage, usize) = decode_frame(&bytes).expect("valid").expect("complete");
    assert_eq!(back, m);
}
