//! Where runs can go besides the enrolled nodes: cloud backends (AWS, behind the `aws` feature),
//! and the offers `corral offer` lists — on-prem nodes first (price 0), then instance types that
//! fit, by price. The fitting is the scheduler's own ([`corral_proto::resources::fit`]) applied to an
//! instance type seen as a host.

use std::collections::HashMap;

use corral_proto::api;
use corral_proto::inventory::{DockerInfo, GpuInfo, HostInventory};
use corral_proto::resources::{GpuVendor, Memory, ResourcesSpec, fit};

#[cfg(feature = "aws")]
pub mod aws;

/// The AWS backend's settings (`--aws-region` and friends).
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    pub regions: Vec<String>,
    pub subnet_id: Option<String>,
    pub security_group_id: Option<String>,
    pub ami: Option<String>,
    pub key_name: Option<String>,
}

/// The configured cloud backends and how their check at start went.
pub struct Backends {
    #[cfg(feature = "aws")]
    pub aws: Option<aws::Aws>,
    /// The AWS backend's settings (kept for the listing) and what its check at start said.
    pub aws_status: Option<(AwsSettings, Option<String>)>,
    pub catalog: Catalog,
}

impl Backends {
    /// Sets up the configured backends and checks each answers. A backend that does not is an
    /// error in the log and in `corral backend list`; the coordinator runs on without it.
    pub async fn start(aws: Option<AwsSettings>) -> anyhow::Result<Self> {
        let Some(settings) = aws else {
            return Ok(Self {
                #[cfg(feature = "aws")]
                aws: None,
                aws_status: None,
                catalog: Catalog::aws(),
            });
        };
        if settings.regions.is_empty() {
            anyhow::bail!("the AWS backend needs at least one region (--aws-region)");
        }
        #[cfg(feature = "aws")]
        {
            let client = aws::Aws::new(settings.clone()).await;
            let error = client.check().await;
            if let Some(e) = &error {
                tracing::error!("the AWS backend does not work: {e}");
            }
            Ok(Self { aws: Some(client), aws_status: Some((settings, error)), catalog: Catalog::aws() })
        }
        #[cfg(not(feature = "aws"))]
        {
            let _ = settings;
            anyhow::bail!("this coordinator was built without the AWS backend (cargo feature `aws`)")
        }
    }

    pub fn list(&self) -> Vec<api::BackendInfo> {
        self.aws_status
            .iter()
            .map(|(s, error)| api::BackendInfo { name: "aws".into(), regions: s.regions.clone(), error: error.clone() })
            .collect()
    }

    /// The cloud offers for `q`, every configured region, and what failed on the way.
    pub async fn offers(&self, q: &OfferQuery) -> (Vec<api::Offer>, Vec<String>) {
        #[allow(unused_mut)]
        let (mut offers, mut errors) = (Vec::new(), Vec::new());
        #[cfg(feature = "aws")]
        if let Some(client) = &self.aws {
            for (region, types) in client.instance_types().await {
                let types = match types {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(format!("aws {region}: {e}"));
                        continue;
                    }
                };
                let mut spot = HashMap::new();
                if q.spot {
                    let fitting: Vec<String> = cloud_offers(
                        "aws",
                        &region,
                        &types,
                        &self.catalog,
                        &HashMap::new(),
                        &OfferQuery { spec: q.spec.clone(), spot: false, max_price: None },
                    )
                    .into_iter()
                    .map(|o| o.name)
                    .collect();
                    match client.spot_prices(&region, &fitting).await {
                        Ok(p) => spot = p,
                        Err(e) => errors.push(format!("aws {region} spot prices: {e}")),
                    }
                }
                offers.extend(cloud_offers("aws", &region, &types, &self.catalog, &spot, q));
            }
        }
        let _ = q;
        (offers, errors)
    }
}

/// On-demand prices shipped with Corral: `catalog/aws-on-demand.csv` (source and refresh in it).
pub struct Catalog(HashMap<(String, String), f64>);

impl Catalog {
    pub fn aws() -> Self {
        Self::parse(include_str!("../../catalog/aws-on-demand.csv"))
    }

    fn parse(text: &str) -> Self {
        let mut prices = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("instance_type")) {
            let mut f = line.split(',');
            if let (Some(t), Some(r), Some(p)) = (f.next(), f.next(), f.next().and_then(|p| p.trim().parse().ok())) {
                prices.insert((t.trim().to_owned(), r.trim().to_owned()), p);
            }
        }
        Self(prices)
    }

    pub fn price(&self, instance_type: &str, region: &str) -> Option<f64> {
        self.0.get(&(instance_type.to_owned(), region.to_owned())).copied()
    }
}

/// An instance type as the cloud describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceType {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub gpu_name: Option<String>,
    pub gpu_vendor: Option<GpuVendor>,
    pub gpu_count: u32,
    pub gpu_memory_mib: u64,
    pub spot: bool,
}

impl InstanceType {
    /// The instance as a host the scheduler's fit understands (disk is chosen at launch: not asked).
    fn as_host(&self) -> HostInventory {
        let gpus = (0..self.gpu_count)
            .map(|i| GpuInfo {
                index: i,
                vendor: self.gpu_vendor.unwrap_or(GpuVendor::Nvidia),
                name: self.gpu_name.clone().unwrap_or_default(),
                memory: Memory(self.gpu_memory_mib << 20),
                uuid: String::new(),
                pci_bus_id: String::new(),
            })
            .collect();
        HostInventory {
            hostname: self.name.clone(),
            os: "linux".into(),
            cpu_model: String::new(),
            cpu_cores: self.vcpus,
            arch: self.arch.clone(),
            memory: Memory(self.memory_mib << 20),
            disk: Memory(u64::MAX / 2),
            gpus,
            gpu_driver_version: None,
            cuda_version: None,
            tpus: Vec::new(),
            docker: DockerInfo { version: String::new(), nvidia_runtime: self.gpu_count > 0 },
        }
    }
}

/// An offer seen as a host, to ask whether a job would fit on it.
pub fn offer_as_host(o: &api::Offer) -> HostInventory {
    InstanceType {
        name: o.name.clone(),
        vcpus: o.cpus,
        memory_mib: o.memory_bytes >> 20,
        arch: o.arch.clone(),
        gpu_name: o.gpu_name.clone(),
        gpu_vendor: None,
        gpu_count: o.gpu_count,
        gpu_memory_mib: o.gpu_memory_bytes.unwrap_or(0) >> 20,
        spot: o.spot,
    }
    .as_host()
}

/// What `corral offer` asks for.
pub struct OfferQuery {
    pub spec: ResourcesSpec,
    pub spot: bool,
    pub max_price: Option<f64>,
}

/// The offers of one region's instance types that fit, priced (spot prices by type, when asked).
pub fn cloud_offers(
    backend: &str,
    region: &str,
    types: &[InstanceType],
    catalog: &Catalog,
    spot_prices: &HashMap<String, f64>,
    q: &OfferQuery,
) -> Vec<api::Offer> {
    types
        .iter()
        .filter(|t| !q.spot || t.spot)
        .filter(|t| fit(&q.spec, &t.as_host(), 0, Memory(0), &[]).is_ok())
        .filter_map(|t| {
            let price = if q.spot { spot_prices.get(&t.name).copied() } else { catalog.price(&t.name, region) };
            if q.max_price.is_some_and(|max| price.is_none_or(|p| p > max)) {
                return None;
            }
            Some(api::Offer {
                backend: backend.to_owned(),
                name: t.name.clone(),
                region: Some(region.to_owned()),
                cpus: t.vcpus,
                memory_bytes: t.memory_mib << 20,
                arch: t.arch.clone(),
                gpu_count: t.gpu_count,
                gpu_name: t.gpu_name.clone(),
                gpu_memory_bytes: (t.gpu_count > 0).then_some(t.gpu_memory_mib << 20),
                spot: q.spot,
                price,
            })
        })
        .collect()
}

/// Enrolled nodes that fit (free or busy: an offer is what a node is, not what it has left).
pub fn on_prem_offers(nodes: &[(String, HostInventory)], q: &OfferQuery) -> Vec<api::Offer> {
    if q.spot {
        return Vec::new();
    }
    nodes
        .iter()
        .filter(|(_, inv)| fit(&q.spec, inv, 0, Memory(0), &[]).is_ok())
        .map(|(name, inv)| api::Offer {
            backend: "on-prem".into(),
            name: name.clone(),
            region: None,
            cpus: inv.cpu_cores,
            memory_bytes: inv.memory.bytes(),
            arch: inv.arch.clone(),
            gpu_count: inv.gpus.len() as u32,
            gpu_name: inv.gpus.first().map(|g| g.name.clone()),
            gpu_memory_bytes: inv.gpus.first().map(|g| g.memory.bytes()),
            spot: false,
            price: Some(0.0),
        })
        .collect()
}

/// On-prem first, then by price (unknown prices last), then by name.
pub fn sort_offers(offers: &mut [api::Offer]) {
    offers.sort_by(|a, b| {
        let rank = |o: &api::Offer| (o.backend != "on-prem", o.price.is_none());
        rank(a)
            .cmp(&rank(b))
            .then(a.price.unwrap_or(0.0).total_cmp(&b.price.unwrap_or(0.0)))
            .then(a.name.cmp(&b.name))
            .then(a.region.cmp(&b.region))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::config::parse_gpu;

    fn t(name: &str, gpus: u32, gpu: &str, mib: u64) -> InstanceType {
        InstanceType {
            name: name.into(),
            vcpus: 96,
            memory_mib: 1 << 20,
            arch: "x86_64".into(),
            gpu_name: (gpus > 0).then(|| gpu.to_owned()),
            gpu_vendor: (gpus > 0).then_some(GpuVendor::Nvidia),
            gpu_count: gpus,
            gpu_memory_mib: mib,
            spot: true,
        }
    }

    #[test]
    fn gpu_specs_pick_instance_types_and_the_catalog_prices_them() {
        let types = [t("p4d.24xlarge", 8, "A100", 40960), t("g5.xlarge", 1, "A10G", 24576), t("m5.large", 0, "", 0)];
        let spec = ResourcesSpec { gpu: Some(parse_gpu("A100:8").expect("spec")), ..ResourcesSpec::default() };
        let q = OfferQuery { spec, spot: false, max_price: None };
        let offers = cloud_offers("aws", "us-east-1", &types, &Catalog::aws(), &HashMap::new(), &q);
        assert_eq!(offers.len(), 1);
        assert_eq!((offers[0].name.as_str(), offers[0].gpu_count, offers[0].price), ("p4d.24xlarge", 8, Some(32.7726)));

        let spec = ResourcesSpec { gpu: Some(parse_gpu("24GB..").expect("spec")), ..ResourcesSpec::default() };
        let q = OfferQuery { spec, spot: false, max_price: Some(5.0) };
        let names: Vec<_> = cloud_offers("aws", "us-east-1", &types, &Catalog::aws(), &HashMap::new(), &q)
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["g5.xlarge"], "p4d is over the price, m5 has no GPU");
    }

    #[test]
    fn on_prem_comes_first_then_price_then_unknown_prices() {
        let offer = |backend: &str, name: &str, price: Option<f64>| api::Offer {
            backend: backend.into(),
            name: name.into(),
            region: None,
            cpus: 1,
            memory_bytes: 1,
            arch: "x86_64".into(),
            gpu_count: 0,
            gpu_name: None,
            gpu_memory_bytes: None,
            spot: false,
            price,
        };
        let mut offers = vec![
            offer("aws", "b", None),
            offer("aws", "c", Some(3.0)),
            offer("on-prem", "n", Some(0.0)),
            offer("aws", "a", Some(1.0)),
        ];
        sort_offers(&mut offers);
        let names: Vec<_> = offers.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["n", "a", "c", "b"]);
    }
}
