//! Separate hosts on one machine: network namespaces on a private bridge, each with its own
//! address, running the real agent binary. Made and removed by the test itself (needs root and
//! iproute2; without them the test fails, it does not skip).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {} (these tests need root)", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub struct Hosts {
    bridge: String,
    namespaces: Vec<String>,
    /// The bridge's address: how the hosts reach the coordinator.
    pub gateway: String,
    /// Each host's address, in order.
    pub addresses: Vec<String>,
    agents: Vec<Child>,
}

impl Hosts {
    /// `n` hosts on a fresh /24 of their own.
    pub fn create(n: usize) -> anyhow::Result<Self> {
        let tag = format!("{}{}", std::process::id() % 10_000, NEXT.fetch_add(1, Ordering::Relaxed));
        // A subnet per test: 10.213.<k>.0/24 with k from the pid and a counter.
        let k = (std::process::id() * 7 + NEXT.load(Ordering::Relaxed) * 13) % 200 + 20;
        let bridge = format!("crb{tag}");
        let mut hosts = Self {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            gateway: format!("10.213.{k}.1"),
            addresses: Vec::new(),
            agents: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", hosts.gateway), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("crn{tag}-{i}");
            let (host_end, ns_end) = (format!("crh{tag}{i}"), format!("crv{tag}{i}"));
            let addr = format!("10.213.{k}.{}", i + 2);
            ip(&["netns", "add", &ns])?;
            hosts.namespaces.push(ns.clone());
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &ns_end])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "via", &hosts.gateway])?;
            hosts.addresses.push(addr);
        }
        Ok(hosts)
    }

    /// Gives host `i` another address (`10.0.0.5/24`) on its interface, as a host on a second
    /// network has.
    pub fn add_address(&self, i: usize, cidr: &str) -> anyhow::Result<()> {
        let dev = format!("crv{}{i}", self.bridge.trim_start_matches("crb"));
        ip(&["-n", &self.namespaces[i], "addr", "add", cidr, "dev", &dev])
    }

    /// Starts the real agent binary on host `i`.
    pub fn start_agent(
        &mut self,
        i: usize,
        coordinator: &str,
        token: &str,
        state: &Path,
        name: &str,
        fleet: &str,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(state)?;
        let log = std::fs::File::create(state.join("agent.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i]])
            .arg(env!("CARGO_BIN_EXE_corral-test-agent"))
            .args(["--coordinator", coordinator, "--token", token, "--name", name, "--fleet", fleet, "--state-dir"])
            .arg(state)
            .arg("--nvml-library")
            .arg(state.join("no-libnvidia-ml.so"))
            .env("CORRAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the agent in its namespace")?;
        self.agents.push(child);
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// Removes the containers of the nodes enrolled from these state dirs.
pub struct NodeContainers(pub Vec<PathBuf>);

impl Drop for NodeContainers {
    fn drop(&mut self) {
        for state in &self.0 {
            let Ok(text) = std::fs::read_to_string(state.join("node.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(node) = v["node_id"].as_str() else {
                continue;
            };
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker ps -aq --filter label=corral.node={node} | xargs -r docker rm -f; \
                     docker network ls -q --filter label=corral.node={node} | xargs -r docker network rm >/dev/null 2>&1"
                ))
                .output();
        }
    }
}
