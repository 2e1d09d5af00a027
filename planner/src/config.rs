//! What a search is asked to do: from the command line or a TOML experiment
//! file (`configs/*.toml`, one `[[experiment]]` table per search).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use delphi_cost::{Bandwidth, Rtt};
use delphi_train::data::DatasetKind;
use delphi_train::device::DeviceChoice;

delphi_net::text_enum! {
    /// What the search minimises (subject to the accuracy threshold).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Objective("objective") {
        /// Predicted online latency (seconds).
        OnlineTime = "online-time" | "latency",
        /// Predicted online bytes.
        OnlineBytes = "online-bytes" | "bytes",
        /// Predicted offline (preprocessing) time.
        OfflineTime = "offline-time",
        /// A weighted sum: online seconds + bytes/1e8 + offline seconds/10.
        Mix = "mix",
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

delphi_net::text_enum! {
    /// What a placement chooses: per activation layer, or per channel.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum Granularity("granularity") {
        /// One choice per activation layer (DELPHI's).
        #[default]
        Layer = "layer",
        /// One choice per channel, learned inside each member (a relaxed mask
        /// whose penalty is weighted by the cost model; `pbt` only).
        Channel = "channel",
    }
}

delphi_net::text_enum! {
    /// How the bits of each ReLU's garbled circuit are chosen.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum ReluBitsMode("ReLU bits") {
        /// The default: per ReLU layer, the exact windowed circuit 0..hi
        /// whose range holds the bound interval arithmetic proves for the
        /// layer's inputs (from the plan's weights and declared input
        /// range), the 41-bit circuit where no window up to 37 bits does.
        /// Outputs are exactly the full-width circuit's for every input in
        /// range; a window reveals only the bit length of that bound.
        #[default]
        Auto = "auto",
        /// The exact 41-bit circuit everywhere.
        Full = "full",
        /// An opt-in that leaks: per layer, the narrowest reduced-ReLU
        /// window that holds the ReLU inputs the network sees on training
        /// images (twice the largest, low bit at the truncation), kept only
        /// when the fixed-point validation accuracy stays within
        /// [`RELU_BITS_TOLERANCE`] of the full-width network's. Its
        /// rounding depends on the client's share, which lets a client
        /// that repeats a query recover weights (docs/security.md); the
        /// name says so.
        ReducedLeaky = "reduced-leaky",
    }
}

/// Default [`PlanConfig::halve_at`]: half the budget with the whole
/// population, half with its better half.
pub const DEFAULT_HALVE_AT: f64 = 0.5;

/// Batches (of `batch_size` training images) a member's batch-norm
/// statistics are re-estimated on before each evaluation: 16 × 64 = 1,024
/// images, a sixth of the forward passes of evaluating 5,000.
pub const DEFAULT_BN_RECALIBRATION: usize = 16;

/// Largest validation-accuracy loss (fraction) that reduced ReLU windows
/// may cost against the same network with full-width ReLUs.
pub const RELU_BITS_TOLERANCE: f64 = 0.003;

delphi_net::text_enum! {
    /// How placements are searched (every strategy gets the same training
    /// budget and cost model).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum Strategy("strategy") {
        /// Our population-based search scored by the cost model.
        #[default]
        Pbt = "pbt",
        /// DELPHI's published planner (fixed counts, random placements,
        /// accuracy × (1 + replaced ReLU fraction)).
        Delphi = "delphi",
        /// Make quadratic, one at a time, the layer that loses the least
        /// accuracy per unit of predicted saving.
        Greedy = "greedy",
        /// A control, not a search: the all-ReLU base fine-tuned for the
        /// same budget (PBT over the hyperparameters only, distilling from
        /// the base).
        ReluControl = "relu-control",
        /// A control, not a search: every activation quadratic with our
        /// recipe (gradual swap, distillation from the base; PBT over the
        /// hyperparameters only), for the same budget.
        QuadControl = "quad-control",
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
    /// Architecture: a built-in name, or a network description (.json) or
    /// ONNX model (.onnx); with weights it is the trained all-ReLU base
    /// (default per dataset).
    pub arch: Option<String>,
    /// How placements are searched.
    pub strategy: Strategy,
    /// Per activation layer or per channel.
    pub granularity: Granularity,
    /// Reduced ReLU circuits chosen per layer, or the full circuit.
    pub relu_bits: ReluBitsMode,
    /// How the plan's truncations round (`exact`, or the leaky
    /// `faithful-leaky`).
    pub truncation: delphi_net::desc::TruncChoice,
    /// Training budget in member-epochs (default population × epochs), the
    /// same for every strategy.
    pub budget_epochs: Option<f64>,
    /// DELPHI's planner: how many counts of quadratic layers it tries
    /// (spread evenly up to all layers).
    pub delphi_runs: usize,
    /// Validation accuracy a plan must reach.
    pub accuracy: f64,
    /// Members of the population.
    pub population: usize,
    /// Epochs each member trains (after the shared all-ReLU base); default
    /// [`default_epochs`] of the architecture.
    pub epochs: Option<usize>,
    /// Epochs of the all-ReLU base network (trained once, cached).
    pub base_epochs: usize,
    /// Ready intervals per epoch (exploit/explore happens at each).
    pub intervals_per_epoch: usize,
    /// Fraction of the population replaced at each interval.
    pub quantile: f64,
    /// Our search (layer and channel granularity): once this fraction of
    /// the budget is spent, the population keeps its better half by front
    /// order (the front's ends always among them) and the survivors train
    /// on with the retired members' steps, so the plans a search ends with
    /// have trained longer. `None` (or 1) keeps the whole population to the
    /// end.
    pub halve_at: Option<f64>,
    /// Slack of the run's front, in standard errors of a split-A accuracy
    /// estimate: besides the plans no other beats, the front keeps every
    /// settled plan that no cheaper (or equally cheap) plan beats by more
    /// than this many standard errors, at most [`crate::policy::FRONT_MAX`]
    /// plans in all, so that a choice on held-back images (split B) sees
    /// the plans split A cannot tell apart. 0: the plain front.
    #[serde(default)]
    pub front_slack: f64,
    /// Batches of training images each member's batch-norm statistics are
    /// re-estimated on after it trains, before it is evaluated and its plan
    /// exported ([`delphi_train::train::Trainer::recalibrate_batch_norm`]):
    /// the moving averages training keeps lag the weights, most of all
    /// while layers turn quadratic. 0: the statistics training left.
    /// Missing from an experiment file: [`DEFAULT_BN_RECALIBRATION`];
    /// missing from a search saved before the setting existed: 0, what it
    /// did ([`crate::search`] reads it so).
    pub bn_recalibration: usize,
    /// Stop starting new intervals after this many minutes.
    pub budget_minutes: Option<f64>,
    /// What to minimise.
    pub objective: Objective,
    /// Link bandwidth for the cost model (e.g. "100Mbit", "12.5MB/s";
    /// default: the loopback link the model was measured on).
    pub bandwidth: Option<Bandwidth>,
    /// Link round-trip time (e.g. "20ms").
    pub rtt: Option<Rtt>,
    /// Cost model file (default results/cost-model.json; calibrated quickly if missing).
    pub cost_model: Option<PathBuf>,
    /// Compute device (cpu, wgpu, cuda or cuda:N).
    pub device: DeviceChoice,
    /// Images per step.
    pub batch_size: usize,
    /// Use only the first N training images.
    pub train_limit: Option<usize>,
    /// Validation images (carved from the training set).
    pub valid_size: usize,
    /// Use only the first N test images for the final report.
    pub test_limit: Option<usize>,
    /// Seed of everything random: the validation split, the base network
    /// and (unless `search_seed` is given) the search.
    pub seed: u64,
    /// Seed of the search's own draws (members' placements,
    /// hyperparameters, exploration, data order); default: `seed`. Runs
    /// with different search seeds share the data split and the base.
    pub search_seed: Option<u64>,
    /// Images held back from the search (split B, carved from the training
    /// set beside the validation split A): the benchmark chooses each
    /// threshold's plan among the front's plans by their accuracy here,
    /// on images the search never saw. 0: none.
    pub select_size: usize,
    /// Run folder (default results/plan/<name>).
    pub out: Option<PathBuf>,
    /// Run the chosen plan through the protocol engine at the end.
    pub verify: bool,
    /// Where the members' units of work run (not saved with the search: a
    /// search resumes with any executor and gives the same front).
    #[serde(skip)]
    pub exec: crate::executor::ExecConfig,
}

/// A threshold as a run folder names it: the percentage with as many
/// decimals as it has (0.88 → `88`, 0.885 → `88.5`, 0.8875 → `88.75`), so
/// that distinct thresholds never share a folder (to a millionth of a
/// point; validation accuracy on 5,000 images moves in steps of 0.02).
pub fn threshold_label(accuracy: f64) -> String {
    let s = format!("{:.6}", accuracy * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Epochs each member trains by default: 4, and 2 for `resnet14` (and the
/// deep `resnet26` and `resnet38`, at about its compute), whose default search
/// (population 6, all 55,000 Fashion-MNIST training images) is sized to
/// finish within 45 minutes on a 2-core machine (37 minutes, base training
/// included, on a 2-core Intel Xeon).
pub fn default_epochs(arch: &str) -> usize {
    if matches!(arch, "resnet14" | "resnet26" | "resnet38") {
        2
    } else {
        4
    }
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            name: None,
            dataset: DatasetKind::FashionMnist,
            data_dir: None,
            arch: None,
            strategy: Strategy::Pbt,
            granularity: Granularity::Layer,
            relu_bits: ReluBitsMode::Auto,
            truncation: delphi_net::desc::TruncChoice::Exact,
            budget_epochs: None,
            delphi_runs: 3,
            accuracy: 0.88,
            population: 6,
            epochs: None,
            base_epochs: 4,
            intervals_per_epoch: 2,
            quantile: 0.25,
            halve_at: Some(DEFAULT_HALVE_AT),
            front_slack: 0.0,
            bn_recalibration: DEFAULT_BN_RECALIBRATION,
            budget_minutes: None,
            objective: Objective::OnlineTime,
            bandwidth: None,
            rtt: None,
            cost_model: None,
            device: DeviceChoice::Cpu,
            batch_size: 64,
            train_limit: None,
            valid_size: 5000,
            test_limit: None,
            seed: 1,
            search_seed: None,
            select_size: 0,
            out: None,
            verify: false,
            exec: crate::executor::ExecConfig::default(),
        }
    }
}

impl PlanConfig {
    /// The architecture (explicit or the dataset's default).
    pub fn arch(&self) -> String {
        self.arch.clone().unwrap_or_else(|| self.dataset.default_arch().to_string())
    }

    /// The architecture for names: a built-in, or the file's stem.
    pub fn arch_label(&self) -> String {
        let a = self.arch();
        if delphi_train::arch::is_path(&a) {
            Path::new(&a).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or(a)
        } else {
            a
        }
    }

    /// The run's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let mut strategy = match self.strategy {
                Strategy::Pbt => String::new(),
                s => format!("-{}", s.name()),
            };
            if let Some(s) = self.search_seed.filter(|&s| s != self.seed) {
                strategy += &format!("-s{s}");
            }
            if self.granularity == Granularity::Channel {
                strategy += "-channel";
            }
            if self.relu_bits == ReluBitsMode::ReducedLeaky {
                strategy += "-reduced-relu";
            }
            if self.truncation == delphi_net::desc::TruncChoice::FaithfulLeaky {
                strategy += "-faithful-trunc";
            }
            format!(
                "{}-{}-{}{strategy}",
                self.dataset.name(),
                self.arch_label(),
                threshold_label(self.accuracy)
            )
        })
    }

    /// The seed of the search's own draws.
    pub fn search_seed(&self) -> u64 {
        self.search_seed.unwrap_or(self.seed)
    }

    /// Epochs each member trains (explicit or the architecture's default).
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or_else(|| default_epochs(&self.arch()))
    }

    /// The training budget in member-epochs.
    pub fn budget_epochs(&self) -> f64 {
        self.budget_epochs.unwrap_or((self.population * self.epochs()) as f64)
    }

    /// The run folder (default `<results>/plan/<name>`; see
    /// [`delphi_net::paths`]).
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| delphi_net::paths::results_path("plan").join(self.name()))
    }

    /// The settings as a search uses them: `halve_at` only where it
    /// applies (our search at layer granularity and the controls), so a
    /// saved search compares equal whatever the flag said elsewhere.
    pub fn normalized(&self) -> PlanConfig {
        let mut c = self.clone();
        let halves = match c.strategy {
            Strategy::Pbt => c.granularity == Granularity::Layer,
            Strategy::ReluControl | Strategy::QuadControl => true,
            Strategy::Delphi | Strategy::Greedy => false,
        };
        if !halves || c.halve_at == Some(1.0) {
            c.halve_at = None;
        }
        c
    }

    /// Checks the settings.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.accuracy) {
            return Err(format!("accuracy {} must be in [0, 1]", self.accuracy));
        }
        if self.population < 2 {
            return Err("the population needs at least 2 members".into());
        }
        if self.epochs() == 0 || self.intervals_per_epoch == 0 || self.batch_size == 0 {
            return Err("epochs, intervals per epoch and batch size must be positive".into());
        }
        if !(0.0..=0.5).contains(&self.quantile) {
            return Err("quantile must be in [0, 0.5]".into());
        }
        if let Some(h) = self.halve_at {
            if !(h > 0.0 && h <= 1.0) {
                return Err(format!("halve_at {h} must be in (0, 1]"));
            }
        }
        if !(self.front_slack.is_finite() && self.front_slack >= 0.0) {
            return Err(format!("front_slack {} must be 0 or more", self.front_slack));
        }
        if let Some(b) = self.budget_epochs {
            if !(b.is_finite() && b > 0.0) {
                return Err(format!("budget_epochs {b} must be positive"));
            }
        }
        if self.granularity == Granularity::Channel && self.strategy != Strategy::Pbt {
            return Err(format!(
                "granularity channel is searched by pbt only ({} chooses whole layers)",
                self.strategy.name()
            ));
        }
        if self.delphi_runs == 0 {
            return Err("delphi_runs must be at least 1".into());
        }
        if self.bandwidth.is_some() != self.rtt.is_some() {
            return Err("give both bandwidth and rtt, or neither".into());
        }
        Ok(())
    }

    /// Checks what this build and machine must provide to run it: the
    /// compute device (a GPU one needs the binary built with its feature).
    /// The planner calls it before it makes any folder.
    pub fn check_runnable(&self) -> Result<(), String> {
        self.device.device().map(|_| ()).map_err(|e| e.to_string())
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
        // Every other field has a default; the threshold never does.
        let raw: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(toml::Value::Array(list)) = raw.get("experiment") {
            for (i, e) in list.iter().enumerate() {
                if e.get("accuracy").is_none() {
                    return Err(format!(
                        "{}: experiment {}: `accuracy` is required (the validation accuracy the plan must reach, e.g. 0.88)",
                        path.display(),
                        i + 1
                    ));
                }
            }
        }
        for (i, e) in f.experiment.iter().enumerate() {
            e.check().map_err(|m| format!("{}: experiment {}: {m}", path.display(), i + 1))?;
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<ExperimentFile, String> {
        let p = std::env::temp_dir().join(format!(
            "delphi-config-test-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        let out = ExperimentFile::load(&p);
        std::fs::remove_file(&p).ok();
        out
    }

    #[test]
    fn accuracy_is_required_and_datasets_take_the_cli_spellings() {
        let e = load_text("[[experiment]]\nstrategy = \"pbt\"\n").unwrap_err();
        assert!(e.contains("`accuracy` is required"), "{e}");
        let f = load_text("[[experiment]]\naccuracy = 0.9\ndataset = \"fmnist\"\n").unwrap();
        assert_eq!(f.experiment[0].dataset, DatasetKind::FashionMnist);
        let f = load_text("[[experiment]]\naccuracy = 0.9\ndataset = \"CIFAR-10\"\n").unwrap();
        assert_eq!(f.experiment[0].dataset, DatasetKind::Cifar10);
        // A provider's own arrays, by path; a path that is nothing, by name.
        let d = std::env::temp_dir().join(format!("delphi-toml-data-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let npy = delphi_train::disk::npy_bytes;
        std::fs::write(d.join("x.npy"), npy("|u1", &[4, 2, 2], &[9; 16])).unwrap();
        std::fs::write(d.join("y.npy"), npy("|u1", &[4], &[0, 1, 0, 1])).unwrap();
        let text = format!("[[experiment]]\naccuracy = 0.9\ndataset = {:?}\n", d.display());
        let f = load_text(&text).unwrap();
        assert_eq!(
            (f.experiment[0].dataset.shape(), f.experiment[0].dataset.classes()),
            ([1, 2, 2], 2)
        );
        let e = load_text("[[experiment]]\naccuracy = 0.9\ndataset = \"no/such/data\"\n");
        assert!(e.unwrap_err().contains("no such file or folder"));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn distinct_thresholds_name_distinct_folders() {
        assert_eq!(threshold_label(0.88), "88");
        assert_eq!(threshold_label(0.885), "88.5");
        assert_eq!(threshold_label(0.8875), "88.75");
        assert_eq!(threshold_label(0.9), "90");
        let mut a = PlanConfig::default();
        let mut b = PlanConfig::default();
        a.accuracy = 0.88;
        b.accuracy = 0.885;
        assert_ne!(a.name(), b.name());
        assert!(a.name().ends_with("-88"), "{}", a.name());
    }

    #[test]
    fn toml_takes_every_command_line_spelling() {
        // The same FromStr parses flags and files: `latency` is the
        // command line's alias of online-time, and works in a file too.
        let f = load_text(
            "[[experiment]]\naccuracy = 0.9\nobjective = \"latency\"\nbandwidth = \"100Mbps\"\n\
             rtt = \"20ms\"\ndevice = \"cpu\"\n",
        )
        .unwrap();
        let e = &f.experiment[0];
        assert_eq!(e.objective, Objective::OnlineTime);
        assert_eq!(e.bandwidth.map(|b| b.as_bytes_per_s()), Some(12.5e6));
        let err = load_text("[[experiment]]\naccuracy = 0.9\nbandwidth = \"100\"\nrtt = \"1ms\"\n")
            .unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        let err = load_text("[[experiment]]\naccuracy = 0.9\ndevice = \"tpu\"\n").unwrap_err();
        assert!(err.contains("unknown device"), "{err}");
        // A GPU device parses everywhere and is refused where it is not built in.
        let f = load_text("[[experiment]]\naccuracy = 0.9\ndevice = \"cuda\"\n").unwrap();
        if !cfg!(feature = "cuda") {
            let err = f.experiment[0].check_runnable().unwrap_err();
            assert!(err.contains("not compiled in"), "{err}");
        }
    }

    #[test]
    fn every_shipped_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let f = ExperimentFile::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!f.experiment.is_empty(), "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 4);
    }

    #[test]
    fn unknown_keys_and_strategies_are_refused_by_name() {
        let e = toml::from_str::<ExperimentFile>(
            "[[experiment]]\naccuracy = 0.9\nstrategyy = \"pbt\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("strategyy"), "{e}");
        let e = toml::from_str::<ExperimentFile>(
            "[[experiment]]\naccuracy = 0.9\nstrategy = \"random\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("random"), "{e}");
        let c: ExperimentFile = toml::from_str(
            "[[experiment]]\naccuracy = 0.9\nstrategy = \"delphi\"\narch = \"net.onnx\"\n",
        )
        .unwrap();
        assert_eq!(c.experiment[0].strategy, Strategy::Delphi);
        assert_eq!(c.experiment[0].arch_label(), "net");
        assert!(c.experiment[0].name().ends_with("-delphi"));
    }

    #[test]
    fn an_experiment_file_re_estimates_batch_norm_unless_told_not_to() {
        let f: ExperimentFile = toml::from_str("[[experiment]]\naccuracy = 0.9\n").unwrap();
        assert_eq!(f.experiment[0].bn_recalibration, DEFAULT_BN_RECALIBRATION);
        let f: ExperimentFile =
            toml::from_str("[[experiment]]\naccuracy = 0.9\nbn_recalibration = 0\n").unwrap();
        assert_eq!(f.experiment[0].bn_recalibration, 0);
    }

    #[test]
    fn relu_bits_default_to_exact_windows_and_the_leaky_one_is_named() {
        let f: ExperimentFile = toml::from_str("[[experiment]]\naccuracy = 0.9\n").unwrap();
        assert_eq!(f.experiment[0].relu_bits, ReluBitsMode::Auto);
        assert!(!f.experiment[0].name().contains("reduced"));
        let f: ExperimentFile =
            toml::from_str("[[experiment]]\naccuracy = 0.9\nrelu_bits = \"reduced-leaky\"\n")
                .unwrap();
        assert_eq!(f.experiment[0].relu_bits, ReluBitsMode::ReducedLeaky);
        assert!(f.experiment[0].name().ends_with("-reduced-relu"));
        let f: ExperimentFile =
            toml::from_str("[[experiment]]\naccuracy = 0.9\nrelu_bits = \"full\"\n").unwrap();
        assert_eq!(f.experiment[0].relu_bits, ReluBitsMode::Full);
        let e = toml::from_str::<ExperimentFile>(
            "[[experiment]]\naccuracy = 0.9\nrelu_bits = \"half\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("half"), "{e}");
        assert!("12".parse::<ReluBitsMode>().is_err());
    }

    #[test]
    fn member_epochs_default_per_architecture_and_can_be_set() {
        let budget = |toml: &str| {
            let f: ExperimentFile = toml::from_str(toml).unwrap();
            f.experiment[0].budget_epochs()
        };
        assert_eq!(budget("[[experiment]]\naccuracy = 0.9\n"), 24.0);
        assert_eq!(budget("[[experiment]]\naccuracy = 0.9\narch = \"resnet14\"\n"), 12.0);
        assert_eq!(budget("[[experiment]]\naccuracy = 0.9\narch = \"resnet26\"\n"), 12.0);
        assert_eq!(
            budget("[[experiment]]\naccuracy = 0.9\narch = \"resnet14\"\nepochs = 4\n"),
            24.0
        );
    }

    #[test]
    fn granularity_reads_from_toml_and_channel_needs_pbt() {
        let f = load_text("[[experiment]]\naccuracy = 0.9\ngranularity = \"channel\"\n").unwrap();
        let c = &f.experiment[0];
        assert_eq!(c.granularity, Granularity::Channel);
        assert!(c.name().ends_with("-channel"), "{}", c.name());
        c.check().unwrap();
        let e = load_text(
            "[[experiment]]\naccuracy = 0.9\ngranularity = \"channel\"\nstrategy = \"greedy\"\n",
        )
        .unwrap_err();
        assert!(e.contains("pbt only"), "{e}");
        let e = load_text("[[experiment]]\naccuracy = 0.9\ngranularity = \"pixel\"\n").unwrap_err();
        assert!(e.contains("pixel"), "{e}");
        // The default is per layer.
        let f = load_text("[[experiment]]\naccuracy = 0.9\n").unwrap();
        assert_eq!(f.experiment[0].granularity, Granularity::Layer);
    }
}
