//! What a search is asked to do: from the command line or a TOML experiment
//! file (`configs/*.toml`, one `[[experiment]]` table per search).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use delphi_train::data::DatasetKind;

/// What the search minimises (subject to the accuracy threshold).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Predicted online latency (seconds).
    OnlineTime,
    /// Predicted online bytes.
    OnlineBytes,
    /// Predicted offline (preprocessing) time.
    OfflineTime,
    /// A weighted sum: online seconds + bytes/1e8 + offline seconds/10.
    Mix,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "online-time" | "latency" => Ok(Objective::OnlineTime),
            "online-bytes" | "bytes" => Ok(Objective::OnlineBytes),
            "offline-time" => Ok(Objective::OfflineTime),
            "mix" => Ok(Objective::Mix),
            _ => Err(format!(
                "unknown objective {s:?} (online-time, online-bytes, offline-time, mix)"
            )),
        }
    }
}

impl Objective {
    /// The scalar cost of a prediction.
    pub fn of(self, c: &delphi_cost::Cost) -> f64 {
        match self {
            Objective::OnlineTime => c.online_s,
            Objective::OnlineBytes => c.online_bytes,
            Objective::OfflineTime => c.offline_s,
            Objective::Mix => c.online_s + c.online_bytes / 1e8 + c.offline_s / 10.0,
        }
    }

    /// A short name with its unit.
    pub fn label(self) -> &'static str {
        match self {
            Objective::OnlineTime => "predicted online s",
            Objective::OnlineBytes => "predicted online bytes",
            Objective::OfflineTime => "predicted offline s",
            Objective::Mix => "mixed cost",
        }
    }
}

/// One search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanConfig {
    /// A name for the run (and its folder).
    pub name: Option<String>,
    /// The dataset.
    pub dataset: DatasetKind,
    /// Folder with the dataset's files.
    pub data_dir: Option<PathBuf>,
    /// Architecture (default per dataset).
    pub arch: Option<String>,
    /// Validation accuracy a plan must reach.
    pub accuracy: f64,
    /// Members of the population.
    pub population: usize,
    /// Epochs each member trains (after the shared all-ReLU base).
    pub epochs: usize,
    /// Epochs of the all-ReLU base network (trained once, cached).
    pub base_epochs: usize,
    /// Ready intervals per epoch (exploit/explore happens at each).
    pub intervals_per_epoch: usize,
    /// Fraction of the population replaced at each interval.
    pub quantile: f64,
    /// Stop starting new intervals after this many minutes.
    pub budget_minutes: Option<f64>,
    /// What to minimise.
    pub objective: Objective,
    /// Link bandwidth for the cost model (e.g. "100Mbit"; default loopback).
    pub bandwidth: Option<String>,
    /// Link round-trip time (e.g. "20ms").
    pub rtt: Option<String>,
    /// Cost model file (default results/cost-model.json; calibrated quickly if missing).
    pub cost_model: Option<PathBuf>,
    /// Compute device (cpu, wgpu, cuda).
    pub device: String,
    /// Images per step.
    pub batch_size: usize,
    /// Use only the first N training images.
    pub train_limit: Option<usize>,
    /// Validation images (carved from the training set).
    pub valid_size: usize,
    /// Use only the first N test images for the final report.
    pub test_limit: Option<usize>,
    /// Seed of everything random.
    pub seed: u64,
    /// Run folder (default results/plan/<name>).
    pub out: Option<PathBuf>,
    /// Run the chosen plan through the protocol engine at the end.
    pub verify: bool,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            name: None,
            dataset: DatasetKind::FashionMnist,
            data_dir: None,
            arch: None,
            accuracy: 0.88,
            population: 6,
            epochs: 4,
            base_epochs: 4,
            intervals_per_epoch: 2,
            quantile: 0.25,
            budget_minutes: None,
            objective: Objective::OnlineTime,
            bandwidth: None,
            rtt: None,
            cost_model: None,
            device: "cpu".into(),
            batch_size: 64,
            train_limit: None,
            valid_size: 5000,
            test_limit: None,
            seed: 1,
            out: None,
            verify: false,
        }
    }
}

impl PlanConfig {
    /// The architecture (explicit or the dataset's default).
    pub fn arch(&self) -> String {
        self.arch
            .clone()
            .unwrap_or_else(|| self.dataset.default_arch().to_string())
    }

    /// The run's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{:.0}",
                self.dataset.name(),
                self.arch(),
                self.accuracy * 100.0
            )
        })
    }

    /// The run folder.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("results/plan").join(self.name()))
    }

    /// Checks the settings.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.accuracy) {
            return Err(format!("accuracy {} must be in [0, 1]", self.accuracy));
        }
        if self.population < 2 {
            return Err("the population needs at least 2 members".into());
        }
        if self.epochs == 0 || self.intervals_per_epoch == 0 || self.batch_size == 0 {
            return Err("epochs, intervals per epoch and batch size must be positive".into());
        }
        if !(0.0..=0.5).contains(&self.quantile) {
            return Err("quantile must be in [0, 0.5]".into());
        }
        if self.bandwidth.is_some() != self.rtt.is_some() {
            return Err("give both bandwidth and rtt, or neither".into());
        }
        Ok(())
    }
}

/// A batch experiment file: `[[experiment]]` tables, each a [`PlanConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// The searches, run one after the other.
    pub experiment: Vec<PlanConfig>,
}

impl ExperimentFile {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<ExperimentFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: ExperimentFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, e) in f.experiment.iter().enumerate() {
            e.check()
                .map_err(|m| format!("{}: experiment {}: {m}", path.display(), i + 1))?;
        }
        Ok(f)
    }
}
