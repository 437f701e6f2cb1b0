//! Finding Corral's containers by label and reading their state: what a restarted agent needs to
//! re-adopt its jobs and keep enforcing their limits.

use std::collections::HashMap;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::ListContainersOptionsBuilder;
use corral_proto::ids::{JobId, NodeId, RunId};

use crate::Shim;
use crate::error::ShimError;
use crate::spec::{LABEL_JOB, LABEL_MAX_DURATION, LABEL_NODE, LABEL_RUN, LABEL_STOP_GRACE, LABEL_UTILIZATION};

/// One container that Corral created, running or exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedContainer {
    pub id: String,
    /// Without Docker's leading slash: `corral-<job id>`.
    pub name: String,
    pub job_id: JobId,
    pub run_id: RunId,
    pub node_id: NodeId,
    pub running: bool,
    /// Set once the container has exited.
    pub exit_code: Option<i64>,
    pub started_at_unix: Option<i64>,
    pub max_duration_secs: Option<u64>,
    /// The job's stop grace, from its label; `None` for containers made before the label existed.
    pub stop_grace_secs: Option<u64>,
    /// The job's `utilization_policy` and the GPUs it samples, from its label.
    pub utilization: Option<(corral_proto::config::UtilizationPolicy, Vec<u32>)>,
}

/// Where one container is in its life, as the daemon reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    /// Set once the container has exited (or died); `None` while created or running.
    pub exit_code: Option<i64>,
    /// Unix seconds; `None` if it never started.
    pub started_at_unix: Option<i64>,
    /// Unix seconds; `None` until it has exited.
    pub finished_at_unix: Option<i64>,
    /// The kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// The daemon's explanation when the container could not run (a missing executable, …).
    pub error: Option<String>,
}

impl Shim {
    /// Corral's containers on this host — all of them, or those labelled for `node` — running and
    /// exited. A container whose labels are incomplete is not Corral's to manage and is skipped.
    pub async fn list(&self, node: Option<&NodeId>) -> Result<Vec<ManagedContainer>, ShimError> {
        let docker = self.client().await?;
        let mut labels = vec![LABEL_JOB.to_owned()];
        if let Some(node) = node {
            labels.push(format!("{LABEL_NODE}={node}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.classify(e, |source| ShimError::Daemon { op: "listing corral's containers", source }))?;

        let mut found = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            let inspected = match docker.inspect_container(&id, None).await {
                Ok(inspected) => inspected,
                // Removed between the listing and now: it is no longer there to adopt.
                Err(e) if crate::error::status_of(&e) == Some(404) => continue,
                Err(e) => return Err(self.container_error("inspecting", &id, e)),
            };
            match managed(&id, &inspected) {
                Some(container) => found.push(container),
                None => {
                    tracing::warn!(container = %id, "container with incomplete corral labels, skipped")
                }
            }
        }
        Ok(found)
    }

    /// The address this host reaches the container at: loopback for host networking, else its
    /// address on its first network (the default bridge).
    pub async fn address(&self, container: &str) -> Result<std::net::IpAddr, ShimError> {
        let docker = self.client().await?;
        let inspected = docker
            .inspect_container(container, None)
            .await
            .map_err(|e| self.container_error("inspecting", container, e))?;
        let host_mode = inspected.host_config.as_ref().and_then(|h| h.network_mode.as_deref()) == Some("host");
        if host_mode {
            return Ok(std::net::IpAddr::from([127, 0, 0, 1]));
        }
        let networks = inspected.network_settings.as_ref().and_then(|n| n.networks.as_ref());
        networks
            .into_iter()
            .flat_map(|n| n.values())
            .filter_map(|e| e.ip_address.as_deref())
            .find_map(|ip| ip.parse().ok())
            .ok_or_else(|| ShimError::NoAddress { container: container.to_owned() })
    }

    /// Whether the container runs, how it ended, and when.
    pub async fn inspect_state(&self, container: &str) -> Result<ContainerState, ShimError> {
        let docker = self.client().await?;
        let inspected = docker
            .inspect_container(container, None)
            .await
            .map_err(|e| self.container_error("inspecting", container, e))?;
        Ok(state(&inspected))
    }
}

fn managed(id: &str, inspected: &ContainerInspectResponse) -> Option<ManagedContainer> {
    let labels = inspected.config.as_ref()?.labels.as_ref()?;
    let label = |k: &str| labels.get(k).filter(|v| !v.is_empty());
    let state = state(inspected);
    Some(ManagedContainer {
        id: id.to_owned(),
        name: inspected.name.as_deref().unwrap_or_default().trim_start_matches('/').to_owned(),
        job_id: JobId(label(LABEL_JOB)?.clone()),
        run_id: RunId(label(LABEL_RUN)?.clone()),
        node_id: NodeId(label(LABEL_NODE)?.clone()),
        running: state.running,
        exit_code: state.exit_code,
        started_at_unix: state.started_at_unix,
        // A label that does not parse would otherwise lift the limit silently; it cannot come from
        // the shim, so it is logged and treated as absent.
        max_duration_secs: label(LABEL_MAX_DURATION).and_then(|v| {
            v.parse().inspect_err(|_| tracing::warn!(container = %id, value = %v, "unparsable max duration label")).ok()
        }),
        stop_grace_secs: label(LABEL_STOP_GRACE).and_then(|v| v.parse().ok()),
        utilization: label(LABEL_UTILIZATION).and_then(|v| {
            let parsed = utilization_label(v);
            if parsed.is_none() {
                tracing::warn!(container = %id, value = %v, "unparsable utilization policy label");
            }
            parsed
        }),
    })
}

/// `10/300/0,1` → the policy and the GPUs (none: `10/300/`).
fn utilization_label(v: &str) -> Option<(corral_proto::config::UtilizationPolicy, Vec<u32>)> {
    let mut parts = v.splitn(3, '/');
    let min_gpu_utilization = parts.next()?.parse().ok().filter(|m| *m <= 100)?;
    let time_window_secs = parts.next()?.parse().ok()?;
    let gpus = parts.next()?;
    let gpus =
        if gpus.is_empty() { Vec::new() } else { gpus.split(',').map(|g| g.parse().ok()).collect::<Option<_>>()? };
    Some((corral_proto::config::UtilizationPolicy { min_gpu_utilization, time_window_secs }, gpus))
}

fn state(inspected: &ContainerInspectResponse) -> ContainerState {
    let Some(s) = &inspected.state else {
        return ContainerState::default();
    };
    let ended = matches!(s.status, Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD));
    ContainerState {
        running: s.running.unwrap_or(false),
        exit_code: if ended { s.exit_code } else { None },
        started_at_unix: s.started_at.as_deref().and_then(unix_seconds),
        finished_at_unix: s.finished_at.as_deref().and_then(unix_seconds),
        oom_killed: s.oom_killed.unwrap_or(false),
        error: s.error.clone().filter(|e| !e.is_empty()),
    }
}

/// Seconds since the epoch of Docker's UTC timestamps (`2024-05-01T12:00:00.123456789Z`). Docker
/// writes `0001-01-01T00:00:00Z` for "never"; that, and anything unreadable, is `None`.
fn unix_seconds(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    // The zone follows the optional fraction: `Z` or `±hh:mm`.
    let zone = ts[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && z.as_bytes()[3] == b':' => {
            let secs = z.get(1..3)?.parse::<i64>().ok()? * 3600 + z.get(4..6)?.parse::<i64>().ok()? * 60;
            if z.starts_with('-') { -secs } else { secs }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

/// Docker's UTC timestamps (`2024-05-01T12:00:00.123456789Z`) to the nanosecond: seconds since
/// the epoch and nanoseconds.
pub(crate) fn unix_nanos(ts: &str) -> Option<(i64, u32)> {
    let secs = unix_seconds(ts)?;
    let fraction = ts.get(19..)?.strip_prefix('.').unwrap_or("");
    let digits: String = fraction.chars().take_while(char::is_ascii_digit).take(9).collect();
    let nanos = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some((secs, nanos))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, ContainerState as DockerState};

    use super::*;

    #[test]
    fn docker_timestamps_become_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2024-05-01T12:00:00.123456789Z"), Some(1_714_564_800));
        assert_eq!(unix_seconds("2000-02-29T23:59:59Z"), Some(951_868_799));
        assert_eq!(unix_seconds("2024-05-01T14:00:00+02:00"), Some(1_714_564_800));
        assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), None);
        assert_eq!(unix_seconds(""), None);
        assert_eq!(unix_seconds("2024-05-01 12:00:00Z"), None);
        assert_eq!(unix_nanos("2024-05-01T12:00:00.123456789Z"), Some((1_714_564_800, 123_456_789)));
        // Docker leaves trailing zeros off the fraction.
        assert_eq!(unix_nanos("2024-05-01T12:00:00.12Z"), Some((1_714_564_800, 120_000_000)));
        assert_eq!(unix_nanos("2024-05-01T12:00:00Z"), Some((1_714_564_800, 0)));
        assert_eq!(unix_nanos("x"), None);
        assert_eq!(unix_seconds("2024-05-01T12:00:00"), None);
    }

    fn inspected(labels: &[(&str, &str)], status: ContainerStateStatusEnum, running: bool) -> ContainerInspectResponse {
        ContainerInspectResponse {
            name: Some("/corral-j1".to_owned()),
            config: Some(ContainerConfig {
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            }),
            state: Some(DockerState {
                status: Some(status),
                running: Some(running),
                exit_code: Some(3),
                started_at: Some("2024-05-01T12:00:00Z".to_owned()),
                finished_at: Some("0001-01-01T00:00:00Z".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn labels_and_state_make_a_managed_container() {
        let labels = [
            (LABEL_JOB, "j1"),
            (LABEL_RUN, "r1"),
            (LABEL_NODE, "n1"),
            (LABEL_MAX_DURATION, "60"),
            (LABEL_STOP_GRACE, "30"),
        ];
        let c = managed("abc", &inspected(&labels, ContainerStateStatusEnum::EXITED, false));
        assert_eq!(
            c,
            Some(ManagedContainer {
                id: "abc".to_owned(),
                name: "corral-j1".to_owned(),
                job_id: "j1".into(),
                run_id: "r1".into(),
                node_id: "n1".into(),
                running: false,
                exit_code: Some(3),
                started_at_unix: Some(1_714_564_800),
                max_duration_secs: Some(60),
                stop_grace_secs: Some(30),
                utilization: None,
            })
        );
    }

    #[test]
    fn the_utilization_label_gives_the_policy_and_gpus() {
        let policy = |m, w| corral_proto::config::UtilizationPolicy { min_gpu_utilization: m, time_window_secs: w };
        assert_eq!(utilization_label("10/300/0,1"), Some((policy(10, 300), vec![0, 1])));
        assert_eq!(utilization_label("0/3600/"), Some((policy(0, 3600), vec![])));
        for bad in ["", "10", "10/300", "101/300/0", "10/x/0", "10/300/0,,1", "10/300/-1"] {
            assert_eq!(utilization_label(bad), None, "{bad}");
        }
        let labels = [(LABEL_JOB, "j1"), (LABEL_RUN, "r1"), (LABEL_NODE, "n1"), (LABEL_UTILIZATION, "10/300/3")];
        let c = managed("abc", &inspected(&labels, ContainerStateStatusEnum::RUNNING, true));
        assert_eq!(c.and_then(|c| c.utilization), Some((policy(10, 300), vec![3])));
    }

    #[test]
    fn a_running_container_has_no_exit_code() {
        let labels = [(LABEL_JOB, "j1"), (LABEL_RUN, "r1"), (LABEL_NODE, "n1")];
        let c = managed("abc", &inspected(&labels, ContainerStateStatusEnum::RUNNING, true));
        assert_eq!(c.map(|c| (c.running, c.exit_code, c.max_duration_secs)), Some((true, None, None)));
    }

    #[test]
    fn incomplete_labels_are_not_corrals() {
        let c = managed("abc", &inspected(&[(LABEL_JOB, "j1")], ContainerStateStatusEnum::RUNNING, true));
        assert_eq!(c, None);
    }
}
