//! Whole-file tests of [`parse`]: what users write, what they get, and the exact errors.

use crate::resources::{GpuVendor, Memory, Range};

use super::*;

fn ok(text: &str) -> Configuration {
    parse(text, "test.dstack.yml").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text, "test.dstack.yml") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e,
    }
}

fn task(text: &str) -> TaskConfig {
    match ok(text) {
        Configuration::Task(t) => t,
        other => panic!("not a task: {other:?}"),
    }
}

fn service(text: &str) -> ServiceConfig {
    match ok(text) {
        Configuration::Service(s) => s,
        other => panic!("not a service: {other:?}"),
    }
}

/// (line, column, field) of an error.
fn at(e: &ConfigError) -> (usize, usize, &str) {
    (e.line, e.column, e.field.as_str())
}

#[test]
fn a_simple_task() {
    let t = task(
        "type: task\nname: train\nimage: ubuntu:24.04\ncommands:\n  - nvidia-smi\n  - python train.py\n\
         resources:\n  gpu: A100:80GB:2\n  shm_size: 16GB\nmax_duration: 2h\nnodes: 2\npriority: 50\n",
    );
    assert_eq!(t.name.as_deref(), Some("train"));
    assert_eq!(t.image.as_deref(), Some("ubuntu:24.04"));
    assert_eq!(t.commands, ["nvidia-smi", "python train.py"]);
    assert_eq!(t.max_duration_secs, Some(7200));
    assert_eq!(t.stop_duration_secs, Some(300));
    assert_eq!((t.nodes, t.priority), (2, Some(50)));
    let gpu = t.resources.gpu.expect("gpu");
    assert_eq!((gpu.names, gpu.count), (vec!["A100".to_owned()], Range::exactly(2)));
    assert_eq!(gpu.memory, Some(Range::exactly(Memory::gb(80))));
    assert_eq!(t.resources.shm_size, Some(Memory::gb(16)));
}

#[test]
fn unknown_field_suggests_the_near_miss() {
    let e = err("type: task\ncomands:\n  - echo hi\n");
    assert_eq!(at(&e), (2, 1, "comands"));
    assert_eq!(e.message, "unknown field, did you mean `commands`?");
    assert!(!e.unsupported);
    assert_eq!(e.to_string(), "test.dstack.yml:2:1: comands: unknown field, did you mean `commands`?");

    let e = err("type: task\ncommands: [x]\nresources:\n  gpus: 2\n");
    assert_eq!(at(&e), (4, 3, "resources.gpus"));
    assert!(e.message.contains("did you mean `gpu`?"), "{}", e.message);

    // A field of another configuration type.
    let e = err("type: task\ncommands: [x]\nport: 8000\n");
    assert_eq!(at(&e), (3, 1, "port"));
    assert!(e.message.contains("`ports`"), "{}", e.message);
}

#[test]
fn bad_gpu_memory_unit() {
    let e = err("type: task\nimage: ubuntu\nresources:\n  gpu: \"A100:80GX\"\n");
    assert_eq!(at(&e), (4, 8, "resources.gpu"));
    assert_eq!(e.message, "unknown memory unit \"GX\" in \"A100:80GX\" (use MB, GB or TB)");
    assert_eq!(
        e.to_string(),
        "test.dstack.yml:4:8: resources.gpu: unknown memory unit \"GX\" in \"A100:80GX\" (use MB, GB or TB)"
    );
}

#[test]
fn image_and_python_are_exclusive() {
    let e = err("type: task\nimage: ubuntu\npython: 3.12\ncommands: [x]\n");
    assert_eq!(at(&e), (3, 1, "python"));
    assert!(e.message.contains("mutually exclusive"));
}

#[test]
fn priority_is_0_to_100() {
    let e = err("type: task\ncommands: [x]\npriority: 101\n");
    assert_eq!(at(&e), (3, 11, "priority"));
    assert_eq!(e.message, "must be between 0 and 100, found 101");
    assert_eq!(task("type: task\ncommands: [x]\npriority: 0\n").priority, Some(0));
}

#[test]
fn other_field_rules() {
    assert_eq!(at(&err("type: task\ncommands: [x]\nnodes: 0\n")), (3, 8, "nodes"));
    let e = err("type: task\nname: My_Run\ncommands: [x]\n");
    assert_eq!(at(&e), (2, 7, "name"));
    assert!(e.message.contains("not a valid name"));
    assert!(err("type: task\nname: a\ncommands: [x]\n").message.contains("2 to 41"));
    task(&format!("type: task\nname: a{}\ncommands: [x]\n", "b".repeat(40)));
    err(&format!("type: task\nname: a{}\ncommands: [x]\n", "b".repeat(41)));
    let e = err("type: task\nname: nothing\n");
    assert_eq!(e.field, "commands");
    let e = err("type: task\ncommands: echo hi\n");
    assert_eq!(at(&e), (2, 11, "commands"));
    assert!(e.message.starts_with("expected a list of strings, found a string"), "{}", e.message);
    let e = err("type: task\ncommands:\n  - echo\n  - [a]\n");
    assert_eq!(at(&e), (4, 5, "commands[1]"));
    let e = err("type: task\ncommands: [x]\nshell: zsh\n");
    assert_eq!(e.field, "shell");
}

#[test]
fn env_forms() {
    let t = task("type: task\ncommands: [x]\nenv:\n  - A=1\n  - HF_TOKEN\n  - EMPTY=\n  - EQ=a=b\n");
    let want = [("A", Some("1")), ("HF_TOKEN", None), ("EMPTY", Some("")), ("EQ", Some("a=b"))];
    let got: Vec<(&str, Option<&str>)> = t.env.iter().map(|v| (v.name.as_str(), v.value.as_deref())).collect();
    assert_eq!(got, want);

    let t = task("type: task\ncommands: [x]\nenv:\n  PORT: 8080\n  DEBUG: true\n  HF_TOKEN:\n  NAME: 'x y'\n");
    let got: Vec<(&str, Option<&str>)> = t.env.iter().map(|v| (v.name.as_str(), v.value.as_deref())).collect();
    assert_eq!(got, [("PORT", Some("8080")), ("DEBUG", Some("true")), ("HF_TOKEN", None), ("NAME", Some("x y"))]);

    let e = err("type: task\ncommands: [x]\nenv:\n  - A=1\n  - 9LIVES=1\n");
    assert_eq!(at(&e), (5, 5, "env[1]"));
    let e = err("type: task\ncommands: [x]\nenv:\n  - A=1\n  - A=2\n");
    assert!(e.message.contains("set twice"));
    assert_eq!(err("type: task\ncommands: [x]\nenv: A=1\n").field, "env");
}

#[test]
fn durations() {
    let t = |extra: &str| task(&format!("type: task\ncommands: [x]\n{extra}\n"));
    assert_eq!(t("max_duration: 30m").max_duration_secs, Some(1800));
    assert_eq!(t("max_duration: 1d").max_duration_secs, Some(86400));
    assert_eq!(t("max_duration: 1w").max_duration_secs, Some(604800));
    assert_eq!(t("max_duration: 90").max_duration_secs, Some(90));
    assert_eq!(t("max_duration: off").max_duration_secs, None);
    assert_eq!(t("max_duration: false").max_duration_secs, None);
    assert_eq!(t("max_duration: 'off'").max_duration_secs, None);
    assert_eq!(t("stop_duration: off").stop_duration_secs, None);
    assert_eq!(t("stop_duration: 10s").stop_duration_secs, Some(10));
    assert_eq!(t("priority: 1").stop_duration_secs, Some(300));
    let e = err("type: task\ncommands: [x]\nmax_duration: 2hours\n");
    assert_eq!(at(&e), (3, 15, "max_duration"));
    assert!(e.message.contains("cannot read \"2hours\" as a duration"), "{}", e.message);
}

#[test]
fn ports() {
    let t = task(
        "type: task\ncommands: [x]\nports:\n  - 8000\n  - \"8080:80\"\n  - \"*:9000\"\n  - {container_port: 7000}\n",
    );
    let got: Vec<(Option<u16>, u16)> = t.ports.iter().map(|p| (p.local, p.container)).collect();
    assert_eq!(got, [(Some(8000), 8000), (Some(8080), 80), (None, 9000), (None, 7000)]);
    assert_eq!(at(&err("type: task\ncommands: [x]\nports: [70000]\n")), (3, 9, "ports[0]"));
}

#[test]
fn resources_forms() {
    let t = task(
        "type: task\ncommands: [x]\nresources:\n  cpu: x86:8..\n  memory: 32GB..64GB\n  disk: {size: 100GB..}\n\
         \x20 gpu:\n    name: [H100, H200]\n    memory: 80GB\n    count: {min: 1, max: 2}\n    vendor: nvidia\n\
         \x20   compute_capability: 9.0\n",
    );
    let r = t.resources;
    assert_eq!(r.cpu.count, Range::at_least(8));
    assert_eq!(r.memory, Range { min: Some(Memory::gb(32)), max: Some(Memory::gb(64)) });
    assert_eq!(r.disk, Some(Range::at_least(Memory::gb(100))));
    let gpu = r.gpu.expect("gpu");
    assert_eq!(gpu.names, ["H100", "H200"]);
    assert_eq!((gpu.vendor, gpu.count), (Some(GpuVendor::Nvidia), Range { min: Some(1), max: Some(2) }));
    assert_eq!(gpu.compute_capability.as_deref(), Some("9.0"));
    let r = task("type: task\ncommands: [x]\nresources:\n  cpu: {min: 2, max: 4}\n  memory: 16\n  gpu: 2\n").resources;
    assert_eq!(r.cpu.count, Range { min: Some(2), max: Some(4) });
    assert_eq!(r.memory, Range::exactly(Memory::gb(16)));
    assert_eq!(r.gpu.map(|g| g.count), Some(Range::exactly(2)));
    let e = err("type: task\ncommands: [x]\nresources:\n  memory: 64GB..16GB\n");
    assert_eq!(at(&e), (4, 11, "resources.memory"));
    let e = err("type: task\ncommands: [x]\nresources:\n  gpu: {name: A100, count: lots}\n");
    assert_eq!(e.field, "resources.gpu.count");
}

#[test]
fn services() {
    let s = service(
        "type: service\nname: llama\npython: 3.12\ncommands: [vllm serve]\nport: 8000\nmodel: meta-llama/Llama-3.1-8B\n\
         replicas: 1..4\nscaling:\n  metric: rps\n  target: 10\nauth: false\ngateway: false\n\
         probes:\n  - type: http\n    url: /health\n    interval: 30s\n",
    );
    assert_eq!(s.python.as_deref(), Some("3.12"));
    assert_eq!((s.port, s.auth, s.strip_prefix), (8000, false, true));
    assert_eq!(s.replicas, Range { min: Some(1), max: Some(4) });
    assert_eq!(s.scaling.map(|x| (x.target, x.scale_up_delay_secs)), Some((10.0, 300)));
    assert_eq!(s.model.map(|m| (m.name, m.prefix)), Some(("meta-llama/Llama-3.1-8B".into(), "/v1".into())));
    let probe = &s.probes.expect("probes")[0];
    assert_eq!((probe.url.as_str(), probe.interval_secs, probe.timeout_secs), ("/health", 30, 10));
    assert_eq!(service("type: service\nimage: x\nport: \"80:8000\"\n").port, 8000);
    assert_eq!(service("type: service\nimage: x\nport: 8000\n").replicas, Range::exactly(1));

    let e = err("type: service\nimage: x\nport: 8000\nreplicas: 1..4\n");
    assert_eq!(at(&e), (4, 1, "replicas"));
    assert!(e.message.contains("needs `scaling`"));
    let e = err("type: service\nimage: x\nport: 8000\nreplicas: 2..\nscaling: {metric: rps, target: 1}\n");
    assert!(e.message.contains("maximum"));
    assert_eq!(err("type: service\nimage: x\n").field, "port");
    let e = err("type: service\nimage: x\nport: 80\ngateway: my-gateway\n");
    assert!(e.unsupported);
    assert_eq!(at(&e), (4, 10, "gateway"));
}

#[test]
fn dev_environments() {
    let Configuration::DevEnvironment(d) =
        ok("type: dev-environment\nide: vscode\npython: '3.11'\nsetup: [a]\ninit: [b]\ninactivity_duration: 2h\n")
    else {
        panic!("not a dev environment")
    };
    assert_eq!(d.ide, Some(Ide::Vscode));
    assert_eq!(d.init, ["a", "b"]);
    assert_eq!(d.inactivity_duration_secs, Some(7200));
    let e = err("type: dev-environment\nide: vscod\n");
    assert_eq!(at(&e), (2, 6, "ide"));
    assert!(e.message.contains("did you mean `vscode`?"), "{}", e.message);
    assert_eq!(err("type: dev-environment\nentrypoint: bash\n").field, "entrypoint");
}

#[test]
fn fleets() {
    let Configuration::Fleet(f) = ok(
        "type: fleet\nname: on-prem\nplacement: cluster\nssh_config:\n  user: ubuntu\n  identity_file: ~/.ssh/id_rsa\n\
         \x20 hosts:\n    - 10.0.0.1\n    - hostname: 10.0.0.2\n      blocks: auto\n",
    ) else {
        panic!("not a fleet")
    };
    assert_eq!(f.placement, Placement::Cluster);
    let ssh = f.ssh_config.expect("ssh_config");
    assert_eq!(ssh.hosts.iter().map(|h| h.hostname.as_str()).collect::<Vec<_>>(), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(ssh.hosts[1].blocks, Some(Blocks::Auto));
    let nodes = |n: &str| match ok(&format!("type: fleet\nnodes: {n}\n")) {
        Configuration::Fleet(f) => f.nodes,
        _ => None,
    };
    assert_eq!(nodes("2"), Some(FleetNodes { min: 2, target: 2, max: Some(2) }));
    assert_eq!(nodes("0..4"), Some(FleetNodes { min: 0, target: 0, max: Some(4) }));
    assert_eq!(nodes("{min: 1, target: 2}"), Some(FleetNodes { min: 1, target: 2, max: None }));
    assert_eq!(err("type: fleet\nnodes: {min: 3, target: 1}\n").field, "nodes");
    let e = err("type: fleet\nbackends: [aws, gcp]\n");
    assert!(e.unsupported);
    assert_eq!(at(&e), (2, 17, "backends[1]"));
}

#[test]
fn refusals_name_the_field() {
    let e = err("type: gateway\nname: gw\n");
    assert!(e.unsupported);
    assert_eq!(at(&e), (1, 7, "type"));
    assert!(e.message.contains("proxies services itself"));
    let e = err("type: volume\nname: v1\nbackend: runpod\nregion: EU-SE-1\nsize: 100GB\n");
    assert_eq!((at(&e), e.unsupported), ((3, 1, "backend"), true));
    let e = err("type: task\ncommands: [x]\nvolumes: [My_Volume:/data]\n");
    assert_eq!((e.field.as_str(), e.unsupported), ("volumes[0]", false));
    assert!(task("type: task\ncommands: [x]\ndocker: true\n").docker);
    assert!(!task("type: task\ncommands: [x]\ndocker: false\n").docker);
    // dstack's rule: Docker inside runs its own image.
    let e = err("type: task\nimage: alpine\ncommands: [x]\ndocker: true\n");
    assert_eq!((at(&e), e.unsupported), ((4, 1, "docker"), false));
    assert!(task("type: task\ncommands: [x]\ndstack: true\n").dstack);
}

#[test]
fn document_errors() {
    let e = err("type: task\ncommands: [a, b\n");
    assert_eq!(e.field, "yaml");
    assert!(e.line >= 2 && e.message.starts_with("invalid YAML"), "{e}");
    assert_eq!(err("").field, "configuration");
    assert_eq!(err("- a\n- b\n").field, "configuration");
    assert_eq!(at(&err("name: x\n")), (1, 1, "type"));
    let e = err("type: taks\n");
    assert!(!e.unsupported);
    assert!(e.message.contains("did you mean `task`?"), "{}", e.message);
}

#[test]
fn repos_files_and_mounts() {
    let t = task(
        "type: task\ncommands: [x]\nrepos: ['..:/my-repo']\nfiles: [train.py, '~/.ssh/id_rsa:/root/.ssh/id_rsa']\n\
         volumes:\n  - /mnt/data:/data\n  - {instance_path: /cache, path: /root/.cache, optional: true}\n",
    );
    assert_eq!((t.repos[0].local_path.as_deref(), t.repos[0].path.as_str()), (Some(".."), "/my-repo"));
    assert_eq!(t.files[0], FileMapping { local_path: "train.py".into(), path: "train.py".into(), upload: None });
    assert_eq!(t.files[1].path, "/root/.ssh/id_rsa");
    assert_eq!(
        t.volumes[1],
        VolumeMount::Instance(InstanceMount {
            instance_path: "/cache".into(),
            path: "/root/.cache".into(),
            optional: true
        })
    );
    let t =
        task("type: task\ncommands: [x]\nvolumes:\n  - my-volume:/data\n  - {name: [east-vol, west-vol], path: /v}\n");
    assert_eq!(t.volumes[0], VolumeMount::Named(NamedMount { names: vec!["my-volume".into()], path: "/data".into() }));
    assert_eq!(
        t.volumes[1],
        VolumeMount::Named(NamedMount { names: vec!["east-vol".into(), "west-vol".into()], path: "/v".into() })
    );
    let t = task("type: task\ncommands: [x]\nrepos: [https://github.com/dstackai/dstack]\n");
    assert_eq!(t.repos[0].url.as_deref(), Some("https://github.com/dstackai/dstack"));
    // `.` is no drive letter: `.:/bin` is the directory `.` at `/bin` (`C:/x` is a Windows path).
    let t = task("type: task\ncommands: [x]\nrepos: ['.:/bin']\nfiles: ['.:/w', 'C:/x']\n");
    assert_eq!((t.repos[0].local_path.as_deref(), t.repos[0].path.as_str()), (Some("."), "/bin"));
    assert_eq!((t.files[0].local_path.as_str(), t.files[0].path.as_str()), (".", "/w"));
    assert_eq!((t.files[1].local_path.as_str(), t.files[1].path.as_str()), ("C:/x", "C:/x"));
    let t = task("type: task\ncommands: [x]\nretry: true\nfleets: [a, team/b]\n");
    assert_eq!(t.retry.map(|r| r.on_events.len()), Some(3));
    assert_eq!(t.provisioning.fleets[1], FleetRef { project: Some("team".into()), name: "b".into() });
}

#[test]
fn never_panics_on_odd_input() {
    for text in [
        "type:",
        "type: [task]",
        "? [a]\n: b",
        "type: task\ncommands: {a: b}",
        "&a [*a]",
        "type: !!binary aGk=",
        "\t",
        "type: task\n<<: 5\n",
    ] {
        let _ = parse(text, "odd.yml");
    }
}

proptest::proptest! {
    /// YAML-ish noise: an error or a configuration, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in "(type: (task|service|fleet)\n)?([a-z_ ]{0,8}[:\\-\\[\\]{},&*!|>'\"\n ]{0,3}[0-9A-Za-z.]{0,6}\n?){0,12}") {
        let _ = parse(&text, "prop.yml");
    }
}
