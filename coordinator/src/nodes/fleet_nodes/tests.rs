use corral_proto::config::{Configuration, parse};
use corral_proto::inventory::{GpuInfo, TpuInfo};
use corral_proto::job::ContainerSpec;
use corral_proto::resources::{Allocation, GpuVendor, Memory, TPU_INDEX_BASE};

use super::*;

fn fleet(yaml: &str) -> FleetConfig {
    match parse(&format!("type: fleet\nname: rack\n{yaml}"), "f.yml").expect("valid") {
        Configuration::Fleet(f) => f,
        _ => panic!("a fleet"),
    }
}

fn host(cpus: u32, gpus: usize) -> HostInventory {
    HostInventory {
        hostname: "Box-1".into(),
        cpu_cores: cpus,
        arch: "x86_64".into(),
        memory: Memory::gb(64),
        disk: Memory::gb(500),
        gpus: (0..gpus)
            .map(|i| GpuInfo {
                index: i as u32,
                vendor: GpuVendor::Nvidia,
                name: "NVIDIA A100-SXM4-80GB".into(),
                memory: Memory::gb(80),
                uuid: String::new(),
                pci_bus_id: String::new(),
            })
            .collect(),
        ..HostInventory::default()
    }
}

#[test]
fn hosts_short_of_the_fleet_s_resources_are_refused_saying_which_and_by_how_much() {
    let f = fleet("resources:\n  cpu: 16..\n  gpu: A100:8\n");
    let shape = shape_of(Some(&f), "box-1", None, &host(8, 8), None);
    assert_eq!(shape.profile.refused.as_deref(), Some("cpu: the fleet wants 16.., the host has 8 CPUs"));
    let shape = shape_of(Some(&f), "box-1", None, &host(32, 4), None);
    assert_eq!(
        shape.profile.refused.as_deref(),
        Some("gpu: the fleet wants A100:8, the host has 4 matching GPU(s) of 4 (NVIDIA A100-SXM4-80GB 80GB)")
    );
    assert_eq!(shape_of(Some(&f), "box-1", None, &host(32, 8), None).profile.refused, None);
    let mem = fleet("resources:\n  memory: 128GB..\n");
    assert_eq!(
        shape_of(Some(&mem), "n", None, &host(8, 0), None).profile.refused.as_deref(),
        Some("memory: the fleet wants 128GB.., the host has 64GB")
    );
    let gpu = fleet("resources:\n  gpu: 1\n");
    assert_eq!(
        shape_of(Some(&gpu), "n", None, &host(8, 0), None).profile.refused.as_deref(),
        Some("gpu: the fleet wants 1, the host has no GPUs")
    );
    // `gpu: 0..8` takes hosts without GPUs; a cloud fleet's resources choose instances instead.
    assert_eq!(shape_of(Some(&fleet("resources:\n  gpu: 0..8\n")), "n", None, &host(8, 0), None).profile.refused, None);
    let aws = fleet("backends: [aws]\nnodes: 1\nresources:\n  gpu: 8\n");
    assert_eq!(shape_of(Some(&aws), "n", None, &host(8, 0), None).profile.refused, None);
}

#[test]
fn tpu_fleets_want_the_chips() {
    let f = fleet("resources:\n  gpu: v5litepod-8\n");
    let mut inv = host(96, 0);
    let e = shape_of(Some(&f), "n", None, &inv, None).profile.refused.expect("no chips");
    assert_eq!(e, "gpu: the fleet wants v5litepod-8; the host has no TPUs");
    inv.tpus =
        (0..8).map(|i| TpuInfo { device: format!("/dev/vfio/{i}"), pci_device_id: Some("0x0063".into()) }).collect();
    assert_eq!(shape_of(Some(&f), "n", None, &inv, None).profile.refused, None);
}

#[test]
fn blocks_follow_dstack_and_a_host_entry_overrides_the_fleet() {
    assert_eq!(split(Blocks::Auto, &host(64, 8)), Ok(8));
    assert_eq!(
        split(Blocks::Auto, &host(6, 8)),
        Err("blocks: the host cannot be split into 6 equal blocks: it has 6 CPUs and 8 GPUs (each must divide evenly)"
            .into())
    );
    assert_eq!(split(Blocks::Auto, &host(6, 0)), Ok(6));
    assert_eq!(split(Blocks::Count(4), &host(64, 8)), Ok(4));
    assert!(split(Blocks::Count(3), &host(64, 8)).is_err());
    let f = fleet(
        "blocks: 2\nssh_config:\n  user: u\n  identity_file: k\n  hosts:\n    - 10.0.0.1\n    - hostname: 10.0.0.2\n      blocks: 4\n",
    );
    let a = shape_of(Some(&f), "10-0-0-1", None, &host(8, 0), None);
    let b = shape_of(Some(&f), "10-0-0-2", None, &host(8, 0), None);
    let b2 = shape_of(Some(&f), "10-0-0-2-2", None, &host(8, 0), None);
    assert_eq!((a.blocks, a.profile.instance), (2, Some(0)));
    assert_eq!((b.blocks, b.profile.instance), (4, Some(1)));
    assert_eq!(b2.profile.instance, Some(1), "a name made unique still names its host");
    let odd = shape_of(Some(&f), "10-0-0-2", None, &host(6, 0), None);
    assert!(odd.profile.refused.expect("refused").starts_with("blocks: the host cannot be split into 4"));
}

#[test]
fn the_network_picks_the_address_multi_node_jobs_use() {
    let f = fleet("ssh_config:\n  user: u\n  identity_file: k\n  network: 10.1.0.0/16\n  hosts: [a, b]\n");
    let ifaces =
        vec!["127.0.0.1/8".to_owned(), "192.168.5.4/24".to_owned(), "10.1.2.3/16".to_owned(), "fe80::1/64".to_owned()];
    let s = shape_of(Some(&f), "a", Some("192.168.5.4"), &host(8, 0), Some(&ifaces));
    assert_eq!((s.address.as_deref(), s.profile.refused.as_deref()), (Some("10.1.2.3"), None));
    assert!(s.profile.hostnames.contains(&"10.1.2.3".to_owned()) && s.profile.hostnames.contains(&"box-1".to_owned()));
    let none = vec!["192.168.5.4/24".to_owned()];
    let s = shape_of(Some(&f), "a", None, &host(8, 0), Some(&none));
    assert_eq!(
        s.profile.refused.as_deref(),
        Some("ssh_config.network: none of this host's addresses (192.168.5.4) is in 10.1.0.0/16")
    );
    let s = shape_of(Some(&f), "a", None, &host(8, 0), None);
    assert!(s.profile.refused.expect("old agent").contains("does not report its interface addresses"));
    let public = fleet("ssh_config:\n  user: u\n  identity_file: k\n  network: 8.8.0.0/16\n  hosts: [a]\n");
    let s = shape_of(Some(&public), "a", None, &host(8, 0), Some(&ifaces));
    assert_eq!(s.profile.refused.as_deref(), Some("ssh_config.network: 8.8.0.0/16 is not a private network"));
    let internal = fleet(
        "ssh_config:\n  user: u\n  identity_file: k\n  hosts:\n    - hostname: a\n      internal_ip: 192.168.5.4\n",
    );
    assert_eq!(
        shape_of(Some(&internal), "a", None, &host(8, 0), Some(&ifaces)).address.as_deref(),
        Some("192.168.5.4")
    );
    let wrong = fleet(
        "ssh_config:\n  user: u\n  identity_file: k\n  hosts:\n    - hostname: a\n      internal_ip: 192.168.9.9\n",
    );
    let s = shape_of(Some(&wrong), "a", None, &host(8, 0), Some(&ifaces));
    assert!(
        s.profile
            .refused
            .expect("refused")
            .starts_with("ssh_config.hosts[0].internal_ip: 192.168.9.9 is not an address")
    );
    // No network, no internal_ip: the address the coordinator sees, nothing refused.
    let plain = fleet("placement: cluster\n");
    let s = shape_of(Some(&plain), "a", Some("10.9.9.9"), &host(8, 0), None);
    assert_eq!((s.cluster, s.address, s.profile.refused), (true, None, None));
}

fn spec_on(node: &NodeId, gpu_indices: Vec<u32>, env: &[(&str, &str)]) -> (NodeId, JobSpec) {
    let spec = JobSpec {
        job_id: corral_proto::ids::JobId("j".into()),
        run_id: corral_proto::ids::RunId("r".into()),
        run_name: "r".into(),
        project: "main".into(),
        node_id: node.clone(),
        image: "busybox".into(),
        commands: vec![],
        env: env.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
        working_dir: None,
        allocation: Allocation { gpu_indices, ..Allocation::default() },
        max_duration_secs: None,
        stop_grace_secs: 10,
        host_network: false,
        container: ContainerSpec::default(),
    };
    (node.clone(), spec)
}

#[test]
fn jobs_get_the_fleet_s_env_and_tpu_jobs_their_chips() {
    let mut ix = Index::new();
    let id = NodeId::from("n");
    let mut inv = host(8, 0);
    inv.tpus = (0..4)
        .map(|i| TpuInfo { device: format!("/tmp/t/dev/vfio/{i}"), pci_device_id: Some("0x0063".into()) })
        .collect();
    ix.upsert(&id, "n", Some("rack".into()), false, 1, inv);
    let env = vec![("HTTP_PROXY".to_owned(), "http://proxy:3128".to_owned()), ("MODE".to_owned(), "fleet".to_owned())];
    ix.set_profile(&id, NodeProfile { env, ..NodeProfile::default() });
    let mut gang = vec![spec_on(&id, vec![], &[("MODE", "run")])];
    decorate(&mut gang, &ix, true);
    let env = &gang[0].1.env;
    assert!(env.contains(&("HTTP_PROXY".into(), "http://proxy:3128".into())));
    assert!(
        env.contains(&("MODE".into(), "run".into())) && !env.contains(&("MODE".into(), "fleet".into())),
        "the run's own wins"
    );
    assert!(!gang[0].1.container.privileged && gang[0].1.container.devices.is_empty());

    let mut gang = vec![spec_on(&id, vec![TPU_INDEX_BASE + 2, TPU_INDEX_BASE + 3], &[])];
    decorate(&mut gang, &ix, true);
    let (_, s) = &gang[0];
    assert_eq!(
        s.container.devices,
        ["/tmp/t/dev/vfio/2:/dev/vfio/2", "/tmp/t/dev/vfio/vfio:/dev/vfio/vfio", "/tmp/t/dev/vfio/3:/dev/vfio/3"]
    );
    assert!(s.container.privileged && s.host_network);
    assert!(s.env.contains(&("TPU_VISIBLE_CHIPS".into(), "2,3".into())));
    assert!(s.env.contains(&("TPU_CHIPS_PER_PROCESS_BOUNDS".into(), "1,2,1".into())));
    // A node whose Docker refuses privileged containers: the devices and host network alone.
    let mut gang = vec![spec_on(&id, vec![TPU_INDEX_BASE], &[])];
    decorate(&mut gang, &ix, false);
    assert!(!gang[0].1.container.privileged && gang[0].1.host_network);
    assert_eq!(gang[0].1.container.devices[0], "/tmp/t/dev/vfio/0:/dev/vfio/0");
}
