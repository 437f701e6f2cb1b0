//! The GPU reader: a thread that reads every GPU through NVML every [`super::SAMPLE_EVERY`] (or
//! each interval, when intervals are shorter) and waits on
//! NVML's event set for Xid errors in between, adding both to the interval's [`Sums`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_proto::metrics::{EccCounts, GpuSample, MAX_XIDS, RemappedRows};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use tokio_util::sync::CancellationToken;

/// The readings of the interval so far, per GPU index.
#[derive(Default)]
pub struct Sums {
    gpus: Mutex<BTreeMap<u32, Acc>>,
}

/// One GPU's interval so far.
#[derive(Default)]
struct Acc {
    uuid: String,
    lost: bool,
    utilization: Mean,
    memory_utilization: Mean,
    power_mw: Mean,
    temperature: Option<u32>,
    memory_used: Option<u64>,
    memory_total: Option<u64>,
    sm_clock_mhz: Option<u32>,
    memory_clock_mhz: Option<u32>,
    throttle_reasons: Option<u64>,
    ecc: Option<EccCounts>,
    retired_pages_pending: Option<bool>,
    remapped_rows: Option<RemappedRows>,
    xids: Vec<u64>,
}

#[derive(Clone, Copy, Default)]
struct Mean {
    sum: u64,
    n: u32,
}

impl Mean {
    fn add(&mut self, v: Option<u32>) {
        if let Some(v) = v {
            self.sum += u64::from(v);
            self.n += 1;
        }
    }

    fn get(&self) -> Option<u64> {
        (self.n > 0).then(|| self.sum / u64::from(self.n))
    }
}

/// One reading of a GPU.
#[derive(Default)]
struct Reading {
    uuid: Option<String>,
    lost: bool,
    utilization: Option<u32>,
    memory_utilization: Option<u32>,
    memory_used: Option<u64>,
    memory_total: Option<u64>,
    temperature: Option<u32>,
    power_mw: Option<u32>,
    sm_clock_mhz: Option<u32>,
    memory_clock_mhz: Option<u32>,
    throttle_reasons: Option<u64>,
    ecc: Option<EccCounts>,
    retired_pages_pending: Option<bool>,
    remapped_rows: Option<RemappedRows>,
}

impl Sums {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Acc>> {
        self.gpus.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, index: u32, r: Reading) {
        let mut gpus = self.lock();
        let a = gpus.entry(index).or_default();
        if let Some(uuid) = r.uuid {
            a.uuid = uuid;
        }
        a.lost |= r.lost;
        a.utilization.add(r.utilization);
        a.memory_utilization.add(r.memory_utilization);
        a.power_mw.add(r.power_mw);
        a.temperature = a.temperature.max(r.temperature);
        a.memory_used = r.memory_used.or(a.memory_used);
        a.memory_total = r.memory_total.or(a.memory_total);
        a.sm_clock_mhz = r.sm_clock_mhz.or(a.sm_clock_mhz);
        a.memory_clock_mhz = r.memory_clock_mhz.or(a.memory_clock_mhz);
        a.throttle_reasons = r.throttle_reasons.or(a.throttle_reasons);
        a.ecc = r.ecc.or(a.ecc);
        a.retired_pages_pending = r.retired_pages_pending.or(a.retired_pages_pending);
        a.remapped_rows = r.remapped_rows.or(a.remapped_rows);
    }

    fn xid(&self, index: u32, xid: u64) {
        let mut gpus = self.lock();
        let a = gpus.entry(index).or_default();
        if a.xids.len() < MAX_XIDS {
            a.xids.push(xid);
        }
    }

    /// The interval's samples, one per GPU read in it (by index); the sums start again.
    pub fn close_interval(&self) -> Vec<GpuSample> {
        let mut gpus = self.lock();
        let mut out = Vec::with_capacity(gpus.len());
        for (&index, a) in gpus.iter_mut() {
            let percent = |m: Mean| m.get().map(|v| u8::try_from(v.min(100)).unwrap_or(100));
            out.push(GpuSample {
                index,
                uuid: a.uuid.clone(),
                lost: a.lost,
                utilization: percent(a.utilization),
                memory_utilization: percent(a.memory_utilization),
                memory_used: a.memory_used,
                memory_total: a.memory_total,
                temperature: a.temperature,
                power_mw: a.power_mw.get().map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
                sm_clock_mhz: a.sm_clock_mhz,
                memory_clock_mhz: a.memory_clock_mhz,
                throttle_reasons: a.throttle_reasons,
                ecc: a.ecc,
                retired_pages_pending: a.retired_pages_pending,
                remapped_rows: a.remapped_rows,
                xids: std::mem::take(&mut a.xids),
            });
            *a = Acc { uuid: std::mem::take(&mut a.uuid), ..Acc::default() };
        }
        out
    }
}

/// Starts the reader thread. Without NVML (a host with no NVIDIA GPUs) it ends at once.
pub fn spawn_reader(
    library: Option<PathBuf>,
    every: Duration,
    sums: std::sync::Arc<Sums>,
    shutdown: CancellationToken,
) {
    let spawned = std::thread::Builder::new().name("corral-gpus".into()).spawn(move || {
        let nvml = match &library {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        };
        match nvml {
            Ok(nvml) => read_until(&nvml, every, &sums, &shutdown),
            Err(e) => tracing::debug!("no GPU metrics: NVML cannot be loaded: {e}"),
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the GPU reader: {e}");
    }
}

fn read_until(nvml: &Nvml, every: Duration, sums: &Sums, shutdown: &CancellationToken) {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("no GPU metrics: NVML cannot count the GPUs: {e}");
            return;
        }
    };
    if count == 0 {
        return;
    }
    let events = xid_events(nvml, count);
    if events.is_none() {
        tracing::warn!("NVML delivers no Xid events on this host: GPU health is judged from its counters only");
    }
    let mut said_wait_error = false;
    let mut next = Instant::now();
    while !shutdown.is_cancelled() {
        for index in 0..count {
            match nvml.device_by_index(index) {
                Ok(device) => sums.add(index, read(nvml, &device)),
                Err(NvmlError::GpuLost) => sums.add(index, Reading { lost: true, ..Reading::default() }),
                Err(e) => tracing::debug!(gpu = index, "cannot read the GPU: {e}"),
            }
        }
        next += every;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || shutdown.is_cancelled() {
                break;
            }
            // At most half a second at a time, so that a shutdown is seen.
            let slice = left.min(Duration::from_millis(500));
            let Some(set) = &events else {
                std::thread::sleep(slice);
                continue;
            };
            match set.wait(u32::try_from(slice.as_millis()).unwrap_or(500)) {
                Ok(event) if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) => {
                    let xid = match event.event_data {
                        Some(nvml_wrapper::enums::event::XidError::Value(x)) => x,
                        _ => 0,
                    };
                    match event.device.index() {
                        Ok(index) => {
                            tracing::warn!(gpu = index, xid, "Xid error");
                            sums.xid(index, xid);
                        }
                        Err(e) => tracing::warn!(xid, "an Xid error on a GPU NVML cannot name: {e}"),
                    }
                }
                Ok(_) | Err(NvmlError::Timeout) => {}
                Err(e) => {
                    if !std::mem::replace(&mut said_wait_error, true) {
                        tracing::warn!("waiting for NVML's events failed: {e}");
                    }
                    std::thread::sleep(slice);
                }
            }
        }
    }
}

/// An event set with every GPU that supports it registered for Xid errors; `None` when none can be.
fn xid_events(nvml: &Nvml, count: u32) -> Option<EventSet<'_>> {
    let mut wanted: Vec<u32> = (0..count)
        .filter(|&i| {
            nvml.device_by_index(i)
                .and_then(|d| d.supported_event_types())
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR))
        })
        .collect();
    // A GPU that refuses to register spoils the set (NVML frees it): start again without it.
    'again: while !wanted.is_empty() {
        let mut set = nvml.create_event_set().ok()?;
        for (k, &index) in wanted.iter().enumerate() {
            let registered = nvml
                .device_by_index(index)
                .map_err(Into::into)
                .and_then(|d| d.register_events(EventTypes::CRITICAL_XID_ERROR, set));
            match registered {
                Ok(s) => set = s,
                Err(e) => {
                    tracing::warn!(gpu = index, "cannot watch the GPU for Xid errors: {}", e.error);
                    wanted.remove(k);
                    continue 'again;
                }
            }
        }
        return Some(set);
    }
    None
}

/// What NVML answers, and whether it said the GPU is lost.
#[derive(Default)]
struct Answers {
    lost: bool,
}

impl Answers {
    fn get<T>(&mut self, r: Result<T, NvmlError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(NvmlError::GpuLost) => {
                self.lost = true;
                None
            }
            Err(_) => None,
        }
    }
}

/// Everything NVML answers about one GPU; what it refuses stays `None`.
fn read(nvml: &Nvml, d: &Device<'_>) -> Reading {
    let mut a = Answers::default();
    let utilization = a.get(d.utilization_rates());
    let memory = a.get(d.memory_info());
    let ecc = |error, counter| d.total_ecc_errors(error, counter);
    let ecc = (|| {
        Ok::<_, NvmlError>(EccCounts {
            corrected_volatile: ecc(MemoryError::Corrected, EccCounter::Volatile)?,
            uncorrected_volatile: ecc(MemoryError::Uncorrected, EccCounter::Volatile)?,
            corrected_aggregate: ecc(MemoryError::Corrected, EccCounter::Aggregate)?,
            uncorrected_aggregate: ecc(MemoryError::Uncorrected, EccCounter::Aggregate)?,
        })
    })();
    Reading {
        uuid: a.get(d.uuid()),
        utilization: utilization.as_ref().map(|u| u.gpu),
        memory_utilization: utilization.as_ref().map(|u| u.memory),
        memory_used: memory.as_ref().map(|m| m.used),
        memory_total: memory.as_ref().map(|m| m.total),
        ecc: a.get(ecc),
        temperature: a.get(d.temperature(TemperatureSensor::Gpu)),
        power_mw: a.get(d.power_usage()),
        sm_clock_mhz: a.get(d.clock_info(Clock::SM)),
        memory_clock_mhz: a.get(d.clock_info(Clock::Memory)),
        throttle_reasons: a.get(d.current_throttle_reasons()).map(|r| r.bits()),
        retired_pages_pending: a.get(d.are_pages_pending_retired()),
        remapped_rows: a.get(remapped_rows(nvml, d)),
        lost: a.lost,
    }
}

/// NVML's `nvmlDeviceGetRemappedRows`, which nvml-wrapper does not wrap.
#[allow(unsafe_code)]
fn remapped_rows(nvml: &Nvml, d: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let f = nvml.lib().nvmlDeviceGetRemappedRows.as_ref().map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let (mut correctable, mut uncorrectable, mut pending, mut failure) = (0, 0, 0, 0);
    // SAFETY: `d` is a handle of this `nvml`, which outlives the call, and the four pointers are
    // to local integers that NVML writes once before it returns, as nvml.h documents.
    let code = unsafe { f(d.handle(), &mut correctable, &mut uncorrectable, &mut pending, &mut failure) };
    nvml_wrapper::error::nvml_try(code)?;
    Ok(RemappedRows { correctable, uncorrectable, pending: pending != 0, failure: failure != 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_means_the_highest_temperature_and_the_last_counters() {
        let sums = Sums::default();
        let reading = |util, temp, power, uncorrected| Reading {
            uuid: Some("GPU-0".into()),
            utilization: Some(util),
            temperature: Some(temp),
            power_mw: Some(power),
            ecc: Some(EccCounts { uncorrected_volatile: uncorrected, ..EccCounts::default() }),
            ..Reading::default()
        };
        sums.add(0, reading(10, 40, 100_000, 0));
        sums.add(0, reading(30, 55, 300_000, 2));
        sums.add(0, Reading { utilization: None, ..Reading::default() });
        sums.xid(0, 79);
        let s = sums.close_interval();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].utilization, s[0].temperature, s[0].power_mw), (Some(20), Some(55), Some(200_000)));
        assert_eq!(s[0].ecc.map(|e| e.uncorrected_volatile), Some(2));
        assert_eq!((s[0].uuid.as_str(), s[0].xids.as_slice()), ("GPU-0", &[79][..]));
        let next = sums.close_interval();
        assert_eq!((next[0].utilization, next[0].xids.len(), next[0].uuid.as_str()), (None, 0, "GPU-0"));
    }

    /// The reader thread against the fake NVML: every reading, and an Xid raised while it runs.
    #[test]
    fn the_reader_reads_every_figure_and_the_xids_nvml_delivers() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lib = crate::inventory::build_fake_nvml(dir.path())?;
        std::fs::write(dir.path().join("utilization"), "30\n60\n")?;
        std::fs::write(
            dir.path().join("gpus"),
            "0 mem_used_mib=2048 temp=70 power_w=250 sm_clock=1200 mem_clock=1500 throttle=0x4 \
             ecc_corrected_volatile=5 ecc_uncorrected_volatile=1 ecc_corrected_aggregate=9 ecc_uncorrected_aggregate=2 \
             retired_pending=1 remapped_corr=3 remapped_unc=1 remap_pending=1 remap_failure=1\n1 lost=1\n",
        )?;
        let sums = std::sync::Arc::new(Sums::default());
        let stop = CancellationToken::new();
        spawn_reader(Some(lib), Duration::from_millis(100), sums.clone(), stop.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen: Vec<GpuSample> = Vec::new();
        while Instant::now() < deadline && seen.iter().all(|g| g.index != 0 || g.utilization.is_none()) {
            std::thread::sleep(Duration::from_millis(200));
            seen = sums.close_interval();
        }
        let g0 = seen.iter().find(|g| g.index == 0).cloned().unwrap_or_default();
        assert_eq!(g0.uuid, "GPU-fa4e0000-0000-4000-8000-000000000000");
        assert_eq!((g0.utilization, g0.memory_used, g0.temperature), (Some(30), Some(2048 << 20), Some(70)));
        assert_eq!(
            (g0.power_mw, g0.sm_clock_mhz, g0.memory_clock_mhz, g0.throttle_reasons),
            (Some(250_000), Some(1200), Some(1500), Some(4))
        );
        assert_eq!(
            g0.ecc,
            Some(EccCounts {
                corrected_volatile: 5,
                uncorrected_volatile: 1,
                corrected_aggregate: 9,
                uncorrected_aggregate: 2
            })
        );
        assert_eq!(g0.retired_pages_pending, Some(true));
        assert_eq!(
            g0.remapped_rows,
            Some(RemappedRows { correctable: 3, uncorrectable: 1, pending: true, failure: true })
        );
        assert!(!g0.lost);
        let g1 = seen.iter().find(|g| g.index == 1).cloned().unwrap_or_default();
        assert!(g1.lost && g1.utilization.is_none(), "{g1:?}");

        // An Xid raised now is delivered once, to the GPU it happened on.
        std::fs::write(dir.path().join("gpus"), "0 xids=79\n")?;
        let mut xids = Vec::new();
        while Instant::now() < deadline + Duration::from_secs(5) && xids.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            xids =
                sums.close_interval().into_iter().filter(|g| !g.xids.is_empty()).map(|g| (g.index, g.xids)).collect();
        }
        assert_eq!(xids, [(0, vec![79])]);
        std::thread::sleep(Duration::from_millis(500));
        assert!(sums.close_interval().iter().all(|g| g.xids.is_empty()), "an Xid is delivered once");
        stop.cancel();
        Ok(())
    }

    /// Runs against the host's real driver when asked (`CORRAL_TEST_REAL_NVML=1`), on a GPU machine:
    /// prints what the reader read.
    #[test]
    fn real_nvml_samples_every_gpu() {
        if std::env::var("CORRAL_TEST_REAL_NVML").as_deref() != Ok("1") {
            println!("real NVML test not requested (set CORRAL_TEST_REAL_NVML=1 on a GPU host)");
            return;
        }
        let sums = std::sync::Arc::new(Sums::default());
        let stop = CancellationToken::new();
        spawn_reader(None, Duration::from_millis(500), sums.clone(), stop.clone());
        std::thread::sleep(Duration::from_secs(3));
        let samples = sums.close_interval();
        stop.cancel();
        println!("{samples:#?}");
        assert!(!samples.is_empty(), "NVML loaded but no GPU was read");
        for g in &samples {
            assert!(g.uuid.starts_with("GPU-") && !g.lost, "{g:?}");
            assert!(g.utilization.is_some_and(|u| u <= 100) && g.memory_total.is_some(), "{g:?}");
        }
    }
}
