//! Elastic fleets on AWS: a fleet with `backends: [aws]` and `nodes: MIN..MAX` has at least MIN
//! instances. Each pass (every few seconds, and at start) reads the instances tagged as this
//! coordinator's from `DescribeInstances` — the cloud is the record, so a restart neither leaks nor
//! launches twice — then launches what a fleet lacks (one per fleet per pass) and terminates the
//! instances of fleets that were deleted. An instance's user data runs the install command with a
//! join token for that instance alone (one use, one hour, its fleet) and the node name it is tagged
//! with; offers are tried cheapest first, the next one on a capacity error.
//!
//! A fleet grows (to MAX) for queued work that fits its offers, one instance at a time while none
//! is still booting; an instance idle past the fleet's `idle_duration` (default 3 days) is
//! terminated unless that takes the fleet below MIN; an instance whose node has not enrolled
//! within `enroll_timeout` is terminated and its instance type avoided for an hour.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use corral_proto::api;
use corral_proto::config::{FleetConfig, IdleDuration, SpotPolicy};
use corral_proto::resources::{Memory, ResourcesSpec, fit};

use crate::State;
use crate::cloud::backends::OfferQuery;
use crate::cloud::backends::aws::{Aws, Launch};
use crate::secrets::{now_ms, random_hex, sha256_hex};

/// Tries this many offers per launch before giving up for the pass.
const OFFERS_TRIED: usize = 5;
/// dstack's default for fleets.
const DEFAULT_IDLE: Duration = Duration::from_secs(3 * 24 * 3600);
/// An instance type whose instance never enrolled is avoided this long.
const AVOID_FOR: Duration = Duration::from_secs(3600);

/// The tag value that marks this coordinator's instances (from its CA: stable across restarts).
pub fn coordinator_tag(state: &State) -> String {
    state.pki.ca_hash()[..16].to_owned()
}

/// Errors after which the next offer (another type, zone or region) may still work.
pub fn is_capacity_error(e: &str) -> bool {
    [
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InstanceLimitExceeded",
        "Unsupported",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InsufficientHostCapacity",
    ]
    .iter()
    .any(|code| e.contains(code))
}

/// Launches on the first offer that works, moving on after capacity errors; any other error stops
/// (it would fail the same way on the next offer). Returns the offer used and the instance id.
pub async fn launch_first<F, Fut>(offers: &[api::Offer], mut launch: F) -> Result<(api::Offer, String), String>
where
    F: FnMut(api::Offer) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut tried = Vec::new();
    for offer in offers.iter().take(OFFERS_TRIED) {
        match launch(offer.clone()).await {
            Ok(id) => return Ok((offer.clone(), id)),
            Err(e) if is_capacity_error(&e) => {
                tracing::warn!(instance_type = %offer.name, region = ?offer.region, "no capacity, trying the next offer: {e}");
                tried.push(format!("{} in {}: {e}", offer.name, offer.region.as_deref().unwrap_or("?")));
            }
            Err(e) => return Err(e),
        }
    }
    if tried.is_empty() {
        Err("no AWS offer fits the fleet's resources and max_price".into())
    } else {
        Err(tried.join("; "))
    }
}

fn is_aws_fleet(cfg: &FleetConfig) -> bool {
    cfg.provisioning.backends.iter().any(|b| b == "aws")
}

/// What the controller remembers between passes (lost on restart: then idle times start over).
#[derive(Default)]
struct Memo {
    /// Since when each enrolled node of an elastic fleet has run nothing.
    idle_since: HashMap<String, Instant>,
    /// (region, instance type) whose instance did not enroll: avoided for a while.
    avoid: HashMap<(String, String), Instant>,
}

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let Some(aws) = state.backends.aws.as_ref() else { return };
    let mut tick = tokio::time::interval(state.config.elastic_every);
    let mut memo = Memo::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = reconcile(&state, aws, &mut memo).await {
            tracing::warn!("elastic fleets: {e}");
        }
    }
}

/// Whether a queued job of the fleet's project could run on one of the fleet's offers (and names
/// no other fleet): a fleet's nodes take only its project's runs.
fn wants(job: &crate::store::JobRow, project: &str, fleet: &str, offers: &[api::Offer]) -> bool {
    if job.project != project {
        return false;
    }
    let Ok(admitted) = corral_proto::admission::check(&job.configuration) else { return false };
    let fleets = &admitted.task.provisioning.fleets;
    if !fleets.is_empty() && !fleets.iter().any(|f| f.name == fleet) {
        return false;
    }
    // The job's own resources: a rank of a task with node groups, a replica of a replica group.
    let resources = match &job.configuration {
        corral_proto::config::Configuration::Task(t) => t.for_rank(job.job_num).resources,
        corral_proto::config::Configuration::Service(s) => s.replica_task_of(job.job_num).resources,
        _ => admitted.task.resources,
    };
    offers.iter().any(|o| fit(&resources, &crate::cloud::backends::offer_as_host(o), 0, Memory(0), &[]).is_ok())
}

async fn reconcile(state: &State, aws: &Aws, memo: &mut Memo) -> Result<(), String> {
    let fleets: Vec<_> = state
        .store
        .all_fleets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(_, _, cfg)| is_aws_fleet(cfg))
        .collect();
    let tag = coordinator_tag(state);
    let instances = aws.instances(&tag).await?;
    // Instances of fleets that are gone.
    for i in instances.iter().filter(|i| !fleets.iter().any(|(_, name, _)| *name == i.fleet)) {
        tracing::info!(instance = %i.id, fleet = %i.fleet, "terminating an instance of a deleted fleet");
        aws.terminate(&i.region, std::slice::from_ref(&i.id)).await?;
    }
    memo.avoid.retain(|_, at| at.elapsed() < AVOID_FOR);
    if fleets.is_empty() {
        // Nothing to keep: spare the store's node and job lists.
        return Ok(());
    }
    let nodes: HashMap<String, crate::store::NodeRow> = state
        .store
        .nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| !n.revoked)
        .map(|n| (n.name.clone(), n))
        .collect();
    let placed = state.store.placed_jobs().map_err(|e| e.to_string())?;
    let queued = state.store.queued_jobs().map_err(|e| e.to_string())?;
    for (project, name, cfg) in &fleets {
        let (min, max) = cfg.nodes.map_or((0, None), |n| (n.min.max(n.target), n.max));
        let mut live: Vec<_> = instances.iter().filter(|i| i.fleet == *name).collect();

        // Instances that never enrolled.
        let mut booting = 0;
        for i in live.clone() {
            if nodes.contains_key(&i.node) {
                continue;
            }
            let age = i.launched.and_then(|t| SystemTime::now().duration_since(t).ok()).unwrap_or_default();
            if age > state.config.enroll_timeout {
                tracing::warn!(fleet = %name, instance = %i.id, instance_type = %i.instance_type, "the instance did not enroll within {:?}: terminating it, avoiding its type for an hour", state.config.enroll_timeout);
                aws.terminate(&i.region, std::slice::from_ref(&i.id)).await?;
                memo.avoid.insert((i.region.clone(), i.instance_type.clone()), Instant::now());
                live.retain(|l| l.id != i.id);
            } else {
                booting += 1;
            }
        }

        // Idle instances above the minimum.
        let idle_limit = match cfg.provisioning.idle_duration {
            Some(IdleDuration::Off) => None,
            Some(IdleDuration::Secs(s)) => Some(Duration::from_secs(s)),
            None => Some(DEFAULT_IDLE),
        };
        for i in live.clone() {
            let Some(node) = nodes.get(&i.node) else { continue };
            let busy = placed.iter().any(|j| j.node_id.as_ref() == Some(&node.id));
            if busy {
                memo.idle_since.remove(&i.node);
                continue;
            }
            let since = *memo.idle_since.entry(i.node.clone()).or_insert_with(Instant::now);
            if live.len() as u32 > min && idle_limit.is_some_and(|limit| since.elapsed() >= limit) {
                tracing::info!(fleet = %name, instance = %i.id, node = %i.node, "terminating an idle instance");
                aws.terminate(&i.region, std::slice::from_ref(&i.id)).await?;
                memo.idle_since.remove(&i.node);
                live.retain(|l| l.id != i.id);
            }
        }

        let count = live.len() as u32;
        let reason = if count < min {
            "below the fleet's minimum"
        } else if booting == 0 && max.is_none_or(|m| count < m) {
            let offers = fleet_offers(state, cfg, memo).await;
            if queued.iter().any(|j| wants(j, project, name, &offers)) { "queued work fits" } else { continue }
        } else {
            continue;
        };
        if let Err(e) = launch(state, aws, name, cfg, &tag, memo, reason).await {
            tracing::warn!(fleet = %name, "cannot launch an instance: {e}");
        }
    }
    Ok(())
}

/// The fleet's AWS offers, cheapest first: its resources, spot policy, max price, regions and
/// instance types; types that recently failed to enroll left out.
async fn fleet_offers(state: &State, cfg: &FleetConfig, memo: &Memo) -> Vec<api::Offer> {
    let p = &cfg.provisioning;
    let spot = p.spot_policy == Some(SpotPolicy::Spot);
    let spec = cfg.resources.clone().unwrap_or(ResourcesSpec { disk: None, ..ResourcesSpec::default() });
    let q = OfferQuery { spec, spot, max_price: p.max_price };
    let (offers, _) = state.backends.offers(&q).await;
    let mut offers: Vec<_> = offers
        .into_iter()
        .filter(|o| o.backend == "aws" && o.price.is_some())
        .filter(|o| p.regions.is_empty() || o.region.as_ref().is_some_and(|r| p.regions.contains(r)))
        .filter(|o| p.instance_types.is_empty() || p.instance_types.contains(&o.name))
        .filter(|o| !memo.avoid.contains_key(&(o.region.clone().unwrap_or_default(), o.name.clone())))
        .collect();
    crate::cloud::backends::sort_offers(&mut offers);
    offers
}

async fn launch(
    state: &State,
    aws: &Aws,
    fleet: &str,
    cfg: &FleetConfig,
    tag: &str,
    memo: &Memo,
    reason: &str,
) -> Result<(), String> {
    let url =
        state.config.public_url.clone().ok_or(
            "the coordinator has no --public-url: instances need an address to reach it at (https://HOST:7070)",
        )?;
    let spot = cfg.provisioning.spot_policy == Some(SpotPolicy::Spot);
    let offers = fleet_offers(state, cfg, memo).await;

    // A token for this instance alone; its node name, tagged, so the instance and node are one.
    let secret = random_hex(16);
    let token = corral_proto::token::JoinToken { ca_hash: state.pki.ca_hash(), secret: secret.clone() };
    let node = format!("{fleet}-{}", random_hex(3));
    let user_data = format!(
        "#!/bin/sh\n# Corral: join fleet {fleet} as node {node}\ncurl -fsSLk '{url}/install.sh' | sh -s -- --token '{token}' --name '{node}'\n"
    );
    let tags = [
        ("corral:coordinator".to_owned(), tag.to_owned()),
        ("corral:fleet".to_owned(), fleet.to_owned()),
        ("corral:node".to_owned(), node.clone()),
        ("Name".to_owned(), format!("corral-{node}")),
    ];
    state
        .store
        .create_join_token(&sha256_hex(secret.as_bytes()), Some(fleet), Some(now_ms() + 3_600_000), Some(1))
        .map_err(|e| e.to_string())?;
    let (offer, id) = launch_first(&offers, |o| {
        let (user_data, tags) = (&user_data, &tags);
        async move {
            let region = o.region.clone().unwrap_or_default();
            aws.launch(&Launch { region: &region, instance_type: &o.name, spot, user_data, tags }).await
        }
    })
    .await?;
    tracing::info!(fleet, %node, instance = %id, instance_type = %offer.name, region = ?offer.region, price = ?offer.price, reason, "launched an instance");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str) -> api::Offer {
        api::Offer {
            backend: "aws".into(),
            name: name.into(),
            region: Some("us-east-1".into()),
            cpus: 8,
            memory_bytes: 1 << 30,
            arch: "x86_64".into(),
            gpu_count: 1,
            gpu_name: Some("A10G".into()),
            gpu_memory_bytes: Some(24 << 30),
            spot: false,
            price: Some(1.0),
        }
    }

    /// moto never runs out of capacity: the errors are injected here, at the SDK boundary.
    #[tokio::test]
    async fn capacity_errors_move_to_the_next_offer_and_other_errors_stop() {
        let offers = [offer("g5.xlarge"), offer("g6.xlarge"), offer("g4dn.xlarge")];
        let mut asked = Vec::new();
        let got = launch_first(&offers, |o| {
            asked.push(o.name.clone());
            async move {
                match o.name.as_str() {
                    "g5.xlarge" => {
                        Err("InsufficientInstanceCapacity: We currently do not have sufficient capacity".to_owned())
                    }
                    _ => Ok(format!("i-{}", o.name)),
                }
            }
        })
        .await
        .expect("the second offer");
        assert_eq!((got.0.name.as_str(), got.1.as_str()), ("g6.xlarge", "i-g6.xlarge"));
        assert_eq!(asked, ["g5.xlarge", "g6.xlarge"]);

        let err =
            launch_first(&offers, |_| async { Err::<String, _>("UnauthorizedOperation: not allowed".to_owned()) })
                .await
                .expect_err("stops");
        assert!(err.starts_with("UnauthorizedOperation"), "{err}");
        let none = launch_first(&[], |_| async { Ok::<_, String>("i-x".into()) }).await.expect_err("nothing fits");
        assert!(none.contains("no AWS offer fits"), "{none}");
    }
}
