//! `utilization_policy`: while a job with a policy runs, the agent reads its GPUs' utilization
//! through NVML every [`SAMPLE_INTERVAL`]. Once one GPU has read below `min_gpu_utilization` in
//! every sample for the whole `time_window`, the job is stopped as a stop request would stop it
//! (SIGTERM, its stop grace, SIGKILL) with `terminated_due_to_utilization_policy`.
//!
//! As in dstack, one GPU is enough ("any GPU whose samples are all below the minimum"); unlike
//! dstack, which also accepts a window whose first sample came up to a minute late, the low
//! readings must span the whole window. A reading that fails, a sample missing for a while (the
//! agent was stopped, NVML hung) or a reading at or above the minimum starts the GPU's window
//! again: a job is never stopped on data that is not there. The decision is [`Tracker`], a pure
//! function of the samples; it keeps one streak per GPU, not the samples themselves, so a long
//! window costs nothing. An agent that restarts starts the windows of the jobs it re-adopts again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::config::UtilizationPolicy;
use corral_proto::ids::JobId;
use corral_proto::job::{JobState, TerminationReason};
use nvml_wrapper::Nvml;

use super::Jobs;

/// How often a watched job's GPUs are read (dstack collects its metrics about as often).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples further apart than this break every streak: what the GPUs did in between is unknown.
pub const MAX_GAP: Duration = Duration::from_secs(30);

/// A GPU that stayed below the minimum for the whole window: why the job is stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Low {
    pub gpu: u32,
    pub min: u8,
    pub window_secs: u64,
    /// The highest reading of the window.
    pub highest: u32,
}

impl Low {
    /// The job's status message: `GPU 0 was below 10% for 5m (at most 3%; utilization_policy)`.
    pub fn message(&self) -> String {
        format!(
            "GPU {} was below {}% for {} (at most {}%; utilization_policy)",
            self.gpu,
            self.min,
            duration_text(self.window_secs),
            self.highest
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Streak {
    /// When its first low sample was taken.
    since_ms: u64,
    highest: u32,
}

/// The decision: fed each sample in turn, it says when one GPU has read below the minimum in every
/// sample of a whole window.
#[derive(Debug)]
pub struct Tracker {
    min: u32,
    window_ms: u64,
    max_gap_ms: u64,
    last_ms: Option<u64>,
    streaks: HashMap<u32, Streak>,
}

impl Tracker {
    pub fn new(policy: &UtilizationPolicy, max_gap: Duration) -> Self {
        Self {
            min: u32::from(policy.min_gpu_utilization),
            window_ms: policy.time_window_secs.saturating_mul(1000),
            max_gap_ms: u64::try_from(max_gap.as_millis()).unwrap_or(u64::MAX),
            last_ms: None,
            streaks: HashMap::new(),
        }
    }

    /// One sample, taken `at_ms` after some fixed origin: each GPU's reading in percent, `None`
    /// where it could not be read. A GPU that is not in the sample was not read either. Returns the
    /// first GPU (in the sample's order) whose low readings now span the window.
    pub fn observe(&mut self, at_ms: u64, readings: &[(u32, Option<u32>)]) -> Option<Low> {
        let continuous = self.last_ms.is_some_and(|last| at_ms >= last && at_ms - last <= self.max_gap_ms);
        self.last_ms = Some(at_ms);
        let mut streaks = HashMap::with_capacity(readings.len());
        for &(gpu, reading) in readings {
            let Some(percent) = reading.filter(|p| *p < self.min) else {
                continue;
            };
            let earlier = if continuous { self.streaks.get(&gpu).copied() } else { None };
            let streak = match earlier {
                Some(s) => Streak { since_ms: s.since_ms, highest: s.highest.max(percent) },
                None => Streak { since_ms: at_ms, highest: percent },
            };
            streaks.insert(gpu, streak);
        }
        self.streaks = streaks;
        readings.iter().find_map(|&(gpu, _)| {
            let s = self.streaks.get(&gpu)?;
            (at_ms - s.since_ms >= self.window_ms).then(|| Low {
                gpu,
                min: u8::try_from(self.min).unwrap_or(u8::MAX),
                window_secs: self.window_ms / 1000,
                highest: s.highest,
            })
        })
    }
}

/// `300` → `5m`, `5400` → `1h30m`, `90` → `1m30s`.
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

/// Reads GPUs' utilization through NVML, loaded once from the agent's `nvml_library` (or the
/// loader's default) and kept for every job; a library that cannot be loaded is tried again on the
/// next read.
pub struct Sampler {
    library: Option<PathBuf>,
    nvml: Mutex<Option<Arc<Nvml>>>,
}

impl Sampler {
    pub fn new(library: Option<PathBuf>) -> Self {
        Self { library, nvml: Mutex::new(None) }
    }

    fn nvml(&self) -> Result<Arc<Nvml>, String> {
        let mut slot = self.nvml.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(nvml) = &*slot {
            return Ok(nvml.clone());
        }
        let nvml = match &self.library {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        };
        let nvml = Arc::new(nvml.map_err(|e| {
            let library = self
                .library
                .as_ref()
                .map_or(crate::inventory::DEFAULT_NVML_LIBRARY.into(), |p| p.display().to_string());
            format!("cannot load {library}: {e}")
        })?);
        *slot = Some(nvml.clone());
        Ok(nvml)
    }

    /// Each GPU's utilization in percent (`None`: not read), and what went wrong first, if
    /// anything. Blocking.
    pub fn read(&self, gpus: &[u32]) -> (Vec<(u32, Option<u32>)>, Option<String>) {
        let nvml = match self.nvml() {
            Ok(nvml) => nvml,
            Err(e) => return (gpus.iter().map(|&g| (g, None)).collect(), Some(e)),
        };
        let mut problem = None;
        let readings = gpus
            .iter()
            .map(|&gpu| match nvml.device_by_index(gpu).and_then(|d| d.utilization_rates()) {
                Ok(u) => (gpu, Some(u.gpu)),
                Err(e) => {
                    problem.get_or_insert_with(|| format!("GPU {gpu}: {e}"));
                    (gpu, None)
                }
            })
            .collect();
        (readings, problem)
    }
}

impl Jobs {
    /// The agent's NVML library, for the sampler (before any job is started or adopted).
    pub fn set_nvml_library(&self, library: Option<PathBuf>) {
        let _ = self.utilization.set(Arc::new(Sampler::new(library)));
    }

    fn sampler(&self) -> Arc<Sampler> {
        self.utilization.get_or_init(|| Arc::new(Sampler::new(None))).clone()
    }

    /// Whether the job still runs here and nobody asked it to stop.
    fn runs_unstopped(&self, id: &JobId) -> bool {
        self.lock().get(id).is_some_and(|t| t.update.reason.is_none() && t.stop.borrow().is_none())
    }

    /// A word about the policy, after what the job's status already says.
    fn note_beside(&self, id: &JobId, text: String) {
        let current = self.lock().get(id).and_then(|t| t.update.message.clone()).filter(|m| !m.is_empty());
        let message = match current {
            Some(m) => format!("{m}; {text}"),
            None => text,
        };
        self.note(id, JobState::Running, message);
    }

    /// Samples the job's `gpus` until it ends, and stops it once [`Tracker`] says so.
    pub(super) fn watch_utilization(self: &Arc<Self>, id: &JobId, policy: UtilizationPolicy, gpus: Vec<u32>) {
        let (this, id) = (self.clone(), id.clone());
        tokio::spawn(async move { this.sample_until_low(id, policy, gpus).await });
    }

    async fn sample_until_low(self: Arc<Self>, id: JobId, policy: UtilizationPolicy, gpus: Vec<u32>) {
        if gpus.is_empty() {
            // dstack finds no GPU metrics for such a job and never stops it; say so.
            let note =
                "utilization_policy: the job has no GPUs, so there is no utilization to measure and it is not applied";
            self.note_beside(&id, note.to_owned());
            return;
        }
        let mut tracker = Tracker::new(&policy, MAX_GAP);
        let origin = Instant::now();
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut said_unreadable = false;
        loop {
            ticks.tick().await;
            if !self.runs_unstopped(&id) {
                return;
            }
            let (sampler, wanted) = (self.sampler(), gpus.clone());
            let (readings, problem) = match tokio::task::spawn_blocking(move || sampler.read(&wanted)).await {
                Ok(read) => read,
                Err(e) => (Vec::new(), Some(format!("the NVML reader failed: {e}"))),
            };
            if let Some(problem) = problem
                && !std::mem::replace(&mut said_unreadable, true)
            {
                tracing::warn!(job = %id, "cannot read GPU utilization: {problem}");
                let note = format!(
                    "utilization_policy: cannot read GPU utilization ({problem}); the job is not stopped while readings are missing"
                );
                self.note_beside(&id, note);
            }
            let at_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
            let Some(low) = tracker.observe(at_ms, &readings) else {
                continue;
            };
            if !self.runs_unstopped(&id) {
                return;
            }
            let message = low.message();
            tracing::info!(job = %id, "stopping: {message}");
            // The message stands as the job's status through its end (see `record`).
            self.note(&id, JobState::Running, message);
            if let Some(t) = self.lock().get(&id) {
                t.stop.send_if_modified(|s| {
                    let first = s.is_none();
                    if first {
                        *s = Some((false, TerminationReason::TerminatedDueToUtilizationPolicy));
                    }
                    first
                });
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy(min: u8, window_secs: u64) -> UtilizationPolicy {
        UtilizationPolicy { min_gpu_utilization: min, time_window_secs: window_secs }
    }

    /// Feeds one GPU's readings, one every 10 s from 0; returns when (ms) the tracker said stop.
    fn stops_at(min: u8, window_secs: u64, readings: &[Option<u32>]) -> Option<(u64, Low)> {
        let mut t = Tracker::new(&policy(min, window_secs), MAX_GAP);
        readings.iter().enumerate().find_map(|(i, &r)| {
            let at = i as u64 * 10_000;
            t.observe(at, &[(0, r)]).map(|low| (at, low))
        })
    }

    #[test]
    fn a_gpu_low_for_the_whole_window_stops_the_job_after_it() {
        let low = vec![Some(3); 40];
        let (at, why) = stops_at(10, 300, &low).expect("stopped");
        assert_eq!(at, 300_000, "the first sample at which the low readings span 5m");
        assert_eq!(why, Low { gpu: 0, min: 10, window_secs: 300, highest: 3 });
        assert_eq!(why.message(), "GPU 0 was below 10% for 5m (at most 3%; utilization_policy)");
    }

    #[test]
    fn one_reading_at_or_above_the_minimum_starts_the_window_again() {
        let mut readings = vec![Some(3); 20];
        readings.push(Some(10)); // at 200 s: not below 10
        readings.extend(vec![Some(9); 40]);
        let (at, why) = stops_at(10, 300, &readings).expect("stopped");
        assert_eq!(at, 210_000 + 300_000);
        assert_eq!(why.highest, 9);
        // A GPU that comes back before the window ends is never stopped.
        let mut busy = vec![Some(3); 29];
        busy.extend(vec![Some(50); 100]);
        assert_eq!(stops_at(10, 300, &busy), None);
    }

    #[test]
    fn missing_readings_never_stop_a_job() {
        assert_eq!(stops_at(10, 300, &[None; 100]), None);
        // A failed reading in the middle starts the window again.
        let mut readings = vec![Some(0); 29];
        readings.push(None);
        readings.extend(vec![Some(0); 29]);
        assert_eq!(stops_at(10, 300, &readings), None);
        // A GPU left out of a sample counts as not read.
        let mut t = Tracker::new(&policy(10, 300), MAX_GAP);
        for i in 0..100u64 {
            let sample: &[(u32, Option<u32>)] = if i == 15 { &[] } else { &[(0, Some(1))] };
            if let Some(low) = t.observe(i * 10_000, sample) {
                assert_eq!(i, 15 + 1 + 30, "{low:?}");
                return;
            }
        }
        panic!("never stopped");
    }

    #[test]
    fn a_long_gap_between_samples_starts_the_window_again() {
        let mut t = Tracker::new(&policy(10, 300), MAX_GAP);
        assert_eq!(t.observe(0, &[(0, Some(1))]), None);
        // 6 minutes later: the agent was away; nothing is known about the time in between.
        assert_eq!(t.observe(360_000, &[(0, Some(1))]), None);
        assert_eq!(t.observe(380_000, &[(0, Some(1))]), None);
        // A clock that went back is a gap too.
        assert_eq!(t.observe(370_000, &[(0, Some(1))]), None);
        assert!(t.observe(670_000, &[(0, Some(1))]).is_none(), "gap: 300 s apart in one step");
    }

    #[test]
    fn any_gpu_is_enough_and_the_first_is_named() {
        let mut t = Tracker::new(&policy(10, 300), MAX_GAP);
        let mut stopped = None;
        for i in 0..=30u64 {
            stopped = t.observe(i * 10_000, &[(4, Some(80)), (6, Some(2)), (7, Some(0))]);
        }
        let low = stopped.expect("GPUs 6 and 7 idled for 5m");
        assert_eq!((low.gpu, low.highest), (6, 2));
    }

    #[test]
    fn a_minimum_of_zero_never_stops() {
        assert_eq!(stops_at(0, 300, &[Some(0); 100]), None);
    }

    #[test]
    fn windows_read_as_durations() {
        assert_eq!(duration_text(300), "5m");
        assert_eq!(duration_text(3600), "1h");
        assert_eq!(duration_text(5400), "1h30m");
        assert_eq!(duration_text(330), "5m30s");
        assert_eq!(duration_text(86_400 * 2 + 1), "2d1s");
        assert_eq!(duration_text(0), "0s");
    }

    #[test]
    fn the_sampler_reads_nvml_and_says_what_it_cannot() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lib = crate::inventory::build_fake_nvml(dir.path())?;
        let sampler = Sampler::new(Some(lib));
        // No utilization file: every GPU reads 0 %.
        assert_eq!(sampler.read(&[0, 1]), (vec![(0, Some(0)), (1, Some(0))], None));
        std::fs::write(dir.path().join("utilization"), "3\n50\n")?;
        assert_eq!(sampler.read(&[1, 0]), (vec![(1, Some(50)), (0, Some(3))], None));
        // A GPU that fails to answer, and one the host does not have.
        std::fs::write(dir.path().join("utilization"), "error\n7\n")?;
        let (readings, problem) = sampler.read(&[0, 1, 5]);
        assert_eq!(readings, vec![(0, None), (1, Some(7)), (5, None)]);
        let problem = problem.unwrap_or_default();
        assert!(problem.starts_with("GPU 0: "), "{problem}");

        let absent = dir.path().join("absent").join("libnvidia-ml.so.1");
        let (readings, problem) = Sampler::new(Some(absent.clone())).read(&[0]);
        assert_eq!(readings, vec![(0, None)]);
        let problem = problem.unwrap_or_default();
        assert!(problem.contains(&absent.display().to_string()), "{problem}");
        Ok(())
    }

    /// Runs against the host's real driver when asked (`CORRAL_TEST_REAL_NVML=1`), on a GPU machine.
    #[test]
    fn real_nvml_reads_utilization() {
        if std::env::var("CORRAL_TEST_REAL_NVML").as_deref() != Ok("1") {
            println!("real NVML test not requested (set CORRAL_TEST_REAL_NVML=1 on a GPU host)");
            return;
        }
        let (readings, problem) = Sampler::new(None).read(&[0]);
        assert_eq!(problem, None);
        assert!(readings[0].1.is_some_and(|p| p <= 100), "{readings:?}");
    }

    /// What the rule means, said the slow way: at sample `i`, GPU `g` is low for the window when
    /// there is an earlier sample `j` at least a window before, every reading of `g` from `j` to
    /// `i` is below the minimum, and no two samples in between are more than `MAX_GAP` apart.
    /// Samples as (time in ms, per GPU its reading).
    type Samples = [(u64, Vec<(u32, Option<u32>)>)];

    fn reference(min: u32, window_ms: u64, samples: &Samples, i: usize) -> Option<(u32, u32)> {
        let gap_ms = MAX_GAP.as_millis() as u64;
        let reading = |k: usize, g: u32| samples[k].1.iter().find(|(x, _)| *x == g).and_then(|(_, r)| *r);
        samples[i].1.iter().find_map(|&(g, _)| {
            let mut j = i;
            loop {
                if reading(j, g).is_none_or(|r| r >= min) {
                    return None;
                }
                let earlier_ok = j > 0
                    && reading(j - 1, g).is_some_and(|r| r < min)
                    && samples[j].0 >= samples[j - 1].0
                    && samples[j].0 - samples[j - 1].0 <= gap_ms;
                if !earlier_ok {
                    break;
                }
                j -= 1;
            }
            let highest = (j..=i).filter_map(|k| reading(k, g)).max()?;
            (samples[i].0 - samples[j].0 >= window_ms).then_some((g, highest))
        })
    }

    proptest! {
        /// The tracker, which keeps one streak per GPU, says what the slow reading of the rule says,
        /// at every sample.
        #[test]
        fn the_tracker_agrees_with_the_rule(
            min in 0u8..=100,
            window_secs in 300u64..=600,
            steps in (1u32..=60).prop_flat_map(|low| proptest::collection::vec(
                (prop_oneof![8 => 5_000u64..=15_000, 1 => 0u64..=60_000],
                 proptest::collection::vec(prop_oneof![low => (0u32..20).prop_map(Some), 2 => (0u32..=100).prop_map(Some), 1 => Just(None)], 3)),
                1..160,
            )),
        ) {
            let mut t = Tracker::new(&policy(min, window_secs), MAX_GAP);
            let mut samples = Vec::new();
            let mut at = 0u64;
            for (step, values) in steps {
                at += step;
                let readings: Vec<(u32, Option<u32>)> = values.into_iter().enumerate().map(|(g, r)| (g as u32, r)).collect();
                samples.push((at, readings.clone()));
                let got = t.observe(at, &readings).map(|l| (l.gpu, l.highest));
                let want = reference(u32::from(min), window_secs * 1000, &samples, samples.len() - 1);
                prop_assert_eq!(got, want, "at sample {}", samples.len() - 1);
            }
        }
    }
}
